"""Agents ``aggregate_results`` and ``deliver_alerts``: the end of the pipeline.

``aggregate_results`` joins each result with its detection (kept by the task generator, see
:mod:`agents.detection_join`), drops a task_id it has already aggregated (at-least-once delivery
made effectively-once), caches it in Redis (never blocking), pushes it to WebSocket clients and
raises an Alert at or above ``alert_level``. Detections and results are keyed by camera, so a
camera's detections and results meet on the same worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from faust.types import EventT
from mode import BaseSignalT

from agents.alert_book import ALERTS_KEPT, AlertBook, alert_book
from agents.alerting import merge_alert, pending_measured
from agents.detection_join import camera_partition, empty_view
from agents.expiry import ExpiringIndex
from agents.worker_clients import WorkerClients, current
from streams import metrics
from streams.app import app, settings
from streams.dlq import guarded
from streams.live import hub
from streams.records import (
    Alert,
    Conflict,
    RiskAssessment,
    decode,
    record_to_dict,
    risk_rank,
    to_bytes,
)
from streams.settings import Settings
from streams.table_values import CameraView, CompactDetection, ResultEntry
from streams.tables import camera_key, camera_view, detections, results
from streams.topics import alerts_topic, risk_results_topic

logger = logging.getLogger(__name__)

#: The settings' defaults, for an Aggregation built without the worker's settings (unit tests).
DEFAULTS = Settings.model_construct()
LATEST_RESULTS = 12


@dataclass
class Aggregation:
    """The aggregator's tables and expiry indexes; the handlers below work on any mappings."""

    detections: MutableMapping[str, CompactDetection | None]
    results: MutableMapping[str, ResultEntry | None]
    camera_view: MutableMapping[bytes, CameraView | None]
    alerts: AlertBook = field(default_factory=lambda: AlertBook({}, {}, {}))
    result_expiry: ExpiringIndex = field(default_factory=lambda: ExpiringIndex(DEFAULTS.result_ttl_s))

    def mark_stale(self) -> None:
        """After a rebalance: the worker may own keys it never saw being written."""
        self.result_expiry.mark_stale()
        self.alerts.forget()


#: The worker's aggregation, on its Faust tables.
aggregation = Aggregation(
    detections,
    results,
    camera_view,
    alert_book,
    result_expiry=ExpiringIndex(settings.result_ttl_s, partition_of=camera_partition),
)


@app.task  # type: ignore[untyped-decorator]
async def relay_other_workers() -> None:
    """WebSocket clients of this worker also see the cameras other workers own (via Redis)."""
    await current().cache.relay(hub.publish)


