"""Consumer lag, Faust's own stream metrics, and a guard against a stalled consumer.

Lag is what an operator watches first: messages in a partition not yet processed by this
worker. It is sampled every few seconds from the broker's end offsets and the consumer's heads
(:mod:`streams.faust_seam`), per topic and partition (bounded labels: partitions are few, and fixed). Faust's
Prometheus monitor (events per stream, runtimes, table operations, sends) goes into the same
registry with the prefix ``roadwatch_faust_``, so one scrape of ``/metrics`` has both.

The stall guard is the last line behind :mod:`streams.faust_seam`. Around rebalances Faust can
leave a partition without progress: a record its fetch loop skipped (a *hole*: later offsets
done, the head offset never delivered), a taken-over partition from which nothing is delivered
at all, or an event that stays "in flight" with every actor idle. The commit rule makes each of
these hold the partition's commit back instead of losing the records, and the guard notices:
a hole older than 10 s; an event in flight longer than any task can be (its deadline and a
margin); or messages beyond the head, none in flight (a task waiting for a key is busy, not
stalled), and neither the head nor any delivery moving for ``stall_timeout_s``. Then it asks
the consumer to rejoin its group (a fresh rebalance seeks to the heads and reads the records
again); if the stall outlives three rejoins, it exits the process so that its supervisor
(Kubernetes, systemd, compose) starts a fresh one. Meanwhile ``/health`` says ``stalled`` and
``roadwatch_consumer_stalls_total`` counts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, cast

from streams import metrics
from streams.app import app, settings
from streams.faust_seam import AtLeastOnceConsumer, request_rejoin
from streams.topics import names

logger = logging.getLogger(__name__)

#: Rejoins tried before the guard gives the process up to its supervisor.
MAX_REJOINS = 3


@dataclass
class StallGuard:
    """Per partition: the last committed offset seen and when it, or an event, last moved."""

    timeout_s: float
    committed: dict[Any, int | None] = field(default_factory=dict)
    moved_at: dict[Any, float] = field(default_factory=dict)
    stalled: list[str] = field(default_factory=list)
    rejoins: int = 0
    rejoined_at: float = 0.0
    #: (partition, oldest offset in flight) -> when first seen in flight
    in_flight_since: dict[tuple[Any, int], float] = field(default_factory=dict)
    #: in flight longer than this (a task's deadline and a margin) means the event was lost
    #: inside Faust (all actors idle, the event never acknowledged), not that it is busy
    hung_after_s: float = 40.0
    #: (partition, head) -> when first seen as a hole: later offsets done, the head never delivered
    hole_since: dict[tuple[Any, int], float] = field(default_factory=dict)
    #: a hole this old is a record the fetch loop skipped (streams.faust_seam), not a slow event
    hole_after_s: float = 10.0

    def check(
        self,
        pending: dict[Any, int],
        committed: dict[Any, int | None],
        inbound: dict[Any, float],
        busy: dict[Any, int],
        now: float,
        holes: dict[Any, int] | None = None,
    ) -> list[str]:
        """The stalled partitions (as "topic[partition]") given each assigned one's pending messages.

        ``busy`` maps partitions with events in flight to their oldest such offset; ``holes``
        maps partitions whose head offset is neither done nor in flight while later ones are
        done to that head.
        """
        stalled = []
        holes = holes or {}
        seen_holes = set(holes.items())
        self.hole_since = {k: v for k, v in self.hole_since.items() if k in seen_holes}
        for key in seen_holes:
            self.hole_since.setdefault(key, now)
        holed = set()
        for (tp, head), since in self.hole_since.items():
            if now - since > self.hole_after_s and tp in pending:
                holed.add(tp)
                stalled.append(f"{tp.topic}[{tp.partition}] (offset {head} never delivered)")
        seen = {(tp, offset) for tp, offset in busy.items()}
        self.in_flight_since = {k: v for k, v in self.in_flight_since.items() if k in seen}
        for key in seen:
            self.in_flight_since.setdefault(key, now)
        hung = {tp for (tp, _), since in self.in_flight_since.items() if now - since > self.hung_after_s}
        for tp, waiting in pending.items():
            if tp in holed:
                continue
            if tp in hung:
                stalled.append(f"{tp.topic}[{tp.partition}] (an event in flight for over {self.hung_after_s:.0f} s)")
                continue
            if tp not in self.moved_at or committed.get(tp) != self.committed.get(tp) or tp in busy:
                self.moved_at[tp] = now  # newly assigned, its commit moved, or it has events in flight
            self.committed[tp] = committed.get(tp)
            last = max(self.moved_at[tp], inbound.get(tp, 0.0), self.rejoined_at)
            if waiting > 0 and now - last > self.timeout_s:
                quiet = f"{waiting} waiting, nothing moved for {self.timeout_s:.0f} s"
                stalled.append(f"{tp.topic}[{tp.partition}] ({quiet})")
        for tp in list(self.moved_at):
            if tp not in pending:  # revoked
                self.moved_at.pop(tp)
                self.committed.pop(tp, None)
        self.stalled = stalled
        if not stalled:
            self.rejoins = 0
        return stalled


#: No task event is in flight longer than its deadline: by then it has an ok, failed or expired result.
guard = StallGuard(settings.stall_timeout_s, hung_after_s=settings.task_deadline_s + 10)


async def sample_lag() -> dict[tuple[str, int], int]:
    """Pending messages per assigned (topic, partition) of this worker; also sets the gauge.

    End offsets come from the broker, not from the fetcher's high-water marks: a partition the
    fetcher never fetched has none, and that is exactly the stall to catch.
    """
    consumer = cast(AtLeastOnceConsumer, app.consumer)
    # the tables' changelogs are in the assignment too (recovery, standbys), but nothing acks
    # them: their heads stay where reading began, and their "lag" would grow with every write
    changelogs = set(app.tables.changelog_topics)
    assigned = sorted(tp for tp in consumer.assignment() if tp.topic not in changelogs)
    if not assigned:
        metrics.consumer_lag.clear()  # no partitions left: no lag of this worker's to report
        return {}
    try:
        ends = await asyncio.wait_for(consumer.highwaters(*assigned), timeout=10.0)
    except TimeoutError:
        logger.warning("end offsets not answered within 10 s; lag not sampled")
        metrics.consumer_lag.clear()  # an old figure would be summed with the new owners' as current
        return {}
    lags: dict[tuple[str, int], int] = {}
    pending: dict[Any, int] = {}
    committed_now: dict[Any, int | None] = {}
    for tp in assigned:
        # the head (streams.faust_seam) is exact, also where nothing was committed yet
        high, committed = ends.get(tp), consumer.heads.get(tp)
        if high is None:
            continue
        if committed is None:  # nothing committed yet: measure from where the consumer stands
            try:
                committed_or_pos = await consumer.position(tp)
            except Exception:
                logger.debug("no position for %s yet", tp, exc_info=True)
                continue
        else:
            committed_or_pos = committed
        if committed_or_pos is None:
            continue
        lags[(tp.topic, tp.partition)] = max(0, int(high) - int(committed_or_pos))
        if tp.topic in names.main:
            pending[tp] = lags[(tp.topic, tp.partition)]
            committed_now[tp] = committed
    metrics.consumer_lag.clear()
    for (topic, partition), lag in lags.items():
        metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
    inbound = getattr(app.monitor, "stream_inbound_time", None) or {}
    in_flight = consumer.in_flight()
    busy: dict[Any, int] = {tp: min(offsets) for tp, offsets in in_flight.items()}
    holes = {tp: head for tp, head in consumer.holes(in_flight).items() if tp in pending}
    stalled = guard.check(pending, committed_now, inbound, busy, time.monotonic(), holes)
    if stalled:
        await unstall(stalled)
    return lags


async def unstall(stalled: list[str]) -> None:
    metrics.consumer_stalls_total.inc()
    if guard.rejoins >= MAX_REJOINS:
        logger.critical("consumer stalled on %s after %d rejoins: exiting for a fresh start", stalled, guard.rejoins)
        os._exit(70)  # a supervisor restarts us; a clean shutdown could hang on the very stall
    guard.rejoins += 1
    guard.rejoined_at = time.monotonic()
    if any("in flight" in s for s in stalled):
        logger.error("agent tracebacks:\n%s", app.agents.human_tracebacks())
    logger.error("consumer stalled: %s; rejoining the group (%d/%d)", ", ".join(stalled), guard.rejoins, MAX_REJOINS)
    await request_rejoin(app)


@app.timer(interval=5.0)  # type: ignore[untyped-decorator]
async def lag_probe() -> None:
    try:
        await sample_lag()
    except Exception:
        logger.debug("lag sample failed", exc_info=True)
