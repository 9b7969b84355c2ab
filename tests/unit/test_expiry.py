"""Table expiry deletes each key in its own partition (#12.1).

``PartitionedTable`` behaves as a Faust table on the RocksDB store does inside an event of
partition P: reads see only P's keys, writes and deletes (and so their changelog tombstones) go
to P, and iteration sees every partition the worker owns.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

from agents.expiry import ExpiringIndex


class PartitionedTable(MutableMapping[str, Any]):
    def __init__(self, partitions: int) -> None:
        self.parts: list[dict[str, Any]] = [{} for _ in range(partitions)]
        self.current = 0
        self.misplaced: list[str] = []  # deletes issued from another partition's event

    def __getitem__(self, key: str) -> Any:
        return self.parts[self.current][key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.parts[self.current][key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self.parts[self.current]:
            self.misplaced.append(key)  # the tombstone would go to the wrong changelog partition
            for part in self.parts:
                part.pop(key, None)
            return
        del self.parts[self.current][key]

    def __iter__(self) -> Iterator[str]:
        for part in self.parts:
            yield from list(part)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def items(self) -> Any:  # every owned partition, as the store's iteration does
        return [(k, v) for part in self.parts for k, v in part.items()]


def run_traffic(index: ExpiringIndex, table: PartitionedTable, *, seconds: int, cameras: int, fps: float) -> None:
    """``cameras`` cameras spread over the partitions, each writing ``fps`` keys a second."""
    partitions = len(table.parts)
    for tick in range(int(seconds * fps)):
        now = tick / fps
        for cam in range(cameras):
            table.current = cam % partitions
            key = f"cam-{cam}:{tick}"
            table[key] = {"at": now, "p": table.current}
            index.add(key, now, table.current)
            index.expire(table, now, table.current)


def test_an_hour_of_four_cameras_keeps_one_ttl_of_keys_and_deletes_none_in_the_wrong_partition():
    ttl = 120.0
    table, index = PartitionedTable(partitions=8), ExpiringIndex(ttl)
    run_traffic(index, table, seconds=3600, cameras=4, fps=2)
    one_ttl = 4 * 2 * ttl
    assert len(table) <= one_ttl + 4 * 2, f"{len(table)} keys kept, one TTL is {one_ttl:.0f}"
    assert table.misplaced == []


def test_after_a_rebalance_the_index_is_rebuilt_a_batch_per_event_and_expiry_goes_on():
    ttl = 60.0
    table, index = PartitionedTable(partitions=4), ExpiringIndex(ttl, scan_batch=100)
    run_traffic(index, table, seconds=300, cameras=4, fps=2)
    fresh = ExpiringIndex(ttl, scan_batch=100)  # a new worker took the partitions over
    table.current = 1
    fresh.expire(table, 300.0, 1)
    assert fresh.size() <= 100, "the first event indexed more than one batch"
    run_traffic(fresh, table, seconds=400, cameras=4, fps=2)
    assert len(table) <= 4 * 2 * ttl + 8
    assert table.misplaced == []


@pytest.mark.parametrize("legacy", [{"at": 0.0}, "not a dict", None])
def test_values_whose_partition_cannot_be_known_are_left_alone(legacy):
    table, index = PartitionedTable(partitions=2), ExpiringIndex(1.0)
    table.parts[1]["old"] = legacy
    table.current = 0
    index.expire(table, 1000.0, 0)
    assert "old" in table.parts[1] and table.misplaced == []


def test_values_written_before_partitions_were_recorded_expire_in_their_cameras_partition():
    """Entries left by the previous version (no ``p``) must not stay forever: their camera says where."""
    from agents.result_aggregator import camera_partition

    partitions = 8
    table = PartitionedTable(partitions=partitions)
    index = ExpiringIndex(1.0, partition_of=lambda v: camera_partition(v) % partitions)
    cameras = [f"cam-{i}" for i in range(6)]
    for cam in cameras:
        table.current = camera_partition({"camera_id": cam}) % partitions
        table[f"{cam}:1"] = {"at": 0.0, "camera_id": cam}  # as 13ba722 wrote them
    for cam in cameras:  # later traffic of each camera, in its own partition
        table.current = camera_partition({"camera_id": cam}) % partitions
        index.expire(table, 1000.0, table.current)
    assert len(table) == 0 and table.misplaced == []
