"""Every use of Faust's, aiokafka's and aiohttp's private internals, in one module.

``tests/unit/test_faust_seam.py`` fingerprints the upstream code this module replaces or relies
on, and ``pyproject.toml`` pins ``faust-streaming`` and ``aiokafka`` to the versions it was tested
with: an upgrade fails that test and names what to re-check here. Nothing else in roadwatch
touches a private name of a dependency.

What lives here:

* :class:`AtLeastOnceConsumer` / :class:`AtLeastOnceTransport`: the commit rule (below).
* :class:`BatchingConsumerThread`: the fetch's wait and minimum size from the settings.
* :func:`request_rejoin`: make the consumer rejoin its group (the stall guard's remedy).
* :class:`SendFailureGuard`: a record the producer could not deliver holds the commits back.
* :func:`record_fields`: a Faust record's field names and defaults (the strict decoder).
* :func:`limit_request_body`: aiohttp's request body limit on Faust's web app.
* :func:`force_metadata_update`: refresh an aiokafka consumer's cluster metadata.
* :func:`share_rocksdb_memory`: one memory budget for all of a worker's RocksDB tables.

A Faust consumer that neither skips nor commits past an event it has not processed.

faust-streaming (0.15) loses events around rebalances in four ways, all seen here as tasks
without a result after a worker was killed or restarted:

1. **Records dropped during recovery are never read again.** While a rebalance recovers tables,
   Faust pauses the stream partitions and drops records a fetch in flight returns for them; at
   the end it seeks every partition back to its committed offset to read them again. But
   aiokafka's ``seek_to_committed`` only seeks partitions committed above offset 0: a partition
   never committed (a fresh one, or one whose owner was killed before its first commit) keeps
   the fetcher's position, and the dropped records are gone (up to 14 of 32 kill -9 tasks).
2. **A pause racing a fetch.** The same drop happens whenever a partition is paused while a
   fetch is in flight, also after that seek: a taken-over partition then sat idle.
3. **Commits past events still in flight.** ``Consumer._new_offset`` commits the run of
   acknowledged offsets, but its check for a hole at the head is off by one (with offset N in
   flight and N+1.. acknowledged it commits past N: faust-streaming#606, fix unreleased) and
   absent when there is no committed offset or it is 0; on revocation the committed offsets
   are forgotten before the in-flight events are waited for, so those commits have no head
   either. Acknowledgements arrive out of order here (``vlm_concurrency`` calls in flight).
4. **Gaps.** Offsets the fetch loop did not see are taken for offsets Kafka never wrote
   (compaction, transaction markers) and committed over; around a seek the loop also misses
   records that exist (the rolling-restart test lost 4 detections that way).

This consumer pauses the stream partitions after recovery and, as the last step before resuming
them, seeks *every* one: to its committed offset (or the log start, should retention have
removed it), or, with none, to where ``auto_offset_reset`` says. That position is the
partition's *head*: the next offset not known to be processed. Only the run of acknowledged
offsets that starts exactly at the head is committed, and it becomes the new head; the gap set
is ignored (the pipeline's topics are written without transactions and never compacted, so
their offsets are contiguous). On revocation the in-flight events finish and commit first, and
the state is dropped after that. Should a record still be skipped, the hole holds the commit
back; ``streams.lag`` notices and rejoins the group, which reads it again.

Events a stream skips during a rebalance (stale generation, flow stopped) are not counted as
done: the compiled stream iterator, used whenever Faust's extension loads, neither tracks nor
acknowledges them, and the seek reads them again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import IllegalStateError
from faust import Record
from faust.sensors import Sensor
from faust.transport.consumer import CONSUMER_PARTITIONS_REVOKED
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, AppT
from faust.utils.tracing import traced_from_parent_span
from mode import Service

logger = logging.getLogger(__name__)


class BatchingConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread with the fetch's batching as the app says (``fetch_wait_ms`` and
    ``fetch_min_bytes`` on the app; Faust fixes them at 1500 ms and 1 byte).

    With one byte, every fetch returns as soon as any record arrives: under a steady load of small
    records the consumer thread sends a fetch request per few records, each a socket write and a
    broker round trip (#13: a seventh of a worker's CPU at 100 detections/s)."""

    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = int(getattr(self.app, "fetch_wait_ms", consumer._fetch_max_wait_ms))
        consumer._fetch_min_bytes = int(getattr(self.app, "fetch_min_bytes", consumer._fetch_min_bytes))
        return consumer


