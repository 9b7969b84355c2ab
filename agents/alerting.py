"""Alerts: which results raise one, merging repeats, and the optional webhook sink.

A result at or above ``alert_level`` raises an Alert. A group that keeps being judged risky
would raise one alert per assessment; instead, a new alert for the same camera and group within
``alert_cooldown_s`` of the last one is merged into it (its count grows, its level and score
keep the maximum) and is published again only when the level escalates. The webhook sink (the
mission's "alert trigger") POSTs each published alert as JSON, with a timeout and retries, from
a background queue, so a slow or dead receiver never blocks the aggregator.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from streams import metrics
from streams.records import risk_rank

logger = logging.getLogger(__name__)


def merge_alert(
    recent: list[dict[str, Any]], alert: dict[str, Any], cooldown_s: float, keep: int
) -> tuple[list[dict[str, Any]], bool]:
    """Add ``alert`` to the camera's recent alerts (newest first); returns (alerts, publish?)."""
    for i, old in enumerate(recent):
        if old.get("group_id") != alert["group_id"]:
            continue
        if alert["raised_at"] - float(old.get("last_raised_at", old["raised_at"])) > cooldown_s * 1000:
            break
        escalated = risk_rank(alert["level"]) > risk_rank(old["level"])
        merged = {
            **old,
            "level": alert["level"] if escalated else old["level"],
            "score": max(float(old["score"]), float(alert["score"])),
            "count": int(old.get("count", 1)) + 1,
            "last_raised_at": alert["raised_at"],
            "last_task_id": alert["task_id"],
            "summary": alert["summary"] if escalated else old["summary"],
        }
        return [merged, *recent[:i], *recent[i + 1 :]][:keep], escalated
    return [{**alert, "count": 1, "last_raised_at": alert["raised_at"]}, *recent][:keep], True


class WebhookSink:
    """POSTs alerts to a URL; bounded queue, timeout, retries with backoff; never blocks."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, retries: int = 3, queue_size: int = 1000) -> None:
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0

    def put(self, alert: dict[str, Any]) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.failed += 1
            metrics.webhook_total.labels(outcome="dropped").inc()

    async def close(self) -> None:
        """Stop sending (the worker is stopping); what is queued is dropped."""
        if self._task is not None:
            self._task.cancel()

    async def _drain(self) -> None:
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            while True:
                alert = await self.queue.get()
                await self._send(session, alert)

    async def _send(self, session: aiohttp.ClientSession, alert: dict[str, Any]) -> None:
        for attempt in range(self.retries + 1):
            try:
                async with session.post(self.url, json=alert) as resp:
                    if resp.status < 300:
                        self.sent += 1
                        metrics.webhook_total.labels(outcome="ok").inc()
                        return
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}"
            if attempt < self.retries:
                await asyncio.sleep(0.5 * 2**attempt)
        self.failed += 1
        metrics.webhook_total.labels(outcome="failed").inc()
        logger.warning(
            "alert webhook gave up on task %s after %d attempts: %s", alert.get("task_id"), self.retries + 1, reason
        )
