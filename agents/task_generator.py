"""Agent ``generate_tasks``: detection-results -> assessment-tasks.

Reads every detection of the cameras this worker owns, keeps each camera's state in the
``camera_state`` table (held in memory, written back every ``state_write_s``:
:mod:`streams.write_behind`) and emits one :class:`AssessmentTask` per group that
:func:`agents.task_policy.plan_tasks` finds worth a VLM call. The task id is deterministic, so
a redelivered detection makes the same task and the aggregator suppresses the duplicate result.
It also keeps, for the aggregator, the detections that made a task and each camera's latest
frame (:mod:`agents.detection_join`): one decode per detection.

:func:`tasks_for` is the handler with its table passed in, so a unit test runs it on a dict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping

from faust.types import EventT

from agents.camera_filter import check_camera
from agents.detection_join import detection_join, record_detection
from agents.task_policy import (
    UNGROUPED,
    Budget,
    GlobalCap,
    MeasuredAlert,
    alerted_from,
    conflict_key,
    measured_alerts,
    plan_tasks,
    planned_before,
)
from agents.worker_clients import current
from streams import metrics
from streams.app import app, settings
from streams.dlq import guarded
from streams.records import (
    AssessmentTask,
    DetectionResult,
    RiskAssessment,
    decode,
    describe_conflict,
    make_task_id,
    to_bytes,
)
from streams.settings import Settings
from streams.table_values import CameraState
from streams.tables import camera_key, camera_state_live
from streams.topics import assessment_tasks_topic, detection_results_topic, risk_results_topic
from streams.write_behind import put

logger = logging.getLogger(__name__)


def budget_of(s: Settings) -> Budget:
    """The per-camera task budget the settings give."""
    return Budget(
        refresh_s=s.refresh_s,
        per_min=s.camera_budget_per_min,
        burst=s.camera_budget_burst,
        min_interest=s.min_group_score,
    )


def stale(det: DetectionResult, now_s: float, s: Settings) -> bool:
    """Whether ``det`` was captured longer ago than a task's deadline (a backlog being caught up on)."""
    return now_s - det.captured_at / 1000.0 > s.task_deadline_s


def tasks_for(
    det: DetectionResult,
    now_s: float,
    states: MutableMapping[bytes, CameraState | None],
    cap: GlobalCap,
    s: Settings,
) -> list[AssessmentTask]:
    """Plan tasks for ``det`` against its camera's state in ``states``, and update that state."""
    key = camera_key(det.camera_id)
    old = stale(det, now_s, s)
    if old and not planned_before(states.get(key), det):
        # a backlog (a worker catching up, a producer's clock far behind): a task about a frame
        # this old would reach its deadline unanswered, and spend the budget live frames need.
        # A frame planned before is read again (its tasks' send was lost, the state written): its
        # tasks are made again, past their deadline, so each gets its 'expired' result, no call
        metrics.tasks_skipped_total.labels(reason="stale").inc(len(det.groups))
        return []
    metrics.groups_seen_total.labels(camera_id=det.camera_id).inc(len(det.groups))
    cropped = [g for g in det.groups if g.group_id in det.crops]
    if len(cropped) < len(det.groups):
        # a group without its crop (the image store was down, or the producer cropped only groups
        # above min_group_score and a measured conflict picked another) can make no task: planned,
        # it spent the camera's budget and was marked assessed, and no result ever came
        metrics.tasks_skipped_total.labels(reason="no_crop").inc(len(det.groups) - len(cropped))
        det = det.derive(groups=cropped)
    state, decisions, skipped = plan_tasks(states.get(key), det, now_s, budget_of(s), cap=cap.available(now_s))
    cap.spend(len(decisions))
    # a frame that spent budget is written at once: a copy without it would spend again
    put(states, key, state, through=bool(decisions))
    for reason, count in skipped.items():
        metrics.tasks_skipped_total.labels(reason=reason).inc(count)
    tasks = []
    now_ms = now_s * 1000.0
    for decision in decisions:
        group = decision.group
        image = det.crops[group.group_id]
        tasks.append(
            AssessmentTask(
                task_id=make_task_id(det.camera_id, det.frame_seq, group.group_id, det.run_key),
                camera_id=det.camera_id,
                detection_id=det.detection_id,
                frame_seq=det.frame_seq,
                captured_at=det.captured_at,
                group=group,
                image=image,
                reason=decision.reason,
                created_at=now_ms,
                deadline=(det.captured_at if old else now_ms) + s.task_deadline_s * 1000.0,
                conflict=decision.conflict,
            )
        )
        metrics.tasks_total.labels(camera_id=det.camera_id, reason=decision.reason).inc()
    return tasks


