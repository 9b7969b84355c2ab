"""Conflicts on a real intersection: the DLR Urban Traffic dataset through roadwatch's conflict engine and task policy.

``python -m bench.dlr_urban [--fps 2]``

The data: 15 minutes (2023-09-24 12:00-12:15 UTC) of an urban intersection in Braunschweig
observed by DLR's research intersection (AIM), 636 road users tracked in metres with velocity,
heading, size and class probabilities at 20 Hz: the *DLR Urban Traffic dataset* v1.2.0 by the
German Aerospace Center (DLR), Institute of Transportation Systems, published on Zenodo
(record family 11396371) and redistributed inside the ``tasi`` wheel (Apache-2.0, DLR-TS), from
which it is read here. The data is not committed to this repository; only aggregate figures are.
The dataset's own Zenodo licence applies to it: read it on the record before reusing the data.

``make bench`` installs the wheel without its dependencies (geopandas, numba, ...: only the
bundled zip is read, with the standard library).

What is measured, at the camera rate ``--fps``:

* ``conflicts_per_hour``: conflict events (a pair flagged in consecutive frames, a gap of more
  than 2 s ends one) by pair type and by the worst level reached;
* ``pairs_per_s``: the engine's throughput (pairs of road users evaluated per CPU second);
* ``vlm_calls_per_hour``: the task policy (``agents.task_policy.plan_tasks``, shipped budget)
  on detections a virtual pinhole camera over the intersection would produce (3D boxes
  projected to pixels, clustered by ``models.grouping``), without and with the measured
  conflicts attached.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import time
import zipfile
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from agents.task_generator import budget_of
from agents.task_policy import plan_tasks
from bench.pipeline import RESULTS, log, save
from models.geometry import VEHICLES
from models.ground_view import ConflictMeter
from models.grouping import cluster, conflict_groups
from models.lanes import FlowMap
from models.ssm import RoadUser, Thresholds, interesting_pairs
from sim.sumo import VirtualCamera
from streams.records import Conflict, DetectedObject, DetectionResult
from streams.settings import Settings

ARCHIVE = "dataset/data/DLR-Urban-Traffic-dataset_v1-2-0.zip"
#: The dataset's class columns, in order, and the detector class each stands for.
CLASSES = ("person", "bicycle", "motorcycle", "car", "car", "truck")
#: A gap longer than this (s) ends a conflict event.
EVENT_GAP_S = 2.0


def archive() -> Path:
    """The zip inside the installed tasi wheel, found without importing tasi (its dependencies are heavy)."""
    spec = importlib.util.find_spec("tasi")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the tasi wheel is not installed: .venv/bin/pip install --no-deps tasi==0.15.4")
    path = Path(next(iter(spec.submodule_search_locations))) / ARCHIVE
    if not path.exists():
        raise SystemExit(f"{path} missing from the tasi wheel")
    return path


def load(path: Path) -> dict[str, Any]:
    """Rows as arrays; each track's class is the one its class probabilities favour most often."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if "raw_data/trajectories/trajectories_" in n)
        with zf.open(name) as raw:
            reader = csv.reader(io.TextIOWrapper(raw))
            header = next(reader)
            rows = list(reader)
    col = {name: i for i, name in enumerate(header)}
    t0 = datetime.fromisoformat(rows[0][col["timestamp"]]).timestamp()
    stamps: dict[str, float] = {}
    t = np.empty(len(rows))
    for i, row in enumerate(rows):
        stamp = row[col["timestamp"]]
        if stamp not in stamps:
            stamps[stamp] = datetime.fromisoformat(stamp).timestamp() - t0
        t[i] = stamps[stamp]
    ids = np.array([int(r[col["id"]]) for r in rows], dtype=np.int64)
    probs = np.array(
        [
            [float(r[i]) for i in range(col["classifications_pedestrian"], col["classifications_truck"] + 1)]
            for r in rows
        ]
    )
    votes: dict[int, Counter[int]] = defaultdict(Counter)
    for track, best in zip(ids, probs.argmax(axis=1), strict=True):
        votes[int(track)][int(best)] += 1
    cls = {track: CLASSES[c.most_common(1)[0][0]] for track, c in votes.items()}

    def floats(name: str) -> np.ndarray:
        return np.array([float(r[col[name]]) for r in rows])

    return {
        "t": t,
        "id": ids,
        "cls": np.array([cls[int(i)] for i in ids]),
        "x": floats("center_easting"),
        "y": floats("center_northing"),
        "vx": floats("velocity_easting"),
        "vy": floats("velocity_northing"),
        "yaw": np.radians(floats("yaw")),
        "length": floats("dimension_length"),
        "width": floats("dimension_width"),
        "height": floats("dimension_height"),
        "road_users": len(cls),
        "classes": dict(Counter(cls.values())),
    }


