"""The Redis result cache, with a degrade switch that never blocks an agent.

Writes go through a bounded in-memory queue drained by one background task: the agent only
enqueues. When Redis fails, the writer flips to *degraded*: it skips (and counts) writes for
``redis_retry_s`` and then tries again, so results keep flowing to Kafka and the web views while
Redis is away, and the cache is written again as soon as it returns. Results are also published
on a pub/sub channel, so web workers on other machines can feed their WebSocket clients.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams import metrics
from streams.records import CAMERA_ID

logger = logging.getLogger(__name__)

ORIGIN = f"{socket.gethostname()}:{os.getpid()}"
#: How this worker's own pub/sub messages start: skipped unparsed (every worker hears its own).
OWN_PREFIX = b'{"origin":' + orjson.dumps(ORIGIN) + b","


def relay_message(kind: str, camera_id: str, body: bytes) -> bytes:
    """The pub/sub message for a payload already encoded (``body``): encoded once for the cache and
    the channel, with the origin first so every worker skips its own unparsed (:data:`OWN_PREFIX`)."""
    head = orjson.dumps({"origin": ORIGIN, "type": kind, "camera_id": camera_id})
    return head[:-1] + b',"data":' + body + b"}"


def parse_relayed(data: object) -> tuple[str, str, str, dict[str, Any]] | None:
    """(origin, kind, camera_id, payload) of a pub/sub message, or None when it is not one of ours.

    Anyone who can reach Redis can publish on the channel: whatever arrives is checked, never trusted.
    """
    try:
        event = orjson.loads(data) if isinstance(data, bytes | str) else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict):
        return None
    origin, kind, camera_id, payload = (event.get(k) for k in ("origin", "type", "camera_id", "data"))
    if kind not in ("result", "alert") or not isinstance(camera_id, str) or not isinstance(payload, dict):
        return None
    if not CAMERA_ID.match(camera_id):
        return None
    return str(origin), kind, camera_id, payload


#: Alerts kept in the cache's list, and cameras a view lists from it at most.
ALERTS_CACHED, CAMERAS_LISTED = 200, 10_000
#: The relay PINGs Redis after this long without a message, and reconnects after as long again.
RELAY_SILENT_S = 15.0


class ResultCache:
    """Latest result per camera and per task in Redis, with a TTL; results and alerts on pub/sub."""

    def __init__(
        self,
        url: str,
        ttl_s: int,
        retry_s: float,
        *,
        prefix: str = "roadwatch:",
        queue_size: int = 2000,
        relay_silent_s: float = RELAY_SILENT_S,
    ) -> None:
        self.url = url
        #: Every key and the channel start with it: deployments sharing a Redis never meet.
        self.prefix = prefix
        self.channel = f"{prefix}results"
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.relay_silent_s = relay_silent_s
        #: (kind, camera_id, task_id, payload); kind "result" is cached and published, "alert" published.
        self.queue: asyncio.Queue[tuple[str, str, str, dict[str, Any]]] = asyncio.Queue(maxsize=queue_size)
        self.degraded_until = 0.0
        self.skipped = 0
        self.written = 0
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def degraded(self) -> bool:
        return time.monotonic() < self.degraded_until

    def put(self, camera_id: str, task_id: str, payload: dict[str, Any], kind: str = "result") -> None:
        """Queue a write; never waits. Skipped (and counted) when degraded or full."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())
        if self.degraded:
            self._skip()
            return
        try:
            self.queue.put_nowait((kind, camera_id, task_id, payload))
        except asyncio.QueueFull:
            self._skip()

    def _skip(self) -> None:
        self.skipped += 1
        metrics.redis_skipped_total.inc()

    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return self._client

    async def _drain(self) -> None:
        while True:
            kind, camera_id, task_id, payload = await self.queue.get()
            if self.degraded:
                self._skip()
                continue
            try:
                body = orjson.dumps(payload)
                message = relay_message(kind, camera_id, body)
            except (TypeError, ValueError):  # not JSON: skip it, keep the writer alive
                self._skip()
                logger.warning("camera %s: %s not JSON-serialisable, not cached", camera_id, kind)
                continue
            try:
                pipe = self.client().pipeline(transaction=False)
                now = time.time()
                if kind == "result":
                    pipe.set(self.camera_key(camera_id), body, ex=self.ttl_s)
                    pipe.set(self.task_key(task_id), body, ex=self.ttl_s)
                    # which cameras have a cached result: any worker's views list every camera
                    pipe.zadd(self.cameras_key, {camera_id: now})
                    pipe.zremrangebyscore(self.cameras_key, "-inf", now - self.ttl_s)
                    pipe.expire(self.cameras_key, self.ttl_s)
                elif kind == "alert":  # the latest alerts of every worker, for any worker's /alerts/
                    pipe.lpush(self.alerts_key, body)
                    pipe.ltrim(self.alerts_key, 0, ALERTS_CACHED - 1)
                    pipe.expire(self.alerts_key, self.ttl_s)
                pipe.publish(self.channel, message)
                await pipe.execute()
                self.written += 1
                if self._failing:  # back from degraded
                    logger.info("Redis is back: cache writes resumed (%d skipped meanwhile)", self.skipped)
                    self._failing = False
                metrics.redis_degraded.set(0)
            except (RedisError, OSError, TimeoutError) as exc:
                self._skip()
                self.degraded_until = time.monotonic() + self.retry_s
                self._failing = True
                metrics.redis_degraded.set(1)
                logger.warning("Redis write failed (%s): degraded for %.0fs", type(exc).__name__, self.retry_s)
                while not self.queue.empty():  # what waited is skipped too, not replayed late
                    self.queue.get_nowait()
                    self._skip()

    def camera_key(self, camera_id: str) -> str:
        return f"{self.prefix}camera:{camera_id}:latest"

    def task_key(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    @property
    def cameras_key(self) -> str:
        return f"{self.prefix}cameras"

    @property
    def alerts_key(self) -> str:
        return f"{self.prefix}alerts"

    async def relay(self, deliver: Callable[[str, str, dict[str, Any]], None]) -> None:
        """Hand other workers' results and alerts from the pub/sub channel to ``deliver``.

        This worker's own messages are skipped: its WebSocket clients got them directly. Anything
        else on the channel is counted and dropped. Reconnects after ``retry_s`` when Redis is away,
        closing the client it had. A subscriber only reads, so a connection whose other end vanished
        without a reset (a Redis host gone) would wait for ever: after ``relay_silent_s`` without a
        message it PINGs, and a second silence as long reconnects.
        """
        while True:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1.0, socket_keepalive=True)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    heard, pinged = time.monotonic(), False
                    while True:
                        message = await pubsub.get_message(timeout=min(1.0, self.relay_silent_s))
                        now = time.monotonic()
                        if message is None:
                            if now - heard < self.relay_silent_s:
                                continue
                            if pinged:
                                raise TimeoutError(
                                    f"Redis silent for {2 * self.relay_silent_s:.0f}s, a PING unanswered"
                                )
                            await pubsub.ping()
                            heard, pinged = now, True
                            continue
                        heard, pinged = now, False
                        if message.get("type") != "message":
                            continue
                        data = message.get("data")
                        if isinstance(data, bytes) and data.startswith(OWN_PREFIX):
                            continue  # this worker's own: its WebSocket clients got it directly
                        parsed = parse_relayed(data)
                        if parsed is None:
                            metrics.relay_dropped_total.inc()
                            continue
                        origin, kind, camera_id, payload = parsed
                        if origin == ORIGIN:
                            continue
                        try:
                            deliver(kind, camera_id, payload)
                        except Exception:  # an app task that raises crashes the worker: never here
                            metrics.relay_dropped_total.inc()
                            logger.warning("relayed %s of camera %s not delivered", kind, camera_id, exc_info=True)
            except (RedisError, OSError, TimeoutError) as exc:
                logger.info("relay from Redis interrupted (%s): reconnecting in %.0fs", exc, self.retry_s)
                await asyncio.sleep(self.retry_s)
            finally:
                await client.aclose()

    async def latest(self, camera_ids: list[str]) -> dict[str, Any]:
        """Latest cached result per camera (for views of cameras other workers own)."""
        if self.degraded or not camera_ids:
            return {}
        try:
            values = await self.client().mget([self.camera_key(c) for c in camera_ids])
        except (RedisError, OSError, TimeoutError):
            return {}
        latest: dict[str, Any] = {}
        for camera_id, value in zip(camera_ids, values, strict=True):
            if not value:
                continue
            try:  # anyone who can write to Redis can leave a value that is not ours
                latest[camera_id] = orjson.loads(value)
            except (ValueError, RecursionError):
                logger.warning("cached result of camera %s is not JSON: left out", camera_id)
        return latest

    async def known_cameras(self) -> list[str]:
        """The cameras with a cached result (every worker's), at most ``CAMERAS_LISTED``."""
        if self.degraded:
            return []
        try:
            ids = await self.client().zrangebyscore(
                self.cameras_key, time.time() - self.ttl_s, "+inf", start=0, num=CAMERAS_LISTED
            )
        except (RedisError, OSError, TimeoutError):
            return []
        names = (i.decode(errors="replace") if isinstance(i, bytes) else str(i) for i in ids)
        return [name for name in names if CAMERA_ID.match(name)]

    async def recent_alerts(self) -> list[dict[str, Any]]:
        """Every worker's latest alerts as cached, newest first (an updated alert appears again)."""
        if self.degraded:
            return []
        try:
            raw = await cast(Awaitable[list[bytes]], self.client().lrange(self.alerts_key, 0, ALERTS_CACHED - 1))
        except (RedisError, OSError, TimeoutError):
            return []
        out = []
        for item in raw:
            try:
                alert = orjson.loads(item)
            except orjson.JSONDecodeError:
                continue
            if isinstance(alert, dict):
                out.append(alert)
        return out

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._client is not None:
            await self._client.aclose()
