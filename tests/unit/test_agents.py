"""Each agent's handler in-process, on plain dicts for tables and test-built worker clients.

The same functions run inside the Faust agents on the real tables (the integration tests drive
those through a broker); here they run without one, so a change to the handling shows up in
seconds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from agents.alert_book import AlertBook, record_key
from agents.detection_join import DetectionJoin, record_detection
from agents.result_aggregator import Aggregation, aggregate
from agents.task_generator import tasks_for
from agents.task_policy import GlobalCap
from agents.worker_clients import WorkerClients
from sim.records import detection, risk_result
from streams.records import DetectionResult, RiskAssessment
from streams.settings import Settings
from streams.table_values import CameraState
from streams.tables import camera_key


@pytest.fixture
async def clients(tmp_path) -> AsyncIterator[WorkerClients]:
    settings = Settings(
        vlm_keys="unit-key-aaaa,unit-key-bbbb",
        image_store=f"file://{tmp_path / 'images'}",
        redis_url="redis://127.0.0.1:1/0",  # nothing listens: the cache degrades, as it must
        alert_cooldown_s=60,
    )
    built = WorkerClients.build(settings)
    yield built
    await built.close()


def result_for(frame: DetectionResult | int, level: str, *, task_id: str = "t1", score: float = 0.9) -> RiskAssessment:
    """A result for the group of ``frame`` (a detection, or the number of one never recorded)."""
    det = detection("cam-1", frame) if isinstance(frame, int) else frame
    return risk_result(
        "cam-1", task_id, detection_id=det.detection_id, group_id=det.groups[0].group_id, level=level, score=score
    )


async def test_the_task_generator_makes_one_task_per_new_group_and_replays_it_for_a_redelivery(clients):
    states: dict[bytes, CameraState | None] = {}
    det = detection("cam-1", 5)
    now = time.time()
    first = tasks_for(det, now, states, GlobalCap(0), clients.settings)
    assert [t.reason for t in first] == ["new"]
    assert first[0].deadline - first[0].created_at == clients.settings.task_deadline_s * 1000
    state = states[camera_key("cam-1")]
    assert state is not None and state["tasks_made"] == 1 and state["last_seq"] == 5
    again = tasks_for(det, now + 1, states, GlobalCap(0), clients.settings)
    assert [(t.task_id, t.reason) for t in again] == [(first[0].task_id, "replay")]
    unchanged = tasks_for(detection("cam-1", 6, track_base=20), now + 2, states, GlobalCap(0), clients.settings)
    assert len(unchanged) == 1  # other tracks: a new pair
    same_pair = tasks_for(detection("cam-1", 7, track_base=20), now + 3, states, GlobalCap(0), clients.settings)
    assert same_pair == []  # the pair was assessed a second ago and came no closer


async def test_a_global_cap_of_zero_tokens_stops_tasks(clients):
    cap = GlobalCap(per_min=6)
    cap.tokens = 0.0
    cap.at = time.time()
    assert tasks_for(detection("cam-1", 1), time.time(), {}, cap, clients.settings) == []


async def test_the_aggregator_joins_dedups_and_alerts_once_per_group(clients):
    agg = Aggregation(detections={}, results={}, camera_view={})
    now = time.time()
    join = DetectionJoin(agg.detections, agg.camera_view)
    frame = detection("cam-1", 3)
    record_detection(join, frame, now, 0, joined=True)
    assert join.frames["cam-1"]["latest_detection"]["frame_seq"] == 3
    assert agg.camera_view == {}  # the latest frame is held by the worker, not written to the table
    agg.camera_view[camera_key("cam-1")] = {"camera_id": "cam-1", "results": [], "counts": {}, "latest_detection": {}}  # type: ignore[typeddict-unknown-key]

    alert = aggregate(agg, result_for(frame, "high"), now, clients, 0)
    assert alert is not None and alert.level == "high" and alert.task_id == "t1"
    entry = agg.results["t1"]
    assert entry is not None and entry["joined"] and entry["status"] == "ok"

    assert aggregate(agg, result_for(frame, "high"), now + 1, clients, 0) is None  # the same task again
    assert len(agg.camera_view[camera_key("cam-1")]["results"]) == 1  # type: ignore[index]
    assert "latest_detection" not in agg.camera_view[camera_key("cam-1")]  # type: ignore[operator]  # an old view's, dropped

    # the same group judged high again within the cooldown: merged, not published again
    assert aggregate(agg, result_for(frame, "high", task_id="t2"), now + 2, clients, 0) is None
    # escalated: published
    escalated = aggregate(agg, result_for(frame, "critical", task_id="t3"), now + 3, clients, 0)
    # the same alert, updated, under its own id (not t3's: a receiver keyed by id had two alerts)
    assert escalated is not None and escalated.level == "critical" and escalated.task_id == "t1"
    kept = agg.alerts.latest("cam-1", 100)
    assert len(kept) == 1 and kept[0]["count"] == 3


def test_only_detections_that_made_a_task_are_kept_and_a_cameras_frame_is_taken_once_a_second():
    join = DetectionJoin(detections={}, camera_view={})
    now = 1_000.0
    record_detection(join, detection("cam-1", 1), now, 0, joined=False)
    assert join.detections == {}  # no task, never joined
    assert join.frames["cam-1"]["latest_detection"]["frame_seq"] == 1  # type: ignore[index]
    kept = detection("cam-1", 2)
    record_detection(join, kept, now + 0.5, 0, joined=True)
    assert list(join.detections) == [kept.detection_id]
    assert join.frames["cam-1"]["latest_detection"]["frame_seq"] == 1  # type: ignore[index]
    record_detection(join, detection("cam-2", 7), now + 0.5, 0, joined=False)  # cameras apart
    assert join.frames["cam-2"]["latest_detection"]["frame_seq"] == 7  # type: ignore[index]
    record_detection(join, detection("cam-1", 3), now + 1.0, 0, joined=False)
    assert join.frames["cam-1"]["latest_detection"]["frame_seq"] == 3  # type: ignore[index]
    join.forget_frames()  # partitions revoked: the camera may become another worker's
    assert join.frames == {} and join.camera_view == {}
    record_detection(join, detection("cam-1", 4), now + 1.1, 0, joined=False)
    assert join.frames["cam-1"]["latest_detection"]["frame_seq"] == 4  # type: ignore[index]


async def test_a_result_without_its_detection_is_kept_unjoined_and_low_risk_raises_no_alert(clients):
    agg = Aggregation(detections={}, results={}, camera_view={})
    assert aggregate(agg, result_for(9, "low"), time.time(), clients, 0) is None
    entry = agg.results["t1"]
    assert entry is not None and not entry["joined"]


async def test_the_scheduler_adopts_other_workers_key_states_and_its_partition_share(clients):
    from agents.llm_scheduler import sync_key_pool

    later = time.time() + 100
    persisted = {
        "key-1": {
            "alias": "key-1",
            "cooldown_until": 0.0,
            "disabled": True,
            "disabled_reason": "disabled by operator",
            "disabled_until": None,
            "updated_at": later,
        }
    }
    sync_key_pool(clients, persisted, owned=frozenset({0, 1}))  # type: ignore[arg-type]
    assert clients.pool.share == pytest.approx(2 / clients.settings.topic_partitions)
    assert clients.global_cap.share == pytest.approx(2 / clients.settings.topic_partitions)
    states = {row["alias"]: row["state"] for row in clients.pool.snapshot()}
    assert states == {"key-1": "DISABLED", "key-2": "AVAILABLE"}


async def test_the_worker_lifecycle_builds_the_clients_at_start_and_closes_them_at_stop():
    import agents.lifecycle  # noqa: F401  (registers the start and stop callbacks)
    from agents.worker_clients import current_or_none
    from streams.app import app

    assert current_or_none() is None
    await app.lifecycle.on_start()
    try:
        assert current_or_none() is not None
    finally:
        await app.lifecycle.on_stop()
    assert current_or_none() is None


async def test_an_alert_reaches_the_alerts_table_at_once_not_after_the_write_interval(clients):
    """alerts were held up to state_write_s and nothing flushed them: a rebalance dropped an alert
    raised a second after the camera's last write, and the next owner judged it again or never had it."""
    from streams.write_behind import WriteBehind

    table: dict[bytes, object] = {}
    held = WriteBehind(table, 60.0)  # type: ignore[var-annotated]
    records: dict[bytes, object] = {}
    agg = Aggregation(detections={}, results={}, camera_view={}, alerts=AlertBook(held, records))
    now = time.time()
    assert aggregate(agg, result_for(3, "high"), now, clients, 0) is not None
    assert aggregate(agg, result_for(4, "critical", task_id="t9"), now + 1, clients, 0) is not None
    assert [row[0] for row in table[camera_key("cam-1")]] == ["t9", "t1"]  # type: ignore[attr-defined]
    assert set(records) == {record_key("cam-1", t) for t in ("t1", "t9")} and not held.dirty
