"""Alert merging: repeats for one group within the cooldown become one alert."""

from __future__ import annotations

from agents.alerting import merge_alert


def alert(task: str, group: str, level: str, at_s: float, score: float = 0.8) -> dict[str, object]:
    return {
        "task_id": task,
        "group_id": group,
        "level": level,
        "score": score,
        "summary": task,
        "raised_at": at_s * 1000,
        "camera_id": "c",
    }


def test_a_new_group_is_published():
    recent, publish = merge_alert([], alert("t1", "g1", "high", 100), 60, 100)
    assert publish and recent[0]["count"] == 1


def test_repeats_within_the_cooldown_merge_and_publish_only_on_escalation():
    recent, _ = merge_alert([], alert("t1", "g1", "high", 100), 60, 100)
    recent, publish = merge_alert(recent, alert("t2", "g1", "high", 130, score=0.82), 60, 100)
    assert not publish and len(recent) == 1 and recent[0]["count"] == 2 and recent[0]["score"] == 0.82
    recent, publish = merge_alert(recent, alert("t3", "g1", "critical", 150, score=0.95), 60, 100)
    assert publish and len(recent) == 1 and recent[0]["level"] == "critical" and recent[0]["count"] == 3


def test_after_the_cooldown_or_for_another_group_a_new_alert_is_raised():
    recent, _ = merge_alert([], alert("t1", "g1", "high", 100), 60, 100)
    recent, publish = merge_alert(recent, alert("t2", "g2", "high", 101), 60, 100)
    assert publish and len(recent) == 2
    recent, publish = merge_alert(recent, alert("t3", "g1", "high", 200), 60, 100)
    assert publish and len(recent) == 3 and recent[0]["task_id"] == "t3"


def test_only_the_last_alerts_are_kept():
    recent: list[dict[str, object]] = []
    for i in range(120):
        recent, _ = merge_alert(recent, alert(f"t{i}", f"g{i}", "high", i), 60, 100)
    assert len(recent) == 100 and recent[0]["task_id"] == "t119"


def test_versions_of_one_alert_reach_the_webhook_in_order_while_other_alerts_go_side_by_side():
    import asyncio
    import time

    from aiohttp import web

    from agents.alerting import WebhookSender
    from tests.conftest import serve_on_loopback

    async def scenario() -> tuple[list[str], dict[object, object]]:
        arrived: list[str] = []
        refused: set[str] = set()

        async def receive(request: web.Request) -> web.Response:
            body = await request.json()
            name = f"{body['group_id']}:{body.get('verdict') or body['source']}"
            if name == "g1:measured" and name not in refused:
                refused.add(name)  # the first try of the measured alert fails: retried 0.5 s later
                return web.Response(status=503)
            arrived.append(name)
            return web.Response()

        server = web.Application()
        server.router.add_post("/hook", receive)
        runner, port = await serve_on_loopback(server)
        sender = WebhookSender(f"http://127.0.0.1:{port}/hook", retries=2)
        now = time.time() * 1000

        def version(group: str, source: str) -> dict[str, object]:
            return {"task_id": f"t-{group}", "camera_id": "c", "group_id": group, "raised_at": now, "source": source}

        measured = version("g1", "measured")
        judged = {**measured, "verdict": "confirmed"}
        other = version("g2", "vlm")
        try:
            outcomes = await asyncio.gather(sender.send(measured), sender.send(judged), sender.send(other))
        finally:
            await sender.close()
            await runner.cleanup()
        assert outcomes == ["ok", "ok", "ok"]
        return arrived, getattr(sender, "_in_order", {})

    arrived, locks = asyncio.run(scenario())
    # the verdict waited for the retried measured alert; the other group's alert did not wait
    assert arrived == ["g2:vlm", "g1:measured", "g1:confirmed"], arrived
    assert not locks  # none left behind


def test_an_alert_about_a_frame_long_past_is_not_posted_however_late_it_was_raised():
    """A results backlog drained an hour later raised its alerts "now": each went out as fresh."""
    import asyncio
    import time

    from agents.alerting import WebhookSender

    async def scenario() -> str:
        sender = WebhookSender("http://127.0.0.1:9/hook", retries=0, max_age_s=300.0)  # nothing listens
        now = time.time() * 1000
        old = {"task_id": "t", "camera_id": "c", "group_id": "g", "raised_at": now, "captured_at": now - 3_600_000}
        try:
            return await sender.send(old)
        finally:
            await sender.close()

    assert asyncio.run(scenario()) == "expired"


def test_a_hung_receiver_holds_an_alert_and_the_versions_behind_it_only_so_long():
    """Each POST to a receiver that never answers took 4 x 5 s plus backoff; the verdict behind the
    measured alert waited for all of it (47 s), past the rebalance timeout the worker must keep."""
    import asyncio
    import time

    from aiohttp import web

    from agents.alerting import WebhookSender
    from tests.conftest import serve_on_loopback

    async def scenario() -> tuple[list[str], float]:
        async def hang(request: web.Request) -> web.Response:
            await asyncio.sleep(4)
            return web.Response()

        server = web.Application()
        server.router.add_post("/hook", hang)
        runner, port = await serve_on_loopback(server)
        sender = WebhookSender(f"http://127.0.0.1:{port}/hook", timeout_s=0.5, retries=3, total_s=1.0)
        now = time.time() * 1000
        measured = {"task_id": "t", "camera_id": "c", "group_id": "g", "raised_at": now, "source": "measured"}
        started = time.monotonic()
        try:
            outcomes = await asyncio.gather(sender.send(measured), sender.send({**measured, "verdict": "confirmed"}))
            took = time.monotonic() - started
        finally:
            await sender.close()
            await runner.cleanup()
        return list(outcomes), took

    outcomes, took = asyncio.run(scenario())
    assert outcomes == ["failed", "failed"]
    assert took < 2.5  # each within its total (1 s), the wait for the first included: not 4 x 0.5 s + backoff each
