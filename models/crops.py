"""Crops of traffic groups: the group's box with a margin, scaled down, JPEG-encoded."""

from __future__ import annotations

import cv2
import numpy as np


def crop_group(
    frame: np.ndarray, bbox: list[float], *, margin: float = 0.25, max_side: int = 448, quality: int = 80
) -> tuple[bytes, int, int, list[float]]:
    """JPEG of the region around ``bbox``; returns (bytes, width, height, region in the frame)."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = bbox
    mx, my = (x2 - x1) * margin + 8, (y2 - y1) * margin + 8
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(w, int(x2 + mx)), min(h, int(y2 + my))
    region = frame[top:bottom, left:right]
    if region.size == 0:
        region, left, top, right, bottom = frame, 0, 0, w, h
    scale = min(1.0, max_side / max(region.shape[:2]))
    if scale < 1.0:
        # area averaging only where linear would alias (below half size): at 448/620 it cost
        # 1.6 ms a crop against 0.3 ms, a tenth of a frame's whole analysis
        interpolation = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
        region = cv2.resize(region, None, fx=scale, fy=scale, interpolation=interpolation)
    ok, buf = cv2.imencode(".jpg", region, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes(), region.shape[1], region.shape[0], [float(left), float(top), float(right), float(bottom)]
