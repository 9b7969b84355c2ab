"""Detector backends behind one ABC, chosen by a ``Literal`` type key.

* ``motion``: OpenCV background subtraction (MOG2) and contours. Weights-free, real: it finds
  whatever moves in front of a fixed camera, and tells pedestrians from vehicles by shape.
* ``yolo``: ultralytics, from a weights file the user supplies (``.pt`` or ``.onnx``) or from a
  model yaml (random weights, for speed and integration tests). Imported lazily: it needs the
  ``yolo`` extra (torch). Never downloads anything: a missing weights file is an error.
* ``replay``: recorded detections from a JSON-lines file, for deterministic runs.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from models.geometry import iou_matrix
from streams.errors import ConfigError

DetectorKind = Literal["motion", "yolo", "replay"]


@dataclass(frozen=True)
class Detection:
    """One object found in a frame, before tracking."""

    cls: str
    conf: float
    bbox: tuple[float, float, float, float]


class Detector(ABC):
    """Finds objects in frames; one instance serves every camera of a producer."""

    name: str

    @abstractmethod
    def detect(self, camera_id: str, frame: np.ndarray, frame_seq: int, at: float | None = None) -> list[Detection]:
        """Objects in ``frame`` of ``camera_id``, captured at ``at`` (epoch seconds, when known)."""

    def frame_shift(self, camera_id: str) -> tuple[float, float]:
        """How far (px) the last frame of ``camera_id`` lay from the camera's steady view.

        A detector that stabilises a shaking camera reports its boxes in the steady view: tracks
        and ground positions hold still there (the calibration is of that view), and the boxes
        are moved by this shift onto the frame itself only where they meet its pixels (crops,
        the drawn boxes). (0, 0) for a detector that works on the frame as it came.
        """
        return (0.0, 0.0)


#: The background forgets over this many seconds, whatever the frame rate: a pedestrian who
#: needs 10 s to cross stays foreground at 10 fps as at 2 fps (a model counted in frames
#: absorbed slow walkers five times sooner at 10 fps).
BACKGROUND_S = 30.0
#: A new camera watches this long before it reports anything: its first background is the
#: per-pixel median of up to WARM_SAMPLES frames spread over that time, so the traffic that
#: passed meanwhile leaves no ghost (a mean, or MOG2 learning frame by frame, keeps a bus that
#: crawled through the first seconds as background for several seconds more).
WARM_UP_S, WARM_SAMPLES = 8.0, 9
#: The frame rate assumed when a caller gives no capture times (the cameras' default).
ASSUMED_FPS = 2.0
#: Below this global light change (ratio) or shake (px) a frame is used as it is.
MIN_GAIN_STEP, MIN_SHIFT_PX = 0.02, 0.25
#: Corners to measure shake are picked again from the reference every REFRESH_S seconds (8 ms
#: a pick at 640x360, so not every frame; the reference itself changes over BACKGROUND_S);
#: fewer than MIN_POINTS found or followed and the frame is used unaligned.
REFRESH_S, MIN_POINTS = 30.0, 8
#: A blob is a ghost (the place a road user left, not a road user) when less than GHOST_MAX_NOW
#: of its outline is an edge in the frame and at least GHOST_MIN_THEN is one in the background;
#: an outline pixel is an edge in one picture when its gradient there exceeds GHOST_EDGE_RATIO
#: times the other's plus GHOST_MIN_EDGE grey levels. On the stop-and-go scene at 10 fps, 0.73 of
#: a road user's outline (median; 5th percentile 0.40) is sharper in the frame, 0.05 of a ghost's.
GHOST_MAX_NOW, GHOST_MIN_THEN = 0.25, 0.15
GHOST_EDGE_RATIO, GHOST_MIN_EDGE = 1.5, 2.0
#: A ghost's pixels are not foreground while they keep the look they had when it was found
#: (within GHOST_TOL grey levels: twice the sensor noise), for GHOST_HOLD of background_s: a
#: little longer than the background model itself needs to take the uncovered road back
#: (background_s * ln(1/0.75), 8.6 s of 30 s).
GHOST_TOL, GHOST_HOLD = 6, 1.0 / 3.0
#: Below this mean grey level (the reference's) a camera is seeing night: headlights throw lit
#: patches on the road that move with each vehicle. A foreground pixel LIT_MIN..LIT_MAX times
#: brighter than the background in every channel alike (spread under LIT_SPREAD of the ratio)
#: is lit road, not a road user. The background colour picture is taken from MOG2 every
#: BACKGROUND_PICTURE_S (1.4 ms a take at 640x360).
NIGHT_BELOW = 45.0
LIT_MIN, LIT_MAX, LIT_SPREAD, LIT_TEXTURE = 1.2, 4.0, 0.4, 0.3
#: A blob is re-cut only when at least this share of it is lit road.
LIT_SHARE = 0.05
BACKGROUND_PICTURE_S = 2.0
#: Only a blob that stands still (this IoU with one of the frame before) or is smaller than
#: FRAGMENT_AREA px takes the ghost test: it costs ~10% of a frame when every blob takes it.
GHOST_STILL_IOU, FRAGMENT_AREA = 0.8, 1500.0
#: Two pedestrians walking together, one a little ahead, are one blob from the moment they come
#: into view, so the tracker never saw them apart to split them (36 of the 51 road users missed on
#: the distant scene at 2 fps). A blob no larger than PAIR_MAX_AREA (640x360 px, two pedestrians'
#: worth) is cut in two at the column where the two parts' own boxes cover at most PAIR_COVER of
#: the blob's box, each part at least PAIR_MIN_W analysed px wide and PAIR_MIN_H of the blob's
#: height, and both taller than PAIR_TALL times their width: the two-box version of W4's
#: vertical projection (Haritaoglu et al., 2000). One road user's box is covered by two boxes of
#: its own height, so it is never cut (a leg swung out is under half the height); two cars in
#: one lane have the same top and bottom, and are left to the tracker.
PAIR_MAX_AREA, PAIR_COVER, PAIR_MIN_W, PAIR_MIN_H, PAIR_TALL = 3000.0, 0.7, 3, 0.5, 1.4
#: Up to PAIR_SEAM columns where the two overlap belong to both parts.
PAIR_SEAM = 2
#: Light that changes over part of the frame (a cloud's shadow sweeping across, a building's
#: shadow) is measured in blocks of about LIGHT_BLOCK px, over the pixels that were background in
#: the frame before (a block with less than LIGHT_MIN_BACKGROUND of them takes its neighbours'
#: light); a LIGHT_MEDIAN x LIGHT_MEDIAN median of the blocks keeps a road user the frame before
#: did not know from setting its block's light. Where a block's light then differs from the
#: whole frame's by more than LIGHT_STEP the frame is corrected block by block (smoothly between
#: block centres). On the crowded demo scene no frame is (the largest difference is 0.076).
LIGHT_BLOCK, LIGHT_MIN_BACKGROUND, LIGHT_STEP, LIGHT_MEDIAN = 30, 0.25, 0.08, 5
#: The light of a block is measured on every LIGHT_SAMPLE-th pixel of every LIGHT_SAMPLE-th row.
LIGHT_SAMPLE = 3
#: Frames are halved (2x2 averages: 0.4 ms for 1920x1080, where OpenCV's area resize to another
#: size takes 2.5 ms) until their long side is at most MAX_SIDE px: every step of the detector
#: costs in proportion to the pixels (``motion_by_resolution`` in bench/results/detection.json:
#: a 1920x1080 camera analysed whole ran at a third of the frames a second), and the 1280x720
#: distant scene keeps its recall (0.977 halved; 0.980 whole in the run committed with e89c1e4,
#: before halving). MIN_SIDE: a smaller setting would leave too little of a frame to find anyone in.
MAX_SIDE, MIN_SIDE = 960, 64
#: The frame size (px) the class sizes are set for (see ``MotionDetector._classify``).
CLASS_SIZES_AREA = 640 * 360


def class_sizes_scale(shape: tuple[int, ...]) -> float:
    """How much larger the class sizes are in a frame of ``shape`` than in 640x360."""
    return shape[0] * shape[1] / CLASS_SIZES_AREA


def halvings(shape: tuple[int, ...], max_side: int) -> int:
    """How many times a frame of ``shape`` is halved to bring its long side to ``max_side`` or less
    (``max_side`` 0: never)."""
    side, steps = max(shape[:2]), 0
    while max_side > 0 and side > max_side:
        side, steps = round(side / 2), steps + 1  # as OpenCV halves an odd side: to the even neighbour
    return steps


@dataclass
class _Ghost:
    """A place a road user left: its pixels as they looked when found, until ``until``."""

    x: int
    y: int
    look: np.ndarray
    until: float


@dataclass
class _CameraModel:
    """One camera's background and the reference its frames are aligned to."""

    mog: cv2.BackgroundSubtractorMOG2
    #: grey picture of the background, in aligned, light-corrected units
    ref: np.ndarray | None = None
    #: the reference as 8-bit, and the corners on it that measure the camera's shift
    ref_u8: np.ndarray | None = None
    points: np.ndarray | None = None
    points_at: float = 0.0
    at: float | None = None
    frames: int = 0
    #: frames kept for the first background, until it is made
    warm: list[np.ndarray] = field(default_factory=list)
    ready: bool = False
    ghosts: list[_Ghost] = field(default_factory=list)
    #: the last frame's grey picture, aligned and light-corrected like ``ref``
    grey: np.ndarray | None = None
    #: seconds since the camera's first frame, summed from frame intervals (see ``_update``)
    now: float = 0.0
    #: the frames' size: a camera whose stream changes size starts over
    shape: tuple[int, ...] = ()
    #: the last frame, aligned and light-corrected (colour)
    image: np.ndarray | None = None
    #: MOG2's background as a colour picture, taken at ``background_at`` (night only)
    background: np.ndarray | None = None
    background_at: float = -math.inf
    #: the reference's mean grey level as the last frame was aligned to it (night below NIGHT_BELOW)
    ref_level: float = math.inf
    #: the last frame's blobs, rows of (x1, y1, x2, y2): a blob that has not moved may be a ghost
    blobs: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    #: how far the last frame lay from the reference (small-image px; see Detector.frame_shift)
    shift: tuple[float, float] = (0.0, 0.0)
    #: how many times the frames are halved before analysis (see MAX_SIDE)
    halvings: int = 0
    #: the last frame's foreground (MOG2's mask): where the light is not measured
    foreground: np.ndarray | None = None


