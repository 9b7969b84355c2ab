"""The commit rule: only the run of acknowledged offsets that starts at the head is committed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from streams.app import app
from streams.faust_seam import AtLeastOnceConsumer

TASKS = TP("t-assessment-tasks", 3)


@pytest.fixture
def consumer() -> Iterator[AtLeastOnceConsumer]:
    c = app.consumer
    assert isinstance(c, AtLeastOnceConsumer)
    yield c
    for state in (c._acked, c._acked_index, c._committed_offset, c._gap, c.heads):
        state.pop(TASKS, None)


def ack(consumer: AtLeastOnceConsumer, *offsets: int) -> None:
    for offset in offsets:
        consumer._acked[TASKS].append(offset)
        consumer._acked_index[TASKS].add(offset)


def test_faust_itself_commits_past_an_event_in_flight(consumer):
    """faust-streaming#606: if this starts failing, Faust fixed it and streams.faust_seam's commit rule can go."""
    consumer._committed_offset[TASKS] = 10  # offset 10 is still being processed
    ack(consumer, 11, 12)
    assert FaustConsumer._new_offset(consumer, TASKS) == 13


def test_an_event_in_flight_at_the_head_holds_the_commit_back(consumer):
    consumer.heads[TASKS] = 10
    ack(consumer, 11, 12)
    assert consumer._new_offset(TASKS) is None
    ack(consumer, 10)
    assert consumer._new_offset(TASKS) == 13
    assert consumer.heads[TASKS] == 13
    assert consumer._acked[TASKS] == []
    assert not consumer._acked_index[TASKS]


def test_a_hole_in_the_middle_commits_up_to_the_hole(consumer):
    consumer.heads[TASKS] = 10
    ack(consumer, 12, 10, 11, 14)
    assert consumer._new_offset(TASKS) == 13
    assert consumer._acked[TASKS] == [14]
    assert consumer._new_offset(TASKS) is None  # 13 still in flight
    ack(consumer, 13)
    assert consumer._new_offset(TASKS) == 15


def test_offset_zero_is_a_head_like_any_other(consumer):
    consumer.heads[TASKS] = 0
    ack(consumer, 1, 2)
    assert consumer._new_offset(TASKS) is None


def test_without_a_head_nothing_is_committed(consumer):
    ack(consumer, 0, 1)
    assert consumer._new_offset(TASKS) is None


def test_every_partition_is_seeked_and_its_position_becomes_the_head(consumer, monkeypatch):
    """aiokafka seeks only partitions committed above 0; records Faust discarded while recovering
    tables would be lost on the others. Committed 7: seek to 7. None or 0: to the log start
    (auto_offset_reset=earliest), or to the committed 0 if the log starts there."""
    fresh, zero, done, expired = TP("t-a", 0), TP("t-a", 1), TP("t-a", 2), TP("t-a", 3)
    seeks: list[dict[TP, int]] = []

    async def seek_to_committed():
        return {fresh: None, zero: 0, done: 7, expired: 5}

    async def earliest_offsets(*tps):
        return {fresh: 3, zero: 0, done: 2, expired: 9}  # retention removed 5..8

    async def seek_wait(partitions):
        seeks.append(dict(partitions))

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    monkeypatch.setattr(consumer, "earliest_offsets", earliest_offsets)
    monkeypatch.setattr(consumer, "seek_wait", seek_wait)
    monkeypatch.setattr(consumer, "assignment", lambda: {fresh, zero, done, expired})
    consumer._active_partitions = {fresh, zero, done, expired}
    try:
        asyncio.run(consumer.perform_seek())
        assert seeks == [{fresh: 3, zero: 0, done: 7, expired: 9}]  # every one, after the pause
        heads = {tp: consumer.heads[tp] for tp in (fresh, zero, done, expired)}
        assert heads == {fresh: 3, zero: 0, done: 7, expired: 9}
        assert consumer._committed_offset[done] == 7
        assert consumer._active_partitions == {fresh, zero, done, expired}  # paused for the seek only
    finally:
        for tp in (fresh, zero, done, expired):
            consumer.heads.pop(tp, None)
            consumer._committed_offset.pop(tp, None)
            consumer._read_offset.pop(tp, None)
        consumer._active_partitions = None


def test_offsets_the_fetch_loop_missed_are_not_taken_as_never_written(consumer):
    """Faust's gap set would commit over 11 and 12; here they hold the commit back until read."""
    consumer.heads[TASKS] = 10
    consumer._gap[TASKS].addi(11, 13)
    ack(consumer, 10, 13)
    assert consumer._new_offset(TASKS) == 11
    assert consumer._new_offset(TASKS) is None
    ack(consumer, 11, 12)
    assert consumer._new_offset(TASKS) == 14


