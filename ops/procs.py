"""Child processes for tests, benchmarks and the local stack: spawn, stop, wait.

Every process roadwatch's tooling starts gets its own session (process group), so that stopping
it also stops what it started; the brokers ``ops.kafka`` starts have sessions of their own
and end with it (stopped by it, or by the kernel's parent-death signal if it is killed).
Stopping is SIGTERM to the group, then SIGKILL after a timeout; waiting is a poll with a
deadline that names what it waited for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not become true before its deadline (an AssertionError, so tests read it)."""


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.25) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; raise naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last  # type: ignore[no-any-return]
        time.sleep(every_s)
    raise WaitTimeout(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {str(last)[:300]})")


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (field 3, the state, first); OSError once it is gone.
    The name, in parentheses, may hold spaces and parentheses: it ends at the last ")"."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return True


def started_at(pid: int) -> str | None:
    """When ``pid`` started (clock ticks after boot, /proc/PID/stat field 22), or None if it is gone:
    with the number, it tells a process from a later one that got the same number."""
    try:
        fields = _stat(pid)
    except OSError:
        return None
    return fields[19] if len(fields) > 19 else None


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (every thread): a benchmark's cost that holds on a noisy
    machine, where its wall time does not."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_record(pid: int) -> str:
    """What a PID file holds: the number and when that process started."""
    return f"{pid} {started_at(pid) or ''}".strip()


def recorded_pid(text: str) -> int | None:
    """The process a PID file names, if it is still that one: None when it has ended or its number
    now belongs to another process (a reboot, a kill -9 and time). A file without a start time
    (written before they had one) is taken at its word."""
    number, _, started = text.strip().partition(" ")
    if not number.isdigit():
        return None
    pid = int(number)
    if started and started_at(pid) != started:
        return None
    return pid


def stop_group(pid: int, timeout_s: float = 15.0, *, name: str = "", dump_first: bool = False) -> bool:
    """SIGTERM the process group of ``pid``, SIGKILL it after ``timeout_s``; True if it had to be killed.

    ``dump_first`` sends the leader SIGUSR1 before the SIGKILL: a mode/Faust worker answers it by
    writing every thread's and task's stack to its log, which is what explains a hung shutdown.
    """
    if not alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = alive(pid)
    if killed:
        with contextlib.suppress(OSError):  # the terminal may be gone (a hang-up): kill anyway
            print(f"{name or pid} (pid {pid}) did not stop in {timeout_s:.0f}s: SIGKILL", flush=True)
        if dump_first:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
            time.sleep(2.0)
    try:  # also what is left in the group (children of a stopped leader)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return killed


def stop_pids(named: list[tuple[str, int]], timeout_s: float = 15.0) -> None:
    """Stop each named process group in order (see :func:`stop_group`)."""
    for name, pid in named:
        stop_group(pid, timeout_s, name=name)


@dataclass
class Proc:
    """A started process with its log file; :meth:`stop` ends its whole group."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.running() and stop_group(self.popen.pid, timeout_s, name=self.name, dump_first=True):
            header = f"--- the end of {self.name}'s log (with its stacks after SIGUSR1) ---"
            print(f"{header}\n{self.tail(12000)}", flush=True)
        self.popen.wait(10)

    def kill(self) -> None:
        if self.running():
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(10)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def spawn(name: str, cmd: list[str], env: dict[str, str], log_dir: Path, port: int = 0, *, cwd: Path = ROOT) -> Proc:
    """Start ``cmd`` in its own session with stdout and stderr in ``log_dir/name.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "wb") as handle:
        popen = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, popen, log, port, env)
