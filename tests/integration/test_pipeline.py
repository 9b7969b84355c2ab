"""The whole topology on a real Kafka broker: detections in, exactly one joined result per task out."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from ops.http import get_json, post_json
from ops.verify import Report, read_all, verify_exactly_once
from sim.records import detection, produce, produce_detections
from streams.records import to_bytes
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def test_every_task_yields_exactly_one_joined_result(kafka, deployment, start_worker):
    worker = start_worker()
    cameras = [f"cam-{i}" for i in range(4)]
    dets = [detection(cam, seq) for seq in range(10) for cam in cameras]  # new tracks each frame: 40 tasks
    produce_detections(kafka.bootstrap, deployment.prefix + "detection-results", dets)

    def aggregated() -> Report | None:
        report = verify_exactly_once(kafka.bootstrap, [worker.port], drain_timeout_s=5, prefix=deployment.prefix)
        print(report.line())
        return report if report.ok and report.tasks == 40 else None

    report = wait_until(aggregated, 90, "40 tasks with one result each")
    assert report.missing == [] and report.unknown == []
    assert report.not_joined == 0, "every result is joined with its detection"
    assert report.statuses == {"ok": 40}
    results = [
        json.loads(v) for v in asyncio.run(read_all(kafka.bootstrap, deployment.prefix + "risk-assessment-results"))
    ]
    assert len({r["task_id"] for r in results}) == 40
    assert all(r["key_alias"].startswith("key-") for r in results)

    view = get_json(f"http://127.0.0.1:{worker.port}/cameras/cam-1/")
    assert view["latest_result"]["status"] == "ok"
    assert view["latest_result"]["detection"]["group"]["kind"] == "pedestrian_vehicle"
    cameras_view = get_json(f"http://127.0.0.1:{worker.port}/cameras/")
    assert cameras_view["count"] == 4


def test_redelivered_detections_make_no_duplicate_results(kafka, deployment, start_worker):
    worker = start_worker()
    dets = [detection("cam-r", seq) for seq in range(5)]
    topic = deployment.prefix + "detection-results"
    produce_detections(kafka.bootstrap, topic, dets)
    wait_until(lambda: len(get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == 5, 60, "5 results")
    produce_detections(kafka.bootstrap, topic, dets)  # the same frames again (a producer retry, a replay)
    dets2 = [detection("cam-r", seq) for seq in range(5, 7)]
    produce_detections(kafka.bootstrap, topic, dets2)
    wait_until(lambda: len(get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == 7, 60, "7 results")
    report = verify_exactly_once(kafka.bootstrap, [worker.port], drain_timeout_s=5, prefix=deployment.prefix)
    assert report.ok and report.tasks == 7, report.line()


def _detection_json(**overrides: object) -> bytes:
    body = json.loads(to_bytes(detection("cam-x", 1)))
    body.update(overrides)
    return json.dumps(body).encode()


#: (class, message body): every one must end in the DLQ with a reason, the worker alive.
BAD_INPUTS = [
    ("invalid JSON", b"{not json"),
    ("truncated JSON", b'{"camera_id": "c", "frame_seq": 1, "captured_at": 17'),
    ("an HTML error page", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    ("not an object", b"[1, 2, 3]"),
    ("wrong schema version", b'{"v": 99, "camera_id": "x"}'),
    ("missing fields", b'{"camera_id": "cam-bad"}'),
    ("non-UTF-8", "\udcff".encode("utf-8", "surrogatepass")),
    ("NaN", _detection_json(captured_at=float("nan"))),
    (
        "infinity",
        b'{"camera_id": "c", "frame_seq": 1, "captured_at": Infinity, "frame_w": 1, "frame_h": 1, '
        b'"model": "m", "objects": [], "groups": [], "crops": {}}',
    ),
    ("negative numbers", _detection_json(frame_w=-640)),
    ("a string for a number", _detection_json(frame_seq="seven")),
    ("a hostile camera id", _detection_json(camera_id="../../etc/passwd")),
    ("unknown camera", _detection_json(camera_id="cam-nobody-knows")),
    ("oversized message", _detection_json(model="m" * 600_000)),
]


def test_bad_input_goes_to_the_dlq_and_the_worker_keeps_going(kafka, deployment, start_worker, tmp_path):
    cameras = tmp_path / "known-cameras.yaml"
    cameras.write_text(
        "cameras:\n  - {id: cam-good, url: 'sim://scene'}\n  - {id: cam-x, url: 'sim://scene'}\n"
        "  - {id: c, url: 'sim://scene'}\n"
    )
    worker = start_worker({"ROADWATCH_CAMERAS_FILE": str(cameras)})
    topic = deployment.prefix + "detection-results"
    asyncio.run(produce(kafka.bootstrap, topic, [("cam-bad", body) for _, body in BAD_INPUTS]))
    produce_detections(kafka.bootstrap, topic, [detection("cam-good", 0)])
    dlq = wait_until(
        lambda: len(v := asyncio.run(read_all(kafka.bootstrap, topic + ".dlq"))) >= len(BAD_INPUTS) and v,
        60,
        "every bad message in the DLQ",
    )
    reasons = [json.loads(v)["error"] for v in dlq]
    assert len(reasons) == len(BAD_INPUTS), reasons
    for (name, _), reason in zip(BAD_INPUTS, reasons, strict=True):
        print(f"DLQ  {name:24s} -> {reason[:100]}")
    assert "unknown camera" in reasons[-2] and "exceeds" in reasons[-1]
    assert all(json.loads(v)["source_topic"] == topic for v in dlq)
    wait_until(
        lambda: len(get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == 1,
        60,
        "the good detection still assessed",
    )
    assert worker.popen.poll() is None
    metrics = urllib_text(f"http://127.0.0.1:{worker.port}/metrics")
    assert f'roadwatch_dlq_total{{topic="{topic}"}} {float(len(BAD_INPUTS))}' in metrics
    assert "roadwatch_unknown_camera_records_total 1.0" in metrics


def test_bad_images_and_garbage_answers_end_in_clear_failed_results(kafka, deployment, start_worker, sim_vlm, tmp_path):
    """Crops that are corrupt, not images or huge, and a VLM answering garbage: each task gets
    exactly one failed result naming the cause, with a metric; nothing crashes."""
    import base64

    from sim.records import crop_b64

    store = tmp_path / "images"
    store.mkdir(exist_ok=True)
    (store / ("ab" * 16 + ".jpg")).write_bytes(b"\xff\xd8\xff" + os.urandom(5 * 1024 * 1024))
    jpeg = base64.b64decode(crop_b64())
    crops = {
        "not-an-image": {"data_b64": base64.b64encode(b"GIF89a not what we asked for").decode()},
        "corrupt": {"data_b64": base64.b64encode(jpeg[: len(jpeg) // 3]).decode()},
        "huge": {"uri": "file://" + "ab" * 16},
        "expired": {"uri": "file://" + "cd" * 16},
    }
    worker = start_worker()
    topic = deployment.prefix + "detection-results"
    dets = []
    for seq, (name, ref) in enumerate(crops.items()):
        det = detection(f"cam-{name}", seq)
        body = json.loads(to_bytes(det))
        body["crops"] = {det.groups[0].group_id: {**ref, "width": 10, "height": 10, "size": 1}}
        dets.append((det.camera_id, json.dumps(body).encode()))
    asyncio.run(produce(kafka.bootstrap, topic, dets))
    got = wait_until(
        lambda: len(r := get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == 4 and r,
        60,
        "4 results",
    )
    assert len(got) == 4

    def full(camera: str) -> dict:
        return get_json(f"http://127.0.0.1:{worker.port}/cameras/{camera}/")["results"][0]

    errors = {name: full(f"cam-{name}")["error"] for name in crops}
    print("bad images:", json.dumps(errors, indent=1))
    assert all(full(f"cam-{name}")["status"] == "failed" for name in crops)
    assert "not a JPEG or PNG" in errors["not-an-image"] and "corrupt image" in errors["corrupt"]
    assert "exceeds" in errors["huge"] and "not found" in errors["expired"]
    metrics = urllib_text(f"http://127.0.0.1:{worker.port}/metrics")
    assert 'roadwatch_bad_images_total{reason="bad"} 3.0' in metrics
    assert 'roadwatch_bad_images_total{reason="missing"} 1.0' in metrics
    # a VLM answering garbage: a failed result with the parse error, the key not blamed
    post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"garbage_rate": 1.0})
    try:
        produce_detections(kafka.bootstrap, topic, [detection("cam-garbage", 9)])
        wait_until(
            lambda: len(get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == 5, 60, "garbage result"
        )
    finally:
        post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"garbage_rate": 0.0})
    garbage = full("cam-garbage")
    assert garbage["status"] == "failed" and "no JSON risk assessment" in garbage["error"]
    assert worker.popen.poll() is None


def urllib_text(url: str) -> str:
    from ops.http import get_text

    return get_text(url)
