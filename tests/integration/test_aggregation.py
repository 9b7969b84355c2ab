"""The end of the pipeline: routing between workers, redelivered results, alerts, the WebSocket relay."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from ops.http import get_json
from sim.records import detection, produce, produce_detections, risk_result
from streams.records import to_bytes
from tests.conftest import SIM_KEYS, wait_until

pytestmark = pytest.mark.integration


def metric(port: int, name: str) -> float:
    from ops.http import get_text

    for line in get_text(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def results(port: int) -> dict[str, dict[str, object]]:
    return get_json(f"http://127.0.0.1:{port}/results/")["results"]


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_two_workers_answer_the_same_for_every_camera(kafka, deployment, start_worker, bind, redis_url):
    """#12.7: bound to 0.0.0.0, every worker advertised http://0.0.0.0:6066 and forwarded requests went nowhere."""
    first = start_worker({"ROADWATCH_WEB_HOST": bind})
    second = start_worker({"ROADWATCH_WEB_HOST": bind})
    for worker in (first, second):
        advertised = get_json(f"http://127.0.0.1:{worker.port}/health")["url"]
        assert "0.0.0.0" not in advertised and advertised.endswith(f":{worker.port}"), advertised
    cameras = [f"cam-{i}" for i in range(8)]
    produce_detections(
        kafka.bootstrap,
        deployment.prefix + "detection-results",
        [detection(cam, seq) for cam in cameras for seq in range(2)],
    )

    def total() -> int:
        return len(results(first.port)) + len(results(second.port))

    wait_until(lambda: total() == 16, 90, "16 results over two workers")
    assert results(first.port) and results(second.port), "both workers own cameras"
    for cam in cameras:
        a = get_json(f"http://127.0.0.1:{first.port}/cameras/{cam}/")
        b = get_json(f"http://127.0.0.1:{second.port}/cameras/{cam}/")
        assert a == b and a["camera_id"] == cam and a["counts"] == {"ok": 2}
        # the latest frame is held by the worker that consumed the camera's detections: the one answering
        assert a["latest_detection"]["frame_seq"] in (0, 1), a

    # the dashboard's lists: any worker lists every camera (those of the other through the cache),
    # and every worker's alerts
    def listed(port: int) -> list[str]:
        return sorted(c["camera_id"] for c in get_json(f"http://127.0.0.1:{port}/cameras/")["cameras"])

    for worker in (first, second):
        wait_until(lambda w=worker: listed(w.port) == cameras, 20, f"all cameras listed by :{worker.port}")
    alerted = {
        a["camera_id"]
        for port in (first.port, second.port)
        for a in get_json(f"http://127.0.0.1:{port}/alerts/")["alerts"]
    }
    assert alerted, "the frames alert"
    for worker in (first, second):
        wait_until(
            lambda w=worker: (
                {a["camera_id"] for a in get_json(f"http://127.0.0.1:{w.port}/alerts/")["alerts"]} == alerted
            ),
            20,
            f"every worker's alerts at :{worker.port}",
        )
    # what other workers' alerts come through is not trusted: a bad entry is left out, not a 500
    bad = [b"not json", b'{"raised_at": null}', b'{"camera_id": "x", "task_id": "y", "raised_at": "soon"}']
    redis.Redis.from_url(redis_url).lpush(f"{deployment.app_id}{deployment.prefix}:alerts", *bad)
    shown = get_json(f"http://127.0.0.1:{first.port}/alerts/")
    assert {a["camera_id"] for a in shown["alerts"]} == alerted and shown["verdict_wait_s"] > 0


def test_redelivering_results_changes_no_alert_count_or_cache_entry(kafka, deployment, start_worker, redis_url):
    received: list[dict[str, object]] = []
    hook = webhook_receiver(received)
    worker = start_worker({"ROADWATCH_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{hook.server_port}/alerts"})
    now = time.time() * 1000
    batch = [
        risk_result(
            "cam-d",
            f"redeliver-{i}",
            detection_id=f"cam-d:{i}",
            group_id=f"g{i}",
            level="critical" if i % 2 else "low",
            score=0.9 if i % 2 else 0.2,
            captured_at=now - 1000,
            completed_at=now,
        )
        for i in range(6)
    ]
    topic = deployment.prefix + "risk-assessment-results"
    asyncio.run(produce(kafka.bootstrap, topic, [("cam-d", to_bytes(r)) for r in batch]))
    wait_until(lambda: len(results(worker.port)) == 6, 60, "6 results")
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: client.get(f"{deployment.app_id}{deployment.prefix}:task:redeliver-5") is not None, 20, "cached")

    def snapshot() -> tuple[object, ...]:
        view = get_json(f"http://127.0.0.1:{worker.port}/cameras/cam-d/")
        alerts = get_json(f"http://127.0.0.1:{worker.port}/alerts/")["alerts"]
        cache = {
            k: client.get(k) for k in sorted(client.keys(f"{deployment.app_id}{deployment.prefix}:task:redeliver-*"))
        }
        return view["counts"], [a["task_id"] for a in alerts], cache, metric(worker.port, "roadwatch_alerts_total")

    before = snapshot()
    asyncio.run(produce(kafka.bootstrap, topic, [("cam-d", to_bytes(r)) for r in batch]))
    wait_until(lambda: metric(worker.port, "roadwatch_duplicate_results_total") >= 6, 30, "6 duplicates seen")
    assert snapshot() == before
    assert len(before[1]) == 3  # the three critical ones alerted once each
    wait_until(lambda: len(received) == 3, 20, "3 alerts at the webhook")
    assert sorted(a["task_id"] for a in received) == ["redeliver-1", "redeliver-3", "redeliver-5"]
    time.sleep(1)
    assert len(received) == 3, "redelivered results post no alert again"
    hook.shutdown()


