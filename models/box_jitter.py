"""How much a camera's detector shakes its boxes, measured on the road users that stand still.

The ground track reads a turn or a change of speed only where its positions bend beyond what
the boxes' noise could bend them (:class:`models.ssm.GroundTrack`). That noise is the detector's:
a background-subtraction blob's edge moves by pixels from frame to frame, a YOLO box's by less,
and the same detector shakes more on a grainy night picture. A constant for every camera reads
the noise of a shakier detector as turns and braking, and hides real ones under a steadier
one's. Parked and queued cars, and pedestrians waiting at a kerb, show the noise alone: where a
road user stands (nearly) still, each anchor point's distance from the line through its
neighbours in time is noise; a road user driving past is left out, its pixels curving with the
perspective by far more.

Which road users stand still is judged on their pixels, against the noise measured so far
(``STILL_SIGMAS`` of it, at least ``STILL_MIN_PX``): a ground speed judged it first, but a shaky
box's speed is itself noisy, and only its quiet frames passed (at 2 fps, none), so the noise was
measured low or not at all. From any lower estimate this threshold grows towards the noise. The
estimate is robust (the median absolute residual, scaled for a normal distribution) and taken per
axis, the larger kept: a bottom centre's height is one box edge, its across an average of two.
Each track gives at most ``PER_TRACK`` of the residuals kept, so one car parked for hours does
not make the camera's noise its own (it takes two road users standing still to measure it); with
none standing still (an empty road at night), the last estimate stands. Boxes quantised to the
same pixels frame after frame (a detector at a low input size) measure low: the noise of a moving
box is then larger than a still one's.
"""

from __future__ import annotations

import math
from collections import Counter, deque

#: Until this many residuals (per axis) were seen, the default stands.
MIN_RESIDUALS = 100
#: The residuals kept per axis: the latest minutes of a busy scene.
KEPT_RESIDUALS = 600
#: The most of those one track gives (the latest).
PER_TRACK = 60
#: A road user whose anchor moved less than this many standard deviations of the noise measured so far (or
#: ``STILL_MIN_PX``) between its three frames counts as standing still.
STILL_SIGMAS = 6.0
STILL_MIN_PX = 12.0
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
        #: per axis (u, v): (track, |residual| in standard deviations of one sample's noise)
        self._residuals: tuple[deque[tuple[int, float]], deque[tuple[int, float]]] = (
            deque(maxlen=KEPT_RESIDUALS * 4),
            deque(maxlen=KEPT_RESIDUALS * 4),
        )
        self._sigma = default_px
        self._added = 0  # residuals since the estimate was last taken

    def add(self, track_id: int, t: float, u: float, v: float) -> None:
        """One frame's anchor pixel ``(u, v)`` of a track."""
        if not (math.isfinite(u) and math.isfinite(v)):
            self._last.pop(track_id, None)
            return
        run = self._last.setdefault(track_id, deque(maxlen=3))
        if run and t <= run[-1][0]:
            return  # the same frame again, or a clock stepping back: no interval to interpolate over
        run.append((t, u, v))
        if len(run) < 3:
            return
        (t0, u0, v0), (t1, u1, v1), (t2, u2, v2) = run
        still = max(STILL_MIN_PX, STILL_SIGMAS * self._sigma)
        if max(abs(u2 - u0), abs(v2 - v0), abs(u1 - u0), abs(v1 - v0)) > still:
            return  # moving: its pixels curve with the perspective
        # the middle sample against the line through its neighbours: for independent noise of deviation s on
        # each, the residual's deviation is s * sqrt(1 + a^2 + b^2) (a, b: the neighbours' weights)
        a, b = (t2 - t1) / (t2 - t0), (t1 - t0) / (t2 - t0)
        scale = math.sqrt(1.0 + a * a + b * b)
        self._residuals[0].append((track_id, abs(u1 - (a * u0 + b * u2)) / scale))
        self._residuals[1].append((track_id, abs(v1 - (a * v0 + b * v2)) / scale))
        self._added += 1

    def forget(self, track_id: int) -> None:
        self._last.pop(track_id, None)

    @property
    def samples(self) -> int:
        """Residuals per axis seen and kept (each track's latest ``PER_TRACK``)."""
        return len(_kept(self._residuals[1]))

    def estimate(self) -> float:
        """The measured noise once enough still road users were seen; the default before; with none seen for a
        while, the last. Taken again every ``MIN_RESIDUALS // 5`` residuals (a sort of the kept ones)."""
        if self._added >= MIN_RESIDUALS // 5:
            self._added = 0
            axes = [_kept(r) for r in self._residuals]
            if min(len(a) for a in axes) >= MIN_RESIDUALS:
                medians = [sorted(a)[len(a) // 2] for a in axes]
                self._sigma = min(max(max(medians) / _MEDIAN_ABS_NORMAL, MIN_PX), MAX_PX)
        return self._sigma


def _kept(residuals: deque[tuple[int, float]]) -> list[float]:
    """The latest ``KEPT_RESIDUALS``, at most ``PER_TRACK`` of them a track."""
    per_track: Counter[int] = Counter()
    out: list[float] = []
    for track, value in reversed(residuals):
        if per_track[track] < PER_TRACK:
            per_track[track] += 1
            out.append(value)
            if len(out) == KEPT_RESIDUALS:
                break
    return out
