"""Importing is free: the contract builds no Faust app, and no module builds a client or writes a file.

Each check runs in a fresh interpreter, so nothing this test session imported earlier hides an
import. The layer contracts themselves are import-linter's (``make check``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> str:
    full = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**full, **(env or {})}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_the_contract_producer_and_simulator_import_without_the_faust_app():
    out = run_python(
        "import sys, streams.records, streams.errors, streams.settings, streams.topic_names, models.producer, sim.vlm\n"
        "print(sorted(m for m in sys.modules if m in ('streams.app', 'streams.topics', 'streams.tables')))"
    )
    assert out == "[]"


def test_importing_the_worker_builds_no_client_and_writes_no_file(tmp_path):
    data_dir = tmp_path / "faust"
    out = run_python(
        "import streams\n"
        "app = streams.app\n"
        "import agents.lifecycle, agents.task_generator, agents.llm_scheduler, agents.result_aggregator\n"
        "import web.views, streams.lag\n"
        "from agents.worker_clients import current_or_none\n"
        "print(current_or_none() is None, type(app).__name__, web.views.auth.token is None)",
        env={"ROADWATCH_DATA_DIR": str(data_dir), "ROADWATCH_WEB_AUTH": "true"},
        unset=("ROADWATCH_WEB_TOKEN",),  # the token file would be made: at start, not at import
    )
    assert out == "True RoadwatchApp True"
    assert not data_dir.exists(), f"importing wrote {list(data_dir.rglob('*'))}"


def test_faust_finds_the_app_through_the_package():
    out = run_python(
        "from faust.cli.base import find_app\nimport streams.app\nprint(type(find_app('streams')).__name__)"
    )
    assert out == "RoadwatchApp"
