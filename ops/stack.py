"""The operator's commands: run, up, down, status, topics, e2e (``python -m ops.stack CMD``).

A *stack* is a Kafka broker, Redis, the simulated VLM, Faust worker(s) and a detection
producer on simulated cameras, all on loopback. ``run`` keeps them in the foreground until
Ctrl-C; ``up`` starts them in the background with logs and PID files under ``.state/``;
``down`` stops them (SIGTERM, then SIGKILL after a timeout); ``e2e`` runs the pipeline for a
while with a live view of the flow and verifies that every task produced exactly one result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import producer
from ops.http import get_json
from ops.kafka import libs_dir, port_open
from ops.procs import Proc, WaitTimeout, alive, pid_record, recorded_pid, spawn, stop_pids, wait_until
from sim import vlm
from streams.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("ROADWATCH_STATE", ROOT / ".state"))
PY = sys.executable
SIM_KEYS = [f"sim-key-{i:02d}-{'abcdefghij'[i % 10]}{i * 7919 % 10000:04d}" for i in range(1, 11)]


@dataclass(frozen=True)
class Ports:
    kafka: int = int(os.environ.get("ROADWATCH_KAFKA_PORT", 9092))
    redis: int = int(os.environ.get("ROADWATCH_REDIS_PORT", 6399))
    vlm: int = int(os.environ.get("ROADWATCH_VLM_PORT", 8089))
    web: int = int(os.environ.get("ROADWATCH_WEB_PORT", 6066))


def stack_env(ports: Ports, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every roadwatch process of the stack runs with."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "ROADWATCH_KAFKA_URL": f"kafka://127.0.0.1:{ports.kafka}",
            "ROADWATCH_REDIS_URL": f"redis://127.0.0.1:{ports.redis}/0",
            "ROADWATCH_VLM_BASE_URL": f"http://127.0.0.1:{ports.vlm}/v1",
            "ROADWATCH_WEB_PORT": str(ports.web),
            "ROADWATCH_DATA_DIR": str(STATE / "faust"),
            "ROADWATCH_IMAGE_STORE": f"file://{STATE / 'images'}",
        }
    )
    # the stack's VLM is the simulated one, which knows only its own keys: a shell's or a .env's
    # real keys (ROADWATCH_VLM_KEYS, or the _FILE that wins over it) would all be refused there
    keys = STATE / "sim-vlm-keys"
    keys.parent.mkdir(parents=True, exist_ok=True)
    keys.write_text("\n".join(SIM_KEYS) + "\n")
    env["ROADWATCH_VLM_KEYS_FILE"] = str(keys)
    env["ROADWATCH_VLM_KEYS"] = ",".join(SIM_KEYS)
    # the local stack binds to loopback only: no token, so the printed dashboard URL just works
    env.setdefault("ROADWATCH_WEB_AUTH", "false")
    env.update(extra or {})
    return env


def redis_command(port: int, folder: Path) -> list[str]:
    """redis-server on loopback, no persistence: a cache that may be lost."""
    binary = shutil.which("redis-server") or "redis-server"
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
    ]


def services(ports: Ports, *, cameras: str, vlm_args: list[str], workers: int = 1) -> list[tuple[str, list[str]]]:
    """Name and command of each process, in start order."""
    redis_server = shutil.which("redis-server")
    procs: list[tuple[str, list[str]]] = [
        ("kafka", [PY, "-m", "ops.kafka", "start", "--port", str(ports.kafka), "--dir", str(STATE / "kafka")]),
    ]
    if redis_server:
        procs.append(("redis", redis_command(ports.redis, STATE)))
    procs.append(("vlm", [*vlm.command(ports.vlm, SIM_KEYS), *vlm_args]))
    for i in range(workers):
        procs.append((f"worker-{i + 1}" if workers > 1 else "worker", [PY, "-m", "streams", "worker", "-l", "info"]))
    procs.append(("producer", producer.command(cameras)))
    return procs


class Stack:
    """Starts, watches and stops the processes of one stack."""

    def __init__(
        self,
        ports: Ports,
        *,
        cameras: str = "deploy/cameras.sim.yaml",
        workers: int = 1,
        vlm_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.ports = ports
        self.env = stack_env(ports, env)
        self.plan = services(ports, cameras=cameras, vlm_args=vlm_args or ["--rpm", "120"], workers=workers)
        self.procs: dict[str, Proc] = {}
        self.workers = workers

    def check_ports(self) -> None:
        webs = [(f"web (worker-{i + 1})", self.ports.web + i) for i in range(self.workers)]
        busy = [
            f"{name} port {p}"
            for name, p in (("kafka", self.ports.kafka), ("redis", self.ports.redis), ("vlm", self.ports.vlm), *webs)
            if port_open(p)
        ]
        if busy:
            raise SystemExit(
                f"ports in use: {', '.join(busy)}. Is a stack already up? (`make down`), or set ROADWATCH_*_PORT."
            )

    def start(self, *, say: bool = True) -> None:
        """Start every process in order, each ready before the next; a failed start stops what started."""
        self.check_ports()
        running = []
        for name, pid in _pid_files():  # drops the files of processes that were replaced
            if alive(pid):
                running.append(name)
            else:
                (STATE / "pids" / f"{name}.pid").unlink(missing_ok=True)
        if running:
            # another stack on other ports shares this state: its data would be deleted under it
            raise SystemExit(
                f"a stack is still running from {STATE} ({', '.join(running)}): `make down` first, or set "
                "ROADWATCH_STATE as well as the ports for a second one"
            )
        for sub in ("faust", "kafka", "images"):
            shutil.rmtree(STATE / sub, ignore_errors=True)
        (STATE / "pids").mkdir(parents=True, exist_ok=True)
        if not shutil.which("redis-server"):
            print("redis: redis-server not found: running degraded (no result cache)", flush=True)
        if self.plan and self.plan[0][0] == "kafka":
            libs_dir()  # the broker's jars, fetched once (minutes) before, not inside its 120 s to start
        try:
            for name, cmd in self.plan:
                self._start_one(name, cmd, say=say)
        except BaseException:  # a failure, or Ctrl-C half way: nothing started is left running
            self.stop()
            raise

    def _start_one(self, name: str, cmd: list[str], *, say: bool) -> None:
        if name in ("worker", "worker-1"):
            create_topics(f"127.0.0.1:{self.ports.kafka}")
        env = dict(self.env)
        if name.startswith("worker-"):
            index = int(name.split("-")[1]) - 1
            env["ROADWATCH_WEB_PORT"] = str(self.ports.web + index)
            env["ROADWATCH_DATA_DIR"] = str(STATE / "faust" / name)
        if name.startswith("worker"):
            Path(env["ROADWATCH_DATA_DIR"]).mkdir(parents=True, exist_ok=True)  # Faust makes no parents
        proc = spawn(name, cmd, env, STATE / "logs")
        self.procs[name] = proc
        (STATE / "pids" / f"{name}.pid").write_text(pid_record(proc.pid))
        if say:
            print(f"started {name:9s} pid {proc.pid:<7d} log {proc.log}", flush=True)
        self._ready(proc)

    def _ready(self, proc: Proc, timeout_s: float = 120.0) -> None:
        name = proc.name
        port = {"kafka": self.ports.kafka, "redis": self.ports.redis, "vlm": self.ports.vlm}.get(name)
        if name.startswith("worker"):
            port = self.ports.web + (int(name.split("-")[1]) - 1 if "-" in name else 0)
        if port is None:
            return

        def up() -> bool:
            if not proc.running():
                raise SystemExit(f"{name} exited with {proc.popen.returncode}:\n{proc.tail(3000)}")
            return port_open(port) and (name != "kafka" or b"kafka: kafka://" in proc.log.read_bytes())

        try:
            wait_until(up, timeout_s, name, every_s=0.3)
        except WaitTimeout:
            raise SystemExit(f"{name} did not come up within {timeout_s:.0f}s; see {proc.log}") from None

    def stop(self, timeout_s: float = 15.0) -> None:
        stop_pids([(name, proc.pid) for name, proc in reversed(list(self.procs.items()))], timeout_s)
        for name, proc in self.procs.items():
            if proc.popen.poll() is not None:  # its PID may be another process's tomorrow
                (STATE / "pids" / f"{name}.pid").unlink(missing_ok=True)

    def alive(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.running()]


def create_topics(bootstrap: str, partitions: int | None = None, replicas: int | None = None) -> list[str]:
    """Create every topic of the app (see streams.admin); existing ones are kept."""
    from streams.admin import create_topics as create

    return asyncio.run(create(bootstrap, partitions, replicas))


def wait_for_results(web: int, cameras: int, timeout_s: float) -> float | None:
    """Seconds until /cameras/ shows ``cameras`` cameras with a result, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            body = get_json(f"http://127.0.0.1:{web}/cameras/")
            if sum(1 for c in body["cameras"] if c.get("latest_result")) >= cameras:
                return time.monotonic() - started
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            pass
        time.sleep(1.0)
    return None


