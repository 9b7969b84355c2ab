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
