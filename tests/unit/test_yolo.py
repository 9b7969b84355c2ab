"""The YOLO backend from a model yaml (random weights) and its ONNX export, with no network at all.

The run happens in a child process with an audit hook that refuses every socket connect and
name lookup: ultralytics must not try to fetch weights, fonts or settings on any path we use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.detectors import YoloDetector
from streams.errors import ConfigError

HAVE_ULTRALYTICS = importlib.util.find_spec("ultralytics") is not None
# CI installs the yolo extra: there a missing ultralytics is a failure, not a skip
needs_yolo = pytest.mark.skipif(
    not HAVE_ULTRALYTICS and not os.environ.get("CI"), reason="the yolo extra is not installed"
)

CHILD = r"""
import json, sys, threading
attempts = []
def refuse(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request"):
        attempts.append(event + " " + repr(args)[:160])
        raise ConnectionRefusedError("network is off limits in this test")
sys.addaudithook(refuse)

from models.detectors import YoloDetector
from sim.scene import Scene

out = {}
frames = [Scene(seed=s).render(12.0)[0] for s in range(4)]
det = YoloDetector("yolo11n.yaml", imgsz=320, max_batch=4, max_wait_ms=200)
results = [None] * 4
def call(i):
    results[i] = det.detect(f"cam-{i}", frames[i], i)
threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
out["yaml"] = {"name": det.name, "per_frame": [len(r) for r in results], "batches": det.batcher.batch_sizes}
det.close()
onnx_path = det.model.export(format="onnx", imgsz=320, dynamic=True, simplify=True)
onnx = YoloDetector(str(onnx_path), imgsz=320)
batch = onnx.detect_batch(frames)
out["onnx"] = {"name": onnx.name, "frames": len(batch)}
out["attempts"] = attempts
print("RESULT " + json.dumps(out))
"""


@needs_yolo
def test_yolo_from_yaml_and_onnx_make_no_network_attempt(tmp_path: Path):
    env = dict(os.environ, YOLO_CONFIG_DIR=str(tmp_path / "cfg"), YOLO_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT ") :])
    assert out["attempts"] == []
    assert out["yaml"]["name"] == "yolo/yolo11n.yaml" and len(out["yaml"]["per_frame"]) == 4
    # four camera threads, one batcher: fewer model calls than frames
    assert sum(out["yaml"]["batches"]) == 4 and len(out["yaml"]["batches"]) < 4
    assert out["onnx"] == {"name": "yolo/yolo11n.onnx", "frames": 4}


def test_a_missing_weights_file_is_a_clear_error_naming_the_path(tmp_path: Path):
    missing = tmp_path / "weights" / "yolo11n.pt"
    with pytest.raises(ConfigError) as err:
        YoloDetector(str(missing))
    assert str(missing) in str(err.value) and "never downloads" in str(err.value)
