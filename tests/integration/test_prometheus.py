"""A real Prometheus scrapes a running worker with the shipped alert rules; an injected fault fires one.

The fault is a burst of undecodable detection records: they go to the DLQ, the worker's
``roadwatch_dlq_total`` grows, and ``RoadwatchDlqGrowing`` (deploy/prometheus/alerts.yml) fires.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest
import yaml

from ops.http import get_json, get_text
from ops.kafka import free_port, port_open
from sim.records import produce
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (.ci/system-deps.sh --with-ops-tools installs it)")
        pytest.skip("prometheus not installed")
    return path


def test_prometheus_sees_the_dlq_alert_fire(prometheus_bin, kafka, deployment, start_worker, tmp_path):
    worker = start_worker()
    topic = deployment.prefix + "detection-results"
    conf = tmp_path / "prom"
    conf.mkdir()
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", conf / "alerts.yml")
    (conf / "web-token").write_text(os.environ["ROADWATCH_WEB_TOKEN"])
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "roadwatch-worker")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{worker.port}"]}]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": shipped["rule_files"],
        "scrape_configs": [job],  # the shipped job (path, bearer token file), pointed at this worker
    }
    (conf / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={conf / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_until(lambda: port_open(port), 30, "prometheus up")
        # the port opens before the server is ready: /-/ready (and the API) answer 503 until then
        wait_until(lambda: _ready(f"http://127.0.0.1:{port}/-/ready"), 60, "prometheus ready")
        wait_until(
            lambda: any(t["health"] == "up" for t in get_json(api + "/targets")["data"]["activeTargets"]),
            30,
            "prometheus scraping the worker with the token",
        )
        rules = get_json(api + "/rules")["data"]["groups"][0]["rules"]
        assert len(rules) >= 6
        # one bad record first, so the counter exists before the burst (increase() needs a start)
        asyncio.run(produce(kafka.bootstrap, topic, [("cam-x", b"{not json")]))
        wait_until(
            lambda: get_json(api + "/query?query=sum(roadwatch_dlq_total)")["data"]["result"], 30, "first DLQ sample"
        )
        time.sleep(2)
        injected = time.monotonic()
        asyncio.run(produce(kafka.bootstrap, topic, [("cam-x", b"\xff\xfe garbage") for _ in range(20)]))

        def firing() -> bool:
            alerts = get_json(api + "/alerts")["data"]["alerts"]
            return any(a["labels"]["alertname"] == "RoadwatchDlqGrowing" and a["state"] == "firing" for a in alerts)

        wait_until(firing, 60, "RoadwatchDlqGrowing firing")
        fired_s = time.monotonic() - injected
        print(f"prometheus: RoadwatchDlqGrowing fired {fired_s:.1f} s after 20 bad records")
        assert fired_s < 30
        alerts = get_json(api + "/alerts")["data"]["alerts"]
        quiet = [a["labels"]["alertname"] for a in alerts if a["state"] == "firing"]
        assert "RoadwatchAllKeysCooling" not in quiet and "RoadwatchCameraOffline" not in quiet
    finally:
        prom.terminate()
        try:
            prom.wait(15)
        except subprocess.TimeoutExpired:
            prom.kill()
        log.close()


def _ready(url: str) -> bool:
    try:
        get_text(url)
    except (urllib.error.URLError, OSError):
        return False
    return True
