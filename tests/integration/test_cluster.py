"""A 3-broker Apache Kafka cluster (KRaft, replication 3, min ISR 2): one broker killed mid-run."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.http import get_json
from ops.kafka import KafkaCluster, free_port
from ops.verify import verify_exactly_once
from sim.records import detection, produce_detections
from tests.conftest import SIM_KEYS, Proc, spawn, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A cluster of its own: after a broker was killed and restarted, the fault suite's worker
    takeover stalled in 2 of 2 full runs (under investigation), so the suite gets a fresh one."""
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka3-kill"), size=3, heap="384m")
    cluster.start(timeout_s=120)
    yield cluster
    cluster.stop()


def test_killing_one_broker_of_three_loses_nothing(cluster3, sim_vlm: Proc, redis_url: str, tmp_path: Path):
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "ROADWATCH_KAFKA_URL": cluster3.url,
            "ROADWATCH_APP_ID": f"rw3-{tag}",
            "ROADWATCH_TOPIC_PREFIX": f"c{tag}-",
            "ROADWATCH_STORE": "rocksdb://",
            "ROADWATCH_TOPIC_REPLICAS": "3",
            "ROADWATCH_TOPIC_MIN_INSYNC": "2",
            "ROADWATCH_TOPIC_PARTITIONS": "4",
            "ROADWATCH_REDIS_URL": redis_url,
            "ROADWATCH_VLM_BASE_URL": f"http://127.0.0.1:{sim_vlm.port}/v1",
            "ROADWATCH_VLM_KEYS": ",".join(SIM_KEYS),
            "ROADWATCH_IMAGE_STORE": f"file://{tmp_path / 'images'}",
            "ROADWATCH_CAMERA_BUDGET_BURST": "1000",
            "ROADWATCH_WEB_PORT": str(port),
            "ROADWATCH_DATA_DIR": str(tmp_path / "faust"),
        }
    )
    worker = spawn("worker", [sys.executable, "-m", "streams", "worker", "-l", "info"], env, tmp_path, port)
    try:
        wait_until(lambda: b"Worker ready" in worker.log.read_bytes(), 90, "worker ready on the cluster")
        topic = f"c{tag}-detection-results"
        cams = [f"cam-{i}" for i in range(4)]
        produce_detections(cluster3.bootstrap, topic, [detection(c, s) for s in range(5) for c in cams])
        wait_until(lambda: len(get_json(f"http://127.0.0.1:{port}/results/")["results"]) == 20, 60, "20 results")

        cluster3.kill_node(0)  # kill -9 the first broker (a controller too)
        killed = time.monotonic()
        produce_detections(cluster3.bootstrap, topic, [detection(c, s) for s in range(5, 10) for c in cams])
        wait_until(
            lambda: len(get_json(f"http://127.0.0.1:{port}/results/")["results"]) == 40,
            120,
            "20 more results with a broker down",
        )
        resumed = time.monotonic() - killed
        report = verify_exactly_once(cluster3.bootstrap, [port], drain_timeout_s=10, prefix=f"c{tag}-")
        print(f"one broker of three killed: {report.line()}; 20 new tasks done {resumed:.1f}s after the kill")
        assert report.ok and report.tasks == 40 and report.not_joined == 0
        assert resumed < 60
        assert report.statuses == {"ok": 40}
        assert worker.popen.poll() is None
    finally:
        worker.stop()
        cluster3.start_node(cluster3.nodes[0])  # leave the cluster whole for the fixture's teardown
