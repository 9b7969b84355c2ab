"""How much a camera's detector shakes its boxes, measured on the road users that stand still.

The ground track reads a turn or a change of speed only where its positions bend beyond what
the boxes' noise could bend them (:class:`models.ssm.GroundTrack`). That noise is the detector's:
a background-subtraction blob's edge moves by pixels from frame to frame, a YOLO box's by less,
and the same detector shakes more on a grainy night picture. A constant for every camera reads
the noise of a shakier detector as turns (false conflicts) and hides real turns under a steadier
one's. Parked and queued cars, and pedestrians waiting at a kerb, show the noise alone: where a
road user stands still, each anchor point's distance from the line through its neighbours in time
is noise. The estimate is robust (the median absolute residual, scaled for a normal
distribution), so a car pulling away mid-sample or a box briefly merged with a passer-by moves it
little.
"""

from __future__ import annotations

import math
from collections import deque

#: Until this many residuals were seen, the default stands.
MIN_RESIDUALS = 100
#: The residuals kept: the latest few minutes of a busy scene (a light changing, the detector's noise too).
KEPT_RESIDUALS = 600
#: A road user this slow on the ground (m/s) counts as standing still.
STILL_MPS = 0.3
#: The estimate is kept within these (px, one standard deviation): below, boxes are quantised to the pixel
#: anyway; above, a detector is not boxing road users.
MIN_PX, MAX_PX = 0.5, 10.0
#: The median of |x| for a normal distribution of standard deviation 1.
_MEDIAN_ABS_NORMAL = 0.6745


class BoxJitter:
    """One camera's box noise (px, one standard deviation), from its still road users' anchor points."""

    def __init__(self, default_px: float) -> None:
        self.default_px = default_px
        self._last: dict[int, deque[tuple[float, float, float]]] = {}
        self._residuals: deque[float] = deque(maxlen=KEPT_RESIDUALS)
        self._sigma = default_px
        self._added = 0  # residuals since the estimate was last taken

    def add(self, track_id: int, t: float, u: float, v: float, speed_mps: float) -> None:
        """One frame's anchor pixel ``(u, v)`` of a track, with its speed on the ground: a moving road user only
        ends the run of still samples its residuals come from."""
        if speed_mps >= STILL_MPS or not (math.isfinite(u) and math.isfinite(v)):
            self._last.pop(track_id, None)
            return
        run = self._last.setdefault(track_id, deque(maxlen=3))
        if run and t <= run[-1][0]:
            return  # the same frame again, or a clock stepping back: no interval to interpolate over
        run.append((t, u, v))
        if len(run) < 3:
            return
        (t0, u0, v0), (t1, u1, v1), (t2, u2, v2) = run
        # the middle sample against the line through its neighbours: for independent noise of deviation s on
        # each, the residual's deviation is s * sqrt(1 + a^2 + b^2) (a, b: the neighbours' weights)
        a, b = (t2 - t1) / (t2 - t0), (t1 - t0) / (t2 - t0)
        scale = math.sqrt(1.0 + a * a + b * b)
        self._residuals.append(abs(u1 - (a * u0 + b * u2)) / scale)
        self._residuals.append(abs(v1 - (a * v0 + b * v2)) / scale)
        self._added += 2

    def forget(self, track_id: int) -> None:
        self._last.pop(track_id, None)

    @property
    def samples(self) -> int:
        return len(self._residuals)

    @property
    def sigma_px(self) -> float:
        """The measured noise once enough still road users were seen; the default before. Taken again every
        ``MIN_RESIDUALS // 5`` residuals (a sort of the kept ones), not every frame."""
        if len(self._residuals) >= MIN_RESIDUALS and self._added >= MIN_RESIDUALS // 5:
            ordered = sorted(self._residuals)
            median = ordered[len(ordered) // 2]
            self._sigma = min(max(median / _MEDIAN_ABS_NORMAL, MIN_PX), MAX_PX)
            self._added = 0
        return self._sigma
