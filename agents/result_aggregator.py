"""Agents ``record_detections`` and ``aggregate_results``: the end of the pipeline.

``record_detections`` keeps each detection (objects and groups, not the crops) in the expiring
``detections`` table and the camera's latest frame summary in ``camera_view``.
``aggregate_results`` joins each result with its detection, drops a task_id it has already
aggregated (at-least-once delivery made effectively-once), caches it in Redis (never blocking),
pushes it to WebSocket clients and raises an Alert at or above ``alert_level``. Both topics are
keyed by camera, so a camera's detections and results meet on the same worker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from faust.types import EventT
from mode import BaseSignalT

from agents.alerting import WebhookSink, merge_alert
from agents.expiry import ExpiringIndex
from agents.task_generator import check_camera
from streams import metrics
from streams.app import app, settings
from streams.cache import ResultCache
from streams.dlq import guarded
from streams.errors import InvalidRecord
from streams.images import image_url
from streams.live import hub
from streams.records import (
    Alert,
    DetectionResult,
    RiskAssessment,
    decode,
    record_to_dict,
    risk_rank,
    to_bytes,
)
from streams.tables import alerts, camera_key, camera_view, detections, results
from streams.topics import alerts_topic, detection_results_topic, risk_results_topic

logger = logging.getLogger(__name__)

DETECTION_TTL_S = max(120.0, 4 * settings.task_deadline_s)
RESULT_TTL_S = 3600.0
LATEST_RESULTS = 12
ALERTS_KEPT = 100

cache = ResultCache(settings.redis_url, settings.redis_ttl_s, settings.redis_retry_s)
webhook = WebhookSink(settings.alert_webhook_url) if settings.alert_webhook_url else None
detection_expiry = ExpiringIndex(DETECTION_TTL_S)
result_expiry = ExpiringIndex(RESULT_TTL_S)


@app.task  # type: ignore[untyped-decorator]
async def relay_other_workers() -> None:
    """WebSocket clients of this worker also see the cameras other workers own (via Redis)."""
    await cache.relay(hub.publish)


@app.on_rebalance_complete.connect
async def _rescan(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    detection_expiry.mark_stale()
    result_expiry.mark_stale()


def compact_detection(det: DetectionResult, now_s: float) -> dict[str, Any]:
    """What the join needs of a detection: frame facts, objects and groups, crop references."""
    return {
        "at": now_s,
        "camera_id": det.camera_id,
        "frame_seq": det.frame_seq,
        "captured_at": det.captured_at,
        "frame_w": det.frame_w,
        "frame_h": det.frame_h,
        "model": det.model,
        "objects": [record_to_dict(o) for o in det.objects],
        "groups": [record_to_dict(g) for g in det.groups],
        # crops by reference only: inline ones would make every changelog write heavy
        "crops": {gid: {"url": image_url(ref), "region": ref.region} for gid, ref in det.crops.items() if ref.uri},
    }


@app.agent(detection_results_topic, name="record_detections")
async def record_detections(stream):  # type: ignore[no-untyped-def]
    """Remember detections for the join and the camera's latest frame for the views."""
    async for event in stream.events():
        try:
            det = decode(DetectionResult, event.value)
            check_camera(det, count=False)  # generate_tasks counts it and sends it to the DLQ
        except InvalidRecord:
            continue  # generate_tasks, reading the same topic, sends it to the DLQ once
        try:
            remember_detection(det)
        except Exception:
            logger.exception("camera %s: detection %s not recorded", det.camera_id, det.detection_id)