def test_repeated_alerts_for_one_group_merge(kafka, deployment, start_worker):
    worker = start_worker()
    now = time.time() * 1000
    levels = ["high", "high", "critical", "high"]
    batch = [
        risk_result(
            "cam-m",
            f"merge-{i}",
            detection_id=f"cam-m:{i}",
            group_id="g7-8",
            level=level,
            score=0.8,
            summary=f"r{i}",
            captured_at=now,
            completed_at=now,
        )
        for i, level in enumerate(levels)
    ]
    asyncio.run(
        produce(kafka.bootstrap, deployment.prefix + "risk-assessment-results", [("cam-m", to_bytes(r)) for r in batch])
    )
    wait_until(lambda: len(results(worker.port)) == 4, 60, "4 results")
    alerts = get_json(f"http://127.0.0.1:{worker.port}/alerts/")["alerts"]
    assert len(alerts) == 1 and alerts[0]["count"] == 4 and alerts[0]["level"] == "critical"
    assert metric(worker.port, 'roadwatch_alerts_total{camera_id="cam-m",level="high"}') == 1
    assert metric(worker.port, 'roadwatch_alerts_total{camera_id="cam-m",level="critical"}') == 1


def webhook_receiver(
    received: list[dict[str, object]], hang: set[str] | None = None, arrivals: list[float] | None = None
) -> ThreadingHTTPServer:
    """A real HTTP endpoint on loopback that records the alerts POSTed to it (and, into ``arrivals``, when each
    came); alerts of the cameras in ``hang`` (changeable while it runs) are held 30 s and never answered."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if hang and body.get("camera_id") in hang:
                time.sleep(30)
                return
            if arrivals is not None:
                arrivals.append(time.time())
            received.append(body)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_websocket_client_of_one_worker_sees_the_cameras_of_another(kafka, deployment, start_worker):
    import aiohttp

    first = start_worker()
    second = start_worker()
    cameras = [f"cam-{i}" for i in range(8)]

    async def listen() -> set[str]:
        seen: set[str] = set()
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{first.port}/ws?token={os.environ['ROADWATCH_WEB_TOKEN']}"
            async with session.ws_connect(url) as ws:
                await asyncio.sleep(1.0)  # subscribed on both sides
                await asyncio.to_thread(
                    produce_detections,
                    kafka.bootstrap,
                    deployment.prefix + "detection-results",
                    [detection(cam, 0) for cam in cameras],
                )
                deadline = time.monotonic() + 60
                while len(seen) < len(cameras) and time.monotonic() < deadline:
                    msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
                    event = json.loads(msg.data)
                    if event["type"] == "result":
                        seen.add(event["camera_id"])
        return seen

    seen = asyncio.run(listen())
    owned_by_second = {c for c in cameras if c in {r["camera_id"] for r in results(second.port).values()}}
    assert owned_by_second, "the second worker owns some cameras"
    assert seen == set(cameras)


def alert_results(camera_id: str, n: int, now_ms: float) -> list[tuple[str, bytes]]:
    return [
        (
            camera_id,
            to_bytes(
                risk_result(
                    camera_id,
                    f"{camera_id}-{i}",
                    detection_id=f"{camera_id}:{i}",
                    group_id=f"g{i}",  # a new group each: each raises its own alert
                    captured_at=now_ms,
                    completed_at=now_ms,
                )
            ),
        )
        for i in range(n)
    ]


def test_a_hanging_webhook_delays_no_other_alert_and_a_restart_sends_what_was_not_delivered(
    kafka, deployment, start_worker
):
    """#12.13: alerts went out one at a time from an in-memory queue: a hanging receiver held each
    for about 23 s (hours for a queue of 1000), and a crash lost them all."""
    received: list[dict[str, object]] = []
    hang = {"cam-slow"}
    hook = webhook_receiver(received, hang)
    env = {"ROADWATCH_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{hook.server_port}/alerts"}
    worker = start_worker(env)
    topic = deployment.prefix + "risk-assessment-results"
    now = time.time() * 1000
    asyncio.run(produce(kafka.bootstrap, topic, alert_results("cam-slow", 6, now)))
    time.sleep(1.0)  # the slow camera's alerts are at the receiver, hanging
    sent = time.monotonic()
    asyncio.run(produce(kafka.bootstrap, topic, alert_results("cam-fast", 6, now)))
    wait_until(lambda: sum(a["camera_id"] == "cam-fast" for a in received) == 6, 20, "the fast camera's alerts")
    took = time.monotonic() - sent
    print(f"6 alerts delivered {took:.1f} s after they were raised, 6 others hanging")
    assert took < 10
    assert not any(a["camera_id"] == "cam-slow" for a in received)

    worker.kill()  # a crash with six deliveries unfinished
    hang.clear()
    again = start_worker(env)
    wait_until(lambda: sum(a["camera_id"] == "cam-slow" for a in received) >= 6, 60, "the unfinished alerts re-sent")
    assert {a["task_id"] for a in received} >= {f"cam-slow-{i}" for i in range(6)} | {f"cam-fast-{i}" for i in range(6)}
    assert again.popen.poll() is None
    hook.shutdown()


def test_an_operator_disable_on_one_worker_reaches_the_other_on_the_shipped_store(kafka, deployment, start_worker):
    """Key state is written outside events (an operator's POST, the 1 s sync). Faust's RocksDB store
    refuses such writes after the changelog send; key_pool now uses the memory store, rebuilt from
    its changelog. Either way the switch must reach every worker."""
    from ops.http import post_json

    first = start_worker()
    second = start_worker()
    post_json(f"http://127.0.0.1:{first.port}/keys/key-2/disable", {})

    def state_on_second() -> str:
        keys = {k["alias"]: k for k in get_json(f"http://127.0.0.1:{second.port}/keys/")["keys"]}
        return str(keys["key-2"]["state"])

    wait_until(lambda: state_on_second() == "DISABLED", 20, "the disable seen by the other worker")
    post_json(f"http://127.0.0.1:{second.port}/keys/key-2/enable", {})
    wait_until(
        lambda: (
            {k["alias"]: k for k in get_json(f"http://127.0.0.1:{first.port}/keys/")["keys"]}["key-2"]["state"]
            != "DISABLED"
        ),
        20,
        "the enable seen by the first worker",
    )


def test_a_graceful_stop_keeps_the_spend_it_held(kafka, deployment, start_worker):
    """A stop revokes no partitions: the spend held in memory (``spend_write_s``) was lost at every
    restart, and a rolling deploy could overrun a daily budget."""
    env = {
        "ROADWATCH_VLM_PRICES": '{"qwen-vl-plus": {"input_per_1k": 0.002, "output_per_1k": 0.006}}',
        "ROADWATCH_SPEND_WRITE_S": "300",  # after a row's first write, only the stop itself can write it
        "ROADWATCH_VLM_KEYS": SIM_KEYS[0],  # one account: one row holding every call but the first
    }
    worker = start_worker(env)
    produce_detections(
        kafka.bootstrap,
        deployment.prefix + "detection-results",
        [detection("cam-s", seq, track_base=10 * seq) for seq in range(4)],
    )
    wait_until(lambda: len(results(worker.port)) >= 4, 60, "4 results")

    def calls_today(port: int) -> int:
        spend = get_json(f"http://127.0.0.1:{port}/keys/")["spend_today"]
        return int(sum(row["calls"] for row in spend.values()))

    held = calls_today(worker.port)
    assert held >= 4
    worker.stop()
    again = start_worker(env)
    wait_until(lambda: calls_today(again.port) == held, 30, f"{held} calls of today's spend after the restart")


async def _set_max_message_bytes(bootstrap: str, topic: str, value: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(value)})]
        )
    finally:
        await admin.close()


def test_results_the_broker_refused_are_made_again_not_lost(kafka, deployment, start_worker):
    """Faust only logs a record it could not deliver and commits the events behind it: with the
    results topic refusing every record for a while, those tasks' results were lost for good."""
    worker = start_worker()
    wait_until(lambda: get_json(f"http://127.0.0.1:{worker.port}/health")["partitions"] > 0, 60, "partitions")
    results_topic = deployment.prefix + "risk-assessment-results"
    asyncio.run(_set_max_message_bytes(kafka.bootstrap, results_topic, 100))  # every result refused
    try:
        produce_detections(
            kafka.bootstrap,
            deployment.prefix + "detection-results",
            [detection(f"cam-r{i}", 1, track_base=10 * i) for i in range(6)],
        )
        wait_until(lambda: b"_on_published error" in worker.log.read_bytes(), 60, "a result refused (Faust's log)")
        time.sleep(3)
        assert len(results(worker.port)) == 0
    finally:
        asyncio.run(_set_max_message_bytes(kafka.bootstrap, results_topic, 1_048_588))
    wait_until(lambda: len(results(worker.port)) == 6, 90, "all 6 results once the broker takes them")