@app.on_rebalance_complete.connect
async def _rescan(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    aggregation.mark_stale()


def joined_result(result: RiskAssessment, detection: CompactDetection | None) -> dict[str, Any]:
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


def alert_for(result: RiskAssessment, now_s: float, level: str, measured_level: str | None = None) -> Alert | None:
    """The alert an ok result at or above ``level`` raises, or a measured one at or above ``measured_level``
    (the task generator already applied it; default ``level``)."""
    threshold = (measured_level or level) if result.status == "measured" else level
    if result.status not in ("ok", "measured") or risk_rank(result.risk_level) < risk_rank(threshold):
        return None
    return as_alert(result, now_s)


def _conflict(data: Any) -> Conflict | None:
    return Conflict.from_data(data) if isinstance(data, dict) else None


def as_alert(result: RiskAssessment, now_s: float) -> Alert:
    """``result`` as an alert, whatever its level (a VLM answer below the alert level still judges a measured one)."""
    return Alert(
        task_id=result.task_id,
        camera_id=result.camera_id,
        level=result.risk_level,
        score=result.risk_score,
        summary=result.summary,
        group_id=result.group_id,
        detection_id=result.detection_id,
        raised_at=now_s * 1000.0,
        captured_at=result.captured_at,
        source="measured" if result.status == "measured" else "vlm",
        conflict=result.conflict,
    )


@app.agent(risk_results_topic, name="aggregate_results", concurrency=settings.aggregate_concurrency)
async def aggregate_results(stream):  # type: ignore[no-untyped-def]
    """Join, deduplicate, cache, fan out, alert. Several results at once: :func:`aggregate` has no
    await, so each result's join, dedup and table writes happen whole; only the wait for the broker
    before an alert (``handle_result``) overlaps with other results (#13: one at a time, that wait
    bounded the aggregator when most results alert)."""
    async for event in stream.events():
        await guarded(event, handle_result)


async def deliver_alerts(stream):  # type: ignore[no-untyped-def]
    """POST each alert to the webhook, many at once; an alert is acknowledged once it is sent,
    failed for good or too old, so a restarted worker sends again what it had not finished."""
    async for event in stream.events():
        await guarded(event, handle_alert)


# Without a webhook the agent is not started: it would read and drop every alert, one Faust event
# each (#13). The alerts topic is written either way, for other consumers; a webhook configured
# later starts from the group's committed offset, and alerts older than its max age are dropped.
if settings.alert_webhook_url:
    app.agent(alerts_topic, name="deliver_alerts", concurrency=settings.alert_webhook_concurrency)(deliver_alerts)


async def handle_alert(event: EventT[bytes]) -> None:
    webhook = current().webhook
    if webhook is None:
        return
    alert = decode(Alert, event.value)
    await webhook.send(record_to_dict(alert))


async def handle_result(event: EventT[bytes]) -> None:
    result = decode(RiskAssessment, event.value)
    alert = aggregate(aggregation, result, time.time(), current(), event.message.partition)
    if alert is not None:
        # the result's table record first, on the brokers: a worker killed after the alert went out
        # must leave its successor the record that says this task was aggregated, or the
        # successor raises the alert again (seen once in the kill -9 test). Alerts are rare;
        # the round trip is paid only for them.
        await app.producer.flush()
        await alerts_topic.send(key=alert.camera_id.encode(), value=to_bytes(alert))


def aggregate(
    agg: Aggregation, result: RiskAssessment, now: float, clients: WorkerClients, partition: int
) -> Alert | None:
    """Join and record one result (once per task_id); returns the alert to publish, if any.

    ``partition`` is the current event's: the result's key lives there (:mod:`agents.expiry`).
    """
    if agg.results.get(result.task_id) is not None:
        metrics.duplicates_total.inc()
        return None
    s = clients.settings
    data = joined_result(result, agg.detections.get(result.detection_id))
    agg.results[result.task_id] = {
        "at": now,
        "p": partition,
        "camera_id": result.camera_id,
        "status": result.status,
        "risk_level": result.risk_level,
        "joined": data["detection"] is not None,
    }
    agg.result_expiry.add(result.task_id, now, partition)
    agg.result_expiry.expire(agg.results, now, partition)
    metrics.results_total.labels(status=result.status, risk_level=result.risk_level).inc()
    metrics.e2e_seconds.observe(max(0.0, now - result.captured_at / 1000.0))

    key = camera_key(result.camera_id)
    view = agg.camera_view.get(key) or empty_view(result.camera_id)
    view.pop("latest_detection", None)  # type: ignore[typeddict-item]  # held by the worker since, not here
    view["results"] = [data, *view.get("results", [])][:LATEST_RESULTS]
    counts = view.setdefault("counts", {})
    counts[result.status] = counts.get(result.status, 0) + 1
    view["updated_at"] = now
    agg.camera_view[key] = view

    clients.cache.put(result.camera_id, result.task_id, data)
    hub.publish("result", result.camera_id, data)

    alert = alert_for(result, now, s.alert_level, s.measured_alert_level)
    if alert is None and result.status != "ok":
        return None
    book = agg.alerts
    # the alerts merging and judging can act on: this group's, raised within the cooldown
    on_group = book.on_group(result.camera_id, result.group_id, now * 1000.0, s.alert_cooldown_s)
    if alert is None:
        # an answer below the alert level still judges (downgrades) a measured alert on its group
        if not pending_measured(on_group, result.group_id, now * 1000.0, s.alert_cooldown_s, result.captured_at):
            return None
        alert = as_alert(result, now)
    alert_data = {**record_to_dict(alert), "detection": data["detection"]}
    merged, publish = merge_alert(on_group, alert_data, s.alert_cooldown_s, ALERTS_KEPT)
    top = merged[0]  # the new alert, or the one it was merged into
    book.record(result.camera_id, top)
    if not publish:
        return None
    if top["task_id"] != alert.task_id:
        # merged into an alert already raised (the VLM judged a measured alert, or a graver result
        # escalated it): the alert topic carries that same alert, updated, under its own id; an
        # escalation under the new result's id left a receiver keyed by id with two alerts, and the
        # verdict that came later updating the first
        alert = Alert(
            task_id=top["task_id"],
            camera_id=result.camera_id,
            level=top["level"],
            score=top["score"],
            summary=top["summary"],
            group_id=top["group_id"],
            detection_id=top["detection_id"],
            raised_at=now * 1000.0,
            captured_at=float(top.get("captured_at", 0.0)),
            source=top.get("source", "vlm"),
            verdict=top.get("verdict", ""),
            conflict=alert.conflict if alert.conflict is not None else _conflict(top.get("conflict")),
        )
    metrics.alerts_total.labels(camera_id=result.camera_id, level=alert.level).inc()
    hub.publish("alert", result.camera_id, top)
    clients.cache.put(result.camera_id, result.task_id, top, kind="alert")
    return alert  # the caller publishes it on the alerts topic; deliver_alerts POSTs it from there
