"""The whole topology on a real Kafka broker: detections in, exactly one joined result per task out."""

from __future__ import annotations

import asyncio
import json

import pytest

from ops.http import get_json
from ops.verify import Report, read_all, verify_exactly_once
from sim.records import detection, produce, produce_detections
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


BAD_INPUTS = [
    b"{not json",
    b"[1, 2, 3]",
    b'{"v": 99, "camera_id": "x"}',
    b'{"camera_id": "cam-bad"}',
    "\udcff".encode("utf-8", "surrogatepass"),
    b'{"camera_id": "c", "frame_seq": 1, "captured_at": NaN, "frame_w": 1, "frame_h": 1, "model": "m", '
    b'"objects": [], "groups": [], "crops": {}}',
]


def test_bad_input_goes_to_the_dlq_and_the_worker_keeps_going(kafka, deployment, start_worker):
    worker = start_worker()
    topic = deployment.prefix + "detection-results"
    asyncio.run(produce(kafka.bootstrap, topic, [("cam-bad", body) for body in BAD_INPUTS]))
    produce_detections(kafka.bootstrap, topic, [detection("cam-good", 0)])
    dlq = wait_until(
        lambda: len(v := asyncio.run(read_all(kafka.bootstrap, topic + ".dlq"))) >= len(BAD_INPUTS) and v,
        60,
        "every bad message in the DLQ",
    )
    reasons = [json.loads(v)["error"] for v in dlq]
    assert len(reasons) == len(BAD_INPUTS), reasons
    assert all(json.loads(v)["source_topic"] == topic for v in dlq)
    wait_until(
        lambda: len(get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == 1,
        60,
        "the good detection still assessed",
    )
    assert worker.popen.poll() is None
    metrics = urllib_text(f"http://127.0.0.1:{worker.port}/metrics")
    assert f'roadwatch_dlq_total{{topic="{topic}"}} {float(len(BAD_INPUTS))}' in metrics


def urllib_text(url: str) -> str:
    from ops.http import get_text

    return get_text(url)
