"""Alerts: which results raise one, merging repeats, and the optional webhook sink.

A result at or above ``alert_level`` raises an Alert. A group that keeps being judged risky
would raise one alert per assessment; instead, a new alert for the same camera and group within
``alert_cooldown_s`` of the last one is merged into it (its count grows, its level and score
keep the maximum) and is published again only when the level escalates. The webhook (the
mission's "alert trigger") POSTs each published alert as JSON: the ``deliver_alerts`` agent reads
them from the ``alerts`` topic, many at once, each with a timeout, retries and a bounded age, and
commits its progress, so a slow receiver never blocks the aggregator or the other alerts, and a
restarted worker sends again what was not yet delivered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import aiohttp

from agents.task_policy import UNGROUPED
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
        source = alert.get("source", "vlm")
        if awaits_verdict(old) and source == "vlm":
            if about_the_same_moment(old, float(alert.get("captured_at", 0.0))):
                return [judged(old, alert), *recent[:i], *recent[i + 1 :]][:keep], True
            # an answer about a frame from before the conflict was measured, or from well after it
            # (its own task failed or expired; a later one saw the scene once the conflict was
            # over), does not judge it; a graver one is still news (merged below: the measured
            # alert keeps awaiting its verdict, and the dashboard says none came)
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
        if escalated and source == "measured":
            # the measures found it graver since: a measured alert on the new frame again, awaiting
            # the VLM's answer about that frame (whatever an earlier answer said of an earlier one)
            for stale in ("verdict", "measured_level", "measured_summary", "vlm_task_id"):
                merged.pop(stale, None)
            merged.update(source="measured", captured_at=alert.get("captured_at", old.get("captured_at", 0.0)))
        elif escalated and old.get("verdict"):  # a judged measured alert that a later answer escalates
            merged["verdict"] = "escalated"
        elif escalated and awaits_verdict(old):
            # an answer about an earlier frame, graver: shown, while what the measures found is kept
            # for the verdict still to come
            merged.setdefault("measured_level", old["level"])
            merged.setdefault("measured_summary", old["summary"])
        return [merged, *recent[:i], *recent[i + 1 :]][:keep], escalated
    return [{**alert, "count": 1, "last_raised_at": alert["raised_at"]}, *recent][:keep], True


def awaits_verdict(alert: dict[str, Any]) -> bool:
    """A measured alert the VLM has not judged yet, and will (one on no group has no task to judge it)."""
    return (
        alert.get("source") == "measured"
        and not alert.get("verdict")
        and not str(alert.get("group_id", "")).startswith(UNGROUPED)
    )


def pending_measured(
    recent: list[dict[str, Any]], group_id: str, now_ms: float, cooldown_s: float, captured_at: float = math.inf
) -> bool:
    """Whether the camera has a measured alert on ``group_id`` within the cooldown still awaiting the VLM, measured
    on a frame at most VERDICT_WINDOW_S before ``captured_at`` (the answer's frame: an older frame cannot judge
    it, nor one long after)."""
    return any(
        a.get("group_id") == group_id
        and awaits_verdict(a)
        and now_ms - float(a.get("last_raised_at", a["raised_at"])) <= cooldown_s * 1000
        and (captured_at == math.inf or about_the_same_moment(a, captured_at))
        for a in recent
    )


#: A VLM answer judges a measured alert only about a frame this close after the measured one:
#: the conflict's own task is made on the frame it was measured on, or a frame or two later when
#: the camera's budget held it back.
VERDICT_WINDOW_S = 5.0


def about_the_same_moment(measured: dict[str, Any], captured_at: float) -> bool:
    """Whether an answer about the frame captured at ``captured_at`` (ms) may judge ``measured``."""
    return 0.0 <= captured_at - float(measured.get("captured_at", 0.0)) <= VERDICT_WINDOW_S * 1000


def judged(measured: dict[str, Any], vlm: dict[str, Any]) -> dict[str, Any]:
    """The measured alert updated by the VLM's answer on the same group: the same alert, its level now the VLM's.

    The verdict says which way the VLM went; the measured facts stay in ``measured_summary`` and
    ``measured_level``, so a reader sees both judgements.
    """
    measured_level = measured.get("measured_level", measured["level"])
    new, old = risk_rank(vlm["level"]), risk_rank(measured_level)
    verdict = "escalated" if new > old else "confirmed" if new == old else "downgraded"
    return {
        **measured,
        "level": vlm["level"],
        "score": vlm["score"],
        "summary": vlm["summary"],
        "verdict": verdict,
        "measured_level": measured_level,
        "measured_summary": measured.get("measured_summary", measured["summary"]),
        "vlm_task_id": vlm["task_id"],
        "count": int(measured.get("count", 1)) + 1,
        "last_raised_at": vlm["raised_at"],
        "last_task_id": vlm["task_id"],
    }


class WebhookSender:
    """POSTs one alert with a timeout and retries; the ``deliver_alerts`` agent runs many at once.

    An alert older than ``max_age_s`` is not sent any more (counted ``expired``): an alert that
    arrives an hour late is noise, and a dead receiver must not make every later alert late.
    Versions of one alert (a measured one, then the VLM's verdict on it, an escalation) go out one
    at a time in the order they came: sent side by side, a retried first version would reach the
    receiver after the verdict and undo it there. Different alerts still go out side by side.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        max_age_s: float = 300.0,
        total_s: float = 15.0,
    ) -> None:
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self.max_age_s = max_age_s
        #: one alert's whole send, the wait for its earlier versions included: a hung receiver held
        #: each for 4 x 5 s + backoff, two versions for 47 s, and a rebalance (which waits for the
        #: events in flight) past its timeout, the worker out of the group
        self.total_s = total_s
        self._session: aiohttp.ClientSession | None = None
        #: one lock per alert (camera, group) with sends waiting on it, and how many hold or wait
        self._in_order: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, alert: dict[str, Any]) -> str:
        """Deliver ``alert`` after the versions of it sent before; returns the outcome (ok, failed,
        expired), also counted in metrics. Call it with no await before: the wait for the earlier
        versions is joined in the caller's order only then."""
        key = (str(alert.get("camera_id")), str(alert.get("group_id")))
        lock, users = self._in_order.get(key, (asyncio.Lock(), 0))
        self._in_order[key] = (lock, users + 1)
        try:
            async with asyncio.timeout(self.total_s), lock:
                return await self._post(alert)
        except TimeoutError:
            metrics.webhook_total.labels(outcome="failed").inc()
            logger.warning(
                "alert webhook: task %s failed (no answer within %.0f s)", alert.get("task_id"), self.total_s
            )
            return "failed"
        finally:
            lock, users = self._in_order[key]
            if users == 1:
                del self._in_order[key]
            else:
                self._in_order[key] = (lock, users - 1)

    async def _post(self, alert: dict[str, Any]) -> str:
        reason, outcome = "", "failed"
        for attempt in range(self.retries + 1):
            # the age of what it is about: a backlog drained hours later raises its alerts "now"
            age_s = time.time() - float(alert.get("captured_at") or alert.get("raised_at") or 0) / 1000.0
            if age_s > self.max_age_s:
                outcome = "expired"
                break
            try:
                async with self.session().post(self.url, json=alert) as resp:
                    if resp.status < 300:
                        outcome = "ok"
                        break
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
            outcome = "failed"
            if attempt < self.retries:
                await asyncio.sleep(0.5 * 2**attempt)
        metrics.webhook_total.labels(outcome=outcome).inc()
        if outcome != "ok":
            logger.warning("alert webhook: task %s %s (%s)", alert.get("task_id"), outcome, reason or "too old")
        return outcome
