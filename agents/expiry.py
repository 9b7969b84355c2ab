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
from collections.abc import Callable, Iterator, MutableMapping
from itertools import islice
from typing import Any


class ExpiringIndex:
    """Remembers when and in which partition each key was written; deletes keys older than ``ttl_s``."""

    def __init__(
        self,
        ttl_s: float,
        *,
        max_deletes: int = 200,
        scan_batch: int = 500,
        partition_of: Callable[[dict[str, Any]], int | None] | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        #: The partition of a value written before values recorded theirs (None: unknown, kept).
        self.partition_of = partition_of
        self._restarts = 0
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
        except RuntimeError:
            # the table changed under the iterator (a dict in memory, or the store's set of partition
            # databases grew): start the scan again, and after a few tries take one snapshot
            self._restarts += 1
            self._heaps = {}
            self._scan = iter(table.items()) if self._restarts < 3 else iter(list(table.items()))
            return
        if len(batch) < self.scan_batch:
            self._scan, self._restarts = None, 0
        for key, value in batch:
            if not isinstance(value, dict):
                continue
            partition = value.get("p")
            if not isinstance(partition, int) and self.partition_of is not None:
                partition = self.partition_of(value)
            if isinstance(partition, int):
                self.add(str(key), float(value.get("at", 0.0)), partition)

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
