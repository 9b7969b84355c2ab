"""The Redis result cache, with a degrade switch that never blocks an agent.

Writes go through a bounded in-memory queue drained by one background task: the agent only
enqueues. When Redis fails, the writer flips to *degraded*: it skips (and counts) writes for
``redis_retry_s`` and then tries again, so results keep flowing to Kafka and the web views while
Redis is away, and the cache is written again as soon as it returns. Results are also published
on a pub/sub channel, so web workers on other machines can feed their WebSocket clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams import metrics

logger = logging.getLogger(__name__)

CHANNEL = "roadwatch:results"


ORIGIN = f"{socket.gethostname()}:{os.getpid()}"


class ResultCache:
    """Latest result per camera and per task in Redis, with a TTL; results and alerts on pub/sub."""

    def __init__(self, url: str, ttl_s: int, retry_s: float, *, queue_size: int = 2000) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.retry_s = retry_s
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
            body = json.dumps(payload, separators=(",", ":"))
            message = json.dumps(
                {"type": kind, "camera_id": camera_id, "origin": ORIGIN, "data": payload}, separators=(",", ":")
            )
            try:
                pipe = self.client().pipeline(transaction=False)
                if kind == "result":
                    pipe.set(f"roadwatch:camera:{camera_id}:latest", body, ex=self.ttl_s)
                    pipe.set(f"roadwatch:task:{task_id}", body, ex=self.ttl_s)
                pipe.publish(CHANNEL, message)
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

    async def relay(self, deliver: Callable[[str, str, dict[str, Any]], None]) -> None:
        """Hand other workers' results and alerts from the pub/sub channel to ``deliver``.

        This worker's own messages are skipped: its WebSocket clients got them directly.
        Reconnects after ``retry_s`` when Redis is away.
        """
        while True:
            try:
                client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1.0)
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        try:
                            event = json.loads(message["data"])
                        except ValueError:
                            continue
                        if event.get("origin") != ORIGIN:
                            deliver(str(event["type"]), str(event["camera_id"]), event["data"])
            except (RedisError, OSError, TimeoutError, KeyError):
                await asyncio.sleep(self.retry_s)

    async def latest(self, camera_ids: list[str]) -> dict[str, Any]:
        """Latest cached result per camera (for views of cameras other workers own)."""
        if self.degraded or not camera_ids:
            return {}
        try:
            values = await self.client().mget([f"roadwatch:camera:{c}:latest" for c in camera_ids])
        except (RedisError, OSError, TimeoutError):
            return {}
        return {c: json.loads(v) for c, v in zip(camera_ids, values, strict=True) if v}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._client is not None:
            await self._client.aclose()
