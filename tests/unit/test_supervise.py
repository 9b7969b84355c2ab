"""The producer's supervisor: what each child is told, and a failed child stopping the rest."""

from __future__ import annotations

import signal
import sys

from models.producer import child_args, cv_threads, run_children


def test_children_get_no_per_child_flag_of_the_parent():
    argv = [
        "--cameras",
        "c.yaml",
        "--processes",
        "2",
        "--device=cpu",
        "--metrics-port",
        "9108",
        "--metrics-host=0.0.0.0",
        "--processes=3",
        "--camera-ids",
        "a,b",
        "--cv-threads=4",
        "--workers",
        "1",
    ]
    assert child_args(argv) == ["--cameras", "c.yaml", "--workers", "1"]


def test_each_process_gets_its_share_of_the_cores_for_opencv():
    assert cv_threads(2, cpus=2) == 1
    assert cv_threads(3, cpus=8) == 2
    assert cv_threads(1, cpus=8) == 8
    assert cv_threads(4, cpus=2) == 1  # never none


def test_a_failed_child_stops_the_others():
    codes = run_children(
        [
            [sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"],
            [sys.executable, "-c", "import time; time.sleep(120)"],  # would exit 0 if left alone
        ],
        poll_s=0.1,
    )
    assert codes == [3, -signal.SIGTERM]


def test_a_failed_child_stops_the_others_whatever_its_place():
    codes = run_children(
        [
            [sys.executable, "-c", "import time; time.sleep(120)"],  # the first still running
            [sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"],
        ],
        poll_s=0.1,
    )
    assert codes == [-signal.SIGTERM, 3]


def test_children_that_finish_are_all_waited_for():
    quick = [sys.executable, "-c", "pass"]
    slow = [sys.executable, "-c", "import time; time.sleep(1)"]
    assert run_children([quick, slow], poll_s=0.1) == [0, 0]


def test_the_supervisor_serves_every_childs_metrics_on_one_port():
    import http.server
    import socket
    import threading
    import time

    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
    from prometheus_client.parser import text_string_to_metric_families

    from ops.kafka import free_port
    from streams.child_metrics import ChildrenCollector

    ports = []
    for child, camera in enumerate(["cam-a", "cam-b"]):  # two children, as two registries
        registry = CollectorRegistry()
        frames = Counter("roadwatch_frames_total", "Frames.", ["camera_id"], registry=registry)
        frames.labels(camera).inc(3 + child)
        Histogram("roadwatch_detector_seconds", "Detector time.", registry=registry).observe(0.01)
        port = free_port()
        start_http_server(port, addr="127.0.0.1", registry=registry)
        ports.append(port)
    ports.append(free_port())  # a third child that does not answer (exited, or not started yet)

    class Garbled(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a child killed mid-reply, or not a Prometheus exposition
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'roadwatch_frames_total{camera_id="cam-c" 3\n\xff\xfe')

    garbled = http.server.HTTPServer(("127.0.0.1", 0), Garbled)
    threading.Thread(target=garbled.serve_forever, daemon=True).start()
    ports.append(garbled.server_address[1])
    hung = socket.socket()  # a child that takes the connection and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen()
    ports.append(hung.getsockname()[1])
    merged = CollectorRegistry(auto_describe=False)
    merged.register(ChildrenCollector(ports, timeout_s=1.0))
    started = time.monotonic()
    text = generate_latest(merged).decode()
    assert time.monotonic() - started < 3.0  # one deadline for them all, not one each
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("roadwatch_frames_total", (("camera_id", "cam-a"), ("process", "0")))] == 3
    assert samples[("roadwatch_frames_total", (("camera_id", "cam-b"), ("process", "1")))] == 4
    # a family every child has, with no label to tell them apart, is one family with both
    assert samples[("roadwatch_detector_seconds_count", (("process", "0"),))] == 1
    assert samples[("roadwatch_detector_seconds_count", (("process", "1"),))] == 1
    assert [samples[("roadwatch_producer_process_up", (("process", str(i)),))] for i in range(5)] == [1, 1, 0, 0, 0]
    assert not any(labels == (("camera_id", "cam-c"), ("process", "3")) for _, labels in samples)
    # two scrapes at once (two Prometheus servers): neither waits behind the other's hung child
    both: list[str] = []
    at_once = [threading.Thread(target=lambda: both.append(generate_latest(merged).decode())) for _ in range(2)]
    for scrape in at_once:
        scrape.start()
    for scrape in at_once:
        scrape.join()
    for text in both:
        up = {
            s.labels["process"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "roadwatch_producer_process_up"
        }
        assert up == {"0": 1, "1": 1, "2": 0, "3": 0, "4": 0}
    garbled.shutdown()
    hung.close()


def test_free_port_gives_up_on_a_crowded_range_instead_of_spinning(monkeypatch):
    import pytest

    from ops import kafka

    monkeypatch.setattr(kafka, "_bindable", lambda port: False)  # every neighbour taken
    with pytest.raises(OSError, match="no run of 3 free loopback ports found in 5 tries"):
        kafka.free_port(run=3, attempts=5)
    with pytest.raises(ValueError):
        kafka.free_port(run=0)
    monkeypatch.undo()
    port = kafka.free_port(run=2)
    assert kafka._bindable(port) and kafka._bindable(port + 1)