#: What stops a foreground stack: Ctrl-C, a kill, the terminal closing (its children have sessions
#: of their own: the hang-up does not reach them).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_stop_signals(handler: Callable[[int, Any], None]) -> None:
    """``handler`` for every stop signal, but a hang-up stays ignored under ``nohup``."""
    for sig in STOP_SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue
        signal.signal(sig, handler)


def _say(text: str) -> None:
    """Print, unless the terminal is gone (a hang-up): the stop that follows must still run."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    for sig in STOP_SIGNALS:  # once: a second Ctrl-C must not cut short the stop that follows
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    stack = Stack(Ports())
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    _on_stop_signals(_interrupt)  # while starting, a signal interrupts the wait for the next service
    try:
        try:
            stack.start()
        except KeyboardInterrupt:
            return 130
        _on_stop_signals(on_signal)  # from here the loop below ends on the flag, and stops everything
        print(f"dashboard: http://127.0.0.1:{stack.ports.web}/", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        ready_said = False
        started = time.monotonic()
        while not stopping:
            dead = [n for n, p in stack.procs.items() if not p.running()]
            if dead:
                print(f"{', '.join(dead)} exited unexpectedly; see .state/logs/. Stopping.", flush=True)
                return 1
            if not ready_said and int(time.monotonic() - started) % 2 == 0:
                took = wait_for_results(stack.ports.web, 4, 0.1)
                if took is not None:
                    print(
                        f"results flowing: 4+ cameras assessed {time.monotonic() - started:.0f}s after start",
                        flush=True,
                    )
                    ready_said = True
            time.sleep(0.5)
        return 0
    finally:
        _say("stopping...")
        stack.stop()
        _say("stopped: " + ("nothing left running" if not stack.alive() else f"still alive: {stack.alive()}"))


def _pid_files() -> list[tuple[str, int]]:
    """The PID files of ``up``, in stop order: the producer, every worker, then what they use."""
    order = ["producer", "worker", "vlm", "redis", "kafka"]
    found: dict[str, int] = {}
    for path in sorted((STATE / "pids").glob("*.pid")) if (STATE / "pids").exists() else []:
        pid = recorded_pid(path.read_text())
        if pid is None:
            # its process ended (a reboot, a kill -9): the number may be another process's now,
            # which `down` would have killed with its whole group
            print(f"{path.stem}: stale PID file ({path.read_text().strip()}), removed", flush=True)
            path.unlink(missing_ok=True)
        else:
            found[path.stem] = pid

    def rank(name: str) -> tuple[int, int]:
        kind, _, index = name.partition("-")
        return (order.index(kind) if kind in order else len(order), int(index) if index.isdigit() else 0)

    return sorted(found.items(), key=lambda kv: rank(kv[0]))


def cmd_up(args: argparse.Namespace) -> int:
    stack = Stack(Ports(), workers=args.workers)
    _on_stop_signals(_interrupt)
    try:
        stack.start()  # stops what it started on a failure or a Ctrl-C
    except KeyboardInterrupt:
        stack.stop()  # again: the Ctrl-C may have cut short the stop of a failed start
        return 130
    print(f"dashboard: http://127.0.0.1:{stack.ports.web}/  (`make status`, `make down`)", flush=True)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    named = _pid_files()
    if not named:
        print("nothing to stop (no PID files under .state/pids)")
        return 0
    stop_pids(named, timeout_s=args.timeout)
    for name, pid in named:
        (STATE / "pids" / f"{name}.pid").unlink(missing_ok=True)
        print(f"stopped {name} (pid {pid})" if not alive(pid) else f"FAILED to stop {name} (pid {pid})")
    return 0 if not any(alive(pid) for _, pid in named) else 1


def cmd_status(args: argparse.Namespace) -> int:
    named = _pid_files()
    if not named:
        print("roadwatch is not running (no PID files under .state/pids)")
        return 1
    for name, pid in named:
        print(f"{name:10s} pid {pid:<7d} {'running' if alive(pid) else 'DEAD'}")
    try:
        health = get_json(f"http://127.0.0.1:{Ports().web}/health")
        print("worker health:", json.dumps(health))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"worker health: unreachable ({exc})")
    return 0 if all(alive(pid) for _, pid in named) else 1


def cmd_topics(args: argparse.Namespace) -> int:
    created = create_topics(args.bootstrap, args.partitions, args.replicas)
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    return 0


def cmd_e2e(args: argparse.Namespace) -> int:
    from ops.verify import FlowWatcher, verify_exactly_once

    stack = Stack(Ports(), workers=args.workers)
    try:
        stack.start(say=True)
        bootstrap = f"127.0.0.1:{stack.ports.kafka}"
        print(f"dashboard: http://127.0.0.1:{stack.ports.web}/  running for {args.duration:.0f}s", flush=True)
        watcher = FlowWatcher(bootstrap)
        watcher.watch(args.duration, every_s=5.0, web_port=stack.ports.web)
        print("stopping the producer and draining the pipeline...", flush=True)
        stop_pids([("producer", stack.procs["producer"].pid)])
        report = verify_exactly_once(
            bootstrap, [stack.ports.web + i for i in range(args.workers)], drain_timeout_s=90.0
        )
        print(report.line(), flush=True)
        return 0 if report.ok else 1
    finally:
        stack.stop()


def _bootstrap() -> str:
    """Where ``topics`` creates the topics: the brokers the workers would use (the environment or
    ``.env``), when configured; else the local stack's."""
    from streams.settings import Settings

    try:
        settings = Settings()
    except ValueError:  # pydantic's ValidationError: the workers would refuse it too
        settings = None
    if settings is not None and "kafka_url" in settings.model_fields_set:
        return settings.bootstrap_servers
    return f"127.0.0.1:{Ports().kafka}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="start everything in the foreground; Ctrl-C stops it")
    up = sub.add_parser("up", help="start everything in the background")
    up.add_argument("--workers", type=int, default=1)
    down = sub.add_parser("down", help="stop what `up` started")
    down.add_argument("--timeout", type=float, default=15.0)
    sub.add_parser("status", help="show what runs")
    topics = sub.add_parser("topics", help="create the topics")
    topics.add_argument(
        "--bootstrap",
        default=_bootstrap(),
        help="brokers, host:port[,...] (default: ROADWATCH_KAFKA_URL's when set, else the local stack's)",
    )
    topics.add_argument("--partitions", type=int, default=None)
    topics.add_argument("--replicas", type=int, default=None)
    e2e = sub.add_parser("e2e", help="run the pipeline for a while and verify exactly-once results")
    e2e.add_argument("--duration", type=float, default=60.0)
    e2e.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    handler = {
        "run": cmd_run,
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "topics": cmd_topics,
        "e2e": cmd_e2e,
    }[args.cmd]
    try:
        code = handler(args)
    except ConfigError as exc:  # a setting the cluster cannot hold: the message says which, no traceback
        print(f"roadwatch: {exc}", file=sys.stderr, flush=True)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
