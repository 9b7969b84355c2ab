"""The producer process on the broker: several devices mean several processes sharing the cameras."""

from __future__ import annotations

import json
import subprocess

import pytest

from models import producer
from ops.verify import read_all
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_one_producer_process_per_device_each_with_its_share_of_cameras(kafka, deployment, tmp_path):
    import asyncio

    proc = subprocess.run(
        producer.command(ROOT / "deploy" / "cameras.sim.yaml", device="cpu,cpu", duration=6),
        cwd=ROOT,
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shares = [line for line in proc.stderr.splitlines() if "device cpu:" in line]
    assert len(shares) == 2 and all("2 cameras" in line for line in shares), shares
    records = [json.loads(v) for v in asyncio.run(read_all(kafka.bootstrap, deployment.prefix + "detection-results"))]
    per_camera: dict[str, int] = {}
    for rec in records:
        per_camera[rec["camera_id"]] = per_camera.get(rec["camera_id"], 0) + 1
    assert set(per_camera) == {"cam-north", "cam-south", "cam-east", "cam-west"}
    assert all(n >= 8 for n in per_camera.values()), per_camera  # ~2 fps for 6 s each
