"""The WebSocket hub: a slow browser loses old results, not alerts, and one that catches up stays."""

from __future__ import annotations

import asyncio
import json

from streams.live import CLOSE, LiveHub


def _drain(sub) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    while sub.pending:
        out.append(asyncio.run(sub.get()))
    return out


def test_a_client_that_catches_up_after_each_burst_is_never_let_go():
    hub = LiveHub(max_drops=100)
    sub = hub.subscribe(None)
    for _ in range(20):  # each burst overflows its mailbox by 100 (all of max_drops)
        for n in range(sub.maxsize + 100):
            hub.publish("result", "cam-1", {"n": n})
        assert sub in hub.subscribers
        assert len(_drain(sub)) == sub.maxsize
    # one that does not read at all goes once its mailbox has stayed full max_drops times in a row
    for n in range(sub.maxsize + 101):
        hub.publish("result", "cam-1", {"n": n})
    assert sub not in hub.subscribers
    assert _drain(sub) == [CLOSE]


def test_a_full_mailbox_drops_the_oldest_results_and_keeps_the_alerts():
    hub = LiveHub()
    sub = hub.subscribe(None)
    hub.publish("alert", "cam-1", {"task_id": "a-1"})
    for n in range(sub.maxsize - 1):
        hub.publish("result", "cam-1", {"n": n})
    hub.publish("alert", "cam-2", {"task_id": "a-2"})  # full: the oldest result makes room
    for n in range(50):
        hub.publish("result", "cam-1", {"n": 1000 + n})
    got = [json.loads(text) for text in _drain(sub)]
    assert len(got) == sub.maxsize
    alerts = [m["data"]["task_id"] for m in got if m["type"] == "alert"]
    assert alerts == ["a-1", "a-2"]
    results = [m["data"]["n"] for m in got if m["type"] == "result"]
    assert results[0] == 51 and results[-1] == 1049  # the 51 oldest results went


def test_a_mailbox_of_alerts_only_drops_the_oldest_alert():
    hub = LiveHub()
    sub = hub.subscribe(frozenset({"cam-1"}))
    for n in range(sub.maxsize + 3):
        hub.publish("alert", "cam-1", {"n": n})
        hub.publish("alert", "cam-2", {"n": n})  # not subscribed: never queued
    got = [json.loads(text)["data"]["n"] for text in _drain(sub)]
    assert got == list(range(3, sub.maxsize + 3))


def test_a_result_for_a_mailbox_of_alerts_is_the_one_dropped():
    hub = LiveHub()
    sub = hub.subscribe(None)
    for n in range(sub.maxsize):
        hub.publish("alert", "cam-1", {"n": n})
    hub.publish("result", "cam-1", {"n": -1})
    got = [json.loads(text) for text in _drain(sub)]
    assert [m["type"] for m in got] == ["alert"] * sub.maxsize and got[0]["data"]["n"] == 0


def test_a_client_reading_at_half_the_rate_is_let_go_in_the_end():
    hub = LiveHub(max_drops=100)
    sub = hub.subscribe(None)
    for n in range(5000):
        hub.publish("result", "cam-1", {"n": n})
        if n % 2 and sub.pending:
            asyncio.run(sub.get())  # it never reads its mailbox empty
        if sub not in hub.subscribers:
            break
    assert sub not in hub.subscribers and n < 1000
