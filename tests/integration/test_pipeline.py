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
    assert view["latest_detection"]["objects"] == 2  # the frame the worker holds, not a table's
    cameras_view = get_json(f"http://127.0.0.1:{worker.port}/cameras/")
    assert cameras_view["count"] == 4
    assert all(row["latest_detection"]["frame_w"] > 0 for row in cameras_view["cameras"])


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


#: (class, message body, the reason the DLQ must give): every one ends in the DLQ, the worker alive.
BAD_INPUTS = [
    ("invalid JSON", b"{not json", "invalid JSON"),
    ("truncated JSON", b'{"camera_id": "c", "frame_seq": 1, "captured_at": 17', "invalid JSON"),
    ("an HTML error page", b"<html><body><h1>502 Bad Gateway</h1></body></html>", "invalid JSON"),
    ("not an object", b"[1, 2, 3]", "expected a JSON object"),
    ("unknown old schema version", b'{"v": 0, "camera_id": "x"}', "schema version"),
    ("missing fields", b'{"camera_id": "cam-bad"}', "missing fields"),
    ("non-UTF-8", "\udcff".encode("utf-8", "surrogatepass"), "not UTF-8"),
    ("NaN", _detection_json(captured_at=float("nan")), "not a finite number"),
    (
        "infinity",
        b'{"camera_id": "c", "frame_seq": 1, "captured_at": Infinity, "frame_w": 1, "frame_h": 1, '
        b'"model": "m", "objects": [], "groups": [], "crops": {}}',
        "not a finite number",
    ),
    ("negative numbers", _detection_json(frame_w=-640), "positive"),
    ("a string for a number", _detection_json(frame_seq="seven"), "frame_seq"),
    ("a hostile camera id", _detection_json(camera_id="../../etc/passwd"), "camera id"),
    ("unknown camera", _detection_json(camera_id="cam-nobody-knows"), "unknown camera"),
    ("oversized message", _detection_json(model="m" * 600_000), "exceeds"),
    ("a 0.9 MB record", _detection_json(model="m" * 900_000), "exceeds"),
    ("a 1 MB record", _detection_json(model="m" * 1_000_000), "exceeds"),
    ("100k-deep JSON", b'{"camera_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "RecursionError"),
    (
        "wrong types in nested fields",
        _detection_json(objects=[{"track_id": 1, "cls": "car", "conf": 0.5, "bbox": ["a", "b", "c", "d"]}]),
        "DetectionResult",
    ),
    ("a number out of range", _detection_json(frame_seq=10**30), "out of range"),
]


def test_bad_input_goes_to_the_dlq_and_the_worker_keeps_going(kafka, deployment, start_worker, tmp_path):
    cameras = tmp_path / "known-cameras.yaml"
    cameras.write_text(
        "cameras:\n  - {id: cam-good, url: 'sim://scene'}\n  - {id: cam-x, url: 'sim://scene'}\n"
        "  - {id: c, url: 'sim://scene'}\n"
    )
    worker = start_worker({"ROADWATCH_CAMERAS_FILE": str(cameras)})
    topic = deployment.prefix + "detection-results"
    asyncio.run(produce(kafka.bootstrap, topic, [("cam-bad", body) for _, body, _ in BAD_INPUTS]))
    produce_detections(kafka.bootstrap, topic, [detection("cam-good", 0)])
    dlq = wait_until(
        lambda: len(v := asyncio.run(read_all(kafka.bootstrap, topic + ".dlq"))) >= len(BAD_INPUTS) and v,
        60,
        "every bad message in the DLQ",
    )
    records = [json.loads(v) for v in dlq]
    assert len(records) == len(BAD_INPUTS), [r["error"] for r in records]
    for (name, body, expected), record in zip(BAD_INPUTS, records, strict=True):
        print(f"DLQ  {name:28s} -> {record['error'][:100]}")
        assert expected in record["error"], (name, record["error"])
        assert record["source_topic"] == topic and record["value_size"] == len(body)
    wait_until(
        lambda: len(get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == 1,
        60,
        "the good detection still assessed",
    )
    assert worker.popen.poll() is None
    assert "Crashed" not in worker.tail(10**7), "an agent crashed"
    metrics = urllib_text(f"http://127.0.0.1:{worker.port}/metrics")
    assert f'roadwatch_dlq_total{{topic="{topic}"}} {float(len(BAD_INPUTS))}' in metrics
    assert "roadwatch_unknown_camera_records_total 1.0" in metrics
    # the tables' RocksDB memory, all partitions together, is charged to one budget (shipped: 128 MB)
    used = next(float(x.split()[1]) for x in metrics.splitlines() if x.startswith("roadwatch_rocksdb_memory_bytes "))
    assert 0 < used <= 128 * 1024 * 1024


def test_any_payload_on_the_redis_channel_is_counted_and_dropped(kafka, deployment, start_worker, redis_url):
    """#12.3: one PUBLISH of a non-object crashed the relay, which Faust turns into an app crash."""
    import redis

    worker = start_worker()
    channel = f"{deployment.app_id}{deployment.prefix}:results"
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: client.pubsub_numsub(channel)[0][1] >= 1, 30, "the relay subscribed")
    payloads = [b"1", b"[]", b'"x"', b"null", b"{}", b"[" * 50_000, b'{"type": "result", "camera_id": 5}']
    for payload in payloads:
        client.publish(channel, payload)
    wait_until(
        lambda: metric_value(worker.port, "roadwatch_relay_dropped_total") >= len(payloads), 20, "payloads dropped"
    )
    produce_detections(kafka.bootstrap, deployment.prefix + "detection-results", [detection("cam-after", 0)])
    wait_until(lambda: len(get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == 1, 60, "still working")
    assert worker.popen.poll() is None and "Crashed" not in worker.tail(10**7)


def metric_value(port: int, name: str) -> float:
    for line in urllib_text(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


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
        "bomb": {"data_b64": base64.b64encode(_jpeg_claiming(20000, 20000)).decode()},
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
        lambda: len(r := get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == len(crops) and r,
        60,
        f"{len(crops)} results",
    )
    assert len(got) == len(crops)

    def full(camera: str) -> dict:
        return get_json(f"http://127.0.0.1:{worker.port}/cameras/{camera}/")["results"][0]

    errors = {name: full(f"cam-{name}")["error"] for name in crops}
    print("bad images:", json.dumps(errors, indent=1))
    assert all(full(f"cam-{name}")["status"] == "failed" for name in crops)
    assert "not a JPEG or PNG" in errors["not-an-image"] and "corrupt image" in errors["corrupt"]
    assert "exceeds" in errors["huge"] and "not found" in errors["expired"]
    assert "header claims 20000x20000" in errors["bomb"]
    metrics = urllib_text(f"http://127.0.0.1:{worker.port}/metrics")
    assert 'roadwatch_bad_images_total{reason="bad"} 4.0' in metrics
    assert 'roadwatch_bad_images_total{reason="missing"} 1.0' in metrics
    # a VLM answering garbage: a failed result with the parse error, the key not blamed
    post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"garbage_rate": 1.0})
    try:
        produce_detections(kafka.bootstrap, topic, [detection("cam-garbage", 9)])
        wait_until(
            lambda: len(get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == len(crops) + 1,
            60,
            "garbage result",
        )
    finally:
        post_json(f"http://127.0.0.1:{sim_vlm.port}/admin/config", {"garbage_rate": 0.0})
    garbage = full("cam-garbage")
    assert garbage["status"] == "failed" and "no JSON risk assessment" in garbage["error"]
    assert worker.popen.poll() is None and "Crashed" not in worker.tail(10**7)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose JPEG header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    import cv2
    import numpy as np

    _, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def urllib_text(url: str) -> str:
    from ops.http import get_text

    return get_text(url)
