"""The fault suite, on a 3-broker Apache Kafka cluster (replication 3, min ISR 2): killed and
restarted workers, a Redis outage, a revoked key, every key cooling, a VLM slower than the
consumer's max-poll interval. The broker kill is in test_cluster.py, on the same cluster."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import redis

from ops.http import get_json, get_text, post_json
from ops.kafka import KafkaCluster, free_port, port_open
from ops.stack import redis_command
from ops.verify import aggregated_counts, alert_versions, messages_per_task, verify_exactly_once
from sim.records import detection, produce_detections
from tests.conftest import SIM_KEYS, spawn, wait_until
from tests.integration.test_aggregation import metric

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka(kafka3: KafkaCluster) -> KafkaCluster:
    """Every test of this module runs on the 3-broker cluster."""
    return kafka3


def log_count(worker, text: str) -> int:
    return worker.log.read_text(errors="replace").count(text)


def results(port: int) -> dict[str, dict[str, object]]:
    return get_json(f"http://127.0.0.1:{port}/results/")["results"]


def assert_nothing_doubled(kafka, deployment, web_port: int, cameras: list[str], tasks: int) -> None:
    """No result aggregated twice and no alert raised twice, whatever was delivered twice."""
    assert aggregated_counts(web_port, cameras) == tasks, "a result was aggregated (counted) twice"
    alerts = alert_versions(kafka.bootstrap, deployment.prefix + "alerts")
    assert max(alerts.values(), default=0) <= 1, f"alerts raised twice: {[t for t, n in alerts.items() if n > 1]}"
    per_task = messages_per_task(kafka.bootstrap, deployment.prefix + "risk-assessment-results")
    print(f"result messages for {len(per_task)} tasks: {sum(per_task.values())} (redeliveries suppressed)")


def test_killing_a_worker_with_tasks_in_flight_loses_and_doubles_nothing(kafka, deployment, start_worker, sim_vlm):
    # slow VLM answers, so that the killed worker certainly has calls in flight
    post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"latency_ms": 1500, "p95_ms": 2500})
    try:
        survivor = start_worker()
        victim = start_worker()
        wait_until(
            lambda: (
                get_json(f"http://127.0.0.1:{victim.port}/health")["partitions"] > 0
                and get_json(f"http://127.0.0.1:{survivor.port}/health")["partitions"] > 0
            ),
            60,
            "both own partitions",
        )
        cameras = [f"cam-{i}" for i in range(8)]
        produce_detections(
            kafka.bootstrap,
            deployment.prefix + "detection-results",
            [detection(cam, seq) for seq in range(4) for cam in cameras],
        )
        in_flight = wait_until(
            lambda: sum(k["in_flight"] for k in get_json(f"http://127.0.0.1:{victim.port}/keys/")["keys"]),
            30,
            "the victim with VLM calls in flight",
            every_s=0.1,
        )
        killed_at = time.monotonic()
        victim.kill()

        def settled() -> object:
            r = verify_exactly_once(kafka.bootstrap, [survivor.port], drain_timeout_s=3, prefix=deployment.prefix)
            print(f"{time.monotonic() - killed_at:.0f}s after the kill: {r.line()}")
            return r if r.ok and r.tasks == 32 else None

        # bounded: 10 s session timeout, a rebalance, and should Faust leave a taken-over partition idle
        # (streams/lag.py), 30 s until the stall guard makes the survivor rejoin and read it again
        report = wait_until(settled, 120, "all 32 tasks aggregated by the survivor", every_s=5)
        resumed = time.monotonic() - killed_at
        rejoins = survivor.log.read_text().count("consumer stalled")
    finally:
        post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"latency_ms": 60, "p95_ms": 150})
    print(
        f"kill -9 with {in_flight} calls in flight: {report.line()}; all done {resumed:.1f}s after the kill; "
        f"stall-guard rejoins: {rejoins}"
    )
    assert in_flight >= 1
    assert report.missing == [] and report.unknown == [] and report.not_joined == 0
    # expired is a legitimate end for a task whose deadline passed while Faust held it (see above)
    assert set(report.statuses) <= {"ok", "expired"} and sum(report.statuses.values()) == 32
    assert_nothing_doubled(kafka, deployment, survivor.port, cameras, tasks=32)


def test_a_rolling_restart_of_every_worker_under_load_loses_and_doubles_nothing(kafka, deployment, start_worker):
    """Both workers are restarted one after the other (SIGTERM, then a new process) while
    detections keep arriving: every task ends with exactly one result.

    The workers get a task deadline of 120 s (the default is 30): what is measured here is loss
    and duplication, and a restart slower than 30 s on a loaded CI machine (a shutdown that
    needed SIGKILL, then the session timeout) would end tasks as ``expired``, which the kill -9
    test above covers. A stop that needs SIGKILL prints the worker's task stacks.
    """
    slow_restart_ok = {"ROADWATCH_TASK_DEADLINE_S": "120", "ROADWATCH_REBALANCE_TIMEOUT_S": "130"}
    workers = [start_worker(slow_restart_ok), start_worker(slow_restart_ok)]
    wait_until(
        lambda: all(get_json(f"http://127.0.0.1:{w.port}/health")["partitions"] > 0 for w in workers),
        60,
        "both own partitions",
    )
    cameras = [f"cam-{i}" for i in range(8)]
    rounds = 30
    stop = threading.Event()

    def feed() -> None:
        for seq in range(rounds):
            if stop.is_set():
                return
            produce_detections(
                kafka.bootstrap, deployment.prefix + "detection-results", [detection(c, seq) for c in cameras]
            )
            time.sleep(1.0)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    started = time.monotonic()
    restarts = []
    try:
        time.sleep(4)
        for i in range(len(workers)):
            t0 = time.monotonic()
            workers[i].stop()
            workers[i] = start_worker(slow_restart_ok)
            wait_until(
                lambda w=workers[i]: get_json(f"http://127.0.0.1:{w.port}/health")["partitions"] > 0,
                60,
                "the restarted worker owning partitions",
            )
            restarts.append(round(time.monotonic() - t0, 1))
        feeder.join(timeout=rounds + 30)
    finally:
        stop.set()
    expected = rounds * len(cameras)

    def settled() -> object:
        r = verify_exactly_once(kafka.bootstrap, [w.port for w in workers], drain_timeout_s=3, prefix=deployment.prefix)
        print(f"{time.monotonic() - started:.0f}s after the first restart: {r.line()}")
        return r if r.ok and r.tasks == expected else None

    report = wait_until(settled, 90, f"all {expected} tasks aggregated after the rolling restart", every_s=5)
    print(
        f"rolling restart of 2 workers (each back in {restarts} s) under {len(cameras)} detections/s: "
        f"{report.line()}; done {time.monotonic() - started:.0f}s after the first restart"
    )
    assert report.missing == [] and report.unknown == [] and report.not_joined == 0
    assert report.statuses == {"ok": expected}
    assert_nothing_doubled(kafka, deployment, workers[0].port, cameras, tasks=expected)


def test_a_revoked_key_is_disabled_within_one_call_and_nothing_fails(kafka, deployment, start_worker, sim_vlm):
    worker = start_worker({"ROADWATCH_KEY_STRATEGY": "round_robin"})
    topic = deployment.prefix + "detection-results"
    produce_detections(kafka.bootstrap, topic, [detection("cam-k", seq) for seq in range(8)])
    wait_until(lambda: len(results(worker.port)) == 8, 60, "8 results before the revocation")
    revoked = SIM_KEYS[2]
    post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/revoke", {"key": revoked})
    try:
        produce_detections(kafka.bootstrap, topic, [detection("cam-k", seq) for seq in range(8, 40)])
        wait_until(lambda: len(results(worker.port)) == 40, 90, "40 results")
    finally:
        post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/restore", {"key": revoked})
    keys = {k["alias"]: k for k in get_json(f"http://127.0.0.1:{worker.port}/keys/")["keys"]}
    assert keys["key-3"]["state"] == "DISABLED"
    # the first 401 disables it; calls already in flight on it then (several actors) fail over too,
    # and none starts on it afterwards: every call it made after the revocation failed
    assert keys["key-3"]["failures"] >= 1
    assert log_count(worker, "key key-3 disabled") >= 1
    calls_on_key_3 = keys["key-3"]["calls"]
    produce_detections(kafka.bootstrap, topic, [detection("cam-k", seq) for seq in range(40, 48)])
    wait_until(lambda: len(results(worker.port)) == 48, 60, "48 results")
    after = {k["alias"]: k for k in get_json(f"http://127.0.0.1:{worker.port}/keys/")["keys"]}
    assert after["key-3"]["calls"] == calls_on_key_3 and after["key-3"]["state"] == "DISABLED"
    statuses = [r["status"] for r in results(worker.port).values()]
    assert statuses.count("ok") == len(statuses) == 48
    text = json.dumps(get_json(f"http://127.0.0.1:{worker.port}/keys/"))
    assert all(key not in text for key in SIM_KEYS)


def test_every_key_cooling_for_15s_delays_tasks_and_loses_none(kafka, deployment, start_worker, sim_vlm):
    """With the shipped task deadline (30 s): tasks wait for the keys, then are assessed."""
    worker = start_worker()
    topic = deployment.prefix + "detection-results"
    produce_detections(kafka.bootstrap, topic, [detection("cam-c", seq) for seq in range(3)])
    wait_until(lambda: len(results(worker.port)) == 3, 60, "3 results before the throttle")
    post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"throttle_s": 15})
    started = time.monotonic()
    try:
        produce_detections(kafka.bootstrap, topic, [detection("cam-c", seq) for seq in range(3, 13)])
        wait_until(
            lambda: all(k["state"] == "COOLING" for k in get_json(f"http://127.0.0.1:{worker.port}/keys/")["keys"]),
            30,
            "every key cooling",
        )
        wait_until(lambda: len(results(worker.port)) == 13, 120, "13 results after the keys recover")
    finally:
        post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"throttle_s": 0})
    resumed = time.monotonic() - started
    report = verify_exactly_once(kafka.bootstrap, [worker.port], drain_timeout_s=5, prefix=deployment.prefix)
    print(f"all keys cooling 15 s: {report.line()}; the 10 waiting tasks done {resumed:.1f}s after the throttle began")
    assert report.ok and report.tasks == 13 and report.statuses == {"ok": 13}
    assert 14 <= resumed <= 30


def test_vlm_calls_slower_than_max_poll_interval_cause_no_rebalance(kafka, deployment, start_worker, sim_vlm):
    post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"latency_ms": 14000, "p95_ms": 15000})
    try:
        worker = start_worker({"ROADWATCH_MAX_POLL_INTERVAL_S": "8", "ROADWATCH_VLM_TIMEOUT_S": "40"})
        # settled first: starting on RocksDB can outlast the 8 s poll interval once, before any VLM call
        wait_until(lambda: get_json(f"http://127.0.0.1:{worker.port}/health")["partitions"] > 0, 60, "partitions")
        time.sleep(3)
        joins_before = worker.log.read_bytes().count(b"Joined group")
        produce_detections(
            kafka.bootstrap, deployment.prefix + "detection-results", [detection("cam-s", seq) for seq in range(6)]
        )
        wait_until(lambda: len(results(worker.port)) == 6, 90, "6 slow results")
    finally:
        post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"latency_ms": 60, "p95_ms": 150})
    report = verify_exactly_once(kafka.bootstrap, [worker.port], drain_timeout_s=5, prefix=deployment.prefix)
    joins = worker.log.read_bytes().count(b"Joined group") - joins_before
    print(f"VLM 14 s per call, max.poll.interval 8 s: {report.line()}; rejoins during the run: {joins}")
    assert report.ok and report.statuses == {"ok": 6}
    assert joins == 0, "a slow VLM call must not evict the consumer"


def test_no_key_appears_in_logs_topics_metrics_or_web_views(kafka, deployment, start_worker):
    worker = start_worker()
    produce_detections(
        kafka.bootstrap, deployment.prefix + "detection-results", [detection("cam-s", seq) for seq in range(4)]
    )
    wait_until(lambda: len(results(worker.port)) == 4, 60, "4 results")
    seen = [worker.log.read_text(errors="replace")]
    for path in ("/", "/cameras/", "/cameras/cam-s/", "/keys/", "/alerts/", "/results/", "/health", "/metrics"):
        seen.append(get_text(f"http://127.0.0.1:{worker.port}{path}"))
    import asyncio

    from ops.verify import read_all

    for topic in ("detection-results", "assessment-tasks", "risk-assessment-results", "alerts"):
        seen += [v.decode(errors="replace") for v in asyncio.run(read_all(kafka.bootstrap, deployment.prefix + topic))]
    for table in ("camera_state", "detections", "results", "camera_view", "alert_index", "alert_records", "key_pool"):
        values = asyncio.run(read_all(kafka.bootstrap, f"{deployment.app_id}-{table}-changelog"))
        seen += [v.decode(errors="replace") for v in values]
    text = "\n".join(seen)
    assert len(text) > 10_000
    leaked = [key for key in SIM_KEYS if key in text or key[-12:] in text]
    assert leaked == [], "API keys leaked"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_down_for_30s_loses_nothing_and_the_cache_resumes(kafka, deployment, start_worker, tmp_path):
    port = free_port()
    cmd = redis_command(port, tmp_path)
    own_redis = spawn("redis-own", cmd, {}, tmp_path, port)
    wait_until(lambda: port_open(port), 15, "redis")
    worker = start_worker({"ROADWATCH_REDIS_URL": f"redis://127.0.0.1:{port}/0", "ROADWATCH_REDIS_RETRY_S": "2"})
    topic = deployment.prefix + "detection-results"
    client = redis.Redis(port=port)

    produce_detections(kafka.bootstrap, topic, [detection("cam-x", seq) for seq in range(3)])
    wait_until(lambda: len(results(worker.port)) == 3, 60, "3 results")
    wait_until(lambda: len(client.keys(f"{deployment.app_id}{deployment.prefix}:task:*")) == 3, 20, "3 cached results")

    own_redis.stop()
    outage_started = time.monotonic()
    produce_detections(kafka.bootstrap, topic, [detection("cam-x", seq) for seq in range(3, 8)])
    wait_until(lambda: len(results(worker.port)) == 8, 60, "results keep flowing while Redis is down")
    wait_until(lambda: metric(worker.port, "roadwatch_redis_skipped_writes_total") >= 1, 20, "skipped writes counted")
    assert get_json(f"http://127.0.0.1:{worker.port}/health")["redis"] == "degraded"
    assert get_json(f"http://127.0.0.1:{worker.port}/cameras/cam-x/")["counts"]["ok"] == 8
    time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))

    own_redis = spawn("redis-own-2", cmd, {}, tmp_path, port)
    wait_until(lambda: port_open(port), 15, "redis again")
    produce_detections(kafka.bootstrap, topic, [detection("cam-x", seq) for seq in range(8, 10)])
    wait_until(lambda: len(results(worker.port)) == 10, 60, "10 results")
    client = redis.Redis(port=port)
    wait_until(
        lambda: len(client.keys(f"{deployment.app_id}{deployment.prefix}:task:*")) == 2,
        30,
        "the cache written again after Redis returns",
    )
    assert (
        json.loads(client.get(f"{deployment.app_id}{deployment.prefix}:camera:cam-x:latest") or b"{}")["camera_id"]
        == "cam-x"
    )
    skipped = metric(worker.port, "roadwatch_redis_skipped_writes_total")
    print(f"redis outage: 10/10 results aggregated, {skipped:.0f} cache writes skipped, cache resumed")
    assert skipped >= 1
    assert worker.popen.poll() is None
    own_redis.stop()
