"""Task generation decisions: new, changed, refresh, and the camera's budget."""

from __future__ import annotations

from agents.task_policy import Budget, GlobalCap, plan_tasks
from sim.records import detection

BUDGET = Budget(refresh_s=20.0, per_min=6.0, burst=3.0, min_interest=0.3)


def test_a_new_group_is_assessed_once_and_then_not_until_refresh():
    state, decisions, _ = plan_tasks(None, detection("c", 1, track_base=10), 100.0, BUDGET)
    assert [d.reason for d in decisions] == ["new"]
    state, decisions, skipped = plan_tasks(state, detection("c", 2, track_base=10), 101.0, BUDGET)
    assert decisions == [] and skipped == {"unchanged": 1}
    state, decisions, _ = plan_tasks(state, detection("c", 3, track_base=10), 121.0, BUDGET)
    assert [d.reason for d in decisions] == ["refresh"]


def test_a_shrinking_gap_is_a_material_change():
    state, _, _ = plan_tasks(None, detection("c", 1, track_base=10, gap=1.0), 100.0, BUDGET)
    _, decisions, _ = plan_tasks(state, detection("c", 2, track_base=10, gap=0.9), 101.0, BUDGET)
    assert decisions == []
    _, decisions, _ = plan_tasks(state, detection("c", 2, track_base=10, gap=0.5), 101.0, BUDGET)
    assert [d.reason for d in decisions] == ["changed"]


def test_the_token_bucket_bounds_the_spend_and_refills():
    state = None
    made = 0
    for seq in range(10):  # a new group every frame, all at once
        state, decisions, _ = plan_tasks(state, detection("c", seq), 100.0, BUDGET)
        made += len(decisions)
    assert made == 3 and state is not None and state["skipped"]["budget"] == 7
    state, decisions, _ = plan_tasks(state, detection("c", 11), 110.0, BUDGET)  # 10 s at 6/min: 1 token
    assert len(decisions) == 1


def test_a_late_frame_is_planned_once_without_moving_the_clock():
    """A record read again only after newer ones (a fetch hole, streams.faust_seam) still gets its task."""
    late = detection("c", 4)  # captured before frame 5, read after it
    state, _, _ = plan_tasks(None, detection("c", 5), 100.0, BUDGET)
    state, decisions, _ = plan_tasks(state, late, 100.5, BUDGET)
    assert [d.reason for d in decisions] == ["new"] and state["last_seq"] == 5
    _, again, skipped = plan_tasks(state, late, 101.0, BUDGET)
    assert [d.reason for d in again] == ["replay"] and skipped == {}


def test_a_producer_that_restarts_its_frame_count_is_not_ignored():
    state, _, _ = plan_tasks(None, detection("c", 500), 100.0, BUDGET)
    state, decisions, _ = plan_tasks(state, detection("c", 0, track_base=900), 101.0, BUDGET)
    assert [d.reason for d in decisions] == ["new"] and state["last_seq"] == 0
    state, decisions, _ = plan_tasks(state, detection("c", 1, track_base=902), 102.0, BUDGET)
    assert [d.reason for d in decisions] == ["new"] and state["last_seq"] == 1
    assert sorted(state["recent"]) == [":0", ":1"]  # the old count's frames are forgotten


def test_a_redelivered_frame_makes_the_same_tasks_again():
    """After a crash the state may say 'assessed' while the task never reached Kafka."""
    frame = detection("c", 5)
    state, first, _ = plan_tasks(None, frame, 100.0, BUDGET)
    state, _, _ = plan_tasks(state, detection("c", 6, track_base=50), 100.5, BUDGET)
    _, again, _ = plan_tasks(state, frame, 101.0, BUDGET)  # the same record, read again
    assert [d.group.group_id for d in again] == [d.group.group_id for d in first]
    assert [d.reason for d in again] == ["replay"]


