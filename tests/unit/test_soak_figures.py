"""The soak's settled figures: growth from a given minute to the end, against that minute."""

from __future__ import annotations

from bench.capacity import settled


def test_growth_is_measured_from_the_minute_asked():
    samples = [
        {
            "minute": m,
            "rss_mb": 100.0 + 10 * min(m, 10),
            "data_dir_mb": 50.0,
            "cpu_ms_per_detection": 4.0,
            "lag_messages": 0,
        }
        for m in range(1, 21)
    ]
    samples[-1]["cpu_ms_per_detection"] = 9.0  # one noisy minute moves nothing: medians of 5 minutes
    assert settled(samples, 10)["cpu_per_detection_ratio"] == 1.0  # type: ignore[index]
    for sample in samples[-5:]:
        sample["cpu_ms_per_detection"] = 5.0
    five, ten = settled(samples), settled(samples, 10)
    assert five is not None and ten is not None
    assert five["minutes"] == 15 and five["rss_growth"] == round(200 / 150 - 1, 4)
    assert ten["minutes"] == 10 and ten["rss_growth"] == 0.0 and ten["cpu_per_detection_ratio"] == 1.25
    assert settled(samples[:10], 10) is None


def test_a_backlog_growing_through_the_window_is_told_from_one_held_steady():
    """One backlog figure at the end passed a worker 3-5% short of its load (1-1.5 s behind after 30 s)."""
    from bench.capacity import growing, lag_growth

    steady = [(float(t), 400 + (25 if t % 10 else -25)) for t in range(0, 31, 5)]
    behind = [(float(t), 400 + 8 * t) for t in range(0, 31, 5)]  # 8 a second: 4% of 200 detections/s
    caught_up = [(float(t), max(0, 2000 - 60 * t)) for t in range(0, 31, 5)]  # a start's backlog worked off
    assert not growing(lag_growth(steady), 200.0)  # type: ignore[arg-type]
    assert growing(lag_growth(behind), 200.0) and lag_growth(behind) == (8.0, 0.0)  # type: ignore[arg-type]
    assert not growing(lag_growth(caught_up), 200.0)  # type: ignore[arg-type]
    assert lag_growth([(0.0, 1), (5.0, 2)]) is None
    # measured levels: a backlog read between commits jitters by a second of input; 500 cameras behind
    assert not growing(lag_growth([(5.0, 27), (10.1, 21), (15.1, 201), (20.1, 184), (25.1, 177), (30.0, 114)]), 200.0)
    saturated = [(5.0, 4543), (10.1, 5323), (15.1, 5598), (20.2, 8825), (25.2, 9079), (30.0, 8457)]
    assert growing(lag_growth(saturated), 1000.0)


def test_the_workers_gauges_and_records_are_read_from_their_exposition_and_a_silent_worker_gives_nulls():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    from bench.capacity import messages_sent, worker_memory
    from ops.kafka import free_port

    registry = CollectorRegistry()
    Gauge("roadwatch_rocksdb_memory_bytes", "budget in use", registry=registry).set(64 * 2**20)
    Counter("roadwatch_heap_trimmed_bytes_total", "trimmed", registry=registry).inc(3 * 2**20)
    sent = Counter("roadwatch_faust_topic_messages_sent", "sent", ["topic"], registry=registry)
    sent.labels("topic.rw-t-camera_view-changelog").inc(5)
    sent.labels("topic.t-alerts").inc(7)
    raised = Counter("roadwatch_alerts", "alerts", ["camera_id", "level"], registry=registry)
    raised.labels("cam-1", "high").inc(4)
    raised.labels("cam-2", "critical").inc(2)

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert worker_memory(server.server_port) == {"rocksdb_mb": 64.0, "heap_trimmed_mb": 3.0, "alerts": 6.0}
        two = SimpleNamespace(app_id="rw-t", prefix="t-", workers=[SimpleNamespace(port=server.server_port)] * 2)
        assert messages_sent(two) == {"alerts": 14, "camera_view-changelog": 10}  # type: ignore[arg-type]
    finally:
        server.shutdown()
    assert worker_memory(free_port()) == {"rocksdb_mb": None, "heap_trimmed_mb": None, "alerts": None}
