"""Synthetic records for tests and benchmarks: detections with real JPEG crops of a synthetic scene."""

from __future__ import annotations

import asyncio
import base64
import time
from functools import lru_cache

import cv2
from aiokafka import AIOKafkaProducer

from sim.scene import Scene
from streams.records import (
    AssessmentTask,
    DetectedObject,
    DetectionResult,
    ImageRef,
    RiskAssessment,
    TrafficGroup,
    to_bytes,
)


@lru_cache(maxsize=1)
def crop_b64() -> str:
    """A JPEG of the first moment in a synthetic scene where a pedestrian is close to a moving vehicle."""
    scene = Scene(seed=2, vehicle_rate=0.6, pedestrian_rate=0.4)
    t = next(t / 2 for t in range(20, 2000) if scene.risk_events(t / 2, reach=0.5))
    frame, truth = scene.render(t)
    person, vehicle = scene.risk_events(t, reach=0.5)[0]
    boxes = [b.bbox for b in truth if b.actor_id in (person, vehicle)]
    x1, y1 = max(0, int(min(b[0] for b in boxes)) - 30), max(0, int(min(b[1] for b in boxes)) - 30)
    x2, y2 = int(max(b[2] for b in boxes)) + 30, int(max(b[3] for b in boxes)) + 30
    ok, buf = cv2.imencode(".jpg", frame[y1:y2, x1:x2], [cv2.IMWRITE_JPEG_QUALITY, 70])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return base64.b64encode(buf.tobytes()).decode()


def detection(
    camera_id: str, seq: int, *, gap: float = 0.5, track_base: int | None = None, run: str = ""
) -> DetectionResult:
    """A frame with one pedestrian next to one car: one pedestrian_vehicle group with an inline crop.

    ``track_base`` picks the track ids; a new base makes a new group (and so a new task).
    """
    base = seq * 2 if track_base is None else track_base
    person = DetectedObject(track_id=base + 1, cls="person", conf=0.9, bbox=[100.0, 100.0, 112.0, 134.0], speed=30.0)
    x1 = 112.0 + gap * 34.0  # the car ``gap`` pedestrian heights to the right of the pedestrian
    car = DetectedObject(track_id=base + 2, cls="car", conf=0.8, bbox=[x1, 100.0, x1 + 70.0, 134.0], speed=80.0)
    group_id = f"g{base + 1}-{base + 2}"
    group = TrafficGroup(
        group_id=group_id,
        kind="pedestrian_vehicle",
        members=[0, 1],
        track_ids=[base + 1, base + 2],
        bbox=[100.0, 100.0, x1 + 70.0, 134.0],
        min_gap=gap,
        interest=0.9,
    )
    return DetectionResult(
        camera_id=camera_id,
        frame_seq=seq,
        captured_at=time.time() * 1000.0,
        frame_w=640,
        frame_h=360,
        model="test",
        objects=[person, car],
        groups=[group],
        crops={group_id: ImageRef(data_b64=crop_b64(), width=200, height=160, size=1000)},
        run=run,
    )


def assessment_task(det: DetectionResult, task_id: str, deadline_in_ms: float) -> AssessmentTask:
    """A task for the first group of ``det``, due ``deadline_in_ms`` from now."""
    now = time.time() * 1000.0
    group = det.groups[0]
    return AssessmentTask(
        task_id=task_id,
        camera_id=det.camera_id,
        detection_id=det.detection_id,
        frame_seq=det.frame_seq,
        captured_at=det.captured_at,
        group=group,
        image=det.crops[group.group_id],
        reason="new",
        created_at=now,
        deadline=now + deadline_in_ms,
    )


def risk_result(
    camera_id: str,
    task_id: str,
    *,
    detection_id: str,
    group_id: str,
    level: str = "critical",
    score: float = 0.9,
    summary: str = "",
    model: str = "m",
    latency_ms: float = 100.0,
    captured_at: float | None = None,
    completed_at: float | None = None,
) -> RiskAssessment:
    """An ``ok`` result as the scheduler would write it (times in epoch ms, default now)."""
    now = time.time() * 1000.0
    return RiskAssessment(
        task_id=task_id,
        camera_id=camera_id,
        detection_id=detection_id,
        group_id=group_id,
        status="ok",
        risk_level=level,
        risk_score=score,
        summary=summary or f"result {task_id}",
        model=model,
        key_alias="key-1",
        attempts=1,
        latency_ms=latency_ms,
        captured_at=now if captured_at is None else captured_at,
        completed_at=now if completed_at is None else completed_at,
    )


async def produce(bootstrap: str, topic: str, items: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for key, value in items:
            await producer.send(topic, key=key.encode(), value=value)
        await producer.flush()
    finally:
        await producer.stop()


def produce_detections(bootstrap: str, topic: str, detections: list[DetectionResult]) -> None:
    asyncio.run(produce(bootstrap, topic, [(d.camera_id, to_bytes(d)) for d in detections]))
