"""WebSocket fan-out: every browser gets the new results and alerts, and a slow one hurts nobody.

Each client has a small queue. Publishing never waits: when a client's queue is full the
oldest message is dropped (and counted), and a client that stays full for a while is
disconnected. A client may subscribe to some cameras only (``/ws?cameras=a,b``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from streams import metrics

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Subscriber:
    """One connected browser."""

    cameras: frozenset[str] | None
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(maxsize=200))
    dropped: int = 0

    def wants(self, camera_id: str) -> bool:
        return self.cameras is None or camera_id in self.cameras


class LiveHub:
    """The set of subscribers of this worker."""

    def __init__(self, max_drops: int = 1000) -> None:
        self.subscribers: set[Subscriber] = set()
        self.max_drops = max_drops

    def subscribe(self, cameras: frozenset[str] | None) -> Subscriber:
        sub = Subscriber(cameras)
        self.subscribers.add(sub)
        metrics.ws_clients.set(len(self.subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        metrics.ws_clients.set(len(self.subscribers))

    def publish(self, kind: str, camera_id: str, payload: dict[str, Any]) -> None:
        if not self.subscribers:
            return
        text = json.dumps({"type": kind, "camera_id": camera_id, "data": payload}, separators=(",", ":"))
        for sub in list(self.subscribers):
            if not sub.wants(camera_id):
                continue
            if sub.queue.full():
                sub.queue.get_nowait()
                sub.dropped += 1
                metrics.ws_dropped_total.inc()
                if sub.dropped > self.max_drops:
                    logger.info("dropping a WebSocket client that does not keep up")
                    self.unsubscribe(sub)
                    sub.queue.put_nowait("__close__")
                    continue
            sub.queue.put_nowait(text)


hub = LiveHub()
