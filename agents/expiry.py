"""Forgetting old table entries from inside an agent, partition by partition.

Faust changes a table only inside stream iteration, and inside an event of partition P a table
is partition P's: a RocksDB-backed table reads only P's keys there, and a delete's tombstone goes
to P's changelog partition. So a key may only be deleted while an event of *its own* partition is
handled, or it is never found (RocksDB) or comes back on recovery (the tombstone went to the
wrong changelog partition). Every value records the partition it was written in (``p``, with
``at``, when), the index keeps one heap per partition, and :meth:`ExpiringIndex.expire` deletes
only the current event's partition's expired keys.

After a rebalance the worker may own keys it never saw written. They are indexed again a bounded
batch at a time, one batch per event, so a large table never blocks the event loop in one go.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, MutableMapping
from itertools import islice
from typing import Any


class ExpiringIndex:
    """Remembers when and in which partition each key was written; deletes keys older than ``ttl_s``."""

    def __init__(self, ttl_s: float, *, max_deletes: int = 200, scan_batch: int = 500) -> None:
        self.ttl_s = ttl_s
        self.max_deletes = max_deletes
        self.scan_batch = scan_batch
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        self._scan: Iterator[tuple[Any, Any]] | None = None
        self._stale = True

    def mark_stale(self) -> None:
        """Call on rebalance: the index is rebuilt from the table, a batch per event."""
        self._stale = True

    def add(self, key: str, at_s: float, partition: int) -> None:
        heapq.heappush(self._heaps.setdefault(partition, []), (at_s, key))

    def _index_batch(self, table: MutableMapping[str, Any]) -> None:
        if self._stale:
            self._heaps, self._scan, self._stale = {}, iter(table.items()), False
        if self._scan is None:
            return
        try:
            batch = list(islice(self._scan, self.scan_batch))
        except RuntimeError:  # an in-memory table changed under the iterator: take a snapshot
            self._scan = iter(list(table.items()))
            batch = list(islice(self._scan, self.scan_batch))
        if len(batch) < self.scan_batch:
            self._scan = None
        for key, value in batch:
            if isinstance(value, dict) and isinstance(value.get("p"), int):
                self.add(str(key), float(value.get("at", 0.0)), value["p"])

    def expire(self, table: MutableMapping[str, Any], now_s: float, partition: int) -> int:
        """Delete up to ``max_deletes`` expired keys of ``partition`` (the current event's)."""
        self._index_batch(table)
        heap = self._heaps.get(partition)
        deleted = 0
        cutoff = now_s - self.ttl_s
        while heap and heap[0][0] < cutoff and deleted < self.max_deletes:
            _, key = heapq.heappop(heap)
            value = table.get(key)
            if value is None:
                continue  # deleted already
            if isinstance(value, dict) and float(value.get("at", 0)) >= cutoff:
                continue  # rewritten since; a newer heap entry exists
            del table[key]
            deleted += 1
        return deleted

    def size(self) -> int:
        """Keys indexed (for tests and the /tables/ view)."""
        return sum(len(h) for h in self._heaps.values())