def run(data: dict[str, Any], fps: float) -> dict[str, Any]:
    th = Thresholds()
    settings = Settings()
    budget = budget_of(settings)
    x, y = data["x"], data["y"]
    origin = (float(np.median(x)), float(np.median(y)))
    meter = ConflictMeter(FlowMap((origin[0] - 100, origin[1] - 100, origin[0] + 100, origin[1] + 100)), th)
    camera = VirtualCamera(target=origin, height_m=20.0, back_m=35.0, focal_px=700.0)
    ids_small: dict[int, int] = {}
    events: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    pairs_evaluated, engine_s, frames = 0, 0.0, 0
    states: dict[str, Any] = {"with": None, "without": None}
    calls: Counter[str] = Counter()
    wanted: Counter[str] = Counter()
    step = 1.0 / fps
    order = np.argsort(data["t"], kind="stable")
    ts = data["t"][order]
    for when in np.arange(0.0, float(ts[-1]), step):
        lo, hi = np.searchsorted(ts, [when - 0.024, when + 0.024])  # one 20 Hz sample per track
        rows = order[lo:hi]
        if not len(rows):
            continue
        frames += 1
        users = []
        for r in rows:
            track = ids_small.setdefault(int(data["id"][r]), len(ids_small) + 1)
            users.append(
                RoadUser(
                    track,
                    str(data["cls"][r]),
                    float(x[r]),
                    float(y[r]),
                    float(data["vx"][r]),
                    float(data["vy"][r]),
                    float(data["yaw"][r]),
                    float(data["length"][r]),
                    float(data["width"][r]),
                )
            )
        by_id = {u.track_id: u for u in users}
        started = time.process_time()
        frame_conflicts = {(min(c.a, c.b), max(c.a, c.b)): c for c in meter.conflicts(float(when), by_id, users)}
        engine_s += time.process_time() - started
        pairs_evaluated += len(interesting_pairs(users)[0])
        for key, conflict in frame_conflicts.items():
            history = events[key]
            if history and when - history[-1]["last"] <= EVENT_GAP_S:
                history[-1]["last"] = float(when)
                history[-1]["levels"].append(conflict.level)
            else:
                history.append(
                    {"first": float(when), "last": float(when), "pair": conflict.pair, "levels": [conflict.level]}
                )
        det = _detection(users, camera, frames, float(when), list(frame_conflicts.values()))
        if det is None:
            continue
        now = 1_000_000.0 + float(when)
        pixel_groups = list(det.groups)
        for mode in ("without", "with"):
            if mode == "without":  # an uncalibrated camera: the pixel rules alone
                det.conflicts, det.groups = None, pixel_groups
            else:  # as the producer does for a calibrated one: the conflicts, each in a group holding both
                visible = {o.track_id for o in det.objects}
                seen = [c for c in frame_conflicts.values() if c.a in visible and c.b in visible]
                det.conflicts = seen or None
                det.groups = pixel_groups + conflict_groups(det.objects, pixel_groups, seen)
            states[mode], decisions, skipped = plan_tasks(states[mode], det, now, budget)
            calls[mode] += len(decisions)
            wanted[mode] += len(decisions) + skipped.get("budget", 0)
    hours = float(ts[-1]) / 3600.0
    per_type: Counter[str] = Counter()
    per_level: Counter[str] = Counter()
    for history in events.values():
        for event in history:
            per_type[event["pair"]] += 1
            per_level[max(event["levels"], key=["low", "medium", "high", "critical"].index)] += 1
    return {
        "fps": fps,
        "minutes": round(float(ts[-1]) / 60.0, 2),
        "road_users": data["road_users"],
        "classes": data["classes"],
        "frames": frames,
        "conflict_events": sum(per_type.values()),
        "conflicts_per_hour": {k: round(v / hours, 1) for k, v in sorted(per_type.items())},
        "conflicts_per_hour_by_level": {k: round(v / hours, 1) for k, v in sorted(per_level.items())},
        "pairs_per_s": round(pairs_evaluated / engine_s) if engine_s else None,
        "engine_ms_per_frame": round(engine_s / frames * 1000.0, 2),
        "vlm_calls_per_hour": {
            "without_measured_trigger": round(calls["without"] / hours),
            "with_measured_trigger": round(calls["with"] / hours),
        },
        "tasks_wanted_per_hour": {
            "without_measured_trigger": round(wanted["without"] / hours),
            "with_measured_trigger": round(wanted["with"] / hours),
        },
        "budget": {"per_min": budget.per_min, "burst": budget.burst, "refresh_s": budget.refresh_s},
        "camera": {"height_m": camera.height_m, "back_m": camera.back_m, "focal_px": camera.focal_px},
    }


def _detection(
    users: list[RoadUser], camera: VirtualCamera, seq: int, when: float, conflicts: list[Conflict]
) -> DetectionResult | None:
    """What the virtual camera's producer would send for these road users (no crops: the policy needs none)."""
    objects = []
    for u in users:
        height = 1.7 if u.cls == "person" else 1.6 if u.cls in ("bicycle", "motorcycle") else 1.5
        bbox = camera.box(u.x, u.y, u.heading, u.length, u.width, height)
        if bbox is None:
            continue
        speed_px = u.speed * camera.focal_px / max(1.0, camera.back_m)
        cls = u.cls if u.cls == "person" or u.cls in VEHICLES else "object"
        objects.append(DetectedObject(track_id=u.track_id, cls=cls, conf=0.9, bbox=bbox, speed=round(speed_px, 1)))
    if not objects:
        return None
    return DetectionResult(
        camera_id="dlr-ut",
        frame_seq=seq,
        captured_at=when * 1000.0,
        frame_w=camera.width,
        frame_h=camera.height,
        model="dlr-ut",
        objects=objects,
        groups=cluster(objects),
        crops={},
        run="dlr",
        conflicts=conflicts or None,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dlr_urban", description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "ssm.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    data = load(archive())
    log(f"DLR UT: {len(data['t'])} rows, {data['road_users']} road users, read in {time.monotonic() - started:.0f} s")
    result = run(data, args.fps)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report["dlr_urban"] = result
    save(args.out, report)


if __name__ == "__main__":
    main()
