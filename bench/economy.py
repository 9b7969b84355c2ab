"""VLM economy benchmark: how few calls the task budget makes, and which risk events it still catches.

``python -m bench.economy [--minutes 10]``

The labelled scenario is the four simulated cameras of ``deploy/cameras.sim.yaml`` (pedestrians
cross through traffic; :meth:`sim.scene.Scene.risk_events` labels every moment a pedestrian is
within one body height of a moving vehicle). Every frame goes through the producer's real
analysis (detector, tracker, traffic groups, crops: :func:`models.producer.analyse`) and the
task generator's real policy (:func:`agents.task_policy.plan_tasks` with the default budget),
in scene time, at 2 analysis frames per second.

* ``naive_calls``: one VLM call per group per frame (the per-frame-per-group policy);
* ``vlm_calls``: tasks the policy made; ``reduction`` = naive / made;
* a *risk event* is one (pedestrian, vehicle) pair's continuous spell within reach; it counts as
  ``assessed`` when, during the spell, a task was made for a group whose box holds both;
* ``first_task_delay_ms_p95``: from the first frame in which a risk group (a pedestrian near a
  vehicle) appears to its first task, in scene time; one analysis interval is 500 ms.
  ``..._all_groups`` includes vehicle clusters, which the policy defers on purpose while the
  bucket is below its reserve.

Two detectors are measured: ``truth`` (the scene's ground-truth boxes through the same tracker
and grouping: the budget's own recall, the figure issue 3 asks for) and ``motion`` (the real
weights-free detector: what a deployment without YOLO weights gets end to end).
Writes ``bench/results/economy.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.task_policy import RISK_INTEREST, Budget, group_key, plan_tasks
from bench.pipeline import RESULTS, log, pct, save
from models.cameras import CameraConfig
from models.detectors import Detection, Detector, MotionDetector
from models.producer import CameraPipeline, analyse
from models.sources import Frame
from sim.scenarios import scenario
from sim.scene import Scene
from sim.source import scene_from_url
from streams.images import open_store
from streams.settings import Settings
from streams.table_values import CameraState


class TruthDetector(Detector):
    """The scene's ground truth as detections: isolates the budget from detector misses."""

    name = "truth"

    def __init__(self, scenes: dict[str, Scene]) -> None:
        self.scenes = scenes
        self.t: dict[str, float] = {}

    def detect(self, camera_id: str, frame: np.ndarray, frame_seq: int, at: float | None = None) -> list[Detection]:
        return [Detection(b.cls, 0.99, b.bbox) for b in self.scenes[camera_id].truth(self.t[camera_id])]


@dataclass
class Spell:
    """One (pedestrian, vehicle) pair's continuous time within reach."""

    start_s: float
    end_s: float
    assessed: bool = False


@dataclass
class Tally:
    naive: int = 0
    calls: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    spells: list[Spell] = field(default_factory=list)
    delays_ms: list[float] = field(default_factory=list)
    risk_delays_ms: list[float] = field(default_factory=list)
    never_assessed_groups: int = 0


def _inside(point_box: tuple[float, float, float, float], box: list[float], slack: float = 4.0) -> bool:
    cx, cy = (point_box[0] + point_box[2]) / 2, (point_box[1] + point_box[3]) / 2
    return box[0] - slack <= cx <= box[2] + slack and box[1] - slack <= cy <= box[3] + slack


