"""The alerts table's layout: what one alert costs to write, what is kept, and the old layout read on."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.alert_book import ALERTS_KEPT, AlertBook, alert_key, alerts_in
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


async def test_one_alert_writes_about_one_alert_whatever_the_cameras_history(clients):
    """The camera's 100 alerts were one value rewritten whole per alert: 110 KB of JSON, a RocksDB put
    and a changelog record each, so a worker raising 49 alerts/s fell behind (the capacity soak)."""
    table = Recorded()
    agg = Aggregation(detections={}, results={}, camera_view={}, alerts=table)
    join = DetectionJoin(agg.detections, agg.camera_view)
    now = time.time()
    for n in range(1, 152):
        record_detection(join, frame(n), now + n, 0, joined=True)
    for n in range(1, 151):
        assert aggregate(agg, on_group(n), now + n, clients, 0) is not None
    one_record = len(json.dumps(table[alert_key("cam-1", "t150")]))
    assert table[alert_key("cam-1", "t150")]["detection"] is not None  # joined, as alerts are
    before = table.written
    assert aggregate(agg, on_group(151), now + 151, clients, 0) is not None
    # the record and the index (100 short entries); the whole history was 100 records
    assert table.written - before < 10 * one_record


async def test_the_last_100_alerts_are_kept_newest_first_and_older_ones_deleted(clients):
    table: dict[bytes, Any] = {}
    agg = Aggregation(detections={}, results={}, camera_view={}, alerts=table)
    now = time.time()
    for n in range(1, ALERTS_KEPT + 6):
        aggregate(agg, on_group(n), now + n, clients, 0)
    book = AlertBook(table)
    assert [a["task_id"] for a in book.latest("cam-1", 3)] == ["t105", "t104", "t103"]
    assert len(book.latest("cam-1", 1000)) == ALERTS_KEPT
    records = [k for k in table if k != camera_key("cam-1")]
    assert len(records) == ALERTS_KEPT and alert_key("cam-1", "t5") not in table and alert_key("cam-1", "t6") in table
    # /alerts/ reads every value: the index is no alert of its own, each record one
    assert sum(1 for value in table.values() for _ in alerts_in(value)) == ALERTS_KEPT


async def test_a_repeat_merges_into_its_groups_alert_behind_many_others(clients):
    """Merging reads only the group's alerts within the cooldown: one 30 alerts back is still found."""
    table: dict[bytes, Any] = {}
    agg = Aggregation(detections={}, results={}, camera_view={}, alerts=table)
    now = time.time()
    first = aggregate(agg, on_group(1), now, clients, 0)
    for n in range(2, 32):
        aggregate(agg, on_group(n), now + n, clients, 0)
    assert aggregate(agg, on_group(1, task_id="again"), now + 40, clients, 0) is None  # merged, not published
    escalated = aggregate(agg, on_group(1, "critical", task_id="worse"), now + 41, clients, 0)
    assert first is not None and escalated is not None and escalated.task_id == first.task_id
    newest = AlertBook(table).latest("cam-1", 1)[0]
    assert (newest["task_id"], newest["count"], newest["level"]) == ("t1", 3, "critical")
    assert len(AlertBook(table).latest("cam-1", 1000)) == 31  # no second alert on group 1
    # past the cooldown the group raises a new alert
    assert aggregate(agg, on_group(1, task_id="later"), now + 41 + 61, clients, 0) is not None
    assert len(AlertBook(table).latest("cam-1", 1000)) == 32


async def test_a_table_of_the_old_layout_is_read_and_moved_out_on_the_next_alert(clients):
    """Before, a camera's key held its alerts whole: the views read them, and the next alert merges into them."""
    now = time.time()
    old_table: dict[bytes, Any] = {}
    old_agg = Aggregation(detections={}, results={}, camera_view={}, alerts={})
    for n in (1, 2):
        aggregate(old_agg, on_group(n), now + n, clients, 0)
    whole = [*AlertBook(old_agg.alerts).latest("cam-1", 10)]
    assert [a["task_id"] for a in whole] == ["t2", "t1"]
    old_table[camera_key("cam-1")] = whole  # as the old code stored them: a list of whole alerts
    book = AlertBook(old_table)
    assert [a["task_id"] for a in book.latest("cam-1", 10)] == ["t2", "t1"]
    assert [a["task_id"] for value in old_table.values() for a in alerts_in(value)] == ["t2", "t1"]

    agg = Aggregation(detections={}, results={}, camera_view={}, alerts=old_table)
    assert aggregate(agg, on_group(1, task_id="again"), now + 5, clients, 0) is None  # merged into t1
    index = old_table[camera_key("cam-1")]
    assert [e["task_id"] for e in index] == ["t1", "t2"] and not any("level" in e for e in index)
    assert old_table[alert_key("cam-1", "t1")]["count"] == 2 and old_table[alert_key("cam-1", "t2")]["count"] == 1
    assert [a["task_id"] for value in old_table.values() for a in alerts_in(value)].count("t1") == 1
