"""Plane geometry of boxes and the road-user vocabulary, shared by grouping and the task policy.

Kept apart from the detectors (which pull OpenCV and model backends) and from the simulator, so
that the task policy can reason about gaps without importing either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Detector classes that count as vehicles when pairing road users with pedestrians.
VEHICLES = frozenset({"car", "truck", "bus", "motorcycle", "bicycle", "vehicle"})


def box_gap(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between two ``[x1, y1, x2, y2]`` boxes (0 when they overlap)."""
    dx = max(0.0, max(a[0], b[0]) - min(a[2], b[2]))
    dy = max(0.0, max(a[1], b[1]) - min(a[3], b[3]))
    return math.hypot(dx, dy)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def union_box(boxes: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    """The smallest ``(x1, y1, x2, y2)`` box holding all of ``boxes``."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
