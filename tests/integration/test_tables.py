"""The shipped table store (RocksDB) forgets what it should, in the right partition (#12.1)."""

from __future__ import annotations

import time

from ops.http import get_json
from sim.records import detection, produce_detections
from tests.conftest import wait_until

CAMERAS = [f"cam-t{i}" for i in range(6)]


def table_keys(port: int) -> dict[str, int]:
    keys: dict[str, int] = get_json(f"http://127.0.0.1:{port}/tables/")["keys"]
    return keys


def test_rocksdb_tables_keep_one_ttl_of_detections_and_results_also_after_a_restart(
    kafka, deployment, start_worker, tmp_path
):
    ttl_s, rate_hz, seconds = 6.0, 4, 24
    env = {
        "ROADWATCH_STORE": "rocksdb://",
        "ROADWATCH_DETECTION_TTL_S": str(ttl_s),
        "ROADWATCH_RESULT_TTL_S": str(ttl_s),
        "ROADWATCH_DATA_DIR": str(tmp_path / "rocksdb-worker"),
    }
    worker = start_worker(env)
    topic = deployment.prefix + "detection-results"
    seq = 0

    def drive(seconds: float) -> None:
        nonlocal seq
        started, first = time.monotonic(), seq
        while time.monotonic() - started < seconds:
            seq += 1
            produce_detections(kafka.bootstrap, topic, [detection(cam, seq) for cam in CAMERAS])
            time.sleep(max(0.0, started + (seq - first) / rate_hz - time.monotonic()))

    drive(seconds)
    written = seq * len(CAMERAS)
    # one TTL's worth of traffic, plus the margin of one expiry pass and the last second's results
    bound = (ttl_s + 3) * rate_hz * len(CAMERAS)
    wait_until(lambda: table_keys(worker.port)["results"] >= 1, 30, "results recorded")
    time.sleep(2)
    kept = table_keys(worker.port)
    print(f"written {written} detections; kept {kept}; bound {bound:.0f}")
    assert 0 < kept["detections"] <= bound, kept
    assert 0 < kept["results"] <= bound, kept

    worker.stop()
    again = start_worker(env)
    after = table_keys(again.port)
    print(f"after a restart: {after}")
    assert 0 < after["results"] <= bound and after["detections"] <= bound, after  # recovered, not grown
    # the restarted worker expires what its predecessor wrote too (it never saw those writes)
    drive(2 * ttl_s)
    time.sleep(2)
    later = table_keys(again.port)
    print(f"after another {2 * ttl_s:.0f} s: {later}")
    assert 0 < later["detections"] <= bound and 0 < later["results"] <= bound, later
