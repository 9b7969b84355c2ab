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
    assert guard.check({A: 5, B: 0}, {A: 10, B: 3}, {}, {}, now=131.0) == ["t-detection-results[0]"]
    assert guard.stalled == ["t-detection-results[0]"]


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
