"""The operator's stack (``make up`` / ``make down``) on a fresh state directory (#12.14)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ops.kafka import free_port, port_open
from ops.procs import alive, recorded_pid, stop_group
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def stack(command: str, env: dict[str, str], *extra: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.stack", command, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def stack_env(tmp_path) -> dict[str, str]:
    ports = {name: str(free_port()) for name in ("KAFKA", "REDIS", "VLM", "WEB")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROADWATCH_")}
    env.update({f"ROADWATCH_{name}_PORT": port for name, port in ports.items()})
    env["ROADWATCH_STATE"] = str(tmp_path / "state")  # nothing there yet: a fresh clone's .state
    return env


def kill_leftovers(tmp_path) -> list[str]:
    """Kill what a failed `down` left of the stack (by its PID files), so a broken stop does not leave
    workers and brokers running through the rest of the suite (it once did, for an hour); returns their names."""
    left = []
    for path in (tmp_path / "state" / "pids").glob("*.pid"):
        pid = recorded_pid(path.read_text())  # None once its process is gone (its number may be reused)
        if pid is not None and alive(pid):
            left.append(path.stem)
            stop_group(pid, timeout_s=0, name=path.stem)
    return left


def test_make_up_with_two_workers_starts_both_on_a_fresh_state_dir_and_down_stops_all(tmp_path):
    """#12.14: worker-1 exited with FileNotFoundError for .state/faust/worker-1 (Faust makes no parents)."""
    env = stack_env(tmp_path)
    up = stack("up", env, "--workers", "2")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        status = stack("status", env)
        assert status.returncode == 0 and status.stdout.count("running") == 6, status.stdout
    finally:
        down = stack("down", env)
        left = kill_leftovers(tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr[-2000:]
    assert not left, f"make down left {left} running"
    assert not any(port_open(int(env[f"ROADWATCH_{n}_PORT"])) for n in ("KAFKA", "REDIS", "VLM", "WEB"))


def test_a_failed_start_stops_what_it_had_started(tmp_path):
    """#12.14: a failed start left the processes it had already started running."""
    env = stack_env(tmp_path)
    env["ROADWATCH_TOPIC_PARTITIONS"] = "0"  # the worker refuses this setting and exits
    up = stack("up", env)
    assert up.returncode != 0
    assert "started kafka" in up.stdout, up.stdout
    assert not any(port_open(int(env[f"ROADWATCH_{n}_PORT"])) for n in ("KAFKA", "REDIS", "VLM")), up.stdout
    pids = [int(pid) for pid in re.findall(r"^started \S+ +pid (\d+)", up.stdout, re.MULTILINE)]
    assert pids and not any(alive(pid) for pid in pids)
    # and no PID file is left for `make status` to call DEAD (or `make down` to kill a reused PID)
    assert not list((tmp_path / "state" / "pids").glob("*.pid"))


def test_topics_the_cluster_refuses_or_holds_otherwise_stop_with_the_topic_named(kafka, tmp_path):
    """The broker's per-topic refusals (a replication factor over its one broker) were dropped: `make topics`
    said it created them and the worker started without them. A topic kept with other partitions than the
    plan (ROADWATCH_TOPIC_PARTITIONS changed) was used as it was, its tables' changelogs keyed otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROADWATCH_")}
    tag = f"t{os.getpid()}{tmp_path.name[-6:]}"
    env.update({"ROADWATCH_TOPIC_PREFIX": f"{tag}-", "ROADWATCH_APP_ID": f"rw-{tag}"})  # changelogs: app id
    refused = stack("topics", env, "--bootstrap", kafka.bootstrap, "--replicas", "3", timeout_s=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert re.search(r"roadwatch: topics: t\S+: InvalidReplicationFactorError", refused.stderr), refused.stderr
    assert "Traceback" not in refused.stderr
    made = stack("topics", env, "--bootstrap", kafka.bootstrap, "--partitions", "2", timeout_s=120)
    assert made.returncode == 0 and "created: " in made.stdout and "nothing" not in made.stdout, made.stderr
    again = stack("topics", env, "--bootstrap", kafka.bootstrap, "--partitions", "2", timeout_s=120)
    assert again.returncode == 0 and "nothing (all topics exist)" in again.stdout, again.stderr
    other = stack("topics", env, "--bootstrap", kafka.bootstrap, "--partitions", "3", timeout_s=120)
    assert other.returncode == 2, other.stdout + other.stderr
    assert re.search(r"t\S+: 2 partitions in the cluster, 3 planned", other.stderr), other.stderr
