"""Watching the flow and checking exactly-once results, for ``make e2e`` and the tests.

:class:`FlowWatcher` prints messages per second on each topic from the brokers' end offsets.
:func:`verify_exactly_once` reads every task from ``assessment-tasks`` and compares it with the
aggregator's view (each worker's ``/results/``): every task must have exactly one final result
there, none missing and none unknown. Duplicates on the results topic (redeliveries) are
counted: the aggregator suppressed them.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ops.http import get_json
from streams.faust_seam import force_metadata_update
from streams.settings import get_settings
from streams.topic_names import TopicNames


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer; aiokafka 0.14 can raise CancelledError from its idle coordinator task here."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        pass


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions; a consumer that did not subscribe must ask for the metadata first."""
    parts = consumer.partitions_for_topic(topic)
    if parts is None:
        await force_metadata_update(consumer)
        parts = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def end_offsets(bootstrap: str, topics: tuple[str, ...]) -> dict[str, int]:
    """Total messages ever written per topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        out: dict[str, int] = {}
        for topic in topics:
            tps = await _partitions(consumer, topic)
            out[topic] = sum((await consumer.end_offsets(tps)).values()) if tps else 0
        return out
    finally:
        await _stop(consumer)


async def read_all(bootstrap: str, topic: str, idle_s: float = 2.0) -> list[bytes]:
    """Every message value of ``topic`` from the beginning up to its current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        values: list[bytes] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000), max_records=5000)
            for records in batch.values():
                values.extend(r.value for r in records if r.value is not None)
        return values
    finally:
        await _stop(consumer)


@dataclass
class Report:
    """The outcome of an exactly-once check."""

    tasks: int = 0
    results_in_view: int = 0
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    result_messages: int = 0
    duplicates_suppressed: int = 0
    not_joined: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    drain_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.tasks > 0 and not self.missing and not self.unknown

    def line(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"e2e verification {verdict}: {self.tasks} tasks, {self.results_in_view} results in the "
            f"aggregator's view, {len(self.missing)} missing, {len(self.unknown)} unknown, "
            f"{self.result_messages} result messages ({self.duplicates_suppressed} duplicate deliveries suppressed), "
            f"{self.not_joined} not joined; "
            f"statuses {dict(self.statuses)}; drained in {self.drain_s:.1f}s"
        )


def aggregator_view(web_ports: list[int]) -> dict[str, dict[str, Any]]:
    view: dict[str, dict[str, Any]] = {}
    for port in web_ports:
        try:
            view.update(get_json(f"http://127.0.0.1:{port}/results/")["results"])
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            continue
    return view


def messages_per_task(bootstrap: str, topic: str) -> Counter[str]:
    """How many messages each task_id has on ``topic`` (results: redeliveries show as more than one)."""
    return Counter(str(json.loads(v).get("task_id")) for v in asyncio.run(read_all(bootstrap, topic)))


def alert_versions(bootstrap: str, topic: str) -> Counter[str]:
    """How many times each version of each alert is on ``topic``. One alert has versions (a graver
    result escalates it, the VLM judges a measured one: the same task_id, updated); the same
    version twice is an alert raised twice."""
    return Counter(
        "{task_id}/{level}/{source}/{verdict}".format(**{"source": "vlm", "verdict": "", **json.loads(v)})
        for v in asyncio.run(read_all(bootstrap, topic))
    )


def aggregated_counts(web_port: int, cameras: list[str]) -> int:
    """Results the aggregator counted over ``cameras`` (a result aggregated twice counts twice)."""
    return sum(sum(get_json(f"http://127.0.0.1:{web_port}/cameras/{c}/").get("counts", {}).values()) for c in cameras)


def verify_exactly_once(
    bootstrap: str, web_ports: list[int], *, drain_timeout_s: float = 60.0, prefix: str = ""
) -> Report:
    """Wait until every task is aggregated (or the timeout), then compare.

    ``prefix`` is the deployment's topic prefix when it differs from this process's settings.
    """
    names = TopicNames(prefix or get_settings().topic_prefix)
    tasks_topic, results_topic = names.assessment_tasks, names.risk_results
    started = time.monotonic()
    task_ids: set[str] = set()
    view: dict[str, dict[str, Any]] = {}
    while True:
        task_ids = {json.loads(v)["task_id"] for v in asyncio.run(read_all(bootstrap, tasks_topic))}
        view = aggregator_view(web_ports)
        if (task_ids and task_ids <= set(view)) or time.monotonic() - started > drain_timeout_s:
            break
        time.sleep(2.0)
    results = [json.loads(v)["task_id"] for v in asyncio.run(read_all(bootstrap, results_topic))]
    report = Report(
        tasks=len(task_ids),
        results_in_view=len(set(view) & task_ids),
        missing=sorted(task_ids - set(view)),
        unknown=sorted(set(view) - task_ids),
        result_messages=len(results),
        duplicates_suppressed=len(results) - len(set(results)),
        not_joined=sum(1 for t in task_ids if t in view and not view[t].get("joined")),
        statuses=Counter(str(view[t].get("status")) for t in task_ids if t in view),
        drain_s=time.monotonic() - started,
    )
    return report


class FlowWatcher:
    """Prints messages/s per topic, results and failures, every few seconds."""

    def __init__(self, bootstrap: str, topics: TopicNames | None = None) -> None:
        self.bootstrap = bootstrap
        self.topics = (topics or TopicNames(get_settings().topic_prefix)).flow

    def watch(self, duration_s: float, *, every_s: float = 5.0, web_port: int | None = None) -> None:
        last = asyncio.run(end_offsets(self.bootstrap, self.topics))
        last_t = time.monotonic()
        end = last_t + duration_s
        print(
            "  t(s)  " + "  ".join(f"{t[:18]:>18s}" for t in self.topics) + "   results ok/failed/expired", flush=True
        )
        while time.monotonic() < end:
            time.sleep(min(every_s, max(0.0, end - time.monotonic())))
            now = asyncio.run(end_offsets(self.bootstrap, self.topics))
            t = time.monotonic()
            rates = [(now[k] - last.get(k, 0)) / max(1e-6, t - last_t) for k in self.topics]
            statuses = Counter(str(v.get("status")) for v in aggregator_view([web_port]).values()) if web_port else {}
            print(
                f"{t - end + duration_s:6.0f}  "
                + "  ".join(f"{r:14.1f}/s " for r in rates)
                + f"   {statuses.get('ok', 0)}/{statuses.get('failed', 0)}/{statuses.get('expired', 0)}",
                flush=True,
            )
            last, last_t = now, t
