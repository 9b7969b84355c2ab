"""A camera's ground plane: the homography from image pixels to metres, fitted and checked.

Speeds, TTC and PET mean something only in metres. Four or more points that a person can
find both in the image and on a map (lane-marking corners, kerb corners) give the homography of
the road plane (OpenCV's direct linear transform). A fit is refused, with the error of each
point, when it is degenerate (three points on a line, the horizon running between them) or
when a point lands further than ``max_error_m`` from where it was measured: a mistyped point
would otherwise skew every speed the camera reports.

``python -m models.calibration --cameras deploy/cameras.sim.yaml --camera cam-north --grid grid.png``
prints the fit's quality per point and draws the ground grid (1 m, 5 m lines) on a frame.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from streams.errors import ConfigError

FloatArray = npt.NDArray[np.float64]

#: A fitted point further than this (metres) from its measured ground position refuses the fit.
MAX_ERROR_M = 0.5
#: Points closer than this to the line through others are on it: pixels (a click's precision), metres.
IMAGE_TOL_PX, GROUND_TOL_M = 2.0, 0.05
#: A point this close to another (a share of the points' extent in the image) checks nothing.
SAME_POINT = 0.01
#: Where one pixel spans more ground than this (metres), a pixel has no ground position: towards the
#: horizon a pixel spans metres, and a parked car's one-pixel jitter 250 m out read as 5-14 m/s.
MAX_M_PER_PX = 1.0


class CalibrationError(ConfigError):
    """A calibration that cannot be trusted: degenerate points or a point that does not fit."""


@dataclass(frozen=True)
class Calibration:
    """The ground-plane homography of one camera, with how well it fits its own points."""

    #: 3x3, image pixels (u, v, 1) -> ground metres (x, y, 1) up to scale
    image_to_ground: FloatArray
    ground_to_image: FloatArray
    image_points: FloatArray
    ground_points: FloatArray
    #: per point: distance (m) between the measured ground point and the projected image point
    errors_m: FloatArray
    #: per point: distance (px) between the image point and the projected ground point
    errors_px: FloatArray
    #: the sign of the homogeneous scale on the ground side of the horizon (that of the fit's own points)
    ground_side: float = 1.0

    @cached_property
    def checked(self) -> bool:
        """Whether the points can show a mistake: 4 fit any homography exactly, errors of 0 whatever they
        are. A point given twice, or again a few pixels off, is one point: with it a mistyped point
        still fitted within 0.02 m."""
        return _distinct(self.image_points) >= 5

    @property
    def rms_error_m(self) -> float:
        return float(np.sqrt(np.mean(self.errors_m**2)))

    def to_ground(self, points: FloatArray | Sequence[Sequence[float]]) -> FloatArray:
        """(N, 2) pixels -> (N, 2) metres; NaN for a pixel on or beyond the horizon (it has no ground point:
        the homography alone would mirror it behind the camera), and for one spanning more than
        MAX_M_PER_PX of ground."""
        return self.ground_and_span(points)[0]

    def metres_per_pixel(self, points: FloatArray | Sequence[Sequence[float]]) -> FloatArray:
        """(N,) the ground one pixel spans at each of (N, 2) pixels, along the image axis it spans more of: what
        a pixel of a box's jitter moves its ground point by (NaN where ``to_ground`` has no ground point)."""
        return self.ground_and_span(points)[1]

    def ground_and_span(self, points: FloatArray | Sequence[Sequence[float]]) -> tuple[FloatArray, FloatArray]:
        """``to_ground`` and ``metres_per_pixel`` of the same pixels at once (the span is what refuses a point)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        out = _apply(self.image_to_ground, pts)
        span = np.empty(len(pts))
        if len(pts):
            w = np.c_[pts, np.ones(len(pts))] @ self.image_to_ground[2]
            out[w * self.ground_side <= 0] = np.nan
            # a pixel spanning more than MAX_M_PER_PX: one pixel of jitter reads as metres a second
            span = self._pixel_span(pts, out)
            out[~(span <= MAX_M_PER_PX)] = np.nan
            span[np.isnan(out[:, 0])] = np.nan
        return out, span

    def _pixel_span(self, pts: FloatArray, ground: FloatArray) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            out: FloatArray = np.maximum(
                np.hypot(*(_apply(self.image_to_ground, pts + np.array([0.0, 1.0])) - ground).T),
                np.hypot(*(_apply(self.image_to_ground, pts + np.array([1.0, 0.0])) - ground).T),
            )
        return out

    def to_image(self, points: FloatArray | Sequence[Sequence[float]]) -> FloatArray:
        """(N, 2) metres -> (N, 2) pixels."""
        return _apply(self.ground_to_image, np.asarray(points, dtype=np.float64))

    def report(self) -> str:
        """The fit per point, for a person checking it."""
        lines = [f"homography from {len(self.image_points)} points, RMS error {self.rms_error_m:.3f} m"]
        if not self.checked:
            lines.append(
                "  4 points (or more, some a few pixels from others) fit exactly: their errors are 0 whatever they"
                " are, so a mistyped point cannot show here; add a point away from the others, or check the"
                " ground grid (--grid) by eye"
            )
        for (u, v), (x, y), em, ep in zip(
            self.image_points, self.ground_points, self.errors_m, self.errors_px, strict=True
        ):
            lines.append(f"  ({u:7.1f}, {v:7.1f}) px -> ({x:8.2f}, {y:8.2f}) m: off by {em:.3f} m / {ep:.2f} px")
        return "\n".join(lines)


def fit(points: Sequence[Sequence[float]], max_error_m: float = MAX_ERROR_M) -> Calibration:
    """A homography from ``[u, v, x, y]`` rows (pixels, metres), or :class:`CalibrationError` saying why not."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise CalibrationError(f"calibration points must be [u, v, x, y] rows, got shape {arr.shape}")
    if len(arr) < 4:
        raise CalibrationError(f"calibration needs at least 4 points, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise CalibrationError("calibration points must be finite numbers")
    image, ground = arr[:, :2].copy(), arr[:, 2:].copy()
    for name, pts, unit, tol in (("image", image, "px", IMAGE_TOL_PX), ("ground", ground, "m", GROUND_TOL_M)):
        if _spread(pts) < tol:
            raise CalibrationError(f"calibration {name} points all lie on one line (within {tol} {unit})")
        if len(pts) == 4:
            for i in range(4):
                rest = np.delete(pts, i, axis=0)
                if _spread(rest) < tol:
                    raise CalibrationError(
                        f"calibration {name} points {[j + 1 for j in range(4) if j != i]} lie on one line: "
                        "4 points must be in general position"
                    )
        elif not _four_in_general_position(pts, tol):
            # all but one on a line (or two lines through one point...): the fit is made up off them
            raise CalibrationError(
                f"calibration {name} points: no 4 of them are in general position (no 3 on one line within "
                f"{tol} {unit}); a homography needs 4 such points"
            )
    homography, _ = cv2.findHomography(image, ground, 0)
    if homography is None or not np.isfinite(homography).all() or abs(np.linalg.det(homography)) < 1e-12:
        raise CalibrationError("calibration points give no homography (degenerate configuration)")
    w = homography[2] @ np.c_[image, np.ones(len(image))].T
    if not (np.all(w > 0) or np.all(w < 0)):
        raise CalibrationError("calibration points lie on both sides of the horizon the fit puts in the image")
    side = float(np.sign(w[0]))
    forward: FloatArray = np.asarray(homography, dtype=np.float64)
    inverse: FloatArray = np.asarray(np.linalg.inv(forward), dtype=np.float64)
    errors_m = np.linalg.norm(_apply(forward, image) - ground, axis=1)
    errors_px = np.linalg.norm(_apply(inverse, ground) - image, axis=1)
    calib = Calibration(forward, inverse, image, ground, errors_m, errors_px, side)
    worst = int(np.argmax(errors_m))
    if errors_m[worst] > max_error_m:
        raise CalibrationError(
            f"calibration point {worst + 1} is off by {errors_m[worst]:.2f} m (limit {max_error_m} m); "
            f"check it:\n{calib.report()}"
        )
    centre = image.mean(axis=0)
    down = homography[2, 1]
    if side * down < 0:
        # the ground lies below the horizon in an upright image (v grows downwards from the top-left
        # corner): here it grows upwards from the points, so v is flipped or the image upside down,
        # and every box's bottom (where it meets the ground) would be its top
        horizon = -(homography[2, 0] * centre[0] + homography[2, 2]) / down
        if horizon - image[:, 1].max() < 20 * (np.ptp(image[:, 1]) + 1):  # not a top-down camera's rounding
            raise CalibrationError(
                f"calibration puts the horizon below the points (at v = {horizon:.0f} px): image v must count "
                f"down from the top-left corner of an upright frame, or a point is mistyped:\n{calib.report()}"
            )
    return calib


def off_frame(calib: Calibration, width: int, height: int, margin: float = 0.02) -> list[int]:
    """The calibration points (1-based) outside a ``width`` x ``height`` frame by more than ``margin``
    of its size: points clicked on another resolution (a 1920x1080 snapshot for a 1280x720 substream)
    put every ground position elsewhere, and nothing else would say so."""
    u, v = calib.image_points[:, 0], calib.image_points[:, 1]
    outside = (u < -margin * width) | (u > (1 + margin) * width) | (v < -margin * height) | (v > (1 + margin) * height)
    return [int(i) + 1 for i in np.flatnonzero(outside)]


def _four_in_general_position(pts: FloatArray, tol: float) -> bool:
    """Whether some 4 of ``pts`` have no 3 on one line (within ``tol``)."""
    off_line = {trio: _spread(pts[list(trio)]) >= tol for trio in itertools.combinations(range(len(pts)), 3)}
    return any(
        all(off_line[trio] for trio in itertools.combinations(four, 3))
        for four in itertools.combinations(range(len(pts)), 4)
    )


def _distinct(image: FloatArray) -> int:
    """How many points stand apart: closer than SAME_POINT of the points' extent (or IMAGE_TOL_PX * 2)
    to an earlier one, a point is that one again."""
    near = max(2 * IMAGE_TOL_PX, SAME_POINT * float(np.ptp(image, axis=0).max()))
    kept: list[FloatArray] = []
    for point in image:
        if all(np.hypot(*(point - other)) >= near for other in kept):
            kept.append(point)
    return len(kept)


def _spread(pts: FloatArray) -> float:
    """How far the points stand off their best line (the smaller singular value, per point)."""
    centred = pts - pts.mean(axis=0)
    return float(np.linalg.svd(centred, compute_uv=False)[-1] / math.sqrt(len(pts)))


def _apply(h: FloatArray, pts: FloatArray) -> FloatArray:
    if pts.size == 0:
        return np.empty((0, 2))
    homog = np.c_[pts.reshape(-1, 2), np.ones(len(pts.reshape(-1, 2)))] @ h.T
    out: FloatArray = homog[:, :2] / homog[:, 2:3]
    return out


def draw_grid(frame: npt.NDArray[np.uint8], calib: Calibration, step_m: float = 1.0) -> npt.NDArray[np.uint8]:
    """The ground grid over ``frame``: thin lines every ``step_m``, thick every 5, the points as circles."""
    out = frame.copy()
    h, w = out.shape[:2]
    corners = calib.to_ground([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    finite = corners[np.isfinite(corners).all(axis=1)]
    span = np.concatenate([finite, calib.ground_points])
    lo = np.floor(span.min(axis=0) / step_m) * step_m
    hi = np.ceil(span.max(axis=0) / step_m) * step_m
    lo, hi = (
        np.maximum(lo, calib.ground_points.min(axis=0) - 100),
        np.minimum(hi, calib.ground_points.max(axis=0) + 100),
    )
    for axis in (0, 1):
        for value in np.arange(lo[axis], hi[axis] + step_m / 2, step_m):
            along = np.linspace(lo[1 - axis], hi[1 - axis], 200)
            ground = np.c_[np.full_like(along, value), along] if axis == 0 else np.c_[along, np.full_like(along, value)]
            on_ground = calib.image_to_ground[2] @ np.c_[calib.to_image(ground), np.ones(len(ground))].T
            ground = ground[on_ground * calib.ground_side > 0]  # the sign of the ground side is the fit's
            pix = calib.to_image(ground)
            keep = np.isfinite(pix).all(axis=1) & (np.abs(pix) < 4 * max(w, h)).all(axis=1)
            if keep.sum() < 2:
                continue
            major = abs(value / (5 * step_m) - round(value / (5 * step_m))) < 1e-6
            cv2.polylines(
                out, [pix[keep].astype(np.int32)], False, (0, 255, 255) if major else (0, 180, 0), 2 if major else 1
            )
    for u, v in calib.image_points:
        cv2.circle(out, (int(u), int(v)), 5, (0, 0, 255), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    from models.cameras import load_cameras
    from models.sources import open_source

    parser = argparse.ArgumentParser(prog="python -m models.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=Path, required=True, help="the cameras YAML")
    parser.add_argument("--camera", required=True, help="camera id")
    parser.add_argument("--grid", type=Path, help="write a frame with the ground grid drawn on it (PNG)")
    args = parser.parse_args(argv)
    try:
        cameras = {c.id: c for c in load_cameras(args.cameras)}
        if args.camera not in cameras:
            raise ConfigError(f"no camera {args.camera!r} in {args.cameras} (has {sorted(cameras)})")
        camera = cameras[args.camera]
        if camera.calibration is None:
            raise ConfigError(f"camera {camera.id} has no calibration in {args.cameras}")
        calib = camera.calibration.fitted()
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    sys.stdout.write(f"{camera.id}: {calib.report()}\n")
    if args.grid:
        source = open_source(camera.url)
        try:
            frame = source.read()
        finally:
            source.close()
        if frame is None:
            sys.stderr.write(f"{camera.id}: no frame from {camera.url}\n")
            return 1
        cv2.imwrite(str(args.grid), draw_grid(frame, calib))
        sys.stdout.write(f"grid drawn on a frame: {args.grid}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
