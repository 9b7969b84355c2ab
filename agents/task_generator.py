"""Agent ``generate_tasks``: detection-results -> assessment-tasks.

Reads every detection of the cameras this worker owns, keeps each camera's state in the
``camera_state`` table and emits one :class:`AssessmentTask` per group that
:func:`agents.task_policy.plan_tasks` finds worth a VLM call. The task id is deterministic, so
a redelivered detection makes the same task and the aggregator suppresses the duplicate result.
"""

from __future__ import annotations

import logging
import time

from faust.types import EventT

from agents.task_policy import Budget, GlobalCap, plan_tasks
from models.cameras import load_cameras
from streams import metrics
from streams.app import app, settings
from streams.dlq import guarded
from streams.errors import InvalidRecord
from streams.records import AssessmentTask, DetectionResult, decode, make_task_id, to_bytes
from streams.tables import camera_key, camera_state
from streams.topics import assessment_tasks_topic, detection_results_topic

logger = logging.getLogger(__name__)

BUDGET = Budget(
    refresh_s=settings.refresh_s,
    per_min=settings.camera_budget_per_min,
    burst=settings.camera_budget_burst,
    min_interest=settings.min_group_score,
)
GLOBAL_CAP = GlobalCap(settings.global_budget_per_min)
#: The cameras this deployment knows (ROADWATCH_CAMERAS_FILE), or None to accept any valid id.
KNOWN_CAMERAS: frozenset[str] | None = (
    frozenset(c.id for c in load_cameras(settings.cameras_file)) if settings.cameras_file else None
)


def check_camera(det: DetectionResult, *, count: bool = True) -> None:
    """An unknown camera's records go to the DLQ: they would grow tables and metric labels unbounded."""
    if KNOWN_CAMERAS is not None and det.camera_id not in KNOWN_CAMERAS:
        if count:
            metrics.unknown_cameras_total.inc()
        raise InvalidRecord(f"unknown camera {det.camera_id!r} (not in {settings.cameras_file})")


def tasks_for(det: DetectionResult, now_s: float) -> list[AssessmentTask]:
    """Plan tasks for ``det`` against its camera's table state, and update that state."""
    state, decisions, skipped = plan_tasks(
        camera_state.get(camera_key(det.camera_id)), det, now_s, BUDGET, cap=GLOBAL_CAP.available(now_s)
    )
    GLOBAL_CAP.spend(len(decisions))
    camera_state[camera_key(det.camera_id)] = state
    metrics.groups_seen_total.labels(camera_id=det.camera_id).inc(len(det.groups))
    for reason, count in skipped.items():
        metrics.tasks_skipped_total.labels(reason=reason).inc(count)
    tasks = []
    now_ms = now_s * 1000.0
    for decision in decisions:
        group = decision.group
        image = det.crops.get(group.group_id)
        if image is None:
            metrics.tasks_skipped_total.labels(reason="no_crop").inc()
            continue
        tasks.append(
            AssessmentTask(
                task_id=make_task_id(det.camera_id, det.frame_seq, group.group_id),
                camera_id=det.camera_id,
                detection_id=det.detection_id,
                frame_seq=det.frame_seq,
                captured_at=det.captured_at,
                group=group,
                image=image,
                reason=decision.reason,
                created_at=now_ms,
                deadline=now_ms + settings.task_deadline_s * 1000.0,
            )
        )
        metrics.tasks_total.labels(camera_id=det.camera_id, reason=decision.reason).inc()
    return tasks


async def handle_detection(event: EventT[bytes]) -> None:
    det = decode(DetectionResult, event.value)
    check_camera(det)
    metrics.detections_total.labels(camera_id=det.camera_id).inc()
    for task in tasks_for(det, time.time()):
        await assessment_tasks_topic.send(key=det.camera_id.encode(), value=to_bytes(task))


@app.agent(detection_results_topic, name="generate_tasks")
async def generate_tasks(stream):  # type: ignore[no-untyped-def]
    """One detection in, zero or more tasks out."""
    async for event in stream.events():
        await guarded(event, handle_detection)
