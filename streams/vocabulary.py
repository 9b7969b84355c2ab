"""The closed vocabularies of the contract, as ``Literal`` types and their values.

Kept apart from :mod:`streams.records` (which imports Faust) so that settings and pure modules
can name them cheaply; :mod:`streams.records` checks every decoded record against them.
"""

from __future__ import annotations

from typing import Literal, get_args

#: How a task ended; every task ends in exactly one (``skipped``: a daily budget was spent, so no
#: call was made; alerts that need no VLM still flow).
#: ``measured``: no VLM call at all, the conflict measures of a calibrated camera (models/ssm.py) judged the
#: group; its task id ends in ``:measured``; a VLM result for the group, when a task for it is made and answered,
#: follows under the plain id.
TaskStatus = Literal["ok", "failed", "expired", "skipped", "measured"]
TASK_STATUSES: tuple[TaskStatus, ...] = get_args(TaskStatus)
#: Why the task generator made a task (``replay``: a redelivered frame makes its tasks again; ``conflict``:
#: the camera measured a conflict between two of the group's road users).
TaskReason = Literal["new", "changed", "refresh", "replay", "conflict"]
TASK_REASONS: tuple[TaskReason, ...] = get_args(TaskReason)
#: The VLM's risk levels, lowest first.
RiskLevel = Literal["none", "low", "medium", "high", "critical"]
RISK_LEVELS: tuple[RiskLevel, ...] = get_args(RiskLevel)
#: How a VLM call failed (``agents/vlm_client.py`` maps each provider answer to one; the key pool
#: reacts by kind).
VlmErrorKind = Literal["auth", "quota", "arrearage", "rate", "burst", "model", "content", "request", "server", "parse"]
VLM_ERROR_KINDS: tuple[VlmErrorKind, ...] = get_args(VlmErrorKind)
#: Where an alert's judgement came from: the VLM, or the measured conflict (alerted before any VLM answer).
AlertSource = Literal["vlm", "measured"]
ALERT_SOURCES: tuple[AlertSource, ...] = get_args(AlertSource)
#: What the VLM's answer did to a measured alert.
AlertVerdict = Literal["", "confirmed", "escalated", "downgraded"]
ALERT_VERDICTS: tuple[AlertVerdict, ...] = get_args(AlertVerdict)
#: A conflict's pair of road users.
ConflictPair = Literal["pedestrian-vehicle", "cyclist-vehicle", "vehicle-vehicle"]
CONFLICT_PAIRS: tuple[ConflictPair, ...] = get_args(ConflictPair)
