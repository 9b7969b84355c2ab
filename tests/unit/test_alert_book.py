"""The alert tables' layout: what one alert costs to write, what is kept, and the layout before read on."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.alert_book import ALERTS_KEPT, AlertBook, index_entries, legacy_alerts, newest, record_key
from agents.detection_join import DetectionJoin, record_detection
from agents.result_aggregator import Aggregation, aggregate
from agents.worker_clients import WorkerClients
from sim.records import detection, risk_result
from streams.records import DetectionResult, RiskAssessment
from streams.settings import Settings
from streams.tables import camera_key


class Recorded(dict[bytes, Any]):
    """A table that counts the JSON bytes written to it (what RocksDB and the changelog would take)."""

    written = 0

    def __setitem__(self, key: bytes, value: Any) -> None:
        self.written += len(json.dumps(value))
        super().__setitem__(key, value)


@pytest.fixture
async def clients(tmp_path) -> AsyncIterator[WorkerClients]:
    settings = Settings(
        vlm_keys="unit-key-aaaa",
        image_store=f"file://{tmp_path / 'images'}",
        redis_url="redis://127.0.0.1:1/0",  # nothing listens: the cache degrades
        alert_cooldown_s=60,
    )
    built = WorkerClients.build(settings)
    yield built
    await built.close()


FRAMES: dict[int, DetectionResult] = {}


def frame(n: int) -> DetectionResult:
    """The n-th frame, the same each time it is asked for (a run-less frame's id says when it was made)."""
    return FRAMES.setdefault(n, detection("cam-1", n, track_base=10 * n))


def on_group(n: int, level: str = "high", task_id: str | None = None) -> RiskAssessment:
    """A result on the n-th camera group (each n its own tracks, so its own group)."""
    det = frame(n)
    return risk_result(
        "cam-1", task_id or f"t{n}", detection_id=det.detection_id, group_id=det.groups[0].group_id, level=level
    )


def book_of(agg: Aggregation) -> tuple[dict[bytes, Any], dict[bytes, Any], dict[bytes, Any]]:
    return agg.alerts.index, agg.alerts.records, agg.alerts.legacy  # type: ignore[return-value]


async def test_one_alert_writes_about_one_alert_whatever_the_cameras_history(clients):
    """The camera's 100 alerts were one value rewritten whole per alert: 110 KB of JSON, a RocksDB put
    and a changelog record each, so a worker raising 50 alerts/s fell behind (the capacity soak)."""
    index, records = Recorded(), Recorded()
    agg = Aggregation(detections={}, results={}, camera_view={}, alerts=AlertBook(index, records, {}))
    join = DetectionJoin(agg.detections, agg.camera_view)
    now = time.time()
    task = "{:020x}".format  # as long as the product's task ids
    for n in range(1, 152):
        record_detection(join, frame(n), now + n, 0, joined=True)
    for n in range(1, 151):
        assert aggregate(agg, on_group(n, task_id=task(n)), now + n, clients, 0) is not None
    one_record = len(json.dumps(records[record_key("cam-1", task(150))]))
    assert records[record_key("cam-1", task(150))]["detection"] is not None  # joined, as alerts are
    before = index.written + records.written
    assert aggregate(agg, on_group(151, task_id=task(151)), now + 151, clients, 0) is not None
    # the record and the index (100 short rows); the layout before rewrote 100 records
    assert index.written + records.written - before < 10 * one_record


async def test_the_last_100_alerts_are_kept_newest_first_and_older_ones_deleted(clients):
    agg = Aggregation(detections={}, results={}, camera_view={})
    index, records, _ = book_of(agg)
    now = time.time()
    for n in range(1, ALERTS_KEPT + 6):
        aggregate(agg, on_group(n), now + n, clients, 0)
    assert [a["task_id"] for a in agg.alerts.latest("cam-1", 3)] == ["t105", "t104", "t103"]
    assert len(agg.alerts.latest("cam-1", 1000)) == ALERTS_KEPT
    assert len(records) == ALERTS_KEPT and record_key("cam-1", "t5") not in records
    assert record_key("cam-1", "t6") in records
    # /alerts/: the newest first raised of every camera's index
    rows = [(key.decode(), e) for key, value in index.items() for e in index_entries(value)]
    assert [e.task_id for _, e in newest(rows, 2)] == ["t105", "t104"]


async def test_a_repeat_merges_into_its_groups_alert_behind_many_others(clients):
    """Merging reads only the group's alerts within the cooldown: one 30 alerts back is still found."""
    agg = Aggregation(detections={}, results={}, camera_view={})
    now = time.time()
    first = aggregate(agg, on_group(1), now, clients, 0)
    for n in range(2, 32):
        aggregate(agg, on_group(n), now + n, clients, 0)
    assert aggregate(agg, on_group(1, task_id="again"), now + 40, clients, 0) is None  # merged, not published
    escalated = aggregate(agg, on_group(1, "critical", task_id="worse"), now + 41, clients, 0)
    assert first is not None and escalated is not None and escalated.task_id == first.task_id
    newest_alert = agg.alerts.latest("cam-1", 1)[0]
    assert (newest_alert["task_id"], newest_alert["count"], newest_alert["level"]) == ("t1", 3, "critical")
    assert len(agg.alerts.latest("cam-1", 1000)) == 31  # no second alert on group 1
    # past the cooldown the group raises a new alert
    assert aggregate(agg, on_group(1, task_id="later"), now + 41 + 61, clients, 0) is not None
    assert len(agg.alerts.latest("cam-1", 1000)) == 32


async def test_the_cooldown_is_judged_on_the_record_when_the_index_is_older(clients):
    """A crash between the record and the index leaves the index's last raise behind the record's:
    a repeat within the record's cooldown still merges, and an entry naming no record is skipped."""
    agg = Aggregation(detections={}, results={}, camera_view={})
    index, _, _ = book_of(agg)
    now = time.time()
    aggregate(agg, on_group(1), now, clients, 0)
    aggregate(agg, on_group(1, task_id="again"), now + 50, clients, 0)  # merged: raised again at +50
    key = camera_key("cam-1")
    index[key] = [[*index[key][0][:2], round(now * 1000), round(now * 1000)]]  # the index of before that
    index[key].append(["lost", "g9-9", round(now * 1000), round(now * 1000)])  # its record never written
    assert aggregate(agg, on_group(1, task_id="third"), now + 100, clients, 0) is None  # within 60 s of +50
    assert [(a["task_id"], a["count"]) for a in agg.alerts.latest("cam-1", 10)] == [("t1", 3)]


async def test_the_layout_before_is_read_merged_into_and_moved_out_on_the_next_alert(clients):
    """Before, the alerts table held a camera's alerts whole under its key: the views read them, a
    repeat merges into them, and the camera's next alert moves them into the new tables, once each."""
    now = time.time()
    earlier = Aggregation(detections={}, results={}, camera_view={})
    for n in (1, 2):
        aggregate(earlier, on_group(n), now + n, clients, 0)
    whole = earlier.alerts.latest("cam-1", 10)
    assert [a["task_id"] for a in whole] == ["t2", "t1"]

    agg = Aggregation(detections={}, results={}, camera_view={})
    index, records, legacy = book_of(agg)
    legacy[camera_key("cam-1")] = [*whole, whole[1]]  # as the code before stored them (t1 there twice)
    assert [a["task_id"] for a in agg.alerts.latest("cam-1", 10)] == ["t2", "t1"]
    assert [a["task_id"] for a in legacy_alerts(legacy[camera_key("cam-1")])][:2] == ["t2", "t1"]

    assert aggregate(agg, on_group(1, task_id="again"), now + 5, clients, 0) is None  # merged into t1
    assert camera_key("cam-1") not in legacy
    assert [row[0] for row in index[camera_key("cam-1")]] == ["t1", "t2"]
    assert records[record_key("cam-1", "t1")]["count"] == 2 and records[record_key("cam-1", "t2")]["count"] == 1
    assert [(a["task_id"], a["count"]) for a in agg.alerts.latest("cam-1", 10)] == [("t1", 2), ("t2", 1)]
