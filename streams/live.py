"""WebSocket fan-out: every browser gets the new results and alerts, and a slow one hurts nobody.

Each client has a small mailbox. Publishing never waits: when a client's mailbox is full the
oldest result is dropped (and counted), never an alert while a result is left to drop (a
dropped alert would be gone from that dashboard until a reload; a result is superseded by the
camera's next one; a result for a mailbox of alerts only is itself dropped). A client that drops
more than ``max_drops`` messages without once reading its mailbox empty is disconnected; one
that drains it between bursts starts counting again. A client may subscribe to some cameras
only (``/ws?cameras=a,b``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from streams import metrics

logger = logging.getLogger(__name__)

#: What a mailbox yields to say the hub has let its client go.
CLOSE = "__close__"


@dataclass(eq=False)
class Subscriber:
    """One connected browser."""

    cameras: frozenset[str] | None
    maxsize: int = 200
    #: (kind, text), oldest first
    pending: deque[tuple[str, str]] = field(default_factory=deque)
    #: messages dropped since the mailbox was last found empty
    dropped: int = 0
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, camera_id: str) -> bool:
        return self.cameras is None or camera_id in self.cameras

    def full(self) -> bool:
        return len(self.pending) >= self.maxsize

    def put(self, kind: str, text: str) -> None:
        self.pending.append((kind, text))
        self._ready.set()

    def make_room(self, kind: str) -> bool:
        """Make room for a message of ``kind``: the oldest result goes, or, for an alert, the oldest
        alert when there is no result; False when the message itself is the one to go (a result
        for a mailbox of alerts)."""
        for i, (queued, _) in enumerate(self.pending):
            if queued != "alert":
                del self.pending[i]
                return True
        if kind != "alert":
            return False
        self.pending.popleft()
        return True

    async def get(self) -> str:
        """The next message for the browser (``CLOSE`` when the hub let it go)."""
        while not self.pending:
            self._ready.clear()
            await self._ready.wait()
        return self.pending.popleft()[1]


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
            if not sub.pending:
                sub.dropped = 0  # it read everything: it keeps up, whatever it dropped in an earlier burst
            if sub.full():
                room = sub.make_room(kind)
                sub.dropped += 1
                metrics.ws_dropped_total.inc()
                if sub.dropped > self.max_drops:
                    logger.info("dropping a WebSocket client that does not keep up")
                    self.unsubscribe(sub)
                    sub.pending.clear()
                    sub.put("close", CLOSE)
                    continue
                if not room:
                    continue
            sub.put(kind, text)


hub = LiveHub()
