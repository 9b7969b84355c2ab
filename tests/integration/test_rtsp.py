"""A camera served over a real RTSP server: the server dies mid-run and comes back.

The producer holds one RTSP camera (gst-rtsp-server on loopback, H.264 over RTP/TCP) and two
simulated ones. While the RTSP server is down the simulated cameras keep producing; when it is
back, the RTSP camera reconnects (release and reopen, with backoff) and produces again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from models.producer import command as producer_command
from ops.http import get_text
from ops.kafka import free_port, port_open
from ops.verify import read_all
from tests.conftest import Proc, spawn, wait_until

pytestmark = pytest.mark.integration

SYSTEM_PYTHON = "/usr/bin/python3"


def have_rtsp_server() -> bool:
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def rtsp_available() -> None:
    if not have_rtsp_server():
        if os.environ.get("CI"):
            pytest.fail("gst-rtsp-server is not installed (.ci/system-deps.sh --with-rtsp installs it)")
        pytest.skip("gst-rtsp-server (python3-gi) not installed")


def start_rtsp(port: int, log_dir: Path) -> Proc:
    proc = spawn(
        f"rtsp-{time.monotonic_ns()}",
        [SYSTEM_PYTHON, "-m", "ops.rtsp_server", "--port", str(port)],
        dict(os.environ),
        log_dir,
        port,
    )
    wait_until(lambda: port_open(port), 20, "the RTSP server")
    return proc


def per_camera(bootstrap: str, topic: str) -> dict[str, list[float]]:
    """Capture times (s) of each camera's records so far."""
    out: dict[str, list[float]] = {}
    for value in asyncio.run(read_all(bootstrap, topic, idle_s=1.0)):
        rec = json.loads(value)
        out.setdefault(rec["camera_id"], []).append(rec["captured_at"] / 1000.0)
    return out


def test_an_rtsp_camera_reconnects_after_its_server_restarts_and_the_others_never_stop(
    rtsp_available, kafka, deployment, tmp_path
):
    rtsp_port = free_port()
    server = start_rtsp(rtsp_port, tmp_path)
    cameras = tmp_path / "cameras.yaml"
    cameras.write_text(
        "cameras:\n"
        f"  - {{id: rtsp-1, url: 'rtsp://127.0.0.1:{rtsp_port}/cam', fps: 2}}\n"
        "  - {id: sim-1, url: 'sim://scene?seed=3', fps: 2}\n"
        "  - {id: sim-2, url: 'sim://scene?seed=4', fps: 2}\n"
    )
    metrics_port = free_port()
    producer = spawn(
        "producer",
        producer_command(cameras, metrics_port=metrics_port),
        deployment.env,
        tmp_path,
        metrics_port,
    )
    topic = deployment.prefix + "detection-results"
    try:
        wait_until(lambda: len(per_camera(kafka.bootstrap, topic).get("rtsp-1", [])) >= 4, 60, "RTSP frames")
        server.kill()
        killed_at = time.time()
        time.sleep(10)
        during = per_camera(kafka.bootstrap, topic)
        server = start_rtsp(rtsp_port, tmp_path)
        restarted_at = time.time()

        def resumed() -> bool:
            return any(t > restarted_at for t in per_camera(kafka.bootstrap, topic).get("rtsp-1", []))

        wait_until(resumed, 60, "the RTSP camera producing again")
        resumed_s = min(t for t in per_camera(kafka.bootstrap, topic)["rtsp-1"] if t > restarted_at) - restarted_at
        # the simulated cameras went on at their 2 fps while the RTSP server was gone
        for cam in ("sim-1", "sim-2"):
            outage = [t for t in during[cam] if killed_at + 1 < t < killed_at + 9]
            assert len(outage) >= 12, (cam, len(outage))
        # the RTSP camera made nothing from frames it could not have had (a read times out at 5 s)
        assert not [t for t in during["rtsp-1"] if killed_at + 6 < t < restarted_at]
        metrics = get_text(f"http://127.0.0.1:{metrics_port}/metrics")
        name = 'roadwatch_camera_reconnects_total{camera_id="rtsp-1"}'
        reconnects = [line for line in metrics.splitlines() if line.startswith(name)]
        assert reconnects and float(reconnects[0].split()[-1]) >= 1
        print(f"rtsp: server down 10 s; camera resumed {resumed_s:.1f} s after the restart; sim cameras never stopped")
        assert resumed_s < 15
        assert producer.popen.poll() is None
    finally:
        server.stop()
        producer.stop()