def run_camera(
    cam_id: str,
    url: str,
    scene: Scene,
    detector: Detector,
    budget: Budget,
    settings: Settings,
    seconds: float,
    fps: float,
) -> Tally:
    tally = Tally()
    cam = CameraPipeline(CameraConfig(id=cam_id, url=url, fps=fps))
    with tempfile.TemporaryDirectory(prefix="roadwatch-economy-") as tmp:
        store = open_store(f"file://{tmp}", redis_url=settings.redis_url, ttl_s=60)
        state: CameraState | None = None
        open_spells: dict[tuple[int, int], Spell] = {}
        first_seen: dict[str, float] = {}
        assessed_groups: set[str] = set()
        warm = 30.0  # the scene fills up and the background model settles before counting
        if isinstance(detector, MotionDetector):
            detector.warm_up(cam_id, [scene.render(t * 0.5)[0] for t in range(10)])
        for i in range(int(seconds * fps)):
            t = warm + i / fps
            if isinstance(detector, TruthDetector):
                detector.t[cam_id] = t
                image = scene.render(t)[0]
            else:
                image = scene.render(t)[0]
            det = analyse(cam, Frame(image=image, captured_at=t, seq=i), detector, store, settings)
            state, decisions, _ = plan_tasks(state, det, t, budget)
            tally.naive += len(det.groups)
            tally.calls += len(decisions)
            for d in decisions:
                tally.reasons[d.reason] = tally.reasons.get(d.reason, 0) + 1
                tally.kinds[d.group.kind] = tally.kinds.get(d.group.kind, 0) + 1
            for g in det.groups:
                if g.interest >= budget.min_interest:
                    first_seen.setdefault(group_key(g), t)
            for d in decisions:
                key = group_key(d.group)
                if key not in assessed_groups:
                    assessed_groups.add(key)
                    delay = (t - first_seen.get(key, t)) * 1000.0
                    tally.delays_ms.append(delay)
                    if d.group.interest >= RISK_INTEREST:
                        tally.risk_delays_ms.append(delay)
            truth = {b.actor_id: b.bbox for b in scene.truth(t)}
            events = set(scene.risk_events(t))
            for pair in list(open_spells):
                if pair not in events:
                    tally.spells.append(open_spells.pop(pair))
            for pair in events:
                spell = open_spells.setdefault(pair, Spell(t, t))
                spell.end_s = t
                if not spell.assessed:
                    spell.assessed = any(
                        _inside(truth[pair[0]], d.group.bbox) and _inside(truth[pair[1]], d.group.bbox)
                        for d in decisions
                    )
        tally.spells.extend(open_spells.values())
        tally.never_assessed_groups = len(set(first_seen) - assessed_groups)
    return tally


def measure(kind: str, cams: dict[str, str], minutes: float, settings: Settings) -> dict[str, Any]:
    budget = Budget(
        refresh_s=settings.refresh_s,
        per_min=settings.camera_budget_per_min,
        burst=settings.camera_budget_burst,
        min_interest=settings.min_group_score,
    )
    scenes = {cam_id: scene_from_url(url) for cam_id, url in cams.items()}
    detector: Detector = TruthDetector(scenes) if kind == "truth" else MotionDetector()
    total = Tally()
    for cam_id, url in cams.items():
        tally = run_camera(cam_id, url, scenes[cam_id], detector, budget, settings, minutes * 60, 2.0)
        log(f"  {kind} {cam_id}: {tally.calls} calls, {tally.naive} naive, {len(tally.spells)} risk events")
        total.naive += tally.naive
        total.calls += tally.calls
        total.spells += tally.spells
        total.delays_ms += tally.delays_ms
        total.risk_delays_ms += tally.risk_delays_ms
        total.never_assessed_groups += tally.never_assessed_groups
        for r, n in tally.reasons.items():
            total.reasons[r] = total.reasons.get(r, 0) + n
        for k, n in tally.kinds.items():
            total.kinds[k] = total.kinds.get(k, 0) + n
    assessed = sum(1 for s in total.spells if s.assessed)
    return {
        "vlm_calls": total.calls,
        "naive_calls": total.naive,
        "reduction": round(total.naive / max(1, total.calls), 2),
        "risk_events": len(total.spells),
        "risk_events_assessed": assessed,
        "recall": round(assessed / max(1, len(total.spells)), 4),
        "first_task_delay_ms_p95": pct(total.risk_delays_ms, 0.95),
        "first_task_delay_ms_p99": pct(total.risk_delays_ms, 0.99),
        "first_task_delay_ms_p95_all_groups": pct(total.delays_ms, 0.95),
        "tasks_by_reason": total.reasons,
        "tasks_by_group_kind": total.kinds,
        "groups_worth_a_call_never_assessed": total.never_assessed_groups,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.economy", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="scene minutes per camera")
    parser.add_argument("--out", type=Path, default=RESULTS / "economy.json")
    args = parser.parse_args(argv)
    settings = Settings()
    log(f"economy: 4 cameras x {args.minutes} scene minutes at 2 fps, default budget")
    labelled = scenario("labelled")
    truth = measure("truth", labelled, args.minutes, settings)
    motion = measure("motion", labelled, args.minutes, settings)
    demo = measure("truth", scenario("demo"), args.minutes, settings)
    report = {
        **truth,
        "scenario": "labelled (sim/scenarios.py)",
        "detector": "truth (ground-truth boxes through the real tracker, grouping, crops and policy)",
        "analysis_interval_ms": 500,
        "budget": {
            "refresh_s": settings.refresh_s,
            "camera_budget_per_min": settings.camera_budget_per_min,
            "camera_budget_burst": settings.camera_budget_burst,
            "min_group_score": settings.min_group_score,
        },
        "scene_minutes_per_camera": args.minutes,
        "cameras": len(labelled),
        "motion_detector": motion,
        "demo_scenario": demo,
    }
    save(args.out, report)


if __name__ == "__main__":
    main()
