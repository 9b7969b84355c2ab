"""The closed vocabularies of the contract, as ``Literal`` types and their values.

Kept apart from :mod:`streams.records` (which imports Faust) so that settings and pure modules
can name them cheaply; :mod:`streams.records` checks every decoded record against them.
"""

from __future__ import annotations

from typing import Literal, get_args

#: How a task ended; every task ends in exactly one (``skipped``: a daily budget was spent, so no
#: call was made; alerts that need no VLM still flow).
TaskStatus = Literal["ok", "failed", "expired", "skipped"]
TASK_STATUSES: tuple[TaskStatus, ...] = get_args(TaskStatus)
#: Why the task generator made a task (``replay``: a redelivered frame makes its tasks again).
TaskReason = Literal["new", "changed", "refresh", "replay"]
TASK_REASONS: tuple[TaskReason, ...] = get_args(TaskReason)
#: The VLM's risk levels, lowest first.
RiskLevel = Literal["none", "low", "medium", "high", "critical"]
RISK_LEVELS: tuple[RiskLevel, ...] = get_args(RiskLevel)
#: How a VLM call failed (``agents/vlm_client.py`` maps each provider answer to one; the key pool
#: reacts by kind).
VlmErrorKind = Literal["auth", "quota", "arrearage", "rate", "burst", "content", "request", "server", "parse"]
VLM_ERROR_KINDS: tuple[VlmErrorKind, ...] = get_args(VlmErrorKind)
