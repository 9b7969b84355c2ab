"""Task generation decisions: new, changed, refresh, and the camera's budget."""

from __future__ import annotations

from agents.task_policy import Budget, plan_tasks
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


def test_old_frames_make_no_tasks():
    state, _, _ = plan_tasks(None, detection("c", 5), 100.0, BUDGET)
    _, decisions, skipped = plan_tasks(state, detection("c", 4), 100.5, BUDGET)
    assert decisions == [] and skipped == {"stale_frame": 1}


def test_a_redelivered_frame_makes_the_same_tasks_again():
    """After a crash the state may say 'assessed' while the task never reached Kafka."""
    state, first, _ = plan_tasks(None, detection("c", 5), 100.0, BUDGET)
    state, _, _ = plan_tasks(state, detection("c", 6, track_base=50), 100.5, BUDGET)
    _, again, _ = plan_tasks(state, detection("c", 5), 101.0, BUDGET)
    assert [d.group.group_id for d in again] == [d.group.group_id for d in first]
    assert [d.reason for d in again] == ["replay"]
