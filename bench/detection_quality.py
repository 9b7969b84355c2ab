"""Detection quality on the harder scenes: recall and precision by class, against a plain MOG2 loop.

``python -m bench.detection_quality [--seconds 50]`` (also part of ``python -m bench.detection``)

Each scenario of :data:`sim.scenarios.HARDER` is rendered from scene time 20 s at 2, 5 and
10 fps; the first ``WARM_S`` seconds teach the background models and are not scored. Two
detectors see the same frames:

* ``roadwatch``: the producer's motion path, :class:`models.detectors.MotionDetector` then the
  tracker's merge splitting (what :func:`models.producer.analyse` emits);
* ``baseline``: the plain loop issue 16 measured against: MOG2 (history 200, varThreshold 25),
  open 3x3, dilate twice, contours over 120 px, classified by the same box-shape rule the motion
  detector used before issue 16 (so class figures compare like with like).

Scoring, at IoU >= 0.5, one detection per object (greedy by IoU): an object counts when at
least half of it is in view (not behind a pole) and it has not stood still for more than
``STILL_GRACE_S`` (a motion detector is not asked to see a car parked for a minute); a box on an
object that does not count is neither right nor wrong. ``recall`` ignores the class;
``pedestrian_recall`` and ``vehicle_recall`` need the box's class to be right as well
(person versus any vehicle). ``precision``: boxes that match a counted object.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.pipeline import log, save
from models.detectors import WARM_UP_S, Detection, Detector, MotionDetector, class_sizes_scale
from models.geometry import iou
from models.producer import on_frame
from models.tracking import Tracker
from sim.scenarios import HARDER
from sim.scene import TruthBox
from sim.source import scene_from_url

FPS = (2, 5, 10)
START_S = 20.0
WARM_S = WARM_UP_S + 1.0
STILL_GRACE_S = 5.0
MIN_VISIBLE = 0.5
IOU = 0.5


class PlainMog2(Detector):
    """The baseline loop, as a detector."""

    name = "baseline/mog2"

    def __init__(self) -> None:
        self._models: dict[str, cv2.BackgroundSubtractorMOG2] = {}
        self._kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))

    def detect(self, camera_id: str, frame: np.ndarray, frame_seq: int, at: float | None = None) -> list[Detection]:
        model = self._models.setdefault(
            camera_id, cv2.createBackgroundSubtractorMOG2(history=200, varThreshold=25, detectShadows=False)
        )
        mask = model.apply(frame)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        mask = cv2.dilate(mask, self._kernel, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        found = []
        area = class_sizes_scale(frame.shape)  # roadwatch's class sizes, as it scales them
        for contour in contours:
            if cv2.contourArea(contour) <= 120:
                continue
            x, y, w, h = cv2.boundingRect(contour)
            box = (float(x), float(y), float(x + w), float(y + h))
            found.append(Detection(MotionDetector._classify(box, area), 0.5, box))
        return found


@dataclass
class Score:
    """Counts behind the figures; they add up across scenarios."""

    objects: int = 0
    found: int = 0
    pedestrians: int = 0
    pedestrians_found: int = 0
    vehicles: int = 0
    vehicles_found: int = 0
    boxes: int = 0
    boxes_right: int = 0
    cpu_s: float = 0.0
    frames: int = 0
    #: road users not found, by what the box nearest to them holds (see :func:`miss_cause`)
    missed_by_cause: dict[str, int] = field(default_factory=dict)

    def add(self, other: Score) -> None:
        for name in ("objects", "found", "pedestrians", "pedestrians_found", "vehicles", "vehicles_found"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.boxes += other.boxes
        self.boxes_right += other.boxes_right
        for cause, n in other.missed_by_cause.items():
            self.missed_by_cause[cause] = self.missed_by_cause.get(cause, 0) + n
        self.cpu_s += other.cpu_s
        self.frames += other.frames

    def figures(self) -> dict[str, Any]:
        return {
            "recall": round(self.found / max(1, self.objects), 4),
            "precision": round(self.boxes_right / max(1, self.boxes), 4),
            "pedestrian_recall": round(self.pedestrians_found / max(1, self.pedestrians), 4),
            "vehicle_recall": round(self.vehicles_found / max(1, self.vehicles), 4),
            "objects": self.objects,
            "pedestrians": self.pedestrians,
            "boxes": self.boxes,
            "ms_per_frame": round(1000 * self.cpu_s / max(1, self.frames), 2),
            "missed_by_cause": dict(sorted(self.missed_by_cause.items(), key=lambda kv: -kv[1])),
        }


def score_frame(score: Score, truth: list[TruthBox], found: list[Detection]) -> None:
    """Match one frame's boxes to its objects and count."""
    counted = [b for b in truth if b.visible >= MIN_VISIBLE and b.still_s <= STILL_GRACE_S]
    ignored = [b for b in truth if not (b.visible >= MIN_VISIBLE and b.still_s <= STILL_GRACE_S)]
    pairs = sorted(
        ((iou(b.bbox, d.bbox), ti, di) for ti, b in enumerate(counted) for di, d in enumerate(found)), reverse=True
    )
    used_t: set[int] = set()
    match: dict[int, int] = {}
    for overlap, ti, di in pairs:
        if overlap < IOU:
            break
        if ti in used_t or di in match:
            continue
        used_t.add(ti)
        match[di] = ti
    hit_of = {ti: di for di, ti in match.items()}
    for ti, box in enumerate(counted):
        person = box.cls == "person"
        hit = hit_of.get(ti)
        if hit is None:
            cause = miss_cause(box, truth, found)
            score.missed_by_cause[cause] = score.missed_by_cause.get(cause, 0) + 1
        right_class = hit is not None and (found[hit].cls == "person") == person
        score.objects += 1
        score.found += hit is not None
        if person:
            score.pedestrians += 1
            score.pedestrians_found += right_class
        else:
            score.vehicles += 1
            score.vehicles_found += right_class
    for di, det in enumerate(found):
        if di in match:
            score.boxes += 1
            score.boxes_right += 1
        elif not any(iou(b.bbox, det.bbox) >= IOU for b in ignored):
            score.boxes += 1