class MotionDetector(Detector):
    """Background subtraction per camera, then contours classified by shape and size.

    Before subtraction each frame is brought back to the camera's reference: its global light
    level is scaled to the reference's (a cloud, dusk, auto-exposure would otherwise turn the
    whole road into foreground) and its shift against the reference's corners is measured and
    undone (a camera swaying on its pole would otherwise outline every edge of the scene). The
    background starts as the median of the first ``WARM_UP_S`` and then learns at a rate set in
    seconds (``background_s``), so the frame rate changes the cost, not what is seen. Frames
    whose long side is over ``max_side`` are analysed halved, and the boxes scaled back. Two
    pedestrians walking together, one a little ahead, are cut apart (:func:`pair_cut`).
    """

    name = "motion/mog2"

    def __init__(
        self,
        *,
        max_side: int = MAX_SIDE,
        min_area: float = 120.0,
        background_s: float = BACKGROUND_S,
        stabilise: bool = True,
        local_light: bool = True,
        night_below: float = NIGHT_BELOW,
    ) -> None:
        if max_side < 0 or 0 < max_side < MIN_SIDE:
            raise ConfigError(f"max_side must be 0 (frames analysed whole) or at least {MIN_SIDE}, got {max_side}")
        self.max_side = max_side
        self.night_below = night_below
        self.min_area = min_area
        self.background_s = background_s
        self.stabilise = stabilise
        self.local_light = local_light
        self._models: dict[str, _CameraModel] = {}
        self._kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        self._lock = threading.Lock()

    def frame_shift(self, camera_id: str) -> tuple[float, float]:
        model = self._models.get(camera_id)
        if model is None:
            return (0.0, 0.0)
        scale = float(2**model.halvings)
        return (model.shift[0] * scale, model.shift[1] * scale)

    def _model(self, camera_id: str, shape: tuple[int, ...]) -> _CameraModel:
        with self._lock:
            model = self._models.get(camera_id)
            if model is not None and model.shape != shape:
                del self._models[camera_id]  # the stream changed size: what was learnt no longer fits
                model = None
            if model is None:
                mog = cv2.createBackgroundSubtractorMOG2(history=500, varThreshold=16, detectShadows=False)
                # a road user that stops is kept as foreground for ~a quarter of background_s
                # (a car at a light, a pedestrian at the kerb), not a tenth
                mog.setBackgroundRatio(0.75)
                # prune faint components sooner: 15% less CPU a frame, same detections (measured)
                mog.setComplexityReductionThreshold(0.2)
                model = self._models[camera_id] = _CameraModel(
                    mog, shape=shape, halvings=halvings(shape, self.max_side)
                )
            return model

    def warm_up(self, camera_id: str, frames: list[np.ndarray]) -> None:
        """Start the camera's background from these frames (a recorded clip) instead of waiting."""
        if not frames:
            return
        model = self._model(camera_id, frames[-1].shape)
        model.warm = [self._small(model, f) for f in frames[-WARM_SAMPLES:] if f.shape == model.shape]
        self._bootstrap(model)

    def _bootstrap(self, model: _CameraModel) -> None:
        """The first background: the median of the frames kept while warming up."""
        background = np.median(np.stack(model.warm), axis=0).astype(np.uint8)
        model.mog.apply(background, learningRate=1.0)
        model.ref = cv2.cvtColor(background, cv2.COLOR_BGR2GRAY).astype(np.float32)
        model.points = None
        model.warm = []
        model.ready = True

    @staticmethod
    def _small(model: _CameraModel, frame: np.ndarray) -> np.ndarray:
        # no blur and no dilation: both merge a pedestrian with the car beside it (measured)
        for _ in range(model.halvings):
            frame = cv2.resize(frame, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        return frame

    def _align(self, model: _CameraModel, image: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
        """``image`` at the reference's light level and position, in colour and in grey."""
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if model.ref is None:
            return image, grey
        model.ref_level = cv2.mean(model.ref)[0]
        gain = model.ref_level / max(1.0, cv2.mean(grey)[0])
        if abs(gain - 1.0) > MIN_GAIN_STEP:
            grey = cv2.convertScaleAbs(grey, alpha=gain)
            image = cv2.convertScaleAbs(image, alpha=gain)
        model.shift = (0.0, 0.0)
        if self.stabilise:
            shift = self._shift(model, grey)
            if shift is not None:
                model.shift = shift
                h, w = image.shape[:2]
                back = np.array([[1, 0, -shift[0]], [0, 1, -shift[1]]], np.float32)
                image = cv2.warpAffine(image, back, (w, h), borderMode=cv2.BORDER_REPLICATE)
                grey = cv2.warpAffine(grey, back, (w, h), borderMode=cv2.BORDER_REPLICATE)
        light = self._local_light(model, grey) if self.local_light else None
        if light is not None:
            grey = cv2.multiply(grey, light, dtype=cv2.CV_8U)
            image = cv2.multiply(image, cv2.merge([light, light, light]), dtype=cv2.CV_8U)
        cv2.accumulateWeighted(grey, model.ref, rate)
        return image, grey

    @staticmethod
    def _local_light(model: _CameraModel, grey: np.ndarray) -> np.ndarray | None:
        """Per pixel, the gain that brings ``grey`` to the reference's light where that differs
        over the frame (see LIGHT_BLOCK); None where the whole frame's gain already does."""
        if model.ref is None or model.foreground is None or model.foreground.shape != grey.shape:
            return None  # no frame before (the first after the warm-up): where road users are is unknown
        h, w = grey.shape
        blocks = (max(3, round(w / LIGHT_BLOCK)), max(3, round(h / LIGHT_BLOCK)))
        # LIGHT_BLOCK / LIGHT_SAMPLE rows and columns of pixels a block, evenly over the frame
        # (nearest-pixel sampling), so that the blocks are an area resize by a whole factor: 30
        # times faster than by another
        k = max(1, LIGHT_BLOCK // LIGHT_SAMPLE)
        grid = (blocks[0] * k, blocks[1] * k)
        # in floats: a block's mean over a quarter of its pixels, as 8 bits, would be off by up to 7%
        grey_in = cv2.resize(grey, grid, interpolation=cv2.INTER_NEAREST).astype(np.float32)
        ref_in = cv2.resize(model.ref, grid, interpolation=cv2.INTER_NEAREST)
        # every pixel's light, road users and all: when even that is even over the frame (most
        # frames), nothing more is needed
        whole = np.clip(
            cv2.resize(ref_in, blocks, interpolation=cv2.INTER_AREA)
            / np.maximum(cv2.resize(grey_in, blocks, interpolation=cv2.INTER_AREA), 1.0),
            0.5,
            2.0,
        ).astype(np.float32)
        if float(np.abs(cv2.medianBlur(whole, LIGHT_MEDIAN) - 1.0).max()) <= LIGHT_STEP:
            return None
        # the background's light: the pixels the frame before saw no road user on
        background = cv2.bitwise_not(cv2.resize(model.foreground, grid, interpolation=cv2.INTER_NEAREST))
        share = cv2.resize(background, blocks, interpolation=cv2.INTER_AREA)
        now = cv2.resize(cv2.bitwise_and(grey_in, grey_in, mask=background), blocks, interpolation=cv2.INTER_AREA)
        then = cv2.resize(cv2.bitwise_and(ref_in, ref_in, mask=background), blocks, interpolation=cv2.INTER_AREA)
        valid = (share >= 255 * LIGHT_MIN_BACKGROUND).astype(np.float32)
        measured = np.clip(then / np.maximum(now, 1.0), 0.5, 2.0) * valid
        gain = np.where(valid > 0, cv2.medianBlur(np.where(valid > 0, measured, 1.0).astype(np.float32), 3), 1.0)
        if not valid.all():
            # a block mostly foreground the frame before takes its neighbours' light, or, when they
            # were foreground too, every pixel's light
            near, weight = cv2.blur(measured, (3, 3)), cv2.blur(valid, (3, 3))
            gain = np.where(valid > 0, gain, np.where(weight > 0, near / np.maximum(weight, 1e-6), whole))
        gain = cv2.medianBlur(gain.astype(np.float32), LIGHT_MEDIAN)
        if float(np.abs(gain - 1.0).max()) <= LIGHT_STEP:
            return None
        light: np.ndarray = cv2.resize(gain, (w, h), interpolation=cv2.INTER_LINEAR)
        return light

    @staticmethod
    def _shift(model: _CameraModel, grey: np.ndarray) -> tuple[float, float] | None:
        """How far the camera moved from its reference, when it did.

        Corners of the reference (buildings, lane markings) followed by Lucas-Kanade optical
        flow; the median of their displacements ignores the road users moving among them.
        0.6 ms a frame, error p95 0.05 px on the shake scene (phase correlation of the whole
        frame was led astray by the traffic itself: 1-4 px on a steady camera).
        """
        if model.ref is None:
            return None
        if model.points is None or model.now >= model.points_at + REFRESH_S:
            model.points_at = model.now
            model.ref_u8 = cv2.convertScaleAbs(model.ref)
            model.points = cv2.goodFeaturesToTrack(model.ref_u8, 60, 0.01, 20, blockSize=7)
        if model.points is None or len(model.points) < MIN_POINTS or model.ref_u8 is None:
            return None  # nothing to hold on to: a blank wall, a dark night
        moved, ok, _ = cv2.calcOpticalFlowPyrLK(
            model.ref_u8, grey, model.points, model.points.copy(), winSize=(9, 9), maxLevel=1
        )
        good = ok[:, 0] == 1
        if int(good.sum()) < MIN_POINTS:
            return None
        dx, dy = np.median((moved - model.points)[good].reshape(-1, 2), axis=0)
        return (float(dx), float(dy)) if math.hypot(dx, dy) > MIN_SHIFT_PX else None

    def _update(self, model: _CameraModel, frame: np.ndarray, at: float | None) -> np.ndarray | None:
        """The foreground mask of ``frame`` after learning from it; None while warming up."""
        if at is None or model.at is None:
            dt = 1.0 / ASSUMED_FPS  # no clock (or the first frame): assume the shipped rate
        else:
            dt = max(1e-3, at - model.at)  # a wall clock stepped back counts as a moment
        model.frames += 1
        model.at = at
        # the camera's own clock, in seconds since it started: capture times may jump (NTP) or
        # stop coming, and the warm-up, corner refresh and ghost hold must not jump with them
        model.now += dt
        elapsed = model.now
        image = self._small(model, frame)
        if not model.ready:
            if len(model.warm) * WARM_UP_S / WARM_SAMPLES <= elapsed:
                # samples are aligned to the first one, so a shaking camera's median stays sharp
                model.warm.append(self._align(model, image, 0.0)[0] if model.warm else image)
                if model.ref is None:
                    model.ref = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
            if elapsed >= WARM_UP_S and len(model.warm) >= 3:
                self._bootstrap(model)
            return None
        rate = min(1.0, dt / self.background_s)
        image, model.grey = self._align(model, image, rate)
        mask = model.mog.apply(image, learningRate=rate)
        model.foreground = mask.copy()  # ghosts and all: _unghost clears them from the mask
        self._unghost(model, mask)
        model.image = image
        return mask

    def _unlight(
        self, model: _CameraModel, mask: np.ndarray, blobs: list[tuple[np.ndarray, tuple[int, int, int, int]]]
    ) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
        """The blobs less the road lit by headlights (at night): what is left of each, re-cut.

        A vehicle's headlights at night make a patch of road ahead of it foreground, moving with
        it: its box doubles in length and no longer matches the vehicle (recall 0.17 on the
        night scene without this). Lit road is the background brightened alike in every channel
        (LIT_MIN..LIT_MAX times, spread under LIT_SPREAD) with the road's own texture showing
        through (correlation over 7x7 px above LIT_TEXTURE); a light grey car is brighter than
        the road in every channel alike too, but it has no asphalt grain on it.
        """
        image = model.image
        if image is None:
            return blobs
        if model.background is None or model.now >= model.background_at + BACKGROUND_PICTURE_S:
            model.background = model.mog.getBackgroundImage()
            model.background_at = model.now
        background = model.background
        if background is None or background.shape != image.shape:
            return blobs
        out: list[tuple[np.ndarray, tuple[int, int, int, int]]] = []
        for contour, (x, y, w, h) in blobs:
            own = _own_pixels(mask, contour, (x, y, w, h))
            lit = _lit_road(image[y : y + h, x : x + w], background[y : y + h, x : x + w]) & (own > 0)
            if int(lit.sum()) < LIT_SHARE * cv2.countNonZero(own):
                out.append((contour, (x, y, w, h)))
                continue
            own[lit] = 0
            opened = cv2.morphologyEx(own, cv2.MORPH_OPEN, self._kernel)
            parts, _ = cv2.findContours(opened, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
            out += [_blob(part) for part in parts]
        return out

    @staticmethod
    def _unghost(model: _CameraModel, mask: np.ndarray) -> None:
        """Clear the known ghosts' pixels from ``mask`` where they still look as they did."""
        if model.grey is None:
            return
        keep = []
        for ghost in model.ghosts:
            if model.now > ghost.until:
                continue
            h, w = ghost.look.shape
            part = mask[ghost.y : ghost.y + h, ghost.x : ghost.x + w]
            changed = cv2.absdiff(model.grey[ghost.y : ghost.y + h, ghost.x : ghost.x + w], ghost.look) > GHOST_TOL
            part[~changed] = 0
            keep.append(ghost)
        model.ghosts = keep

    def _is_ghost(
        self, model: _CameraModel, mask: np.ndarray, blob: tuple[int, int, int, int], *, remember: bool
    ) -> bool:
        """Whether ``blob`` (x1, y1, x2, y2) is the place a road user left rather than a road user.

        A road user's outline is an edge in the frame and not in the background; the place a
        parked car (or one that stood through the camera's warm-up) left is the reverse: the
        background still holds the car's edges, the frame shows plain road. Found, its pixels
        stop counting as foreground (see :meth:`_unghost`) instead of following the tracker
        for the seconds MOG2 needs to learn the road back, and of being cut out of every car
        that drives over it (``remember``: for a blob that stood still since the frame before).
        The same test drops the small blobs inside a passing vehicle whose outline is no edge
        in the frame (its windows, its shadow).
        """
        if model.grey is None or model.ref is None:
            return False
        x0, y0 = max(0, blob[0] - 2), max(0, blob[1] - 2)
        x1, y1 = min(mask.shape[1], blob[2] + 2), min(mask.shape[0], blob[3] + 2)
        ring = cv2.morphologyEx(mask[y0:y1, x0:x1], cv2.MORPH_GRADIENT, self._kernel) > 0
        if not ring.any():
            return False
        now_edge = _edge_strength(model.grey[y0:y1, x0:x1])[ring]
        then_edge = _edge_strength(model.ref[y0:y1, x0:x1])[ring]
        now_sharper = float((now_edge > GHOST_EDGE_RATIO * then_edge + GHOST_MIN_EDGE).mean())
        then_sharper = float((then_edge > GHOST_EDGE_RATIO * now_edge + GHOST_MIN_EDGE).mean())
        if now_sharper >= GHOST_MAX_NOW or then_sharper < GHOST_MIN_THEN:
            return False
        if remember:
            model.ghosts.append(
                _Ghost(x0, y0, model.grey[y0:y1, x0:x1].copy(), model.now + GHOST_HOLD * self.background_s)
            )
        return True

    def detect(self, camera_id: str, frame: np.ndarray, frame_seq: int, at: float | None = None) -> list[Detection]:
        model = self._model(camera_id, frame.shape)
        mask = self._update(model, frame, at)
        if mask is None:
            return []
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        inv = float(2**model.halvings)
        h_img, w_img = frame.shape[:2]
        area = class_sizes_scale(frame.shape)
        found: list[Detection] = []

        def sized(
            blobs: list[tuple[np.ndarray, tuple[int, int, int, int]]],
        ) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
            return [(contour, (x, y, w, h)) for contour, (x, y, w, h) in blobs if w * h * inv * inv >= self.min_area]

        kept = sized([_blob(contour) for contour in contours])
        if kept and model.ref_level < self.night_below:
            kept = sized(self._unlight(model, mask, kept))  # lit road cut out: pieces may be small
        parts = self._cut_pairs(mask, kept, inv, area, self.min_area)
        blobs = np.array([(x, y, x + w, y + h) for _, (x, y, w, h) in parts], np.float32).reshape(-1, 4)
        stood = _best_iou(blobs, model.blobs) >= GHOST_STILL_IOU
        model.blobs = blobs
        for n, (contour, (x, y, w, h)) in enumerate(parts):
            if (stood[n] or w * h * inv * inv < FRAGMENT_AREA) and self._is_ghost(
                model, mask, (x, y, x + w, y + h), remember=bool(stood[n])
            ):
                continue
            fill = (
                cv2.contourArea(contour) if contour is not None else cv2.countNonZero(mask[y : y + h, x : x + w])
            ) / max(1.0, w * h)
            box = (x * inv, y * inv, min(w_img - 1.0, (x + w) * inv), min(h_img - 1.0, (y + h) * inv))
            found.append(Detection(self._classify(box, area), round(min(0.99, 0.5 + fill / 2), 3), box))
        return found

    @staticmethod
    def _cut_pairs(
        mask: np.ndarray,
        blobs: list[tuple[np.ndarray, tuple[int, int, int, int]]],
        inv: float,
        area: float,
        min_area: float,
    ) -> list[tuple[np.ndarray | None, tuple[int, int, int, int]]]:
        """The blobs with each pair of road users side by side cut in two (see PAIR_COVER)."""
        out: list[tuple[np.ndarray | None, tuple[int, int, int, int]]] = []
        for contour, (x, y, w, h) in blobs:
            if (
                w * h * inv * inv > PAIR_MAX_AREA * area
                or w < 2 * PAIR_MIN_W
                # two boxes covering at most PAIR_COVER of the blob's hold all its pixels: a blob
                # that fills more is one road user (the check skips 85% of blobs on the harder scenes)
                or cv2.contourArea(contour) > PAIR_COVER * w * h
            ):
                out.append((contour, (x, y, w, h)))
                continue
            own = _own_pixels(mask, contour, (x, y, w, h))
            parts = pair_cut(own)
            if parts is None or any(pw * ph * inv * inv < min_area for _, _, pw, ph in parts):
                out.append((contour, (x, y, w, h)))
            else:
                out += [(None, (x + px, y + py, pw, ph)) for px, py, pw, ph in parts]
        return out

    @staticmethod
    def _classify(box: tuple[float, float, float, float], area: float = 1.0) -> str:
        """A guess from the box's shape and size; the sizes are those of a 640x360 view of a street,
        ``area`` times larger in a frame ``area`` times larger (with fixed sizes, 1920x1080 frames
        of the same street had half their pedestrians called cars)."""
        w, h = box[2] - box[0], box[3] - box[1]
        if h > 1.4 * w and w * h < 1500 * area:
            return "person"
        if w * h > 4200 * area:
            return "truck" if w > 2.8 * h else "car"
        return "car" if w >= h else "person"


def pair_cut(own: np.ndarray) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]] | None:
    """``own`` (a blob's pixels, rows x columns) as two road users side by side: their boxes
    (x, y, w, h within ``own``), or None where it looks like one (see PAIR_COVER)."""
    h, w = own.shape
    if w < 2 * PAIR_MIN_W:
        return None
    fg = own > 0
    filled = fg.any(axis=0)
    top = np.where(filled, fg.argmax(axis=0), h)
    bottom = np.where(filled, h - 1 - fg[::-1].argmax(axis=0), -1)
    # the left part is columns [0, c), the right [c, w): their row extents for every c at once
    left_top, left_bottom = np.minimum.accumulate(top), np.maximum.accumulate(bottom)
    right_top = np.minimum.accumulate(top[::-1])[::-1]
    right_bottom = np.maximum.accumulate(bottom[::-1])[::-1]
    best: tuple[int, int, int] | None = None  # cover, cut, seam
    for seam in range(PAIR_SEAM + 1):
        # columns [c, c + seam) are both road users' (where one stands a little in front of the other)
        cut = np.arange(PAIR_MIN_W, w - PAIR_MIN_W - seam + 1)
        if not len(cut):
            break
        left_h = left_bottom[cut - 1] - left_top[cut - 1] + 1
        right_h = right_bottom[cut + seam] - right_top[cut + seam] + 1
        cover = cut * left_h + seam * h + (w - cut - seam) * right_h
        # what the shared columns hold lies within the two parts' rows (not a figure above both)
        seam_top = np.min([top[cut + i] for i in range(seam)], axis=0) if seam else h
        seam_bottom = np.max([bottom[cut + i] for i in range(seam)], axis=0) if seam else -1
        ok = (
            (seam_top >= np.minimum(left_top[cut - 1], right_top[cut + seam]))
            & (seam_bottom <= np.maximum(left_bottom[cut - 1], right_bottom[cut + seam]))
            & (np.minimum(left_h, right_h) >= PAIR_MIN_H * h)
            & (left_h >= PAIR_TALL * (cut + seam))
            & (right_h >= PAIR_TALL * (w - cut))
            & (cover <= PAIR_COVER * w * h)
        )
        if ok.any():
            k = int(np.argmin(np.where(ok, cover, np.iinfo(np.int64).max)))
            if best is None or int(cover[k]) < best[0]:
                best = (int(cover[k]), int(cut[k]), seam)
    if best is None:
        return None
    _, c, seam = best
    return (
        (0, int(left_top[c - 1]), c + seam, int(left_bottom[c - 1] - left_top[c - 1] + 1)),
        (c, int(right_top[c + seam]), w - c, int(right_bottom[c + seam] - right_top[c + seam] + 1)),
    )


def _own_pixels(mask: np.ndarray, contour: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """The foreground of ``mask`` inside ``contour``, over its bounding rectangle ``rect`` (x, y, w, h):
    a blob's own pixels, not a neighbour's reaching into its box."""
    x, y, w, h = rect
    own = np.zeros((h, w), np.uint8)
    cv2.drawContours(own, [contour], -1, 255, -1, offset=(-x, -y))
    own &= mask[y : y + h, x : x + w]
    return own


def _blob(contour: Any) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A contour with its bounding rectangle (x, y, w, h)."""
    x, y, w, h = cv2.boundingRect(contour)
    return np.asarray(contour), (int(x), int(y), int(w), int(h))


def _best_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each row of ``boxes``, its largest IoU with a row of ``others`` (all x1, y1, x2, y2)."""
    if not len(boxes) or not len(others):
        return np.zeros(len(boxes), np.float32)
    best: np.ndarray = iou_matrix(boxes, others).max(axis=1)
    return best


def _lit_road(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Pixels of ``frame`` that are ``background`` under more light: brighter alike, same grain."""
    f = frame.astype(np.float32) + 1.0
    b = background.astype(np.float32) + 1.0
    ratio = f / b
    k = ratio.mean(axis=2)
    alike = (k > LIT_MIN) & (k < LIT_MAX) & ((ratio.max(axis=2) - ratio.min(axis=2)) < LIT_SPREAD * k)
    if not alike.any():
        none: np.ndarray = alike
        return none
    fg, bg = f.mean(axis=2), b.mean(axis=2)
    mf, mb = cv2.blur(fg, (7, 7)), cv2.blur(bg, (7, 7))
    cov = cv2.blur(fg * bg, (7, 7)) - mf * mb
    var = (cv2.blur(fg * fg, (7, 7)) - mf * mf) * (cv2.blur(bg * bg, (7, 7)) - mb * mb)
    grain = cov / np.sqrt(np.maximum(var, 1e-6))
    lit: np.ndarray = alike & (grain > LIT_TEXTURE)
    return lit


def _edge_strength(grey: np.ndarray) -> np.ndarray:
    """Gradient magnitude of ``grey`` in grey levels per pixel (5x5 Sobel, L1: it smooths the noise)."""
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=5)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=5)
    return (np.abs(gx) + np.abs(gy)) * (1.0 / 48.0)


class YoloDetector(Detector):
    """ultralytics YOLO from a weights file or a model yaml, on CPU or CUDA.

    With ``max_batch > 1`` the frames that camera threads hand in are gathered for up to
    ``max_wait_ms`` into one model call: a GPU runs a batch of 16 in little more than the time
    of one frame, so many cameras share it (the producer sizes its thread pool to the batch).
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        imgsz: int = 640,
        conf: float = 0.25,
        max_batch: int = 1,
        max_wait_ms: float = 10.0,
    ) -> None:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(".state/ultralytics").resolve()))
        if not model.endswith((".yaml", ".yml")) and not Path(model).is_file():
            raise ConfigError(
                f"YOLO weights file {model!r} not found. roadwatch never downloads weights: put a .pt or "
                f".onnx file at that path (e.g. exported with `yolo export model=yolo11n.pt format=onnx`), "
                f"or pass a model yaml such as yolo11n.yaml for random weights."
            )
        try:
            import ultralytics
            from ultralytics.cfg import DEFAULT_CFG_DICT  # type: ignore[attr-defined]
        except ImportError as exc:
            raise ConfigError("the yolo detector needs the yolo extra: pip install -e '.[yolo]'") from exc
        self.model: Any = ultralytics.YOLO(model, task="detect")  # type: ignore[attr-defined]
        self.device, self.imgsz, self.conf = device, imgsz, conf
        # FP16 on CUDA; ultralytics >= 8.4 calls it quantize=16, older releases half=True
        self.precision: dict[str, Any] = {}
        if device.startswith("cuda"):
            self.precision = {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}
        self.name = f"yolo/{Path(model).name}"
        # an ultralytics model is not safe to call from two threads at once (the producer's
        # analysis pool has several): without a batcher, calls take turns
        self._lock = threading.Lock()
        self.batcher = FrameBatcher(self.detect_batch, max_batch, max_wait_ms) if max_batch > 1 else None

    def detect(self, camera_id: str, frame: np.ndarray, frame_seq: int, at: float | None = None) -> list[Detection]:
        if self.batcher is not None:
            return self.batcher.submit(frame)
        return self.detect_batch([frame])[0]

    def detect_batch(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        """One model call for frames of several cameras (what a GPU wants)."""
        with self._lock:
            outputs = self.model.predict(
                frames, device=self.device, imgsz=self.imgsz, conf=self.conf, verbose=False, **self.precision
            )
        batches: list[list[Detection]] = []
        for out in outputs:
            names = out.names
            boxes = out.boxes
            if boxes is None or len(boxes) == 0:
                batches.append([])
                continue
            xyxy = boxes.xyxy.cpu().numpy()
            confs = boxes.conf.cpu().numpy()
            classes = boxes.cls.cpu().numpy().astype(int)
            batches.append(
                [
                    Detection(str(names.get(int(c), "object")), round(float(p), 3), _box(b))
                    for b, p, c in zip(xyxy, confs, classes, strict=True)
                ]
            )
        return batches

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def _box(values: Any) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in values)
    return (x1, y1, x2, y2)


class FrameBatcher:
    """Gathers frames from many caller threads into batched calls on one thread.

    A caller blocks until its own frame's detections are back, so the producer's per-camera
    loop stays simple; the batch closes when it is full or its first frame has waited
    ``max_wait_ms``.
    """

    def __init__(
        self, run: Callable[[list[np.ndarray]], list[list[Detection]]], max_batch: int, max_wait_ms: float
    ) -> None:
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_ms / 1000.0
        self.queue: queue.Queue[tuple[np.ndarray, Future[list[Detection]]] | None] = queue.Queue()
        self.batch_sizes: list[int] = []
        self.thread = threading.Thread(target=self._loop, name="yolo-batcher", daemon=True)
        self.thread.start()

    def submit(self, frame: np.ndarray) -> list[Detection]:
        fut: Future[list[Detection]] = Future()
        self.queue.put((frame, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            closes_at = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, closes_at - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
            self.batch_sizes.append(len(batch))
            try:
                results = self.run([frame for frame, _ in batch])
            except Exception as exc:  # every waiting camera learns of it, none hangs
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), dets in zip(batch, results, strict=True):
                fut.set_result(dets)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=5)


class ReplayDetector(Detector):
    """Recorded detections: one JSON object per line, {"camera_id", "frame_seq", "objects": [...]}."""

    name = "replay"

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"replay file {path} not found")
        self.frames: dict[str, list[list[Detection]]] = {}
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                dets = [Detection(o["cls"], float(o["conf"]), tuple(o["bbox"])) for o in row["objects"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{line_no}: not a replay record: {exc}") from exc
            self.frames.setdefault(row["camera_id"], []).append(dets)

    def detect(self, camera_id: str, frame: np.ndarray, frame_seq: int, at: float | None = None) -> list[Detection]:
        frames = self.frames.get(camera_id) or self.frames.get("*") or [[]]
        return frames[frame_seq % len(frames)]


def make_detector(
    kind: DetectorKind,
    *,
    model: str = "",
    device: str = "cpu",
    imgsz: int = 640,
    replay: Path | None = None,
    max_batch: int = 1,
    max_wait_ms: float = 10.0,
    max_side: int = MAX_SIDE,
) -> Detector:
    """Build the backend named by ``kind``."""
    if kind == "motion":
        return MotionDetector(max_side=max_side)
    if kind == "yolo":
        return YoloDetector(
            model or "yolo11n.yaml", device=device, imgsz=imgsz, max_batch=max_batch, max_wait_ms=max_wait_ms
        )
    if kind == "replay":
        if replay is None:
            raise ConfigError("the replay detector needs --replay FILE")
        return ReplayDetector(replay)
    raise ConfigError(f"unknown detector {kind!r}: choose motion, yolo or replay")