def remember_detection(det: DetectionResult) -> None:
    now = time.time()
    compact = compact_detection(det, now)
    detections[det.detection_id] = compact
    detection_expiry.add(det.detection_id, now)
    detection_expiry.expire(detections, now)
    view = camera_view.get(camera_key(det.camera_id)) or {"camera_id": det.camera_id, "results": [], "counts": {}}
    best = max(det.groups, key=lambda g: g.interest, default=None)
    view["latest_detection"] = {
        **{k: compact[k] for k in ("frame_seq", "captured_at", "frame_w", "frame_h", "model")},
        "objects": len(det.objects),
        "groups": [
            {
                "group_id": g.group_id,
                "kind": g.kind,
                "bbox": g.bbox,
                "min_gap": g.min_gap,
                "interest": g.interest,
            }
            for g in det.groups
        ],
        "crop": image_url(det.crops[best.group_id]) if best and best.group_id in det.crops else None,
        "crop_group": best.group_id if best else None,
    }
    view["updated_at"] = now
    camera_view[camera_key(det.camera_id)] = view


def joined_result(result: RiskAssessment, detection: dict[str, Any] | None) -> dict[str, Any]:
    """The result as the views, the cache and the browser see it: joined with its detection."""
    data = record_to_dict(result)
    data["e2e_ms"] = round(result.completed_at - result.captured_at, 1)
    if detection is not None:
        group = next((g for g in detection["groups"] if g["group_id"] == result.group_id), None)
        data["detection"] = {
            "frame_seq": detection["frame_seq"],
            "frame_w": detection["frame_w"],
            "frame_h": detection["frame_h"],
            "model": detection["model"],
            "objects": [detection["objects"][i] for i in (group or {}).get("members", [])],
            "group": group,
            "crop": detection.get("crops", {}).get(result.group_id),
        }
    else:
        data["detection"] = None
    return data


def _alert_for(result: RiskAssessment, now_s: float) -> Alert | None:
    if result.status != "ok" or risk_rank(result.risk_level) < risk_rank(settings.alert_level):
        return None
    return Alert(
        task_id=result.task_id,
        camera_id=result.camera_id,
        level=result.risk_level,
        score=result.risk_score,
        summary=result.summary,
        group_id=result.group_id,
        detection_id=result.detection_id,
        raised_at=now_s * 1000.0,
    )


@app.agent(risk_results_topic, name="aggregate_results")
async def aggregate_results(stream):  # type: ignore[no-untyped-def]
    """Join, deduplicate, cache, fan out, alert."""
    async for event in stream.events():
        await guarded(event, handle_result)


async def handle_result(event: EventT[bytes]) -> None:
    result = decode(RiskAssessment, event.value)
    if results.get(result.task_id) is not None:
        metrics.duplicates_total.inc()
        return
    now = time.time()
    data = joined_result(result, detections.get(result.detection_id))
    results[result.task_id] = {
        "at": now,
        "camera_id": result.camera_id,
        "status": result.status,
        "risk_level": result.risk_level,
        "joined": data["detection"] is not None,
    }
    result_expiry.add(result.task_id, now)
    result_expiry.expire(results, now)
    metrics.results_total.labels(status=result.status, risk_level=result.risk_level).inc()
    metrics.e2e_seconds.observe(max(0.0, now - result.captured_at / 1000.0))

    view = camera_view.get(camera_key(result.camera_id)) or {"camera_id": result.camera_id, "results": [], "counts": {}}
    view["results"] = [data, *view.get("results", [])][:LATEST_RESULTS]
    counts = view.setdefault("counts", {})
    counts[result.status] = counts.get(result.status, 0) + 1
    view["updated_at"] = now
    camera_view[camera_key(result.camera_id)] = view

    cache.put(result.camera_id, result.task_id, data)
    hub.publish("result", result.camera_id, data)

    alert = _alert_for(result, now)
    if alert is not None:
        alert_data = {**record_to_dict(alert), "detection": data["detection"]}
        key = camera_key(result.camera_id)
        recent, publish = merge_alert(alerts.get(key) or [], alert_data, settings.alert_cooldown_s, ALERTS_KEPT)
        alerts[key] = recent
        if publish:
            metrics.alerts_total.labels(camera_id=result.camera_id, level=alert.level).inc()
            hub.publish("alert", result.camera_id, recent[0])
            cache.put(result.camera_id, result.task_id, recent[0], kind="alert")
            if webhook is not None:
                webhook.put(recent[0])
            await alerts_topic.send(key=result.camera_id.encode(), value=to_bytes(alert))
