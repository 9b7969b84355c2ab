"""bench.heapwatch names where a process's heap grows, and runs the module it wraps unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

GROWER = """import os, sys, time
class Leaky:
    def __init__(self):
        self.payload = bytearray(50_000)
kept = []
offsets = []
deadline = time.monotonic() + 40
while not os.path.exists(os.environ["GROWER_UNTIL"]) and time.monotonic() < deadline:
    kept.append(Leaky())  # grows until heapwatch has reported once
    offsets.extend(range(1500))
    time.sleep(0.05)
print('args', sys.argv[1:])
"""


@pytest.mark.parametrize("traced", [True, False], ids=["allocation sites", "object types"])
def test_heapwatch_names_what_grows(tmp_path: Path, traced: bool) -> None:
    (tmp_path / "grower.py").write_text(GROWER)
    out = tmp_path / "heap.txt"
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
        "HEAPWATCH_INTERVAL_S": "0.3",
        "HEAPWATCH_BASELINE_INTERVALS": "1",
        "GROWER_UNTIL": str(out),
    }
    flags = ["-X", "tracemalloc=5"] if traced else []
    done = subprocess.run(
        [sys.executable, *flags, "-m", "bench.heapwatch", str(out), "-m", "grower", "a", "b"],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=True,
    )
    assert "args ['a', 'b']" in done.stdout  # the wrapped module saw its own arguments
    report = out.read_text()
    assert report.startswith("after ") and " RSS " in report
    timeline = report.split("\ntimeline:\n", 1)[1].splitlines()
    assert len(timeline) >= 2 and all(" RSS " in line and "pymalloc blocks" in line for line in timeline), report
    if traced:
        sites = report.split("\n\ntimeline:", 1)[0].split("\n\n")[1:4]
        assert any(site.startswith("+") and site.endswith("grower.py:4") for site in sites), report[:3000]
    else:
        types = report.split("\n\ncontainers that grew most", 1)[0].splitlines()[2:]
        grown = {line.split()[1]: int(line.split()[0]) for line in types if line.strip()}
        assert grown.get("__main__.Leaky", 0) > 0, report[:2000]
        containers = report.split("containers that grew most (items):\n", 1)[1].split("\n\n", 1)[0]
        assert "list of" in containers.splitlines()[0] and "held by __main__['offsets']" in containers, report
