"""Faults on the real topology: a killed scheduler worker, a key revoked mid-run."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from ops.verify import verify_exactly_once
from sim.records import detection, produce_detections
from tests.conftest import SIM_KEYS, get_json, wait_until

pytestmark = pytest.mark.integration


def post(url: str, body: dict[str, object]) -> object:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def results(port: int) -> dict[str, dict[str, object]]:
    return get_json(f"http://127.0.0.1:{port}/results/")["results"]


def test_killing_a_worker_with_tasks_in_flight_loses_and_doubles_nothing(kafka, deployment, start_worker, sim_vlm):
    # slow VLM answers, so that the killed worker certainly has calls in flight
    post(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"latency_ms": 1500, "p95_ms": 2500})
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
        wait_until(
            lambda: (
                get_json(f"http://127.0.0.1:{victim.port}/keys/")["keys"][0]["calls"] > 0
                or any(k["in_flight"] for k in get_json(f"http://127.0.0.1:{victim.port}/keys/")["keys"])
            ),
            30,
            "the victim calling the VLM",
        )
        in_flight = sum(k["in_flight"] for k in get_json(f"http://127.0.0.1:{victim.port}/keys/")["keys"])
        killed_at = time.monotonic()
        victim.kill()

        def settled() -> object:
            r = verify_exactly_once(kafka.bootstrap, [survivor.port], drain_timeout_s=3, prefix=deployment.prefix)
            print(f"{time.monotonic() - killed_at:.0f}s after the kill: {r.line()}")
            return r if r.ok and r.tasks == 32 else None

        report = wait_until(settled, 120, "all 32 tasks aggregated by the survivor", every_s=5)
        resumed = time.monotonic() - killed_at
    finally:
        post(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"latency_ms": 60, "p95_ms": 150})
    print(f"kill -9 with {in_flight} calls in flight: {report.line()}; all done {resumed:.1f}s after the kill")
    assert report.missing == [] and report.unknown == [] and report.not_joined == 0
    assert report.statuses == {"ok": 32}


def test_a_revoked_key_is_disabled_within_one_call_and_nothing_fails(kafka, deployment, start_worker, sim_vlm):
    worker = start_worker({"ROADWATCH_KEY_STRATEGY": "round_robin"})
    topic = deployment.prefix + "detection-results"
    produce_detections(kafka.bootstrap, topic, [detection("cam-k", seq) for seq in range(8)])
    wait_until(lambda: len(results(worker.port)) == 8, 60, "8 results before the revocation")
    revoked = SIM_KEYS[2]
    post(f"http://127.0.0.1:{sim_vlm.port}/admin/revoke", {"key": revoked})
    try:
        produce_detections(kafka.bootstrap, topic, [detection("cam-k", seq) for seq in range(8, 40)])
        wait_until(lambda: len(results(worker.port)) == 40, 90, "40 results")
    finally:
        post(f"http://127.0.0.1:{sim_vlm.port}/admin/restore", {"key": revoked})
    keys = {k["alias"]: k for k in get_json(f"http://127.0.0.1:{worker.port}/keys/")["keys"]}
    assert keys["key-3"]["state"] == "DISABLED"
    assert keys["key-3"]["failures"] == 1, "disabled after its first failed call"
    statuses = [r["status"] for r in results(worker.port).values()]
    assert statuses.count("ok") / len(statuses) >= 0.999
    text = json.dumps(get_json(f"http://127.0.0.1:{worker.port}/keys/"))
    assert all(key not in text for key in SIM_KEYS)
