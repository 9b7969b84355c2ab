"""Surrogate safety measures between road users on the ground: TTC, DRAC and PET in metres and seconds.

Traffic-safety engineering judges conflicts by how close two road users came to colliding in
time, not in pixels: time-to-collision (TTC, Hayward 1972), the deceleration rate to avoid the
crash (DRAC) and post-encroachment time (PET). The thresholds below default to the values in
use: FHWA's SSAM flags TTC <= 1.5 s; SUMO's SSM device logs TTC < 3 s, PET < 2 s and
DRAC > 3 m/s^2.

Each road user is an oriented rectangle (length along its heading, width across). Where two
road users' predicted paths cross, TTC is measured by the conflict area, as SUMO's SSM device
measures a crossing (:func:`conflict_area_ttc`): the one due first at the area is the leader,
and if the follower is due before the leader has cleared it, TTC is the follower's time to the
area. Elsewhere (following, merging, drifting into the next lane) TTC is the first time the two
rectangles overlap at constant velocity (the separating axis test on the four edge normals,
solved for the interval in which every projection overlaps): exact for two boxes that keep
their heading and speed, so cars side by side in parallel lanes or queued at a light never
collide, where centre-distance discs would. A road user already turning follows a
constant-turn-rate arc until its turn has gone ``MAX_TURN_RAD`` in all, and with a camera's
learned lanes (:mod:`models.lanes`) a vehicle is steered along them; both are sampled every
``TURN_STEP_S``.
The limits: no one's route is known, so a turn not yet begun is extrapolated straight on (a
left turner's conflict with oncoming traffic is seen only once it turns), braking is extrapolated
only in a crossing's arrival times, and a lane not yet driven cannot steer anyone
(``bench/results/ssm.json`` measures this against SUMO). PET does not extrapolate: it is
measured on the paths both users actually drove.

Everything is vectorised over pairs with numpy: a frame with 50 road users is 1,225 pairs in
one pass. The module knows nothing about cameras or Kafka.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

Kind = Literal["pedestrian", "cyclist", "vehicle"]
FloatArray = npt.NDArray[np.float64]

#: Detector classes by the kind of road user a conflict is about; other classes take no part.
KIND_OF_CLASS: dict[str, Kind] = {
    "person": "pedestrian",
    "pedestrian": "pedestrian",
    "bicycle": "cyclist",
    "cyclist": "cyclist",
    "car": "vehicle",
    "truck": "vehicle",
    "bus": "vehicle",
    "motorcycle": "vehicle",
    "vehicle": "vehicle",
}

#: Footprints (length, width) in metres where a detector gives none: typical European values.
DEFAULT_EXTENT: dict[str, tuple[float, float]] = {
    "person": (0.5, 0.5),
    "pedestrian": (0.5, 0.5),
    "bicycle": (1.8, 0.6),
    "cyclist": (1.8, 0.6),
    "motorcycle": (2.2, 0.8),
    "car": (4.5, 1.8),
    "vehicle": (4.5, 1.8),
    "truck": (9.0, 2.5),
    "bus": (12.0, 2.55),
}

#: The pairs a conflict is measured between; two pedestrians or two cyclists are not a conflict here.
CONFLICT_PAIRS: frozenset[frozenset[str]] = frozenset(
    {
        frozenset({"pedestrian", "vehicle"}),
        frozenset({"cyclist", "vehicle"}),
        frozenset({"vehicle"}),
    }
)

#: Below this speed (m/s) a road user's heading is kept from when it last moved.
HEADING_MIN_SPEED = 0.5
#: A heading turning slower than this (rad/s) is taken as straight: noise on a straight road.
MIN_YAW_RATE = 0.1
#: No road user turns faster than this (rad/s): about a 10 m radius at 15 km/h.
MAX_YAW_RATE = 0.8
#: A turn under way is predicted to end once it has turned this far (rad) in all: a junction's turn is a
#: quarter of a circle, and a car leaving one at its last turn rate otherwise goes on round into the
#: oncoming lane (the learned lanes steer it straight only where traffic has taught them).
MAX_TURN_RAD = math.radians(90.0)
#: Step (s) of the sampled prediction for turning road users.
TURN_STEP_S = 0.1
#: A pair closing in slower than this (m/s) is no conflict (walking past a parked car).
MIN_CLOSING_MPS = 0.5
#: ... nor a pair whose vehicles all stand (slower than this, m/s): a passenger walking up to the
#: door of a bus that stopped closes in on it, and a standing vehicle never leaves its own area.
MIN_VEHICLE_MPS = 1.0
#: Both road users pass a crossing at least this fast (m/s), one of them at least the second, for a PET.
PET_MIN_SPEED = 0.5
PET_MIN_MOVER_SPEED = 2.0
#: Two paths cross for PET only at more than this angle (degrees); shallower is following or merging.
PET_MIN_ANGLE_DEG = 20.0
#: Braking gentler than this (m/s^2) is not extrapolated into a crossing's arrival times: tracker noise.
BRAKE_DEADBAND_MPS2 = 1.0
#: No road user brakes harder than this (m/s^2): an emergency stop on dry asphalt.
MAX_BRAKE_MPS2 = 8.0
#: Metres a conflict area's path extends behind a road user's rear and past its predicted end.
CONFLICT_MARGIN_M = 1.5


class PathPredictor(Protocol):
    """Where vehicles go: :class:`models.lanes.FlowMap` (the lanes a camera learned), or in a benchmark the
    routes a simulator knows."""

    def predict(
        self,
        xy: FloatArray,
        heading: FloatArray,
        speed: FloatArray,
        yaw_rate: FloatArray,
        steps: FloatArray,
        turn_left: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """Positions (N, K, 2) and headings (N, K) at the times ``steps``; a road user goes on at its own
        ``yaw_rate`` for at most ``turn_left`` (rad, N) where nothing else steers it."""
        ...


@dataclass(frozen=True)
class Thresholds:
    """What counts as a conflict; the defaults are the literature's (see the module docstring)."""

    #: TTC at or below which a pair is in conflict (SSAM's 1.5 s).
    ttc_s: float = 1.5
    #: PET at or below which a crossing is a conflict (SUMO's 2 s).
    pet_s: float = 2.0
    #: DRAC at or above which a pair is in conflict (SUMO's 3 m/s^2).
    drac_mps2: float = 3.0
    #: TTC beyond this is no conflict at all: constant velocity means little further ahead, the TTC
    #: threshold is 1.5 s, DRAC past 3 m/s^2 beyond 3 s needs a closing speed over 18 m/s, and SUMO's
    #: device logs up to 3 s (predictions cost in proportion to the horizon).
    horizon_s: float = 3.0

    def __post_init__(self) -> None:
        for name in ("ttc_s", "pet_s", "drac_mps2", "horizon_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"threshold {name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class RoadUser:
    """One tracked road user at one instant, in ground metres."""

    track_id: int
    cls: str
    x: float
    y: float
    vx: float
    vy: float
    #: Heading in radians (x axis = 0, counter-clockwise); taken from the velocity when moving.
    heading: float
    length: float
    width: float
    #: rad/s, counter-clockwise: a turning road user is predicted along an arc (CTRV), not straight on
    yaw_rate: float = 0.0
    #: m/s^2 along the heading: one braking is expected at a crossing later, or never (conflict_area_ttc)
    accel: float = 0.0
    #: rad, signed: how far the turn under way has turned so far (its prediction ends at MAX_TURN_RAD)
    turned: float = 0.0

    @property
    def turn_left(self) -> float:
        """How much further (rad) the turn under way is predicted to go."""
        if self.yaw_rate == 0.0:
            return MAX_TURN_RAD
        return max(0.0, MAX_TURN_RAD - max(0.0, self.turned * math.copysign(1.0, self.yaw_rate)))

    @property
    def kind(self) -> Kind | None:
        return KIND_OF_CLASS.get(self.cls)

    @property
    def speed(self) -> float:
        return math.hypot(self.vx, self.vy)


@dataclass(frozen=True)
class Conflict:
    """A pair of road users whose measures cross a threshold."""

    a: int
    b: int
    #: "pedestrian-vehicle", "cyclist-vehicle" or "vehicle-vehicle"
    pair: str
    ttc_s: float
    drac_mps2: float
    pet_s: float
    #: Closing speed (m/s) at the instant measured.
    closing_mps: float


def pair_name(kind_a: str, kind_b: str) -> str:
    """``pedestrian-vehicle`` whichever order the two came in."""
    order = {"pedestrian": 0, "cyclist": 1, "vehicle": 2}
    first, second = sorted((kind_a, kind_b), key=order.__getitem__)
    return f"{first}-{second}"


def time_to_collision(
    pa: FloatArray,
    va: FloatArray,
    ha: FloatArray,
    ea: FloatArray,
    pb: FloatArray,
    vb: FloatArray,
    hb: FloatArray,
    eb: FloatArray,
    horizon_s: float = 5.0,
) -> FloatArray:
    """TTC (s) of N pairs of oriented rectangles at constant velocity: 0 when they overlap now, inf when never.

    ``p*`` and ``v*`` are (N, 2) centres and velocities, ``h*`` (N,) headings in radians, ``e*``
    (N, 2) lengths and widths. The separating axis theorem: two convex boxes overlap exactly
    when their projections overlap on each of the four edge normals; with a constant relative
    velocity each projection overlaps during one interval of time, and the boxes collide in
    the intersection of the four intervals.
    """
    n = pa.shape[0]
    if n == 0:
        return np.empty(0)
    ua = np.stack([np.cos(ha), np.sin(ha)], axis=1)
    ub = np.stack([np.cos(hb), np.sin(hb)], axis=1)
    na = np.stack([-ua[:, 1], ua[:, 0]], axis=1)
    nb = np.stack([-ub[:, 1], ub[:, 0]], axis=1)
    axes = np.stack([ua, na, ub, nb], axis=1)  # (N, 4, 2)
    half_a = ea / 2.0
    half_b = eb / 2.0

    def radius(u: FloatArray, nrm: FloatArray, half: FloatArray) -> FloatArray:
        along = np.abs(np.einsum("nk,nak->na", u, axes))
        across = np.abs(np.einsum("nk,nak->na", nrm, axes))
        result: FloatArray = half[:, :1] * along + half[:, 1:] * across
        return result

    reach = radius(ua, na, half_a) + radius(ub, nb, half_b)  # (N, 4)
    gap = np.einsum("nk,nak->na", pb - pa, axes)  # centre separation on each axis
    rate = np.einsum("nk,nak->na", vb - va, axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-reach - gap) / rate
        t2 = (reach - gap) / rate
    moving = np.abs(rate) > 1e-9
    low = np.where(moving, np.minimum(t1, t2), np.where(np.abs(gap) <= reach, -np.inf, np.inf))
    high = np.where(moving, np.maximum(t1, t2), np.where(np.abs(gap) <= reach, np.inf, -np.inf))
    enter = low.max(axis=1)
    leave = high.min(axis=1)
    hit = (enter <= leave) & (leave >= 0.0) & (enter <= horizon_s)
    ttc: FloatArray = np.where(hit, np.maximum(enter, 0.0), np.inf)
    return ttc


def drac(closing_mps: FloatArray, ttc_s: FloatArray) -> FloatArray:
    """Deceleration (m/s^2) that stops the closing before contact: v_rel / (2 TTC).

    For a follower this is the textbook (v_f - v_l)^2 / (2 gap), since gap = (v_f - v_l) TTC. A pair
    that never meets (TTC inf) gets 0; TTC 0 is taken as 1 ms (such pairs are not flagged anyway).
    ``closing_mps`` is the magnitude of the relative velocity, which for a crossing is more than the
    rate the gap closes at: a crossing measured by its conflict area has its own DRAC instead
    (:func:`conflict_area_ttc`).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(np.isfinite(ttc_s), closing_mps / (2.0 * np.maximum(ttc_s, 1e-3)), 0.0)
    result: FloatArray = out
    return result


def measure(
    users: list[RoadUser],
    thresholds: Thresholds | None = None,
    lanes: PathPredictor | None = None,
    lookahead_s: float = 0.0,
) -> list[Conflict]:
    """TTC and DRAC of every pair of interest among ``users``; the pairs past a threshold, most urgent first.

    ``lookahead_s`` is the time until the road users are seen again (a camera's frame interval): a TTC
    that, at constant velocity, falls to the threshold before then is flagged now, since TTC drops by a
    second a second and the next look comes too late (``bench/results/ssm.json``'s ``sumo.sampling``: SUMO's
    own TTC, sampled at 2 fps, misses most of its conflicts under 1.5 s; looked at half a second ahead, few).
    The TTC reported is the one measured now. PET is not instantaneous: :class:`PathHistory` adds it.
    The conflicts returned here carry ``pet_s = inf``.
    """
    th = thresholds or Thresholds()
    left, right = interesting_pairs(users)
    if not left.size:
        return []
    ttc, closing, area_drac = _pair_ttc(users, left, right, th.horizon_s, lanes)
    # footprints that overlap already are a position or size error far more often than a crash, which
    # frames before it show closing in: only pairs that will meet, and are closing in, count
    approaching = (ttc > 0) & (closing >= MIN_CLOSING_MPS) & _a_vehicle_moves(users, left, right)
    dr = np.where(np.isnan(area_drac), drac(closing, ttc), area_drac)
    flagged = np.flatnonzero(approaching & ((ttc - max(lookahead_s, 0.0) <= th.ttc_s) | (dr >= th.drac_mps2)))
    conflicts = [
        Conflict(
            a=users[left[i]].track_id,
            b=users[right[i]].track_id,
            pair=pair_name(users[left[i]].kind or "", users[right[i]].kind or ""),
            ttc_s=float(ttc[i]),
            drac_mps2=float(dr[i]),
            pet_s=math.inf,
            closing_mps=float(closing[i]),
        )
        for i in flagged
    ]
    conflicts.sort(key=lambda c: c.ttc_s)
    return conflicts


def pair_ttc(
    users: list[RoadUser], horizon_s: float = 5.0, lanes: PathPredictor | None = None
) -> dict[tuple[int, int], float]:
    """TTC of every pair of interest, by (smaller id, larger id); pairs that never meet are left out."""
    left, right = interesting_pairs(users)
    if not left.size:
        return {}
    ttc, _, _ = _pair_ttc(users, left, right, horizon_s, lanes)
    out: dict[tuple[int, int], float] = {}
    for i in np.flatnonzero(np.isfinite(ttc)):
        a, b = users[left[i]].track_id, users[right[i]].track_id
        out[(min(a, b), max(a, b))] = float(ttc[i])
    return out


def _a_vehicle_moves(
    users: list[RoadUser], left: npt.NDArray[np.intp], right: npt.NDArray[np.intp]
) -> npt.NDArray[np.bool_]:
    """Per pair, whether one of its vehicles moves at MIN_VEHICLE_MPS or more."""
    moving = np.array([u.kind == "vehicle" and math.hypot(u.vx, u.vy) >= MIN_VEHICLE_MPS for u in users])
    result: npt.NDArray[np.bool_] = moving[left] | moving[right]
    return result


def interesting_pairs(users: list[RoadUser]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Index pairs (i < j) whose kinds make a conflict pair."""
    kinds = [u.kind for u in users]
    n = len(users)
    if n < 2:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    left, right = np.triu_indices(n, k=1)
    code = {"pedestrian": 1, "cyclist": 2, "vehicle": 4, None: 0}
    codes = np.array([code[k] for k in kinds])
    combined = codes[left] | codes[right]
    both_vehicle = (codes[left] == 4) & (codes[right] == 4)
    keep = both_vehicle | (combined == 5) | (combined == 6)  # ped+veh, cyc+veh
    return left[keep], right[keep]


def _pair_ttc(
    users: list[RoadUser],
    left: npt.NDArray[np.intp],
    right: npt.NDArray[np.intp],
    horizon_s: float,
    lanes: PathPredictor | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    pos = np.array([(u.x, u.y) for u in users], dtype=np.float64)
    vel = np.array([(u.vx, u.vy) for u in users], dtype=np.float64)
    head = np.array([u.heading for u in users], dtype=np.float64)
    ext = np.array([(u.length, u.width) for u in users], dtype=np.float64)
    yaw = np.array([u.yaw_rate for u in users], dtype=np.float64)
    acc = np.array([u.accel for u in users], dtype=np.float64)
    turn_left = np.array([u.turn_left for u in users], dtype=np.float64)
    speed = np.hypot(vel[:, 0], vel[:, 1])
    ttc = np.full(len(left), np.inf)
    area_drac = np.full(len(left), np.nan)  # a crossing's own DRAC where its conflict area gave the TTC
    closing = np.hypot(*(vel[right] - vel[left]).T)
    # pairs too far apart to meet within the horizon at their speeds are never computed
    reach = (speed[left] + speed[right]) * horizon_s + (np.hypot(*ext[left].T) + np.hypot(*ext[right].T)) / 2
    near = np.hypot(*(pos[right] - pos[left]).T) <= reach
    if lanes is not None:
        if near.any():
            steps = np.arange(0.0, horizon_s + TURN_STEP_S / 2, TURN_STEP_S)
            involved = np.zeros(len(users), dtype=bool)
            involved[left[near]] = True
            involved[right[near]] = True
            vehicle = np.array([u.kind == "vehicle" for u in users]) & involved
            paths, headings = _arc((pos, speed, head, yaw, ext), steps, turn_left)
            if vehicle.any():
                paths[vehicle], headings[vehicle] = lanes.predict(
                    pos[vehicle], head[vehicle], speed[vehicle], yaw[vehicle], steps, turn_left[vehicle]
                )
            li, ri = left[near], right[near]
            over = _first_overlap(paths[li], headings[li], ext[li], paths[ri], headings[ri], ext[ri], steps)
            ttc[near], area_drac[near] = _crossing_first(
                paths, headings, speed, acc, ext, li, ri, steps, horizon_s, over
            )
        return ttc, closing, area_drac
    straight = near & (yaw[left] == 0.0) & (yaw[right] == 0.0)
    li, ri = left[straight], right[straight]
    ttc[straight] = time_to_collision(
        pos[li], vel[li], head[li], ext[li], pos[ri], vel[ri], head[ri], ext[ri], horizon_s
    )
    if near.any():
        # constant-turn-rate arcs, sampled: the bodies' overlap when either turns, and every near pair's crossing
        steps = np.arange(0.0, horizon_s + TURN_STEP_S / 2, TURN_STEP_S)
        paths, headings = _arc((pos, speed, head, yaw, ext), steps, turn_left)
        turning = near & ~straight
        li, ri = left[turning], right[turning]
        ttc[turning] = _first_overlap(paths[li], headings[li], ext[li], paths[ri], headings[ri], ext[ri], steps)
        ttc[near], area_drac[near] = _crossing_first(
            paths, headings, speed, acc, ext, left[near], right[near], steps, horizon_s, ttc[near]
        )
    return ttc, closing, area_drac


def _crossing_first(
    paths: FloatArray,
    headings: FloatArray,
    speed: FloatArray,
    acc: FloatArray,
    ext: FloatArray,
    li: npt.NDArray[np.intp],
    ri: npt.NDArray[np.intp],
    steps: FloatArray,
    horizon_s: float,
    overlap_ttc: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """The pairs' TTC: by the conflict area where their paths cross, by their bodies' overlap where they do not
    (following, merging, a drift into the next lane); where the bodies would touch sooner than the crossing
    says (a follower behind a turning leader), by that. With the crossing's DRAC where the TTC is the
    crossing's (NaN elsewhere)."""
    coarse = slice(None, None, 2) if len(steps) > 2 else slice(None)  # the crossing point needs no 0.1 s step
    cross, crosses, area_drac = conflict_area_ttc(
        paths[li][:, coarse],
        headings[li][:, coarse],
        speed[li],
        ext[li],
        paths[ri][:, coarse],
        headings[ri][:, coarse],
        speed[ri],
        ext[ri],
        steps[coarse],
        horizon_s,
        acc[li],
        acc[ri],
    )
    by_area = crosses & (cross <= overlap_ttc)
    out: FloatArray = np.where(by_area, cross, overlap_ttc)
    drac_out: FloatArray = np.where(by_area & np.isfinite(cross), area_drac, np.nan)
    return out, drac_out


Motion = tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]  # position, speed, heading, yaw rate, extent


def conflict_area_ttc(
    pa: FloatArray,
    ha: FloatArray,
    sa: FloatArray,
    ea: FloatArray,
    pb: FloatArray,
    hb: FloatArray,
    sb: FloatArray,
    eb: FloatArray,
    steps: FloatArray,
    horizon_s: float,
    acc_a: FloatArray | None = None,
    acc_b: FloatArray | None = None,
) -> tuple[FloatArray, npt.NDArray[np.bool_], FloatArray]:
    """TTC of N pairs whose predicted paths cross, by the conflict area (SUMO's SSM device's crossing TTC).

    ``p*`` are the predicted centres (N, K, 2) and ``h*`` headings (N, K) at ``steps`` (the first
    at 0) at the speeds ``s*`` (N,); ``e*`` (N, 2) lengths and widths. Where the two paths cross at more than
    ``PET_MIN_ANGLE_DEG``, the conflict area is the other's width across the crossing; each
    road user enters it when its front reaches it and leaves it when its rear has cleared it,
    at its current speed. The one due first is the leader; if the follower is due before the
    leader has left, TTC is the follower's time to the area. This is not two bodies touching:
    a follower arriving while the leader still occupies the area is a conflict even if the
    leader's rear clears the follower's path a moment before its front gets there, as in
    MSDevice_SSM's ``determineTTCandDRAC``. Returns the TTC (inf: no conflict), whether the
    paths cross at all (pairs whose paths do not cross are following or merging, measured by
    overlap), and the conflict's DRAC (NaN where there is none): as SUMO's ``computeDRAC`` for a
    crossing, the gentler of the two ways out, one of them slowing to arrive only as the other
    leaves (or stopping short of an area the other will not leave), not the closing speed over
    twice the TTC, which at a crossing's small TTCs asks for hundreds of m/s^2.
    """
    n = pa.shape[0]
    if n == 0:
        return np.empty(0), np.zeros(0, dtype=bool), np.empty(0)
    # each path is extended behind the centre and past its end by half a body length and CONFLICT_MARGIN_M,
    # so a road user standing in (or just entering) the other's path still has a path through it
    margin_a = ea[:, 0] / 2 + CONFLICT_MARGIN_M
    margin_b = eb[:, 0] / 2 + CONFLICT_MARGIN_M
    qa, da = _extended(pa, ha, sa, margin_a, steps)
    qb, db = _extended(pb, hb, sb, margin_b, steps)
    a0, a1 = qa[:, :-1, None, :], qa[:, 1:, None, :]  # (N, Ka, 1, 2)
    b0, b1 = qb[:, None, :-1, :], qb[:, None, 1:, :]  # (N, 1, Kb, 2)
    hit, u, w, sine = _crossings(a0, a1, b0, b1)  # (N, Ka, Kb)
    hit &= sine >= math.sin(math.radians(PET_MIN_ANGLE_DEG))
    flat = hit.reshape(n, -1)
    crosses: npt.NDArray[np.bool_] = np.asarray(flat.any(axis=1), dtype=bool)
    ttc: FloatArray = np.full(n, np.inf)
    area_drac: FloatArray = np.full(n, np.nan)
    if not crosses.any():
        return ttc, crosses, area_drac
    # the crossing first along road user a's path
    first = flat.argmax(axis=1)[crosses]
    kb = pb.shape[1] + 1
    ia, ib = first // kb, first % kb
    rows = np.flatnonzero(crosses)
    ua, wb = u[rows, ia, ib], w[rows, ia, ib]
    along_a = da[rows, ia] + ua * (da[rows, ia + 1] - da[rows, ia])
    along_b = db[rows, ib] + wb * (db[rows, ib + 1] - db[rows, ib])
    # the area is where the bodies can touch: the other's width across the path at the crossing's angle, widened
    # by one's own half-width over its tangent (a front corner gets there first), plus centre to front
    sin_x = np.maximum(sine[rows, ia, ib], math.sin(math.radians(PET_MIN_ANGLE_DEG)))
    cot_x = np.sqrt(1.0 - sin_x**2) / sin_x
    reach_a = ea[rows, 0] / 2 + eb[rows, 1] / (2 * sin_x) + ea[rows, 1] / 2 * cot_x
    reach_b = eb[rows, 0] / 2 + ea[rows, 1] / (2 * sin_x) + eb[rows, 1] / 2 * cot_x
    enter_a, leave_a = along_a - reach_a, along_a + reach_a
    enter_b, leave_b = along_b - reach_b, along_b + reach_b
    speed_a, speed_b = sa[rows], sb[rows]
    brake_a = _braking(acc_a[rows]) if acc_a is not None else np.zeros(len(rows))
    brake_b = _braking(acc_b[rows]) if acc_b is not None else np.zeros(len(rows))
    # who gets there first, and whether the other arrives before the first has left, at each one's speed
    # slowing at its current deceleration (one braking to a stop short of the area never arrives)
    t_in_a, t_in_b = _arrival(enter_a, speed_a, brake_a), _arrival(enter_b, speed_b, brake_b)
    t_out_a, t_out_b = _arrival(leave_a, speed_a, brake_a), _arrival(leave_b, speed_b, brake_b)
    a_leads = t_in_a < t_in_b
    follower_in = np.where(a_leads, t_in_b, t_in_a)
    leader_out = np.where(a_leads, t_out_a, t_out_b)
    conflict = (leave_a > 0) & (leave_b > 0) & np.isfinite(follower_in) & (follower_in <= leader_out)
    # the TTC itself is the follower's distance to the area at its current speed
    follower_enter = np.where(a_leads, enter_b, enter_a)
    follower_speed = np.where(a_leads, speed_b, speed_a)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(follower_speed > 0, np.maximum(follower_enter, 0.0) / follower_speed, np.inf)
    found = conflict & (value <= horizon_s)
    ttc[rows] = np.where(found, value, np.inf)
    area_drac[rows] = np.where(
        found,
        _crossing_drac(enter_a, leave_a, speed_a, t_in_a, t_out_a, enter_b, leave_b, speed_b, t_in_b, t_out_b),
        np.nan,
    )
    # both already inside the other's (widened) area: no crossing still to come; whether and when they touch is
    # the bodies' overlap (SUMO calls it a collision, but at a shallow angle the bodies may still be apart)
    inside = rows[(enter_a <= 0) & (enter_b <= 0)]
    ttc[inside] = np.inf
    area_drac[inside] = np.nan
    crosses[inside] = False
    return ttc, crosses, area_drac


def _crossing_drac(
    enter_a: FloatArray,
    leave_a: FloatArray,
    speed_a: FloatArray,
    t_in_a: FloatArray,
    t_out_a: FloatArray,
    enter_b: FloatArray,
    leave_b: FloatArray,
    speed_b: FloatArray,
    t_in_b: FloatArray,
    t_out_b: FloatArray,
) -> FloatArray:
    """DRAC of crossing conflicts (MSDevice_SSM's ``computeDRAC``): for each one still short of the area, the
    deceleration that brings it there only as the other leaves, or, if the other will not leave, to a stop
    before it; the smaller of the two. 0 once either has left."""

    def way_out(enter: FloatArray, speed: FloatArray, other_in: FloatArray, other_out: FloatArray) -> FloatArray:
        with np.errstate(divide="ignore", invalid="ignore"):
            until_left = 2 * (speed - enter / other_out) / other_out
            stop_short = speed**2 / (2 * enter)
        out: FloatArray = np.where(
            enter <= 0,
            np.inf,
            np.where(np.isfinite(other_out), until_left, np.where(np.isfinite(other_in), stop_short, np.inf)),
        )
        return out

    need = np.minimum(way_out(enter_a, speed_a, t_in_b, t_out_b), way_out(enter_b, speed_b, t_in_a, t_out_a))
    out: FloatArray = np.where((leave_a <= 0) | (leave_b <= 0) | ~np.isfinite(need), 0.0, np.maximum(need, 0.0))
    return out


def _braking(accel: FloatArray) -> FloatArray:
    """The deceleration a crossing's arrival times use: none below ``BRAKE_DEADBAND_MPS2`` (a tracker's speed
    noise would only ever delay arrivals, hiding conflicts), at most ``MAX_BRAKE_MPS2``."""
    out: FloatArray = np.where(accel <= -BRAKE_DEADBAND_MPS2, np.maximum(accel, -MAX_BRAKE_MPS2), 0.0)
    return out


def _arrival(distance: FloatArray, speed: FloatArray, brake: FloatArray) -> FloatArray:
    """Seconds to cover ``distance`` (0 if already past) from ``speed`` slowing at ``brake`` (<= 0); inf if it
    stops first."""
    with np.errstate(divide="ignore", invalid="ignore"):
        plain = np.where(speed > 0, distance / speed, np.inf)
        disc = speed**2 + 2 * brake * distance
        braking = np.where(disc >= 0, (speed - np.sqrt(np.maximum(disc, 0.0))) / -brake, np.inf)
    out: FloatArray = np.where(distance <= 0, 0.0, np.where(brake < 0, braking, plain))
    return out


def _extended(
    p: FloatArray, h: FloatArray, speed: FloatArray, margin: FloatArray, steps: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Predicted centres with a point ``margin`` behind the first and one ``margin`` past the last (along the
    headings there, so a road user standing still has a path too), and the distance along the path of each
    (0 at the centre now)."""
    u0 = np.stack([np.cos(h[:, 0]), np.sin(h[:, 0])], axis=1)
    u1 = np.stack([np.cos(h[:, -1]), np.sin(h[:, -1])], axis=1)
    before = p[:, 0] - u0 * margin[:, None]
    after = p[:, -1] + u1 * margin[:, None]
    pts = np.concatenate([before[:, None], p, after[:, None]], axis=1)
    along = np.concatenate(
        [-margin[:, None], speed[:, None] * steps[None, :], (speed * steps[-1] + margin)[:, None]], axis=1
    )
    return pts, along


def _first_overlap(
    pa: FloatArray, ha: FloatArray, ea: FloatArray, pb: FloatArray, hb: FloatArray, eb: FloatArray, steps: FloatArray
) -> FloatArray:
    overlap = _overlap(pa, ha, ea, pb, hb, eb)  # (N, K)
    first = np.where(overlap.any(axis=1), overlap.argmax(axis=1), -1)
    out: FloatArray = np.where(first >= 0, steps[np.maximum(first, 0)], np.inf)
    return out


def _arc(m: Motion, steps: FloatArray, turn_left: FloatArray | None = None) -> tuple[FloatArray, FloatArray]:
    """Positions (N, K, 2) and headings (N, K) along constant-turn-rate arcs, straight on once each has turned
    its ``turn_left`` (rad; no limit without)."""
    pos, speed, head, yaw, _ = m
    turning = np.abs(yaw) > 1e-6
    safe = np.where(turning, yaw, 1.0)
    ends = np.full(len(yaw), np.inf) if turn_left is None else np.where(turning, turn_left / np.abs(safe), np.inf)
    tau = np.minimum(steps[None, :], ends[:, None])  # (N, K): the time spent turning
    straight_on = steps[None, :] - tau
    theta = head[:, None] + yaw[:, None] * tau
    dx = np.where(
        turning[:, None],
        speed[:, None] / safe[:, None] * (np.sin(theta) - np.sin(head)[:, None]),
        speed[:, None] * np.cos(head)[:, None] * tau,
    )
    dy = np.where(
        turning[:, None],
        -speed[:, None] / safe[:, None] * (np.cos(theta) - np.cos(head)[:, None]),
        speed[:, None] * np.sin(head)[:, None] * tau,
    )
    dx = dx + speed[:, None] * straight_on * np.cos(theta)
    dy = dy + speed[:, None] * straight_on * np.sin(theta)
    return np.stack([pos[:, None, 0] + dx, pos[:, None, 1] + dy], axis=2), theta


def _overlap(
    pa: FloatArray, ha: FloatArray, ea: FloatArray, pb: FloatArray, hb: FloatArray, eb: FloatArray
) -> npt.NDArray[np.bool_]:
    """Whether rectangles overlap, (N, K): the separating axis test at each sampled pose."""
    ua = np.stack([np.cos(ha), np.sin(ha)], axis=-1)
    ub = np.stack([np.cos(hb), np.sin(hb)], axis=-1)
    na = np.stack([-ua[..., 1], ua[..., 0]], axis=-1)
    nb = np.stack([-ub[..., 1], ub[..., 0]], axis=-1)
    d = pb - pa
    la, wa = ea[:, None, 0:1] / 2, ea[:, None, 1:2] / 2
    lb, wb = eb[:, None, 0:1] / 2, eb[:, None, 1:2] / 2
    separated = np.zeros(ha.shape, dtype=bool)
    for axis in (ua, na, ub, nb):
        r = (
            la[..., 0] * np.abs((ua * axis).sum(-1))
            + wa[..., 0] * np.abs((na * axis).sum(-1))
            + lb[..., 0] * np.abs((ub * axis).sum(-1))
            + wb[..., 0] * np.abs((nb * axis).sum(-1))
        )
        separated |= np.abs((d * axis).sum(-1)) > r
    out: npt.NDArray[np.bool_] = ~separated
    return out


@dataclass
class _Path:
    #: (t, x, y, speed, half-length) per sample, oldest first
    points: deque[tuple[float, float, float, float, float]] = field(default_factory=deque)
    width: float = 0.0
    kind: str | None = None


@dataclass(frozen=True)
class Encroachment:
    """Two paths crossed: who passed the crossing first, and the PET between them."""

    first: int
    second: int
    pair: str
    pet_s: float
    #: When the second road user reached the conflict area (s), and where (m).
    at: float
    x: float
    y: float


class PathHistory:
    """The last ``window_s`` of each road user's path, for post-encroachment time.

    PET (Allen et al. 1978) is the time from the first road user leaving the area where the
    two paths cross to the second one entering it. Each frame's new path segments are tested
    against every recent segment of the other users in one vectorised pass; a crossing at more
    than ``PET_MIN_ANGLE_DEG`` gives the two passage times, and each passage is widened by the
    time the road user's own body takes to clear the other's path (half its length plus half
    the other's width over the crossing's sine, at its speed there).
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._paths: dict[int, _Path] = {}
        self._seen: set[tuple[int, int, int, int]] = set()

    def forget(self, track_id: int) -> None:
        self._paths.pop(track_id, None)

    def add(self, t: float, users: list[RoadUser]) -> list[Encroachment]:
        """Record each user's position at ``t``; the crossings completed by these new segments."""
        moved: list[int] = []
        for user in users:
            path = self._paths.setdefault(user.track_id, _Path())
            path.width, path.kind = user.width, user.kind
            if path.points and t <= path.points[-1][0]:
                continue
            path.points.append((t, user.x, user.y, user.speed, user.length / 2))
            while path.points and path.points[0][0] < t - self.window_s:
                path.points.popleft()
            if len(path.points) >= 2 and path.kind is not None:
                moved.append(user.track_id)
        found = self._crossings(moved) if moved else []
        for track_id in [k for k, p in self._paths.items() if not p.points or p.points[-1][0] < t - self.window_s]:
            del self._paths[track_id]
        oldest = round((t - 2 * self.window_s) * 100)
        self._seen = {key for key in self._seen if min(key[2], key[3]) >= oldest}
        return found

    def _crossings(self, moved: list[int]) -> list[Encroachment]:
        owners: list[int] = []
        rows: list[tuple[float, float, float, float, float]] = []
        nexts: list[tuple[float, float, float, float, float]] = []
        for track_id, path in self._paths.items():
            if path.kind is None or len(path.points) < 2:
                continue
            pts = list(path.points)
            rows.extend(pts[:-1])
            nexts.extend(pts[1:])
            owners.extend([track_id] * (len(pts) - 1))
        if not rows:
            return []
        seg0, seg1 = np.array(rows), np.array(nexts)  # (M, 5): segment starts and ends
        owner = np.array(owners)
        out: list[Encroachment] = []
        for track_id in moved:
            mine = self._paths[track_id]
            a0, a1 = mine.points[-2], mine.points[-1]
            others = owner != track_id
            candidates = np.flatnonzero(others)
            hits = _segment_hits(np.array(a0[1:3]), np.array(a1[1:3]), seg0[candidates, 1:3], seg1[candidates, 1:3])
            for k_local, u, w in hits:
                k = int(candidates[k_local])
                other_id = int(owner[k])
                other = self._paths[other_id]
                if frozenset({mine.kind, other.kind}) not in CONFLICT_PAIRS or mine.kind is None or other.kind is None:
                    continue
                enc = self._encroachment(track_id, mine, a0, a1, u, other_id, other, seg0[k], seg1[k], w)
                if enc is not None:
                    out.append(enc)
        return out

    def _encroachment(
        self,
        track_id: int,
        mine: _Path,
        a0: tuple[float, float, float, float, float],
        a1: tuple[float, float, float, float, float],
        u: float,
        other_id: int,
        other: _Path,
        b0: FloatArray,
        b1: FloatArray,
        w: float,
    ) -> Encroachment | None:
        mine_at, other_at = round(a0[0] * 100), round(float(b0[0]) * 100)
        key = (
            (track_id, other_id, mine_at, other_at) if track_id < other_id else (other_id, track_id, other_at, mine_at)
        )
        if key in self._seen:
            return None
        mine_dir = np.array([a1[1] - a0[1], a1[2] - a0[2]])
        other_dir = b1[1:3] - b0[1:3]
        norms = float(np.linalg.norm(mine_dir) * np.linalg.norm(other_dir))
        if norms == 0.0:
            return None
        sine = abs(float(mine_dir[0] * other_dir[1] - mine_dir[1] * other_dir[0])) / norms
        if sine < math.sin(math.radians(PET_MIN_ANGLE_DEG)):
            return None
        self._seen.add(key)
        ta = a0[0] + u * (a1[0] - a0[0])
        tb = float(b0[0] + w * (b1[0] - b0[0]))
        va = a0[3] + u * (a1[3] - a0[3])
        vb = float(b0[3] + w * (b1[3] - b0[3]))
        if min(va, vb) < PET_MIN_SPEED or max(va, vb) < PET_MIN_MOVER_SPEED:
            # a crawling track's path is its box's jitter; two road users at walking pace are no conflict
            return None
        clear_a = (a1[4] + other.width / (2 * sine)) / va
        clear_b = (float(b0[4]) + mine.width / (2 * sine)) / vb
        if ta <= tb:
            first, second, pet, at = track_id, other_id, (tb - clear_b) - (ta + clear_a), tb - clear_b
        else:
            first, second, pet, at = other_id, track_id, (ta - clear_a) - (tb + clear_b), ta - clear_a
        return Encroachment(
            first=first,
            second=second,
            pair=pair_name(mine.kind or "", other.kind or ""),
            pet_s=max(pet, 0.0),
            at=at,
            x=a0[1] + u * (a1[1] - a0[1]),
            y=a0[2] + u * (a1[2] - a0[2]),
        )


def _segment_hits(p0: FloatArray, p1: FloatArray, q0: FloatArray, q1: FloatArray) -> list[tuple[int, float, float]]:
    """Where segment p0-p1 crosses each of the segments q0[k]-q1[k]: (k, fraction on p, fraction on q)."""
    ok, u, w, _ = _crossings(p0[None, :], p1[None, :], q0, q1)
    return [(int(k), float(u[k]), float(w[k])) for k in np.flatnonzero(ok)]


def _crossings(
    p0: FloatArray, p1: FloatArray, q0: FloatArray, q1: FloatArray
) -> tuple[npt.NDArray[np.bool_], FloatArray, FloatArray, FloatArray]:
    """Whether segments p0-p1 cross segments q0-q1 (points (..., 2), broadcast against each other), where (the
    fraction along each) and the sine of the angle between them."""
    r, s = p1 - p0, q1 - q0
    denom = r[..., 0] * s[..., 1] - r[..., 1] * s[..., 0]
    qp = q0 - p0
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (qp[..., 0] * s[..., 1] - qp[..., 1] * s[..., 0]) / denom
        w = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / denom
        sine = np.abs(denom) / (np.hypot(r[..., 0], r[..., 1]) * np.hypot(s[..., 0], s[..., 1]))
    hit = (np.abs(denom) > 1e-12) & (u >= 0) & (u < 1) & (w >= 0) & (w < 1)
    return hit, u, w, sine


class GroundState(NamedTuple):
    """A road user's smoothed state on the ground."""

    x: float
    y: float
    vx: float
    vy: float
    heading: float
    #: rad/s, counter-clockwise; 0 unless the heading turned by more than noise over the last second
    yaw_rate: float
    #: m/s^2, the speed's change over the last second
    accel: float = 0.0
    #: rad, signed: the heading's change since it last held steady (how far the turn under way has gone)
    turned: float = 0.0


#: A turn or a change of speed is read from the positions' curvature only when it stands this many standard
#: deviations of the position noise clear of it (see :class:`GroundTrack`).
CURVATURE_SIGMAS = 3.0
#: A heading that turned less than STEADY_RAD over the last STEADY_M metres driven is where the next turn starts
#: from: by distance, not time, since a car creeping on through a turn turns little in a second.
STEADY_M = 5.0
STEADY_RAD = 0.1


class Kinematics(NamedTuple):
    """Recent positions fitted at constant acceleration, at the newest time: position, velocity, acceleration."""

    x: float
    y: float
    vx: float
    vy: float
    ax: float
    ay: float
    #: the standard deviation of each acceleration component per metre of position noise
    accel_sd: float


def quadratic_fit(samples: Sequence[tuple[float, float, float]], t: float) -> Kinematics | None:
    """The ``(t, x, y)`` samples' least-squares constant-acceleration fit, read at ``t``; None for fewer than
    three samples (or all at one time)."""
    n = len(samples)
    if n < 3:
        return None
    mean = sum(s[0] - t for s in samples) / n
    taus = [s[0] - t - mean for s in samples]  # centred: sum(taus) == 0
    s2 = sum(u * u for u in taus)
    s3 = sum(u**3 for u in taus)
    s4 = sum(u**4 for u in taus)
    det = n * (s2 * s4 - s3 * s3) - s2**3  # of the normal matrix [[n, 0, s2], [0, s2, s3], [s2, s3, s4]]
    if det <= 1e-12:
        return None
    fitted = []
    for k in (1, 2):
        z0 = sum(s[k] for s in samples)
        z1 = sum(u * s[k] for u, s in zip(taus, samples, strict=True))
        z2 = sum(u * u * s[k] for u, s in zip(taus, samples, strict=True))
        d0 = (z0 * (s2 * s4 - s3 * s3) + s2 * (z1 * s3 - s2 * z2)) / det
        d1 = (n * (z1 * s4 - s3 * z2) + z0 * s2 * s3 - s2 * s2 * z1) / det
        d2 = (n * (s2 * z2 - z1 * s3) - z0 * s2 * s2) / det
        fitted.append((d0, d1, d2))
    (x0, x1, x2), (y0, y1, y2) = fitted
    at = -mean  # the newest time on the centred axis
    return Kinematics(
        x0 + x1 * at + x2 * at * at,
        y0 + y1 * at + y2 * at * at,
        x1 + 2 * x2 * at,
        y1 + 2 * y2 * at,
        2 * x2,
        2 * y2,
        2 * math.sqrt(n * s2 / det),  # twice the square root of the normal matrix's inverse at (2, 2)
    )


@dataclass
class GroundTrack:
    """A road user's recent ground positions, smoothed into a position, a velocity, a heading and a turn rate.

    A camera gives positions only, with noise of a pixel or two that becomes decimetres far
    from it; differencing two frames at 2 fps turns that into m/s of noise. A least-squares
    line through the positions of the last ``window_s`` seconds gives the velocity, and its
    value at the newest time the position; the heading follows the velocity while the road user
    moves faster than ``HEADING_MIN_SPEED`` and holds still otherwise (a queued car keeps
    pointing down its lane); the speed is moved on to now by the acceleration over the last
    ``turn_window_s`` (the fit's own lag is half its window). The yaw rate is the heading's change over that time,
    kept only past ``MIN_YAW_RATE`` (below it, a straight road's noise) and capped at
    ``MAX_YAW_RATE`` (a tight urban turn).

    The line's heading is half a window old, which in a turn at 2 fps is 15-30 degrees: a car
    leaving a junction was predicted across the lane beside it. So a constant-acceleration fit
    (:func:`quadratic_fit`) is read at the newest time where the positions bend beyond their noise
    (``noise_m``, which the caller knows: a pixel's ground grows with the distance from the camera),
    each way on its own, by ``CURVATURE_SIGMAS`` standard deviations: across the line, for the
    heading and the turn rate now; along it, for the speed and acceleration now. Far from a camera
    neither test passes and the line stands: its lag is the lesser harm there. A fit whose velocity
    now points back against the line's has braked through a standstill (the parabola goes on past
    the stop): the line stands, its speed clamped at zero, not a reversing car.
    ``turned`` is the heading's change since it last held steady (within ``STEADY_RAD`` over the
    last ``STEADY_M`` driven): the turn so far, kept while the road user stops or creeps in it (a
    left turner yielding), which ends a predicted turn (``MAX_TURN_RAD``).
    """

    window_s: float = 1.0
    turn_window_s: float = 1.0
    samples: deque[tuple[float, float, float]] = field(default_factory=deque)
    headings: deque[tuple[float, float]] = field(default_factory=deque)
    speeds: deque[tuple[float, float]] = field(default_factory=deque)
    heading: float = 0.0
    heading_known: bool = False
    #: the heading when it last held steady: where the turn under way began
    steady_heading: float | None = None
    #: metres driven while moving, and (metres driven, heading) over about the last STEADY_M of them
    travel: float = 0.0
    driven: deque[tuple[float, float]] = field(default_factory=deque)
    last_xy: tuple[float, float] | None = None

    def update(self, t: float, x: float, y: float, noise_m: float = 0.0) -> GroundState:
        """Add a position, measured with ``noise_m`` (1 sigma, metres); return the smoothed state."""
        while self.samples and t <= self.samples[-1][0]:  # a repeated or older time replaces what it follows
            self.samples.pop()
        self.samples.append((t, x, y))
        # at least three kept, so a camera at 1-1.5 fps, or 2 fps with jittery capture times, still has
        # the history a conflict needs (the fit then spans a little more than window_s)
        while len(self.samples) > 3 and self.samples[0][0] < t - self.window_s - 1e-9:
            self.samples.popleft()
        if len(self.samples) < 2:
            return GroundState(x, y, 0.0, 0.0, self.heading, 0.0)
        line = self._line(t, noise_m)
        moving = math.hypot(line.vx, line.vy) >= HEADING_MIN_SPEED
        state = self._bent(line, noise_m) if moving else line
        return state._replace(turned=self._turned(state.x, state.y, moving))

    def _line(self, t: float, noise_m: float = 0.0) -> GroundState:
        """The state from the line through the window's positions; its turn rate only where the heading turned
        beyond what ``noise_m`` on the positions could turn it."""
        n = len(self.samples)
        mt = sum(s[0] - t for s in self.samples) / n
        mx = sum(s[1] for s in self.samples) / n
        my = sum(s[2] for s in self.samples) / n
        stt = sum((s[0] - t - mt) ** 2 for s in self.samples)
        vx = sum((s[0] - t - mt) * (s[1] - mx) for s in self.samples) / stt
        vy = sum((s[0] - t - mt) * (s[2] - my) for s in self.samples) / stt
        bx, by = mx - vx * mt, my - vy * mt  # the fitted line at the newest time (t - t = 0)
        yaw_rate = 0.0
        speed = math.hypot(vx, vy)
        if speed >= HEADING_MIN_SPEED:
            self.heading = math.atan2(vy, vx)
            self.heading_known = True
            self.headings.append((t, self.heading))
            while len(self.headings) > 2 and self.headings[0][0] < t - self.turn_window_s - 1e-9:
                self.headings.popleft()
            t0, h0 = self.headings[0]
            if t - t0 > 0.25:
                change = math.remainder(self.heading - h0, math.tau)
                turned = change / (t - t0)
                # each heading is a line's, uncertain by noise / (speed * sqrt(stt)) radians: a shaky box's
                # straight drive turned by more than 0.1 rad/s in one frame of ten at 6 px and 10 fps
                noise_rad = math.sqrt(2.0) * noise_m / (speed * math.sqrt(stt))
                if abs(turned) >= MIN_YAW_RATE and abs(change) > CURVATURE_SIGMAS * noise_rad:
                    yaw_rate = max(-MAX_YAW_RATE, min(MAX_YAW_RATE, turned))
        # the fitted line's slope is the velocity at the samples' mean time, -mt seconds ago: braking,
        # the speed now differs by the acceleration over that time. (Turning the heading on by the turn
        # rate the same way overshoots every turn's end, the rate being a second old: in SUMO's grid it
        # quintupled the phantom conflicts with oncoming cars. The arcs use the rate; the heading is the fit's.)
        self.speeds.append((t + mt, speed))
        while len(self.speeds) > 2 and self.speeds[0][0] < t + mt - self.turn_window_s - 1e-9:
            self.speeds.popleft()
        (s0_at, s0), (s1_at, s1) = self.speeds[0], self.speeds[-1]
        accel = (s1 - s0) / (s1_at - s0_at) if s1_at - s0_at > 0.25 else 0.0
        now_speed = max(0.0, speed - accel * mt)
        heading = self.heading
        if speed >= HEADING_MIN_SPEED:
            vx, vy = now_speed * math.cos(heading), now_speed * math.sin(heading)
        elif speed > 0:
            # too slow to move the heading: the fit's own direction. Along the held heading, a
            # pedestrian who turned back at 0.4 m/s went on walking the old way (TTC with its sign)
            vx, vy = vx * now_speed / speed, vy * now_speed / speed
        if not (speed > 0 and self.heading_known):
            self.headings.clear()
        return GroundState(float(bx), float(by), float(vx), float(vy), heading, yaw_rate, float(accel))

    def _bent(self, line: GroundState, noise_m: float) -> GroundState:
        """The line's state, with what the constant-acceleration fit shows beyond noise read at the newest time."""
        fit = quadratic_fit(self.samples, self.samples[-1][0])
        if fit is None or not math.isfinite(noise_m):
            return line
        ux, uy = math.cos(line.heading), math.sin(line.heading)
        if fit.vx * ux + fit.vy * uy <= HEADING_MIN_SPEED:
            return line  # braked through a standstill, or too slow now to read a heading from
        limit = CURVATURE_SIGMAS * noise_m * fit.accel_sd + 1e-9
        across = ux * fit.ay - uy * fit.ax
        along = ux * fit.ax + uy * fit.ay
        turning, changing = abs(across) > limit, abs(along) > limit
        if not (turning or changing):
            return line
        speed_now = math.hypot(fit.vx, fit.vy)
        heading, yaw_rate = line.heading, line.yaw_rate
        if turning:
            heading = math.atan2(fit.vy, fit.vx)
            turn = (fit.vx * fit.ay - fit.vy * fit.ax) / speed_now**2
            if abs(turn) >= MIN_YAW_RATE:  # below it, the line's own rate (a slow car's turn is a small rate)
                yaw_rate = max(-MAX_YAW_RATE, min(MAX_YAW_RATE, turn))
            self.heading = heading
        speed, accel = math.hypot(line.vx, line.vy), line.accel
        if changing:
            speed, accel = speed_now, (fit.ax * fit.vx + fit.ay * fit.vy) / speed_now
        return GroundState(
            fit.x,
            fit.y,
            speed * math.cos(heading),
            speed * math.sin(heading),
            heading,
            yaw_rate,
            accel,
        )

    def _turned(self, x: float, y: float, moving: bool) -> float:
        """The turn under way so far (rad), from the heading when it last held steady over STEADY_M driven."""
        if not self.heading_known:
            self.steady_heading, self.last_xy = None, None
            self.driven.clear()
            return 0.0
        if self.steady_heading is None:
            self.steady_heading = self.heading
        if moving:  # standing (a left turner yielding) neither ends the turn nor starts a new one
            if self.last_xy is not None:
                self.travel += math.hypot(x - self.last_xy[0], y - self.last_xy[1])
            self.driven.append((self.travel, self.heading))
            while len(self.driven) > 2 and self.driven[1][0] <= self.travel - STEADY_M:
                self.driven.popleft()
            covered = self.travel - self.driven[0][0] >= STEADY_M
            if covered and all(abs(math.remainder(h - self.heading, math.tau)) < STEADY_RAD for _, h in self.driven):
                self.steady_heading = self.heading
        self.last_xy = (x, y)
        return math.remainder(self.heading - self.steady_heading, math.tau)
