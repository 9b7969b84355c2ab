"""Run a module with its heap watched: ``python [-X tracemalloc=N] -m bench.heapwatch OUT -m MODULE ARGS...``.

A soak that grows (``bench/capacity.py --soak-minutes``) says how much, not where. Under this
wrapper a daemon thread rewrites ``OUT`` every ``INTERVAL_S`` with what grew since a baseline
taken ``BASELINE_INTERVALS`` in (imports, recovery and warm-up are not growth), and a timeline
of RSS, glibc's bytes in use and free in its arenas, and pymalloc's blocks, one line an interval:

* with ``-X tracemalloc=N``: the allocation sites that grew most (by traceback, innermost frame
  last). tracemalloc records every allocation: with 4 frames a Faust worker ran 10-15x slower,
  so its backlog's fetch buffers outgrew everything else; use it at a small fraction of the load;
* without: the live objects by type (``gc.get_objects``, a second or so a snapshot, nothing per
  allocation), at full load: containers and class instances only (strs, bytes, numbers and the
  tuples holding only those are not tracked by the collector), so a leak of the app's objects
  shows by name, and the containers (over ``BIG`` items) that grew most, with what holds them: a
  list of a million offsets is one object but shows there; growth none of this shows is native.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import runpy
import sys
import threading
import time
import tracemalloc
from collections import Counter, deque
from pathlib import Path

#: Seconds between snapshots (``HEAPWATCH_INTERVAL_S`` in the environment).
INTERVAL_S = float(os.environ.get("HEAPWATCH_INTERVAL_S", "60"))
#: The baseline is the snapshot after this many intervals (``HEAPWATCH_BASELINE_INTERVALS``).
BASELINE_INTERVALS = int(os.environ.get("HEAPWATCH_BASELINE_INTERVALS", "3"))
TOP = 25
#: Containers longer than this are followed by identity (a growing index or cache, whatever holds it).
BIG = 1000
#: Frames shown per allocation site, the innermost (where the allocation happened) last.
FRAMES = 8


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _malloc_mb() -> str:
    """glibc's view: bytes in use, and bytes free but held in its arenas (fragmentation), plus
    pymalloc's allocated blocks: RSS growth that is neither is outside malloc (mmap'd by a library)."""
    blocks = f"pymalloc blocks {sys.getallocatedblocks()}"
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return blocks
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    in_use = (info.uordblks + info.hblkhd) / 1e6
    return f"malloc in use {in_use:.0f} MB, free in arenas {info.fordblks / 1e6:.0f} MB, {blocks}"


def _snapshot() -> tracemalloc.Snapshot:
    """The heap as the watched module made it: tracemalloc's own records and the import system's left out."""
    return tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        ]
    )


def _types() -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def _site_lines(first: tracemalloc.Snapshot) -> list[str]:
    lines = []
    for stat in _snapshot().compare_to(first, "traceback")[:TOP]:
        lines.append(f"\n+{stat.size_diff / 1e6:.2f} MB ({stat.count_diff:+d} blocks), now {stat.size / 1e6:.2f} MB")
        lines += [f"    {frame.filename}:{frame.lineno}" for frame in list(stat.traceback)[-FRAMES:]]
    return lines


def _sizes() -> dict[int, tuple[str, int]]:
    """Every list, dict, set and deque of more than ``BIG`` items: id -> (type, length)."""
    out = {}
    for o in gc.get_objects():
        if isinstance(o, list | dict | set | deque):
            n = len(o)
            if n > BIG:
                out[id(o)] = (type(o).__name__, n)
    return out


def _owner(target_id: int) -> str:
    """Who holds a container: an attribute or key of an object or module that refers to it."""
    target = next((o for o in gc.get_objects() if id(o) == target_id), None)
    if target is None:
        return "?"
    for ref in gc.get_referrers(target):
        if isinstance(ref, dict):
            key = next((k for k, v in list(ref.items()) if v is target), None)  # a copy: the app runs on
            holders = [h for h in gc.get_referrers(ref) if getattr(h, "__dict__", None) is ref]
            holder = holders[0] if holders else None
            where = getattr(holder, "__name__", None) if isinstance(holder, type(sys)) else None
            where = where or (type(holder).__qualname__ if holder is not None else "a dict")
            return f"{where}[{key!r}]"
    return type(next(iter(gc.get_referrers(target)), None)).__qualname__


def _type_lines(first: Counter[str], first_sizes: dict[int, tuple[str, int]]) -> list[str]:
    now = _types()
    grown = sorted(((now[k] - first.get(k, 0), k) for k in now), reverse=True)[:TOP]
    lines = ["", *(f"{diff:+9d}  {name} (now {now[name]})" for diff, name in grown)]
    sizes = _sizes()
    growing = sorted(
        ((n - first_sizes.get(key, (kind, 0))[1], key, kind, n) for key, (kind, n) in sizes.items()), reverse=True
    )[:10]
    lines += ["", "containers that grew most (items):"]
    # followed by identity: an id reused by a newer container reads as that one's growth
    lines += [f"{diff:+9d}  {kind} of {n} held by {_owner(key)}" for diff, key, kind, n in growing[:5] if diff > 0]
    return lines


def watch(out: Path, interval_s: float = INTERVAL_S, baseline_intervals: int = BASELINE_INTERVALS) -> None:
    """Every ``interval_s`` after the baseline: what grew since it, into ``out``."""
    started = time.monotonic()
    time.sleep(interval_s * baseline_intervals)
    sites = tracemalloc.is_tracing()
    first_sites = _snapshot() if sites else None
    first_types = None if sites else _types()
    first_sizes = {} if sites else _sizes()
    base_at, base_rss = time.monotonic() - started, _rss_mb()
    timeline = [f"at {base_at:.0f} s: RSS {base_rss:.0f} MB; {_malloc_mb()}"]
    while True:
        time.sleep(interval_s)
        try:
            _report(out, started, base_at, base_rss, timeline, first_sites, first_types, first_sizes)
        except Exception as exc:  # the watched process goes on; the report says why this one failed
            out.write_text(f"heapwatch failed: {exc!r}\n")


def _report(
    out: Path,
    started: float,
    base_at: float,
    base_rss: float,
    timeline: list[str],
    first_sites: tracemalloc.Snapshot | None,
    first_types: Counter[str] | None,
    first_sizes: dict[int, tuple[str, int]],
) -> None:
    """One interval's report into ``out`` (rewritten whole, so a reader never sees half)."""
    now, rss = time.monotonic() - started, _rss_mb()
    timeline.append(f"at {now:.0f} s: RSS {rss:.0f} MB; {_malloc_mb()}")
    head = f"after {now:.0f} s: RSS {rss:.0f} MB ({base_rss:.0f} MB at {base_at:.0f} s)"
    if first_sites is not None:
        head += f", python heap {tracemalloc.get_traced_memory()[0] / 1e6:.1f} MB"
        lines = [head, *_site_lines(first_sites)]
    else:
        lines = [head, *_type_lines(first_types or Counter(), first_sizes)]
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join([*lines, "", "timeline:", *timeline]) + "\n")
    tmp.replace(out)


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit("usage: python [-X tracemalloc=N] -m bench.heapwatch OUT -m MODULE [ARGS...]")
    out, module = Path(sys.argv[1]), sys.argv[3]
    threading.Thread(target=watch, args=(out,), name="heapwatch", daemon=True).start()
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
