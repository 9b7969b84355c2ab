"""The producer process on the broker: several devices, or ``--processes``, mean processes sharing the cameras."""

from __future__ import annotations

import json
import subprocess

import pytest

from models import producer
from ops.kafka import free_port
from ops.verify import read_all
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "split",
    [{"device": "cpu,cpu"}, {"processes": 2}],
    ids=["a process per device", "--processes on one device"],
)
def test_one_producer_process_per_device_each_with_its_share_of_cameras(kafka, deployment, tmp_path, split):
    import asyncio
    import time
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    port = free_port(run=3)  # the supervisor's, then a port for each of its two children
    child = subprocess.Popen(
        producer.command(ROOT / "deploy" / "cameras.sim.yaml", duration=8, metrics_port=port, **split),
        cwd=ROOT,
        env=deployment.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # while it runs, the supervisor's one port serves both processes' cameras
    scraped: dict[str, str] = {}
    while child.poll() is None and len(scraped) < 4:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                text = reply.read().decode()
        except OSError:
            text = ""  # not serving yet
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "roadwatch_frames_total" and sample.value > 0:
                    scraped[sample.labels["camera_id"]] = sample.labels["process"]
        time.sleep(0.5)
    _, stderr = child.communicate(timeout=120)
    proc = subprocess.CompletedProcess(child.args, child.returncode, "", stderr)
    assert sorted(scraped) == ["cam-east", "cam-north", "cam-south", "cam-west"], scraped
    assert sorted(set(scraped.values())) == ["0", "1"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    shares = [line for line in proc.stderr.splitlines() if "device cpu:" in line]
    assert len(shares) == 2 and all("2 cameras" in line for line in shares), shares
    # each child takes its share of the cores for OpenCV, not every core (see producer.cv_threads)
    threads = [line.rsplit(" ", 1)[1] for line in proc.stderr.splitlines() if "OpenCV threads:" in line]
    assert threads == [str(producer.cv_threads(2))] * 2, threads
    records = [json.loads(v) for v in asyncio.run(read_all(kafka.bootstrap, deployment.prefix + "detection-results"))]
    per_camera: dict[str, int] = {}
    for rec in records:
        per_camera[rec["camera_id"]] = per_camera.get(rec["camera_id"], 0) + 1
    assert set(per_camera) == {"cam-north", "cam-south", "cam-east", "cam-west"}
    assert all(n >= 8 for n in per_camera.values()), per_camera  # ~2 fps for 8 s each


def test_processes_refuse_a_device_list_and_zero():
    for flags, why in (
        (["--processes", "2", "--device", "cpu,cpu"], "several devices get a process each"),
        (["--processes", "0"], "must be 1 or more"),
        (["--cv-threads", "-1"], "must be 0 (every core) or more"),
        (["--proc", "2"], "unrecognized arguments"),  # no abbreviation a supervisor would pass on
    ):
        proc = subprocess.run(
            [*producer.command(ROOT / "deploy" / "cameras.sim.yaml"), *flags],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr[-2000:]
