"""What a calibrated camera knows on the ground: positions, speeds and conflicts in metres and seconds.

The producer keeps one per calibrated camera. Each analysed frame's tracked boxes go in; out
come each object's ground position and velocity (the box's ground point through the camera's
homography, smoothed by :class:`models.ssm.GroundTrack`) and the conflicts between road users:
TTC and DRAC from this frame's states (predicted along the lanes the camera has learned,
:mod:`models.lanes`), PET from the paths driven. The task generator triggers on the conflicts
and raises measured alerts without waiting for the VLM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.box_jitter import BoxJitter
from models.calibration import Calibration, FloatArray
from models.lanes import FlowMap
from models.ssm import DEFAULT_EXTENT, KIND_OF_CLASS, GroundTrack, PathHistory, RoadUser, Thresholds, measure
from streams.records import Conflict, urgency

#: A track not seen for this long starts a new ground track when it comes back.
TRACK_GAP_S = 2.0
#: The learned lanes cover at most this far (m) around the calibration points' centre.
MAX_LANE_SPAN_M = 200.0
#: Faster than this (m/s, 250 km/h) is a measurement error, not a road user.
MAX_SPEED_MPS = 70.0
#: Positions a track needs before it takes part in conflicts.
MIN_SAMPLES = 3
#: The standard deviation (px) taken for a box's ground point about where the road user really is until the
#: camera's still road users have measured it (:class:`models.box_jitter.BoxJitter`): a turn or a change of
#: speed is read from a track's curvature only beyond what this much noise could bend it
#: (:class:`models.ssm.GroundTrack`), which on the ground is metres far from the camera, centimetres near.
BOX_JITTER_PX = 2.0
#: Conflicts kept per frame (most urgent first): a crowded frame does not flood the record.
MAX_CONFLICTS = 8
#: The next frame is looked for at most this far ahead (s): a camera that paused is no reason to flag early.
MAX_LOOKAHEAD_S = 1.0
#: A box edge within this many pixels of the frame's edge runs off it (detectors clip their boxes to the frame),
#: or this fraction of the frame's longer side: YOLO at 640 px on a 1920 px frame boxes in 3 px steps.
EDGE_PX = 2.0
EDGE_FRACTION = 0.005


def conflict_level(
    ttc_s: float | None, pet_s: float | None, drac_mps2: float, th: Thresholds, lookahead_s: float = 0.0
) -> str:
    """A risk level for measured values: critical at half a second, high at one, medium at the thresholds (a
    TTC that reaches its threshold within ``lookahead_s``, before the next frame, is at it)."""
    soonest = urgency(ttc_s, pet_s)
    if soonest <= 0.5:
        return "critical"
    if soonest <= 1.0:
        return "high"
    if (
        (ttc_s is not None and ttc_s - lookahead_s <= th.ttc_s)
        or (pet_s is not None and pet_s <= th.pet_s)
        or drac_mps2 >= th.drac_mps2
    ):
        return "medium"
    return "low"


@dataclass(frozen=True)
class Seen:
    """One tracked box of a frame."""

    track_id: int
    cls: str
    bbox: Sequence[float]
    #: the box runs off the frame where its ground point is (:func:`cut_at_edge`): where the road user is, is unknown
    cut: bool = False


def cut_at_edge(
    box: Sequence[float], width: int, height: int, anchor: str = "bottom", shift: tuple[float, float] = (0.0, 0.0)
) -> bool:
    """Whether ``box`` (of the steady view, ``shift`` from the frame: ``Detector.frame_shift``) runs off the
    ``width`` x ``height`` steady view or frame on a side that moves its ground point.

    A detector clips a box to the frame: a car leaving at the bottom keeps its box's bottom edge on the
    frame's while it drives on, so its bottom centre stands still on the ground, its speed falls to nothing
    and the car behind closes in on a car that stopped (a false conflict, alerted at once). Its road contact
    is below the frame; one cut at the left or right has its centre off. For the bottom-centre anchor the
    bottom, left and right edges count; for a top-down camera's centre, every edge.
    """
    dx, dy = shift
    margin = max(EDGE_PX, EDGE_FRACTION * max(width, height))
    # the detector saw the steady view (the frame moved by -shift) and clipped the box to its edges; the frame's
    # own edges cut what lies beyond them: whichever is nearer
    x1, y1 = min(box[0], box[0] + dx), min(box[1], box[1] + dy)
    x2, y2 = max(box[2], box[2] + dx), max(box[3], box[3] + dy)
    sides = x1 <= margin or x2 >= width - 1 - margin or y2 >= height - 1 - margin
    return sides or (anchor != "bottom" and y1 <= margin)


class GroundView:
    """One calibrated camera's road users on the ground."""

    def __init__(
        self,
        calibration: Calibration,
        anchor: str = "bottom",
        thresholds: Thresholds | None = None,
        frame_interval_s: float = 0.0,
    ) -> None:
        self.calibration = calibration
        #: a track not seen for this long starts over; a slow camera's every frame is further apart
        #: than TRACK_GAP_S (at 0.5 fps no track ever had a speed, and no conflict was measured)
        self.track_gap_s = max(TRACK_GAP_S, 2.5 * frame_interval_s)
        self.anchor = anchor
        self.thresholds = thresholds or Thresholds()
        self.tracks: dict[int, tuple[float, GroundTrack]] = {}
        centre = calibration.ground_points.mean(axis=0)
        spread = np.ptp(calibration.ground_points, axis=0).max() + 60.0
        half = min(MAX_LANE_SPAN_M, spread) / 2
        lanes = FlowMap((centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half))
        self.meter = ConflictMeter(lanes, self.thresholds)
        self.jitter = BoxJitter(BOX_JITTER_PX)

    def anchors(self, boxes: FloatArray) -> FloatArray:
        """(N, 2) pixels where (N, 4) boxes meet the ground: bottom centre, or centre for a top-down camera."""
        v = boxes[:, 3] if self.anchor == "bottom" else (boxes[:, 1] + boxes[:, 3]) / 2
        return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, v], axis=1)

    def ground_points(self, pixels: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(N, 2) ground points of (N, 2) anchor pixels (:meth:`anchors`) through the homography, and (N,) their
        noise in metres (the camera's box noise, :class:`models.box_jitter.BoxJitter`, on the ground there)."""
        ground, span = self.calibration.ground_and_span(pixels)
        return ground, self.jitter.estimate() * span

    def extents(self, boxes: FloatArray, classes: Sequence[str]) -> list[tuple[float, float]]:
        """Length and width (m) of each box: a top-down camera measures them; an oblique one cannot."""
        defaults = [DEFAULT_EXTENT.get(c, (1.0, 1.0)) for c in classes]
        if self.anchor != "centre" or not len(boxes):
            return defaults
        corners = self.calibration.to_ground(
            np.concatenate([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]]])
        ).reshape(3, len(boxes), 2)
        along = np.hypot(*(corners[1] - corners[0]).T)
        across = np.hypot(*(corners[2] - corners[0]).T)
        out = []
        for a, b, default in zip(along, across, defaults, strict=True):
            ok = math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0
            out.append((float(max(a, b)), float(min(a, b))) if ok else default)
        return out

    def observe(self, t: float, seen: Sequence[Seen]) -> tuple[dict[int, RoadUser], list[Conflict]]:
        """The frame at ``t`` (seconds): each track's state on the ground, and the conflicts, most urgent first."""
        users: dict[int, RoadUser] = {}
        boxes = np.array([list(obj.bbox[:4]) for obj in seen], dtype=np.float64).reshape(-1, 4)
        pixels = self.anchors(boxes)
        points, noise = self.ground_points(pixels) if len(seen) else (np.empty((0, 2)), np.empty(0))
        sizes = self.extents(boxes, [obj.cls for obj in seen])
        for obj, (gx, gy), noise_m, (u, v), (length, width) in zip(
            seen, points.tolist(), noise.tolist(), pixels.tolist(), sizes, strict=True
        ):
            if obj.cut or not (math.isfinite(gx) and math.isfinite(gy)):
                # off the frame where it touches the ground, or above the ground plane's horizon: no ground
                # position; the track keeps what it had and goes on when the box is whole again
                self.jitter.forget(obj.track_id)
                continue
            last, track = self.tracks.get(obj.track_id, (-math.inf, GroundTrack()))
            if t - last > self.track_gap_s:
                track = GroundTrack()
                self.meter.paths.forget(obj.track_id)  # a path bridging the gap would cross others
                self.jitter.forget(obj.track_id)
            self.tracks[obj.track_id] = (t, track)
            state = track.update(t, gx, gy, noise_m)
            if math.hypot(state.vx, state.vy) > MAX_SPEED_MPS:
                # a box far from the calibrated area, or a track jumping between objects: no road user does this
                self.tracks.pop(obj.track_id, None)
                self.meter.paths.forget(obj.track_id)
                self.jitter.forget(obj.track_id)
                continue
            self.jitter.add(obj.track_id, t, u, v)
            heading = state.heading
            if not track.heading_known and KIND_OF_CLASS.get(obj.cls) == "vehicle":
                # never seen moving (queued or parked since it came into view): it points down its
                # lane, not along the ground's x axis, which would lay it across the lane beside
                lane = self.meter.lanes.lane_heading(state.x, state.y)
                heading = state.heading if lane is None else lane
            users[obj.track_id] = RoadUser(
                obj.track_id,
                obj.cls,
                state.x,
                state.y,
                state.vx,
                state.vy,
                heading,
                length,
                width,
                state.yaw_rate,
                state.accel,
                state.turned,
            )
        for track_id in [k for k, (at, _) in self.tracks.items() if t - at > self.track_gap_s]:
            del self.tracks[track_id]
            self.jitter.forget(track_id)
        # a track takes part once it has three positions (a second at 2 fps): a new box's first positions
        # (an object entering the frame, a blob splitting) give velocities no one drove
        members = [
            u for u in users.values() if u.kind is not None and len(self.tracks[u.track_id][1].samples) >= MIN_SAMPLES
        ]
        ranked = self.meter.conflicts(t, users, members)
        return users, ranked[:MAX_CONFLICTS]


