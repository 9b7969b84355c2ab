"""Tables held in memory and written back at most once every few seconds a key (#13)."""

from __future__ import annotations

import faust.stores.memory
import pytest

from streams.write_behind import WriteBehind


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingTable(dict[str, dict[str, int]]):
    """A dict that counts reads and writes, as a Faust table's decodes and changelog records."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.writes = 0

    def __getitem__(self, key: str) -> dict[str, int]:
        self.reads += 1
        return super().__getitem__(key)

    def __setitem__(self, key: str, value: dict[str, int]) -> None:
        self.writes += 1
        super().__setitem__(key, dict(value))  # a table stores an encoded copy


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_key_rewritten_every_frame_reaches_the_table_once_per_interval(clock):
    table = CountingTable()
    held = WriteBehind(table, 2.0, clock)
    for _ in range(20):  # 10 s at 2 fps
        state = held.get("cam-1") or {"frames": 0}
        held["cam-1"] = {"frames": state["frames"] + 1}
        clock.now += 0.5
    assert held["cam-1"] == {"frames": 20}
    assert table.reads == 1  # read once (the miss at the start), then held
    assert table.writes == 5  # t = 0, 2, 4, 6, 8 s, not 20
    assert table["cam-1"] == {"frames": 17}  # what the table has: the last write, at 8 s
    assert held.dirty == {"cam-1"}


def test_interval_zero_writes_through(clock):
    table = CountingTable()
    held = WriteBehind(table, 0.0, clock)
    for i in range(3):
        held["k"] = {"i": i}
    assert table.writes == 3 and not held.dirty


def test_a_missing_key_is_missing_in_both(clock):
    held: WriteBehind[str, dict[str, int]] = WriteBehind(CountingTable(), 2.0, clock)
    assert held.get("nope") is None
    with pytest.raises(KeyError):
        held["nope"]


def test_drop_forgets_what_was_held_and_counts_the_unwritten(clock):
    table = CountingTable()
    held = WriteBehind(table, 2.0, clock)
    held["a"] = {"v": 1}
    held["a"] = {"v": 2}  # held, not yet written
    held["b"] = {"v": 1}
    assert held.drop() == 1
    assert held["a"] == {"v": 1}  # read again from the table: a rebalance rolls it back
    assert sorted(held) == ["a", "b"] and len(held) == 2


def test_flush_writes_what_is_due_or_everything(clock):
    table = CountingTable()
    held = WriteBehind(table, 5.0, clock)
    held["a"] = {"v": 1}
    held["a"] = {"v": 2}
    clock.now += 1.0
    held["b"] = {"v": 1}
    held["b"] = {"v": 2}
    assert held.flush(due_only=True) == 0  # both written less than 5 s ago
    clock.now += 4.5
    assert held.flush(due_only=True) == 1 and table["a"] == {"v": 2} and held.dirty == {"b"}
    assert held.flush() == 1 and table["b"] == {"v": 2} and not held.dirty


def test_without_held_reads_a_key_another_writer_changes_is_read_fresh(clock):
    table = CountingTable()
    table["theirs"] = {"v": 1}
    held = WriteBehind(table, 5.0, clock, hold_reads=False)
    assert held["theirs"] == {"v": 1}
    table["theirs"] = {"v": 2}  # another worker's write arriving through the changelog
    assert held["theirs"] == {"v": 2}
    held["mine"] = {"v": 1}
    table.reads = 0
    assert held["mine"] == {"v": 1} and table.reads == 0  # what this worker writes stays held


def test_the_global_tables_are_in_memory_so_they_take_writes_outside_events():
    """A bare ``memory://`` fell back to RocksDB, whose writes assert a current event: the spend
    flush from a timer crashed the worker."""
    from streams.tables import key_pool, vlm_spend

    assert isinstance(vlm_spend.data, faust.stores.memory.Store)
    assert isinstance(key_pool.data, faust.stores.memory.Store)


def test_a_frame_that_spends_budget_is_written_through_and_a_quiet_one_is_held(clock):
    from agents.task_generator import tasks_for
    from agents.task_policy import GlobalCap
    from sim.records import detection
    from streams.settings import Settings
    from streams.tables import camera_key

    table = CountingTable()
    held = WriteBehind(table, 60.0, clock)  # type: ignore[var-annotated]
    key = camera_key("c")
    assert len(tasks_for(detection("c", 1, track_base=10), 100.0, held, GlobalCap(0), Settings())) == 1
    # half a second later a new pair: a task, so its state must reach the table now (a copy
    # without it, recovered after a rebalance, would make the task again)
    assert len(tasks_for(detection("c", 2, track_base=20), 100.5, held, GlobalCap(0), Settings())) == 1
    assert table[key]["tasks_made"] == 2 and not held.dirty
    # the same pair again: nothing spent, held
    assert tasks_for(detection("c", 3, track_base=20), 101.0, held, GlobalCap(0), Settings()) == []
    assert held.dirty == {key} and table[key]["tasks_made"] == 2


def test_a_detection_older_than_the_task_deadline_makes_no_task_and_spends_nothing(clock):
    from agents.task_generator import tasks_for
    from agents.task_policy import GlobalCap
    from sim.records import detection
    from streams.settings import Settings

    det, s = detection("c", 1), Settings()
    states: dict[bytes, object] = {}
    late = det.captured_at / 1000.0 + s.task_deadline_s + 1.0  # a backlog being caught up on
    assert tasks_for(det, late, states, GlobalCap(0), s) == []  # type: ignore[arg-type]
    assert states == {}
    assert len(tasks_for(det, late - 2.0, states, GlobalCap(0), s)) == 1  # type: ignore[arg-type]


def test_a_view_s_read_is_not_held_so_the_agent_reads_the_table_afresh(clock):
    """A view read (outside any event) was held: a stale copy (a partition still recovering) was
    then what the agent's next event changed and wrote back over the table."""
    table = CountingTable()
    held = WriteBehind(table, 60.0, clock)
    table["cam-1"] = {"frames": 1}  # the copy a view sees while the partition recovers
    assert held.peek("cam-1") == {"frames": 1} and held.peek("cam-2") is None
    assert list(held.peek_items()) == [("cam-1", {"frames": 1})]
    table["cam-1"] = {"frames": 7}  # recovery done
    assert held["cam-1"] == {"frames": 7}  # the agent's read: the table's, not the view's copy
    held["cam-1"] = {"frames": 8}
    assert held.peek("cam-1") == {"frames": 8}  # what is held is what a view sees