def test_stale_and_repeated_acknowledgements_are_dropped(consumer):
    consumer.heads[TASKS] = 10
    ack(consumer, 8, 10, 11)
    consumer._acked[TASKS].append(10)
    assert consumer._new_offset(TASKS) == 12
    assert consumer._acked[TASKS] == []


def test_a_seek_overtaken_by_a_new_rebalance_sets_no_heads(consumer, monkeypatch):
    """aiokafka refuses to seek a partition revoked meanwhile; the next rebalance seeks again."""
    from aiokafka.errors import IllegalStateError

    tp = TP("t-b", 0)

    async def seek_to_committed():
        return {tp: 4}

    async def earliest_offsets(*tps):
        return {tp: 0}

    async def seek_wait(partitions):
        raise IllegalStateError("No current assignment for partition t-b-0")

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    monkeypatch.setattr(consumer, "earliest_offsets", earliest_offsets)
    monkeypatch.setattr(consumer, "seek_wait", seek_wait)
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    consumer._active_partitions = {tp}
    try:
        asyncio.run(consumer.perform_seek())
        assert tp not in consumer.heads
        assert consumer._active_partitions == {tp}
    finally:
        consumer._active_partitions = None


def test_a_head_neither_done_nor_in_flight_behind_done_offsets_is_a_hole(consumer):
    consumer.heads[TASKS] = 10
    ack(consumer, 12)
    assert consumer.holes({TASKS: {10}}) == {}  # 10 is being processed: not a hole
    assert consumer.holes({TASKS: {11}}) == {TASKS: 10}
    assert consumer.holes({}) == {TASKS: 10}
    ack(consumer, 10, 11)
    assert consumer._new_offset(TASKS) == 13
    assert consumer.holes({}) == {}


def test_all_rocksdb_tables_share_one_memory_budget(tmp_path, monkeypatch):
    """Each database opened through Faust's options charges its memtables to the one shared cache, and
    writes several times the budget leave it near the budget (a soft limit: flushes, not stalls)."""
    from faust.stores.rocksdb import RocksDBOptions

    from streams.faust_seam import share_rocksdb_memory

    monkeypatch.setattr(RocksDBOptions, "as_options", RocksDBOptions.as_options)  # restored afterwards
    budget = 8 * 1024 * 1024
    cache = share_rocksdb_memory(budget)
    assert share_rocksdb_memory(budget) is cache  # a second app in the process shares the same budget
    options = RocksDBOptions(write_buffer_size=4 * 1024 * 1024)
    dbs = [options.open(tmp_path / f"db{i}") for i in range(2)]
    usage = [cache.get_usage()]
    for i, db in enumerate(dbs):
        for k in range(200):
            db[f"{i}-{k}".encode()] = b"x" * 500
        usage.append(cache.get_usage())
    assert usage[1] > usage[0] and usage[2] > usage[1], f"not every database charged the shared cache: {usage}"
    for k in range(20_000):  # 20 MB through two databases, 2.5x the budget
        dbs[k % 2][f"bulk-{k}".encode()] = b"y" * 1000
    assert cache.get_usage() <= budget * 1.25, cache.get_usage()
    assert dbs[1][b"1-199"] == b"x" * 500 and dbs[1][b"bulk-19999"] == b"y" * 1000
    for db in dbs:
        db.close()


def test_a_worker_refuses_faust_without_its_compiled_stream_iterator(monkeypatch):
    import faust.streams
    import pytest

    from streams.app import require_compiled_streams
    from streams.errors import ConfigError

    require_compiled_streams()  # as installed
    monkeypatch.setattr(faust.streams, "_CStreamIterator", None)  # what NO_CYTHON=1 gives
    with pytest.raises(ConfigError, match="compiled stream iterator"):
        require_compiled_streams()