class ConflictMeter:
    """One scene's conflicts frame by frame: TTC and DRAC along the learned lanes, PET from the paths driven.

    Kept apart from the camera (:class:`GroundView` feeds it tracked road users) so that ground
    truth in metres, such as a trajectory dataset, runs through exactly the same measurement.
    """

    def __init__(self, lanes: FlowMap, thresholds: Thresholds) -> None:
        self.lanes = lanes
        self.thresholds = thresholds
        self.paths = PathHistory()
        #: each road user's latest state and when: the first of a PET pair has often left the view
        #: (or missed a frame) by the time the second reaches where it passed
        self._last_seen: dict[int, tuple[float, RoadUser]] = {}
        #: when the scene was last measured: the next look is expected as far ahead (ssm.measure's lookahead)
        self.last_t: float | None = None
        self.lookahead_s = 0.0

    def conflicts(self, t: float, users: dict[int, RoadUser], members: list[RoadUser]) -> list[Conflict]:
        """The conflicts among ``members`` (the settled road users of ``users``) at ``t``, most urgent first;
        the vehicles among them teach the lanes."""
        th = self.thresholds
        if self.last_t is not None:
            # a clock stepping back gives no interval: look no further ahead than the last frame's
            self.lookahead_s = min(max(t - self.last_t, 0.0), MAX_LOOKAHEAD_S)
        self.last_t = t
        found: dict[tuple[int, int], Conflict] = {}
        for c in measure(members, th, self.lanes, self.lookahead_s):
            ttc = None if math.isinf(c.ttc_s) else round(c.ttc_s, 2)
            found[(min(c.a, c.b), max(c.a, c.b))] = self._conflict(users, c.a, c.b, c.pair, ttc, None, c.drac_mps2)
        for user in members:
            self._last_seen[user.track_id] = (t, user)
        for enc in self.paths.add(t, members):
            if enc.pet_s > th.pet_s:
                continue
            at_hand = users
            if enc.first not in users or enc.second not in users:
                at_hand = {**{k: u for k, (_, u) in self._last_seen.items()}, **users}
                if enc.first not in at_hand or enc.second not in at_hand:
                    continue
            key = (min(enc.first, enc.second), max(enc.first, enc.second))
            known = found.get(key)
            found[key] = self._conflict(
                at_hand,
                enc.first,
                enc.second,
                enc.pair,
                known.ttc_s if known else None,
                round(enc.pet_s, 2),
                known.drac_mps2 if known else 0.0,
            )
        horizon = t - self.paths.window_s
        self._last_seen = {k: seen for k, seen in self._last_seen.items() if seen[0] >= horizon}
        vehicles = [u for u in members if u.kind == "vehicle"]
        if vehicles:
            self.lanes.learn(
                np.array([(u.x, u.y) for u in vehicles]),
                np.array([u.heading for u in vehicles]),
                np.array([u.speed for u in vehicles]),
            )
        return sorted(found.values(), key=lambda c: urgency(c.ttc_s, c.pet_s))

    def _conflict(
        self, users: dict[int, RoadUser], a: int, b: int, pair: str, ttc: float | None, pet: float | None, drac: float
    ) -> Conflict:
        ua, ub = users[a], users[b]
        return Conflict(
            a=a,
            b=b,
            pair=pair,
            ttc_s=ttc,
            pet_s=pet,
            drac_mps2=round(drac, 2),
            closing_mps=round(math.hypot(ua.vx - ub.vx, ua.vy - ub.vy), 2),
            speeds_mps=[round(ua.speed, 2), round(ub.speed, 2)],
            level=conflict_level(ttc, pet, drac, self.thresholds, self.lookahead_s),
            lookahead_s=round(self.lookahead_s, 3),
        )
