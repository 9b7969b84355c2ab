"""The stall guard's rule: waiting messages and nothing moving for the timeout, nothing in flight."""

from __future__ import annotations

from faust.types import TP

from streams.lag import StallGuard

A = TP("t-detection-results", 0)
B = TP("t-assessment-tasks", 1)


def test_a_partition_with_waiting_messages_and_nothing_moving_is_stalled():
    guard = StallGuard(timeout_s=30)
    assert guard.check({A: 5, B: 0}, {A: 10, B: 3}, {}, {}, now=100.0) == []
    assert guard.check({A: 5, B: 0}, {A: 10, B: 3}, {}, {}, now=125.0) == []
    stalled = ["t-detection-results[0] (5 waiting, nothing moved for 30 s)"]
    assert guard.check({A: 5, B: 0}, {A: 10, B: 3}, {}, {}, now=131.0) == stalled
    assert guard.stalled == stalled


def test_progress_of_any_kind_is_not_a_stall():
    guard = StallGuard(timeout_s=30)
    guard.check({A: 5}, {A: 10}, {}, {}, now=100.0)
    assert guard.check({A: 5}, {A: 12}, {}, {}, now=140.0) == []  # the commit moved
    assert guard.check({A: 5}, {A: 12}, {A: 160.0}, {}, now=180.0) == []  # an event was delivered
    assert guard.check({A: 5}, {A: 12}, {}, {A: 7}, now=300.0) == []  # a task in flight: busy, not stalled
    assert guard.check({A: 0}, {A: 12}, {}, {}, now=900.0) == []  # nothing waiting


def test_a_rejoin_restarts_the_clock_and_a_revoked_partition_is_forgotten():
    guard = StallGuard(timeout_s=30)
    guard.check({A: 5}, {A: 10}, {}, {}, now=100.0)
    assert guard.check({A: 5}, {A: 10}, {}, {}, now=131.0)
    guard.rejoined_at = 131.0
    assert guard.check({A: 5}, {A: 10}, {}, {}, now=150.0) == []
    guard.check({}, {}, {}, {}, now=151.0)
    assert A not in guard.moved_at


def test_an_event_in_flight_far_past_any_deadline_is_a_hung_agent():
    guard = StallGuard(timeout_s=30, hung_after_s=90)
    assert guard.check({A: 5}, {A: 10}, {}, {A: 10}, now=100.0) == []
    assert guard.check({A: 5}, {A: 10}, {}, {A: 10}, now=150.0) == []  # busy: a slow VLM call
    assert guard.check({A: 5}, {A: 10}, {}, {A: 10}, now=191.0) == [
        "t-detection-results[0] (an event in flight for over 90 s)"
    ]
    assert guard.check({A: 5}, {A: 11}, {}, {A: 11}, now=192.0) == []  # it moved on


def test_a_hole_before_finished_offsets_is_a_skipped_record_after_ten_seconds():
    """Offsets after the head are done, the head is neither done nor in flight: the fetch loop skipped it."""
    guard = StallGuard(timeout_s=30, hole_after_s=10)
    assert guard.check({A: 5}, {A: 10}, {A: 99.0}, {}, now=100.0, holes={A: 10}) == []
    assert guard.check({A: 5}, {A: 10}, {A: 105.0}, {}, now=105.0, holes={A: 10}) == []  # events still flow
    assert guard.check({A: 5}, {A: 10}, {A: 111.0}, {}, now=111.0, holes={A: 10}) == [
        "t-detection-results[0] (offset 10 never delivered)"
    ]


def test_a_hole_that_fills_or_moves_restarts_its_clock():
    guard = StallGuard(timeout_s=30, hole_after_s=10)
    guard.check({A: 5}, {A: 10}, {}, {}, now=100.0, holes={A: 10})
    assert guard.check({A: 5}, {A: 10}, {}, {A: 10}, now=105.0, holes={}) == []  # the head got delivered
    assert guard.check({A: 5}, {A: 12}, {}, {}, now=112.0, holes={A: 12}) == []  # a new hole, a new clock
    assert guard.check({A: 5}, {A: 12}, {}, {}, now=123.0, holes={A: 12}) != []
