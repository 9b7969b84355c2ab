"""Stable per-camera track ids for detections, by greedy matching on predicted boxes.

At an analysis rate of a few frames per second a car moves more than its own width between
frames, so plain IoU loses it: each track predicts its box from its velocity, and a detection
matches the track whose predicted box overlaps it most, or failing that whose centre is
nearest relative to the object's size. Unmatched tracks survive ``max_missed`` frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import count

from models.detectors import Detection


@dataclass
class Track:
    """One object followed across frames."""

    track_id: int
    cls: str
    bbox: tuple[float, float, float, float]
    at: float
    vx: float = 0.0
    vy: float = 0.0
    missed: int = 0
    hits: int = 1

    def predict(self, t: float) -> tuple[float, float, float, float]:
        dt = t - self.at
        x1, y1, x2, y2 = self.bbox
        return x1 + self.vx * dt, y1 + self.vy * dt, x2 + self.vx * dt, y2 + self.vy * dt

    @property
    def speed(self) -> float:
        return math.hypot(self.vx, self.vy)


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Tracker:
    """Tracks of one camera."""

    max_missed: int = 3
    max_center_dist: float = 1.5
    tracks: list[Track] = field(default_factory=list)
    _ids: count[int] = field(default_factory=lambda: count(1))

    def update(self, detections: list[Detection], t: float) -> list[Track]:
        """Assign each detection a track; returns the tracks matched in this frame, in order."""
        pairs: list[tuple[float, int, int]] = []
        for ti, track in enumerate(self.tracks):
            pred = track.predict(t)
            size = max(pred[2] - pred[0], pred[3] - pred[1], 1.0)
            for di, det in enumerate(detections):
                overlap = iou(pred, det.bbox)
                dist = math.dist(_center(pred), _center(det.bbox)) / size
                if overlap > 0.05 or dist < self.max_center_dist:
                    same_kind = (track.cls == "person") == (det.cls == "person")
                    pairs.append((overlap - 0.2 * dist + (0.2 if same_kind else -0.5), ti, di))
        pairs.sort(reverse=True)
        used_t: set[int] = set()
        matched: dict[int, Track] = {}
        for score, ti, di in pairs:
            if ti in used_t or di in matched or score < -0.3:
                continue
            used_t.add(ti)
            track, det = self.tracks[ti], detections[di]
            dt = max(1e-3, t - track.at)
            cx0, cy0 = _center(track.bbox)
            cx1, cy1 = _center(det.bbox)
            a = 0.6 if track.hits > 1 else 1.0
            track.vx = a * (cx1 - cx0) / dt + (1 - a) * track.vx
            track.vy = a * (cy1 - cy0) / dt + (1 - a) * track.vy
            track.bbox, track.at, track.missed, track.cls = det.bbox, t, 0, det.cls
            track.hits += 1
            matched[di] = track
        for ti, track in enumerate(self.tracks):
            if ti not in used_t:
                track.missed += 1
        self.tracks = [tr for tr in self.tracks if tr.missed <= self.max_missed]
        for di, det in enumerate(detections):
            if di not in matched:
                track = Track(next(self._ids), det.cls, det.bbox, t)
                self.tracks.append(track)
                matched[di] = track
        return [matched[di] for di in range(len(detections))]


def _center(b: tuple[float, float, float, float]) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
