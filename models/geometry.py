"""Plane geometry of boxes and the road-user vocabulary, shared by grouping and the task policy.

Kept apart from the detectors (which pull OpenCV and model backends) and from the simulator, so
that the task policy can reason about gaps without importing either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

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


def intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Areas where each row box of ``a`` (n x 4, x1 y1 x2 y2) meets each of ``b``: an n x m array.

    The tracker and the detector compare every box with every box each frame; one array
    operation instead of n x m Python calls is most of their cost at 100 cameras.
    """
    a, b = a.reshape(-1, 1, 4), b.reshape(1, -1, 4)
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    out: np.ndarray = ix * iy
    return out


def areas(boxes: np.ndarray) -> np.ndarray:
    """The area of each row box (x1 y1 x2 y2), 0 for an empty one."""
    out: np.ndarray = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each row box of ``a`` with each of ``b`` (n x m)."""
    inter = intersections(a, b)
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    out: np.ndarray = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return out


def union_box(boxes: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    """The smallest ``(x1, y1, x2, y2)`` box holding all of ``boxes``."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
