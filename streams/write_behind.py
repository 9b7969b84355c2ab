"""A table's values held decoded in memory and written back to it at most once every few seconds a key.

A Faust table read decodes the value from RocksDB, and a write encodes it, stores it and produces a
changelog record. ``camera_state`` is read and rewritten on every frame of every camera: at 2 fps
that is a decode, an encode, a RocksDB put and a changelog record per detection, for a value that
only this worker reads (#13). Held here, a camera's state is decoded once, and written to the
table, and so to its changelog, on the first change at least ``every_s`` after its last write.

What that costs: a worker that dies, or hands a camera over in a rebalance, leaves the table (and
the worker that recovers it) with the camera's state of up to ``every_s`` earlier. So a change that
spends money or raises an alert is written at once (:func:`put` with ``through``): the task
generator writes through every frame that made a task or a measured alert, and holds only the
frames that changed nothing but a token bucket's clock and the groups' last-seen times. Those the
next owner plans again against its older copy, which makes no task the held copy would not have.

Writes go through to the table from ``__setitem__``, that is inside the event that changed the
value, so Faust's changelog record carries that event's partition; a GlobalTable written through
the partitioner (``vlm_spend``) is also flushed by a timer. On a rebalance every held value is
dropped (after a flush, where the table allows one): one written elsewhere since would otherwise be
read stale here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class WriteBehind(MutableMapping[K, V], Generic[K, V]):
    """``table`` with its values held in memory and written back at most once every ``every_s`` a key."""

    def __init__(
        self,
        table: MutableMapping[K, V],
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        hold_reads: bool = True,
    ) -> None:
        self.table = table
        self.every_s = every_s
        self.clock = clock
        #: keep what a read fetched from the table; False where other workers write keys this one
        #: reads (a GlobalTable): only the keys this worker writes are held
        self.hold_reads = hold_reads
        self._held: dict[K, V] = {}
        self._written_at: dict[K, float] = {}
        #: keys changed since they were last written to the table
        self.dirty: set[K] = set()

    def __getitem__(self, key: K) -> V:
        try:
            return self._held[key]
        except KeyError:
            value = self.table[key]  # KeyError for a key the table lacks too
            if self.hold_reads:
                self._held[key] = value
            return value

    def peek(self, key: K) -> V | None:
        """The value, without holding what the table gave: for readers outside the events that own
        the key (the web views). Held, a copy read while its partition was still recovering, or
        from before a rebalance, would be what the agent's next event changes and writes back."""
        if key in self._held:
            return self._held[key]
        try:
            return self.table[key]
        except KeyError:
            return None

    def peek_items(self) -> Iterator[tuple[K, V | None]]:
        """Every (key, value), without holding what the table gave (see :meth:`peek`)."""
        for key in self:
            yield key, self.peek(key)

    def __setitem__(self, key: K, value: V) -> None:
        if self.clock() - self._written_at.get(key, -math.inf) >= self.every_s:
            self.write(key, value)
        else:
            self._held[key] = value
            self.dirty.add(key)

    def __delitem__(self, key: K) -> None:
        self._held.pop(key, None)
        self._written_at.pop(key, None)
        self.dirty.discard(key)
        del self.table[key]

    def __iter__(self) -> Iterator[K]:
        return iter(set(self._held) | set(self.table))

    def __len__(self) -> int:
        return len(set(self._held) | set(self.table))

    def write(self, key: K, value: V) -> None:
        """Hold ``value`` and write it to the table now, whenever it was last written."""
        self._held[key] = value
        self.table[key] = value
        self._written_at[key] = self.clock()
        self.dirty.discard(key)

    def flush(self, *, due_only: bool = False) -> int:
        """Write the held changes now (``due_only``: those of keys last written ``every_s`` ago or
        more); returns how many. Only for a table that takes writes outside an event (a GlobalTable
        written through the partitioner): a partitioned table's write must carry its event's
        partition."""
        now = self.clock()
        due = [k for k in self.dirty if not due_only or now - self._written_at.get(k, -math.inf) >= self.every_s]
        for key in due:
            self.table[key] = self._held[key]
            self._written_at[key] = now
            self.dirty.discard(key)
        return len(due)

    def drop(self) -> int:
        """Forget every held value (a rebalance); returns how many changes had not been written."""
        lost = len(self.dirty)
        self._held.clear()
        self._written_at.clear()
        self.dirty.clear()
        return lost


def put(mapping: MutableMapping[K, V], key: K, value: V, *, through: bool) -> None:
    """``mapping[key] = value``, written to the table at once when ``through`` and ``mapping`` holds writes back."""
    if through and isinstance(mapping, WriteBehind):
        mapping.write(key, value)
    else:
        mapping[key] = value