def test_undelivered_records_hold_commits_until_a_seek_and_a_lasting_refusal_ends_the_worker(monkeypatch):
    import pytest

    from streams import faust_seam

    clock = [1000.0]
    monkeypatch.setattr(faust_seam.time, "monotonic", lambda: clock[0])

    def exit_(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(faust_seam.os, "_exit", exit_)
    guard = faust_seam.SendFailureGuard()  # no app: no rejoin requested here
    guard.on_send_error(None, RuntimeError("refused"), None)
    assert guard.pending == 1  # AtLeastOnceConsumer._commit holds back while pending
    guard.seeked()
    assert guard.pending == 0
    clock[0] += 60
    guard.on_send_error(None, RuntimeError("refused"), None)  # still failing, no commit since: not yet
    guard.seeked()
    clock[0] += 61
    with pytest.raises(SystemExit) as ended:
        guard.on_send_error(None, RuntimeError("refused"), None)
    assert ended.value.code == 70
    guard.committed()  # a commit after the failures: a later one starts a new window
    clock[0] += 500
    guard.on_send_error(None, RuntimeError("refused"), None)
    assert guard.pending == 2 and guard.failing_since == clock[0]


@pytest.mark.parametrize(
    ("raised", "dead_lettered"),
    [
        ("connection", False),  # a broker away: handled again after the rejoin, not lost to the DLQ
        ("metadata timeout", False),
        ("producer closed", False),  # the worker stopping: the partition's next owner handles it
        ("too large", True),  # this event's own record: the DLQ, with the reason
        ("bug", True),
    ],
)
def test_a_send_kafka_could_not_take_is_retried_and_only_the_events_own_fault_is_dead_lettered(
    monkeypatch, raised, dead_lettered
):
    from types import SimpleNamespace

    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError, ProducerClosed
    from faust.exceptions import ProducerSendError

    from streams import dlq, faust_seam

    cause = {
        "connection": KafkaConnectionError("no broker"),
        "metadata timeout": KafkaTimeoutError(),
        "producer closed": ProducerClosed(),
        "too large": MessageSizeTooLargeError(),
        "bug": None,
    }[raised]
    guard = faust_seam.SendFailureGuard()
    monkeypatch.setattr(dlq, "SEND_FAILURES", guard)
    letters: list[str] = []

    async def to_dlq(event, reason: str) -> None:
        letters.append(reason)

    monkeypatch.setattr(dlq, "send_to_dlq", to_dlq)

    async def handle(event) -> None:
        if cause is None:
            raise KeyError("a bug")
        raise ProducerSendError(f"Error while sending: {cause!r}") from cause

    event = SimpleNamespace(message=SimpleNamespace(topic="t-assessment-tasks", partition=3, offset=7))
    asyncio.run(dlq.guarded(event, handle))
    assert bool(letters) == dead_lettered, letters
    assert guard.pending == (0 if dead_lettered else 1)  # pending: commits held until the seek


def test_an_unreachable_dlq_holds_the_event_for_another_try(monkeypatch):
    from types import SimpleNamespace

    from aiokafka.errors import KafkaConnectionError
    from faust.exceptions import ProducerSendError

    from streams import dlq, faust_seam
    from streams.errors import InvalidRecord

    guard = faust_seam.SendFailureGuard()
    monkeypatch.setattr(dlq, "SEND_FAILURES", guard)

    async def to_dlq(event, reason: str) -> None:
        raise ProducerSendError("Error while sending") from KafkaConnectionError("no broker")

    async def handle(event) -> None:
        raise InvalidRecord("not JSON")

    monkeypatch.setattr(dlq, "send_to_dlq", to_dlq)
    event = SimpleNamespace(message=SimpleNamespace(topic="t-detections", partition=0, offset=1))
    asyncio.run(dlq.guarded(event, handle))
    assert guard.pending == 1


async def test_a_commit_waits_for_the_buffered_table_records_and_holds_when_they_do_not_drain(monkeypatch):
    """Faust's pre-commit flush gives up on a record slower than 0.1 s to hand over: the commit then
    went ahead with the committed events' table records still buffered (lost on a crash)."""
    from types import SimpleNamespace

    from streams import faust_seam

    class Producer:
        def __init__(self, queued: int, per_flush: int) -> None:
            self.buffer = SimpleNamespace(size=queued)
            self.per_flush, self.flushes = per_flush, 0

        async def flush(self) -> None:
            self.flushes += 1
            clock[0] += 0.1
            self.buffer.size = max(0, self.buffer.size - self.per_flush)

    clock = [0.0]
    monkeypatch.setattr(faust_seam.time, "monotonic", lambda: clock[0])
    slow = Producer(queued=3, per_flush=1)
    assert await faust_seam.drained(slow, 5.0) and slow.flushes == 3 and slow.buffer.size == 0
    stuck = Producer(queued=3, per_flush=0)
    assert not await faust_seam.drained(stuck, 5.0) and stuck.buffer.size == 3 and 45 <= stuck.flushes <= 51
    assert await faust_seam.drained(Producer(queued=0, per_flush=0), 5.0)