def miss_cause(box: TruthBox, truth: list[TruthBox], found: list[Detection]) -> str:
    """Why ``box`` was not found: ``merged-<its kind>-<another's>`` (the box overlapping it most also
    covers another road user: ``merged-person-person``, ``merged-person-vehicle`` ...), ``part`` (a
    box on it alone, too small or too large for IoU 0.5), or ``none`` (no box on it at all)."""
    overlaps = [(iou(box.bbox, d.bbox), d) for d in found]
    best, det = max(overlaps, key=lambda od: od[0], default=(0.0, None))
    if det is None or best <= 0.0:
        return "none"
    others = sorted(
        "person" if other.cls == "person" else "vehicle"
        for other in truth
        if other.actor_id != box.actor_id and iou(other.bbox, det.bbox) > 0.1
    )
    if others:
        return "-".join(["merged", "person" if box.cls == "person" else "vehicle", *others[:1]])
    return "part"


def run_scenario(url: str, fps: int, seconds: float, detectors: dict[str, Callable[[], Detector]]) -> dict[str, Score]:
    """Both detectors over one scenario at one frame rate, on the same frames."""
    scene = scene_from_url(url)
    live = {name: make() for name, make in detectors.items()}
    trackers = {name: Tracker() for name in detectors}
    scores = {name: Score() for name in detectors}
    for i in range(int((WARM_S + seconds) * fps)):
        t = START_S + i / fps
        frame, truth = scene.render(t)
        for name, detector in live.items():
            started = time.process_time()
            found = detector.detect("cam", frame, i, at=t)
            if name == "roadwatch":  # as models.producer.analyse: tracked in the steady view, out on the frame
                found = trackers[name].split_merged(found, t)
                trackers[name].update(found, t)
                shift = detector.frame_shift("cam")
                h, w = frame.shape[:2]
                found = [Detection(d.cls, d.conf, on_frame(d.bbox, shift, w, h)) for d in found]
            scores[name].cpu_s += time.process_time() - started
            scores[name].frames += 1
            if t - START_S >= WARM_S:
                score_frame(scores[name], truth, found)
    return scores


def measure(seconds: float) -> dict[str, Any]:
    detectors: dict[str, Callable[[], Detector]] = {"roadwatch": MotionDetector, "baseline": PlainMog2}
    totals = {name: {fps: Score() for fps in FPS} for name in detectors}
    per_scenario: dict[str, Any] = {}
    for scen, url in HARDER.items():
        per_scenario[scen] = {"url": url}
        for fps in FPS:
            scores = run_scenario(url, fps, seconds, detectors)
            for name, score in scores.items():
                totals[name][fps].add(score)
            per_scenario[scen][f"fps_{fps}"] = {name: s.figures() for name, s in scores.items()}
            rw, base = scores["roadwatch"].figures(), scores["baseline"].figures()
            log(
                f"  {scen} @{fps} fps: roadwatch recall {rw['recall']} (ped {rw['pedestrian_recall']}, "
                f"veh {rw['vehicle_recall']}) precision {rw['precision']}; baseline recall {base['recall']} "
                f"precision {base['precision']}"
            )
    return {
        "scoring": {
            "iou": IOU,
            "still_grace_s": STILL_GRACE_S,
            "min_visible": MIN_VISIBLE,
            "seconds_scored": seconds,
            "warm_up_s": WARM_S,
        },
        "harder": {f"fps_{fps}": totals["roadwatch"][fps].figures() for fps in FPS},
        "baseline": {f"fps_{fps}": totals["baseline"][fps].figures() for fps in FPS},
        "scenarios": per_scenario,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.detection_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=50.0, help="scene seconds scored per scenario and rate")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here (default: print only)")
    args = parser.parse_args(argv)
    report = measure(args.seconds)
    if args.out:
        save(args.out, report)
    else:
        log(f"harder: {report['harder']}")
        log(f"baseline: {report['baseline']}")


if __name__ == "__main__":
    main()