def vehicle_clusters_planned(budget: Budget, frames: int, every_s: float):  # type: ignore[no-untyped-def]
    """Tasks made for a new vehicle cluster (no pedestrian) on each of ``frames`` frames ``every_s`` apart;
    and the camera's state after them."""
    det = detection("c", 1)
    cluster = det.groups[0].__class__(
        group_id="g90-91", kind="vehicle_cluster", members=[], track_ids=[90, 91], bbox=[0, 0, 9, 9], interest=0.4
    )
    state = None
    made = 0
    for seq in range(frames):
        d = detection("c", seq + 1)
        cluster = cluster.__class__(**{**cluster.asdict(), "group_id": f"g{seq}", "track_ids": [1000 + seq]})
        d = d.__class__(**{**d.asdict(), "groups": [cluster], "objects": []})
        state, decisions, _ = plan_tasks(state, d, 100.0 + every_s * seq, budget)
        made += len(decisions)
    return made, state


def test_risk_groups_keep_a_reserve_that_vehicle_clusters_cannot_spend():
    budget = Budget(refresh_s=20.0, per_min=6.0, burst=10.0, min_interest=0.3)
    # a new vehicle cluster every frame: it may only use what is above the reserve
    made, state = vehicle_clusters_planned(budget, 10, 0.0)
    assert made == 2  # 10 tokens, 8 kept back for pedestrians near vehicles
    _, decisions, _ = plan_tasks(state, detection("c", 20, track_base=500), 100.0, budget)
    assert [d.reason for d in decisions] == ["new"]


def test_a_car_driving_up_to_an_assessed_pair_is_new_but_the_same_pair_regrouped_is_not():
    state, _, _ = plan_tasks(None, detection("c", 1, track_base=10), 100.0, BUDGET)

    def with_vehicle(seq: int, track: int, x1: float):
        det = detection("c", seq, track_base=10)
        vehicle = det.objects[1].__class__(track_id=track, cls="bus", conf=0.9, bbox=[x1, 100.0, x1 + 120, 140.0])
        group = det.groups[0].__class__(
            **{
                **det.groups[0].asdict(),
                "group_id": f"g11-12-{track}",
                "members": [0, 1, 2],
                "track_ids": [11, 12, track],
            }
        )
        return det.__class__(**{**det.asdict(), "objects": [*det.objects, vehicle], "groups": [group]})

    # a bus beside the car, far from the pedestrian: clustered with them, but no new pair at risk
    state, decisions, skipped = plan_tasks(state, with_vehicle(2, 77, 220.0), 101.0, BUDGET)
    assert decisions == [] and skipped == {"unchanged": 1}
    # a bus right behind the pedestrian: a new pedestrian-vehicle pair, so a new task
    _, decisions, _ = plan_tasks(state, with_vehicle(3, 78, 60.0), 101.5, BUDGET)
    assert [d.reason for d in decisions] == ["new"]


def test_the_global_cap_splits_the_rate_among_workers():
    cap = GlobalCap(per_min=120.0)
    cap.share = 0.5  # this worker owns half the partitions: 60 a minute, burst 10 s of it
    assert cap.available(1000.0) == 10
    cap.spend(10)
    assert cap.available(1001.0) == 1  # one second at 1/s
    _, decisions, skipped = plan_tasks(None, detection("c", 1), 1001.0, BUDGET, cap=0)
    assert decisions == [] and skipped == {"global_cap": 1}
    assert GlobalCap(0).available(0.0) == float("inf")


def test_a_small_burst_still_lets_vehicle_clusters_through():
    budget = Budget(refresh_s=20.0, per_min=6.0, burst=4.0, min_interest=0.3)
    made, _ = vehicle_clusters_planned(budget, 5, 60.0)  # a new vehicle cluster a minute: the bucket is full each time
    assert made == 5  # the reserve for risky groups is never the whole bucket (it was 3.2 of 4: none ever)


def test_a_clock_stepped_back_does_not_drain_the_bucket():
    state, decisions, _ = plan_tasks(None, detection("c", 1, track_base=10), 1000.0, BUDGET)
    assert len(decisions) == 1  # 2 tokens left
    # the next frame is planned by a worker whose clock is ten minutes behind (or NTP stepped back)
    _, decisions, _ = plan_tasks(state, detection("c", 2, track_base=20), 400.0, BUDGET)
    assert [d.reason for d in decisions] == ["new"]


def test_a_worker_takes_one_partition_s_share_of_the_global_cap_until_its_first_sync():
    cap = GlobalCap(per_min=600.0, share=1 / 8)  # as worker_clients makes it: 8 partitions
    assert cap.available(1000.0) == 12  # 600 a minute x 1/8, a burst of 10 s: not the whole cap's 100