class SendFailureGuard(Sensor):
    """Faust only logs a record its producer could not deliver (the broker refused it, or its batch
    expired after the request timeout), and commits the events that wrote it anyway: a result lost,
    its task never retried. Here such a failure holds every commit back, and the consumer rejoins
    its group, which seeks every partition to its committed offset: the events are handled again
    (the pipeline deduplicates what was delivered twice). Commits resume after that seek."""

    def __init__(self) -> None:
        super().__init__()
        self.app: AppT | None = None
        #: failures since the last seek: while set, nothing is committed
        self.pending = 0
        #: when records began to fail with no commit since (None: the last commit came after them)
        self.failing_since: float | None = None
        self._rejoin: asyncio.Future[None] | None = None

    def committed(self) -> None:
        self.failing_since = None

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        self.pending += 1
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since > SEND_FAILURES_GIVE_UP_S:
            # a refusal that does not pass (a topic's limit, an ACL): re-reading would only call the VLM
            # again and again; a restart (the supervisor's backoff) re-reads from the same commits
            logger.critical(
                "records undelivered for %.0f s (%s): exiting, nothing committed past them",
                now - self.failing_since,
                exc,
            )
            os._exit(70)
        if self.pending == 1 and self.app is not None:
            logger.error("a record was not delivered (%s): commits held; rejoining to handle its events again", exc)
            self._rejoin = asyncio.ensure_future(request_rejoin(self.app))

    def seeked(self) -> None:
        if self.pending:
            logger.info(
                "after %d undelivered records, partitions sought to their commits: commits resume", self.pending
            )
        self.pending = 0


#: Records failing for this long with no commit in between end the worker (exit 70, as the stall guard).
SEND_FAILURES_GIVE_UP_S = 120.0
#: The worker's guard (``streams.app`` adds it to the app's sensors).
SEND_FAILURES = SendFailureGuard()


#: How long a commit waits for the producer's buffer to empty before it is left to the next round.
COMMIT_DRAIN_S = 5.0


async def drained(producer: Any, within_s: float) -> bool:
    """Whether ``producer``'s buffer empties within ``within_s``, flushing it meanwhile.

    Faust flushes the producer before a commit, but its buffer stops waiting when one record takes
    over 0.1 s to reach aiokafka (a full batch behind a slow broker): the table records of the events
    about to be committed could still be in it, and a crash then lost them with their offsets
    committed. Records buffered after the offsets were taken are drained too; a buffer that never
    empties (a saturated worker) holds the commit, as the next round will try again.
    """
    deadline = time.monotonic() + within_s
    while producer.buffer.size:
        if time.monotonic() >= deadline:
            return False
        await producer.flush()
    return True


class AtLeastOnceConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer with a seek and a commit rule that cannot skip an event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per partition, the next offset that is not known to be processed.
        self.heads: dict[TP, int] = {}

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        if not await drained(self.app.producer, COMMIT_DRAIN_S):
            self.log.warning("commit held back: table records still buffered after %.0f s", COMMIT_DRAIN_S)
            return False
        # Faust flushed the producer just before: let the delivery callbacks of that flush run first
        for _ in range(3):
            await asyncio.sleep(0)
        if SEND_FAILURES.pending:
            self.log.warning("commit held back: %d records not delivered since the last seek", SEND_FAILURES.pending)
            return False
        committed: bool = await super()._commit(offsets)
        if committed:
            SEND_FAILURES.committed()
        return committed

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return BatchingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        """Seek every assigned partition to where its unprocessed records start: the head."""
        # Faust drops records of a partition paused while a fetch was in flight (the fetch position
        # has moved past them). So: pause, and seek every partition *after* that, as the last step
        # before resuming; records dropped in between are read again from the seek position.
        active = set(self._get_active_partitions())
        self.pause_partitions(active)
        try:
            committed = {TP(tp.topic, tp.partition): off for tp, off in (await self.seek_to_committed()).items()}
            if not committed:
                return
            starts = await self._starts(committed)
            try:
                await self.seek_wait(starts)
            except IllegalStateError as exc:  # revoked meanwhile: the next rebalance seeks again
                self.log.info("seek skipped, the assignment changed: %s", exc)
                return
        finally:
            self.resume_partitions(active & self.assignment())
        self._read_offset.update({tp: start or None for tp, start in starts.items()})
        # Faust's own bookkeeping keeps its convention (0 and "none" read as None); the heads do not.
        self._committed_offset.update({tp: off or None for tp, off in committed.items() if off is not None})
        self.heads.update(starts)
        SEND_FAILURES.seeked()

    async def _starts(self, committed: Mapping[TP, int | None]) -> dict[TP, int]:
        """The committed offset, unless retention removed it; with none, where the reset policy says."""
        log_start = await self.earliest_offsets(*committed)
        never = [tp for tp, off in committed.items() if off is None]
        if never and self.app.conf.consumer_auto_offset_reset == "latest":
            reset_to: Mapping[TP, int] = await self.highwaters(*never)
        else:
            reset_to = log_start
        return {
            tp: max(off, log_start.get(tp) or 0) if off is not None else (reset_to.get(tp) or 0)
            for tp, off in committed.items()
        }

    @Service.transitions_to(CONSUMER_PARTITIONS_REVOKED)  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """As Faust's, but the in-flight events finish and commit before the state is dropped."""
        span = self.app._start_span_from_rebalancing("on_partitions_revoked")  # type: ignore[attr-defined]
        trace = traced_from_parent_span(span)
        with span:
            if self._active_partitions is not None:
                self._active_partitions.difference_update(revoked)
            self._paused_partitions.difference_update(revoked)
            # Waits for in-flight events (stream_wait_empty) and commits what they acknowledged.
            await trace(self._on_partitions_revoked, partitions=revoked)(revoked)
            for tp in revoked:
                self._gap.pop(tp, None)
                self._acked.pop(tp, None)
                self._acked_index.pop(tp, None)
                self._read_offset.pop(tp, None)
                self._committed_offset.pop(tp, None)
                self.heads.pop(tp, None)

    def in_flight(self) -> dict[TP, set[int]]:
        """Per partition, the offsets a stream has taken and not finished.

        Faust leaves a message in its unacknowledged set when its offset had been acknowledged
        before (a record delivered twice around a seek): that one is done, not in flight.
        """
        taken: dict[TP, set[int]] = {}
        for message in list(self._unacked_messages):
            if not message.acked:
                taken.setdefault(message.tp, set()).add(message.offset)
        return taken

    def holes(self, in_flight: Mapping[TP, set[int]]) -> dict[TP, int]:
        """Partitions whose head is neither done nor in flight while later offsets are done.

        That is a record the fetch loop skipped: nothing will deliver it before a new seek.
        """
        return {
            tp: head
            for tp, head in self.heads.items()
            if self._acked.get(tp) and min(self._acked[tp]) > head and head not in in_flight.get(tp, ())
        }

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit: the end of the acknowledged run that starts at the head."""
        acked = self._acked[tp]
        head = self.heads.get(tp)
        if not acked or head is None:
            return None
        acked.sort()
        nxt, used = head, 0
        for offset in acked:
            if offset < nxt:  # already committed, or acknowledged twice
                used += 1
                continue
            if offset != nxt:
                break  # a hole: an event still queued, in flight, or never delivered
            nxt += 1
            used += 1
        if used:
            self._acked_index[tp].difference_update(acked[:used])
            del acked[:used]
        if nxt == head:
            return None
        self.heads[tp] = nxt
        return nxt


class AtLeastOnceTransport(aiokafka_driver.Transport):
    """The aiokafka transport, with :class:`AtLeastOnceConsumer` as its consumer."""

    Consumer = AtLeastOnceConsumer


async def request_rejoin(app: AppT) -> None:
    """Ask the consumer to rejoin its group: a fresh rebalance seeks every partition to its head.

    Faust's consumer thread owns the aiokafka consumer; the request runs on that thread.
    """
    thread: Any = app.consumer._thread  # type: ignore[attr-defined]

    async def rejoin() -> None:
        thread._ensure_consumer()._coordinator.request_rejoin()

    await thread.call_thread(rejoin)


def record_fields(record_type: type[Record]) -> tuple[list[str], set[str]]:
    """A Faust record class's field names in order, and those that have defaults."""
    options = record_type._options  # type: ignore[attr-defined]
    return list(options.fields), set(options.defaults)


