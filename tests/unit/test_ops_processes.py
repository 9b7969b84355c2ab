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
        subprocess.Popen([sys.executable, "-c", code], start_new_session=True, preexec_fn=_end_with_parent())
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


def test_the_local_stack_uses_the_simulated_vlms_keys_whatever_the_shell_or_dotenv_holds(monkeypatch, tmp_path):
    from ops import stack
    from streams.settings import Settings

    monkeypatch.setattr(stack, "STATE", tmp_path / "state")
    monkeypatch.setenv("ROADWATCH_VLM_KEYS", "sk-real-one,sk-real-two")
    monkeypatch.setenv("ROADWATCH_VLM_KEYS_FILE", "/run/secrets/vlm-keys")
    env = stack.stack_env(stack.Ports())
    assert env["ROADWATCH_VLM_KEYS"] == ",".join(stack.SIM_KEYS)
    # a .env's ROADWATCH_VLM_KEYS_FILE would win over the keys: the stack's own file wins over it
    (tmp_path / ".env").write_text("ROADWATCH_VLM_KEYS_FILE=/run/secrets/real-keys\n")
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("ROADWATCH_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("ROADWATCH_"):
            monkeypatch.setenv(name, value)
    keys = [key.key.get_secret_value() for key in Settings().api_keys()]
    assert keys == stack.SIM_KEYS


def test_topics_go_to_the_configured_brokers_and_up_stops_every_worker_before_kafka(monkeypatch, tmp_path):
    from ops import stack

    monkeypatch.setenv("ROADWATCH_KAFKA_URL", "kafka://b1:9092;kafka://b2:9092")
    assert stack._bootstrap() == "b1:9092,b2:9092"
    monkeypatch.delenv("ROADWATCH_KAFKA_URL")
    assert stack._bootstrap() == f"127.0.0.1:{stack.Ports().kafka}"
    monkeypatch.setattr(stack, "STATE", tmp_path)
    (tmp_path / "pids").mkdir()
    for n, name in enumerate(["kafka", "worker-10", "redis", "worker-2", "producer", "vlm", "worker-1"]):
        (tmp_path / "pids" / f"{name}.pid").write_text(str(100 + n))
    assert [name for name, _ in stack._pid_files()] == [
        "producer",
        "worker-1",
        "worker-2",
        "worker-10",
        "vlm",
        "redis",
        "kafka",
    ]


def test_a_stack_interrupted_while_starting_stops_what_it_started(monkeypatch, tmp_path):
    from ops import stack

    monkeypatch.setattr(stack, "STATE", tmp_path)
    monkeypatch.setattr(stack, "libs_dir", lambda: tmp_path)
    monkeypatch.setattr(stack.Stack, "check_ports", lambda self: None)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    plan = [("vlm", sleeper), ("worker", sleeper)]
    st = stack.Stack(stack.Ports())
    st.plan = plan

    def start_one(self: stack.Stack, name: str, cmd: list[str], *, say: bool) -> None:
        if name == "worker":
            raise KeyboardInterrupt  # Ctrl-C while waiting for the worker
        self.procs[name] = stack.spawn(name, cmd, dict(os.environ), tmp_path / "logs")
        (tmp_path / "pids" / f"{name}.pid").write_text(str(self.procs[name].pid))

    monkeypatch.setattr(stack.Stack, "_start_one", start_one)
    with pytest.raises(KeyboardInterrupt):
        st.start(say=False)
    assert not st.alive()
    assert not list((tmp_path / "pids").glob("*.pid"))  # no stale PID files for `make status`


def test_a_pid_file_whose_number_went_to_another_process_is_not_trusted(monkeypatch, tmp_path, capsys):
    """After a reboot or a kill -9, `make down` signalled the process group of whatever process had
    got the recorded number since (a shell, another user's job), and `make status` called it running."""
    import os

    from ops import stack
    from ops.procs import pid_record, recorded_pid

    me = os.getpid()
    assert recorded_pid(pid_record(me)) == me
    assert recorded_pid(f"{me} 1") is None  # the same number, started at another time: not ours
    assert recorded_pid("12345") == 12345  # a file from before start times: taken at its word
    monkeypatch.setattr(stack, "STATE", tmp_path)
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "worker-2.pid").write_text(f"{me} 1")
    (tmp_path / "pids" / "producer.pid").write_text(pid_record(me))
    assert stack._pid_files() == [("producer", me)]
    assert not (tmp_path / "pids" / "worker-2.pid").exists() and "worker-2: stale PID file" in capsys.readouterr().out
    # a stack still running from this state: a second start would delete its data under it
    with pytest.raises(SystemExit, match="a stack is still running"):
        stack.Stack(stack.Ports(kafka=1, redis=2, vlm=3, web=4)).start(say=False)
