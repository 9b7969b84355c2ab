"""The local tooling's processes end with what started them: no broker outlives a failed start or a killed starter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ops import kafka
from ops.procs import alive, wait_until

#: Stands in for java: answers the StorageTool at once, and as a broker writes its pid and waits.
FAKE_JAVA = textwrap.dedent(
    """
    import os, sys, time
    if "kafka.tools.StorageTool" in sys.argv:
        print("MkU3OEVBNTcwNTJENDM2Qg")
        sys.exit(0)
    with open(os.environ["FAKE_PIDS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(120)
    """
)


def _pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_a_cluster_that_does_not_come_up_stops_the_brokers_it_started(tmp_path, monkeypatch):
    script = tmp_path / "java.py"
    script.write_text(FAKE_JAVA)
    pids = tmp_path / "pids"
    monkeypatch.setenv("FAKE_PIDS", str(pids))
    monkeypatch.setattr(kafka, "libs_dir", lambda version=kafka.KAFKA_VERSION: tmp_path / "libs")
    monkeypatch.setattr(kafka.KafkaCluster, "_java", lambda self, libs: [sys.executable, str(script)])
    cluster = kafka.KafkaCluster(tmp_path / "k", size=2)
    with pytest.raises(TimeoutError):  # the fake brokers never say "Kafka Server started"
        cluster.start(timeout_s=1.5)
    started = _pids(pids)
    assert len(started) == 2
    wait_until(lambda: not any(alive(pid) for pid in started), 10, "the started brokers to end")


def test_a_broker_ends_when_its_starter_is_killed(tmp_path):
    pids = tmp_path / "pids"
    starter = textwrap.dedent(
        f"""
        import subprocess, sys, time
        from ops.kafka import _end_with_parent
        code = "import os, time; open({str(pids)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
        subprocess.Popen([sys.executable, "-c", code], start_new_session=True, preexec_fn=_end_with_parent)
        time.sleep(120)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(kafka.__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", starter], env=env)
    try:
        broker = wait_until(lambda: _pids(pids), 20, "the broker to start")[0]
        assert alive(broker)
        proc.kill()  # SIGKILL: the starter cleans nothing up itself
        proc.wait(10)
        wait_until(lambda: not alive(broker), 10, "the broker to end with its starter")
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _pids(pids):
            if alive(pid):
                os.kill(pid, 9)