def limit_request_body(web_app: web.Application, max_bytes: int) -> None:
    """Refuse request bodies over ``max_bytes`` (aiohttp's default is 1 MiB, set only at construction)."""
    web_app._client_max_size = max_bytes


async def force_metadata_update(consumer: AIOKafkaConsumer) -> None:
    """Fetch cluster metadata now, for a consumer that has not subscribed to the topic it asks about."""
    await consumer._client.force_metadata_update()


#: The cache :func:`share_rocksdb_memory` installed, by budget.
_SHARED_ROCKSDB: dict[int, Any] = {}


def share_rocksdb_memory(budget_bytes: int) -> Any:
    """Give every RocksDB database this process opens one block cache of ``budget_bytes``, with the
    memtables charged to it (a write buffer manager of half the budget), instead of a cache each.

    Faust opens a database per table and partition, each with its own block cache (``rocksdb.py``'s
    ``RocksDBOptions.as_options``): a worker's RocksDB memory grew with tables x partitions (5 x 8
    here, each an 8 MB cache and two 4 MB memtables). With one budget the cache and the memtables
    no longer multiply with the partition count; it is RocksDB's soft limit (an LRU cache without a
    strict capacity, writers not stalled), and index and filter blocks stay outside it. Replaces
    the rocksdict branch of ``as_options`` with the same options; the python-rocksdb driver keeps
    upstream's. Returns the shared ``rocksdict.Cache``; a second call with the same budget returns
    the same one (databases already open stay on the cache they have).
    """
    import rocksdict
    from faust.stores import rocksdb as faust_rocksdb

    shared = _SHARED_ROCKSDB.get(budget_bytes)
    if shared is not None and getattr(faust_rocksdb.RocksDBOptions.as_options, "__wrapped__", None) is not None:
        return shared
    cache = rocksdict.Cache(budget_bytes)
    _SHARED_ROCKSDB.clear()
    _SHARED_ROCKSDB[budget_bytes] = cache
    memtables = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(budget_bytes // 2, False, cache)
    upstream = getattr(faust_rocksdb.RocksDBOptions.as_options, "__wrapped__", faust_rocksdb.RocksDBOptions.as_options)

    def as_options(self: Any) -> Any:
        if not self.use_rocksdict:
            return upstream(self)
        db_options = rocksdict.Options(raw_mode=True)
        db_options.create_if_missing(True)
        db_options.set_max_open_files(self.max_open_files)
        db_options.set_write_buffer_size(self.write_buffer_size)
        db_options.set_target_file_size_base(self.target_file_size_base)
        db_options.set_max_write_buffer_number(self.max_write_buffer_number)
        db_options.set_write_buffer_manager(memtables)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(cache)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        db_options.set_block_based_table_factory(table)
        return db_options

    as_options.__wrapped__ = upstream  # type: ignore[attr-defined]
    faust_rocksdb.RocksDBOptions.as_options = as_options  # type: ignore[method-assign]
    return cache
