"""Forgetting old table entries from inside an agent.

Faust changes a table only inside stream iteration (the changelog partition is the event's), so
expiry cannot run on a timer: each agent calls :meth:`ExpiringIndex.expire` while it handles an
event. The index lives in memory and is rebuilt from the table after a rebalance, when the
worker may have gained partitions whose keys it never saw.
"""

from __future__ import annotations

import heapq
from collections.abc import MutableMapping
from typing import Any


class ExpiringIndex:
    """Remembers when each key was written and deletes keys older than ``ttl_s``."""

    def __init__(self, ttl_s: float, *, max_deletes: int = 200) -> None:
        self.ttl_s = ttl_s
        self.max_deletes = max_deletes
        self._heap: list[tuple[float, str]] = []
        self._stale = True

    def mark_stale(self) -> None:
        """Call on rebalance: the next :meth:`expire` rescans the table."""
        self._stale = True

    def add(self, key: str, at_s: float) -> None:
        heapq.heappush(self._heap, (at_s, key))

    def expire(self, table: MutableMapping[str, Any], now_s: float) -> int:
        """Delete up to ``max_deletes`` expired keys; returns how many were deleted."""
        if self._stale:
            self._heap = [
                (float(value.get("at", now_s)), key) for key, value in table.items() if isinstance(value, dict)
            ]
            heapq.heapify(self._heap)
            self._stale = False
        deleted = 0
        cutoff = now_s - self.ttl_s
        while self._heap and self._heap[0][0] < cutoff and deleted < self.max_deletes:
            _, key = heapq.heappop(self._heap)
            value = table.get(key)
            if isinstance(value, dict) and float(value.get("at", 0)) >= cutoff:
                continue  # rewritten since; a newer heap entry exists
            if key in table:
                del table[key]
                deleted += 1
        return deleted