#: The risk score a measured result carries, by level (the VLM's scores are its own).
MEASURED_SCORE = {"none": 0.0, "low": 0.3, "medium": 0.55, "high": 0.8, "critical": 0.95}


def measured_results_for(
    det: DetectionResult, now_s: float, states: MutableMapping[bytes, CameraState | None], s: Settings
) -> list[RiskAssessment]:
    """Results of status ``measured`` for the conflicts of ``det`` that alert before any VLM answer."""
    key = camera_key(det.camera_id)
    state = states.get(key)
    if not det.conflicts or state is None:
        return []
    if stale(det, now_s, s) and not alerted_from(state, det):
        # a worker catching up on a backlog: an alert about minutes ago is not raised as news; the
        # frame that raised one, read again (its result lost), raises it again under its own id
        metrics.measured_skipped_total.labels(reason="stale").inc()
        return []
    alerts = measured_alerts(state, det, now_s, s.measured_alert_level, s.alert_cooldown_s)
    put(states, key, state, through=bool(alerts))
    return [measured_result(det, alert, now_s) for alert in alerts]


def measured_result(det: DetectionResult, alert: MeasuredAlert, now_s: float) -> RiskAssessment:
    """A measured conflict as a result: joined, cached, pushed and alerted on like the VLM's, without a call."""
    c = alert.conflict
    group_id = alert.group_id or UNGROUPED + conflict_key(c)
    return RiskAssessment(
        task_id=make_task_id(det.camera_id, det.frame_seq, group_id, det.run_key) + ":measured",
        camera_id=det.camera_id,
        detection_id=det.detection_id,
        group_id=group_id,
        status="measured",
        risk_level=c.level,
        risk_score=MEASURED_SCORE.get(c.level, 0.0),
        summary=f"Measured {describe_conflict(c)}.",
        model="ssm",
        key_alias="",
        attempts=0,
        latency_ms=0.0,
        captured_at=det.captured_at,
        completed_at=now_s * 1000.0,
        conflict=c,
    )


async def handle_detection(event: EventT[bytes]) -> None:
    det = decode(DetectionResult, event.value)
    clients = current()
    check_camera(det, clients.known_cameras)
    metrics.detections_total.labels(camera_id=det.camera_id).inc()
    now = time.time()
    tasks = tasks_for(det, now, camera_state_live, clients.global_cap, settings)
    measured = measured_results_for(det, now, camera_state_live, settings)
    try:  # before the tasks leave: their results must find it
        record_detection(detection_join, det, now, event.message.partition, joined=bool(tasks or measured))
    except Exception:  # the tasks matter more than their join
        logger.exception("camera %s: detection %s not recorded", det.camera_id, det.detection_id)
    for result in measured:  # first: these alert without waiting for any VLM
        await risk_results_topic.send(key=det.camera_id.encode(), value=to_bytes(result))
    for task in tasks:
        await assessment_tasks_topic.send(key=det.camera_id.encode(), value=to_bytes(task))


@app.agent(detection_results_topic, name="generate_tasks")
async def generate_tasks(stream):  # type: ignore[no-untyped-def]
    """One detection in, zero or more tasks out."""
    async for event in stream.events():
        await guarded(event, handle_detection)
