"""Conflict measures against SUMO's SSM device, through a virtual camera, and on a real intersection.

``python -m bench.ssm [--scenarios grid_tls,grid_priority,corridor_reaction] [--fps 2]``

* ``sumo``: each scenario of :data:`sim.sumo.SCENARIOS` runs in SUMO with the SSM device on
  every vehicle; its trajectories (FCD) are replayed through :mod:`models.ssm` at the camera
  rate (positions only: velocities come from :class:`models.ssm.GroundTrack` as they would on
  a camera). ``recall``: SUMO conflicts with minimum TTC <= 1.5 s for which roadwatch flags
  the same pair within the conflict's time window (1 s either side), flagging as the engine
  does: a TTC that reaches 1.5 s before the next frame (``recall_without_lookahead``: a TTC
  at or below 1.5 s itself). ``precision``: of the pairs roadwatch flags, the share SUMO logs
  as a conflict at all (TTC < 3 s, DRAC > 3 m/s^2 or PET < 2 s) around the same time.
  ``ttc_abs_err_s_p50`` compares the minimum TTC over the window on following conflicts. The
  disagreements are sorted by reason; ``by_type`` splits the recall by SUMO's conflict type.
* ``sumo.via_camera``: the same, seen by a pinhole camera over a junction (the scenario's):
  projected to pixels, Gaussian pixel noise added, brought back by a calibration fitted from
  clicked (rounded) points; only conflicts whose two vehicles the camera sees together within a
  second of SUMO's minimum TTC count.
* ``sumo.ceiling``: what the same comparison gives the engine when told what a camera cannot
  know, to separate its estimation errors from the distance between the two definitions of a
  conflict: ``true_state`` (each vehicle's exact position, heading, speed, acceleration and turn
  rate from the FCD),
  ``true_route`` (that, and predicted along its own future path, the route SUMO knows, at its
  current speed), ``true_route_braking`` (that, slowing at its current deceleration as SUMO's
  arrival estimates do; the acceleration comes from the FCD in all three).
* ``sumo.sampling``: SUMO's own TTC series (the device's trajectories), seen only at the
  camera's frame instants: the recall of an engine that reproduced SUMO exactly but measured
  only at its frames, with and without looking a frame ahead.
* ``dlr_urban``: see :mod:`bench.dlr_urban` (the tasi wheel's real intersection).

Writes ``bench/results/ssm.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.pipeline import RESULTS, log, save
from models.calibration import fit
from models.lanes import FlowMap
from models.ssm import (
    MAX_YAW_RATE,
    MIN_YAW_RATE,
    GroundTrack,
    PathHistory,
    PathPredictor,
    RoadUser,
    Thresholds,
    pair_ttc,
)
from sim.sumo import (
    CAR_LENGTH_M,
    CAR_WIDTH_M,
    FOLLOWING_TYPES,
    SCENARIOS,
    FloatArray,
    SumoConflict,
    Trajectories,
    VirtualCamera,
    count_collisions,
    read_fcd,
    read_ssm,
    run,
)

#: SUMO's encounter type for two footprints overlapping (its own collision check).
COLLISION_TYPE = 111
#: Seconds either side of a SUMO conflict's window in which roadwatch may find it.
SLACK_S = 1.0
#: A camera is charged with a conflict when it sees both vehicles this close (s) to SUMO's minimum TTC.
VIEW_SLACK_S = 1.0
#: The FCD's positions are SUMO's rounded to the centimetre: the standard deviation of that rounding (m).
FCD_NOISE_M = 0.01 / math.sqrt(12)
#: The first seconds of a run teach the lanes (models.lanes) and are not scored.
WARMUP_S = 120.0
#: The ceiling's variants: (oracle, with each vehicle's braking).
CEILING = {
    "true_state": ("state", False),
    "true_route": ("route", False),
    "true_route_braking": ("route", True),
}


class TrueRoutes:
    """Predictions along each vehicle's own future path, which SUMO knows and a camera does not.

    Only for the ceiling replays, whose road users stand exactly at their FCD positions: a
    position names its vehicle and its place on the path. The vehicle goes on at its current speed
    (constant speed, as the engine predicts) or, with ``braking``, slowing at its current
    deceleration to a standstill (SUMO's SSM device estimates when a vehicle reaches a conflict area
    so: its acceleration clamped to <= 0); straight on past its path's end.
    """

    def __init__(self, traj: Trajectories, braking: bool = False) -> None:
        self._paths: list[tuple[FloatArray, FloatArray, FloatArray]] = []  # points, distance along, acceleration
        self._where: dict[int, tuple[int, int]] = {}  # FCD row -> (path, index on it)
        for seg in _per_vehicle(traj):
            xy = np.c_[traj.x[seg], traj.y[seg]]
            along = np.r_[0.0, np.cumsum(np.hypot(*np.diff(xy, axis=0).T))]
            acc = np.zeros(len(seg))
            if braking and len(seg) > 1:
                acc = np.minimum(np.gradient(traj.speed[seg], traj.t[seg]), 0.0)
            for i, row in enumerate(seg):
                self._where[int(row)] = (len(self._paths), i)
            self._paths.append((xy, along, acc))
        self._frame: dict[tuple[float, float], int] = {}

    def frame(self, rows: npt.NDArray[np.intp], xy: FloatArray) -> None:
        """The rows of the frame about to be measured, at their positions."""
        self._frame = {(round(float(x), 4), round(float(y), 4)): int(r) for r, (x, y) in zip(rows, xy, strict=True)}

    def predict(
        self,
        xy: FloatArray,
        heading: FloatArray,
        speed: FloatArray,
        yaw_rate: FloatArray,
        steps: FloatArray,
        turn_left: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        n, k = len(xy), len(steps)
        pos, head = np.empty((n, k, 2)), np.empty((n, k))
        for i in range(n):
            path, index = self._where[self._frame[(round(float(xy[i, 0]), 4), round(float(xy[i, 1]), 4))]]
            pts, along, acc = self._paths[path]
            want = along[index] + _distance(float(speed[i]), float(acc[index]), steps)
            beyond = np.maximum(want - along[-1], 0.0)
            pos[i, :, 0] = np.interp(want, along, pts[:, 0]) + beyond * math.cos(heading[i])
            pos[i, :, 1] = np.interp(want, along, pts[:, 1]) + beyond * math.sin(heading[i])
            ahead = np.minimum(want + 0.5, along[-1] + 0.5)
            dx = np.interp(ahead, along, pts[:, 0]) - np.interp(ahead - 1.0, along, pts[:, 0])
            dy = np.interp(ahead, along, pts[:, 1]) - np.interp(ahead - 1.0, along, pts[:, 1])
            head[i] = np.where(np.hypot(dx, dy) > 1e-6, np.arctan2(dy, dx), heading[i])
        return pos, head


@dataclass
class Replay:
    """What roadwatch's engine saw in one replay: TTC per pair over time, PET per crossing."""

    fps: float
    #: pair -> [(t, ttc)] for every sample with a finite TTC within the horizon
    ttc: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    #: pair -> [(t, pet)]
    pet: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    #: pair -> sample times at which either was on an internal (junction) lane or changed lane
    pairs_evaluated: int = 0
    frames: int = 0
    engine_s: float = 0.0

    def flagged(self, threshold: float, lookahead_s: float = 0.0) -> dict[tuple[str, str], list[float]]:
        """Pair -> the times it was flagged: its TTC at or below ``threshold`` within ``lookahead_s`` (the engine
        flags what will cross the threshold before the next frame, :func:`models.ssm.measure`)."""
        out: dict[tuple[str, str], list[float]] = {}
        for pair, series in self.ttc.items():
            times = [t for t, v in series if v - lookahead_s <= threshold]
            if times:
                out[pair] = times
        return out


def _per_vehicle(traj: Trajectories) -> list[npt.NDArray[np.intp]]:
    """The FCD's rows vehicle by vehicle, each in time order."""
    order = np.lexsort((traj.t, traj.vehicle))
    cuts = np.flatnonzero(traj.vehicle[order][1:] != traj.vehicle[order][:-1]) + 1
    return np.split(order, cuts)


def yaw_rates(traj: Trajectories) -> FloatArray:
    """Each FCD row's turn rate (rad/s), from its vehicle's heading over time, kept as the tracker keeps
    one: none below ``MIN_YAW_RATE`` (noise on a straight road), at most ``MAX_YAW_RATE``."""
    out = _rate_of_change(traj, traj.heading, unwrap=True)
    kept: FloatArray = np.where(np.abs(out) < MIN_YAW_RATE, 0.0, np.clip(out, -MAX_YAW_RATE, MAX_YAW_RATE))
    return kept


def accelerations(traj: Trajectories) -> FloatArray:
    """Each FCD row's acceleration (m/s^2), from its vehicle's speed over time."""
    return _rate_of_change(traj, traj.speed)


def _rate_of_change(traj: Trajectories, values: FloatArray, unwrap: bool = False) -> FloatArray:
    """Each FCD row's ``values`` differentiated over its vehicle's time (an angle ``unwrap``-ped first)."""
    out = np.zeros(len(traj.t))
    for seg in _per_vehicle(traj):
        if len(seg) > 1:
            out[seg] = np.gradient(np.unwrap(values[seg]) if unwrap else values[seg], traj.t[seg])
    return out


def _distance(speed: float, decel: float, steps: FloatArray) -> FloatArray:
    """Distance covered by ``steps`` seconds from ``speed``, slowing at ``decel`` (<= 0) to a standstill."""
    if decel >= 0:
        return speed * steps
    te = np.minimum(steps, speed / -decel)
    out: FloatArray = speed * te + decel * te * te / 2
    return out


def replay(
    traj: Trajectories,
    fps: float,
    *,
    camera: VirtualCamera | None = None,
    noise_px: float = 0.0,
    seed: int = 0,
    horizon_s: float = 5.0,
    learn: bool = True,
    oracle: str | None = None,
    braking: bool = False,
) -> Replay:
    """Trajectories through the engine at ``fps``, optionally as a camera sees them.

    ``oracle`` (the ceiling, no camera): ``"state"`` gives each road user its exact FCD state instead
    of the one tracked from positions; ``"route"`` also predicts it along its own future path (slowing
    at its deceleration with ``braking``).
    """
    rng = np.random.default_rng(seed)
    calib = fit(camera.clicked_points()) if camera else None
    tracks: dict[str, GroundTrack] = {}
    ids: dict[str, int] = {}
    names: dict[int, str] = {}
    paths = PathHistory(window_s=10.0)
    routes = TrueRoutes(traj, braking) if oracle == "route" else None
    true_yaw = yaw_rates(traj) if oracle is not None else None
    true_acc = accelerations(traj) if oracle is not None else None
    flow = (
        FlowMap(
            (float(traj.x.min()) - 10, float(traj.y.min()) - 10, float(traj.x.max()) + 10, float(traj.y.max()) + 10)
        )
        if learn and routes is None
        else None
    )
    lanes: PathPredictor | None = routes if routes is not None else flow
    out = Replay(fps)
    last_seen: dict[str, float] = {}
    for when, rows in traj.frames(fps):
        xy = np.c_[traj.x[rows], traj.y[rows]]
        noise = np.full(len(rows), FCD_NOISE_M)
        if camera is not None and calib is not None:
            pix, inside = camera.project(xy)
            rows, pix = rows[inside], pix[inside]
            pix = pix + rng.normal(0.0, noise_px, pix.shape)
            xy, span = calib.ground_and_span(pix)
            noise = noise_px * span
        if routes is not None:
            routes.frame(rows, xy)
        users = []
        for row, (x, y), noise_m in zip(rows, xy, noise, strict=True):
            name = str(traj.vehicle[row])
            if name not in ids:
                ids[name] = len(ids) + 1
                names[ids[name]] = name
            if last_seen.get(name, -1e9) < when - 2.0:
                tracks[name] = GroundTrack()
            last_seen[name] = when
            state = tracks[name].update(when, float(x), float(y), float(noise_m))
            heading = state.heading
            if not tracks[name].heading_known:
                heading = float(traj.heading[row]) if camera is None else heading
            if oracle is not None:
                heading, speed = float(traj.heading[row]), float(traj.speed[row])
                state = state._replace(
                    x=float(x),
                    y=float(y),
                    vx=speed * math.cos(heading),
                    vy=speed * math.sin(heading),
                    yaw_rate=float(true_yaw[row]) if true_yaw is not None else 0.0,
                    accel=float(true_acc[row]) if true_acc is not None else 0.0,
                )
            users.append(
                RoadUser(
                    ids[name],
                    "car",
                    state.x,
                    state.y,
                    state.vx,
                    state.vy,
                    heading,
                    CAR_LENGTH_M,
                    CAR_WIDTH_M,
                    state.yaw_rate,
                    state.accel,
                    state.turned,
                )
            )
        started = time.process_time()
        near = _near(users, 60.0)
        ttc = pair_ttc(near, horizon_s, lanes)
        if flow is not None and users:
            flow.learn(
                np.array([(u.x, u.y) for u in users]),
                np.array([u.heading for u in users]),
                np.array([u.speed for u in users]),
            )
        crossings = paths.add(when, users)
        out.engine_s += time.process_time() - started
        out.frames += 1
        out.pairs_evaluated += len(near) * (len(near) - 1) // 2
        for (a, b), value in ttc.items():
            if value > 0:  # footprints overlapping now are no conflict to come, as models.ssm.measure drops them
                out.ttc[_key(names[a], names[b])].append((when, value))
        for enc in crossings:
            out.pet[_key(names[enc.first], names[enc.second])].append((enc.at, enc.pet_s))
    return out


def _near(users: list[RoadUser], radius: float) -> list[RoadUser]:
    """The users with another user within ``radius`` m (SUMO's SSM device looks 50 m ahead)."""
    if len(users) < 2:
        return users
    pos = np.array([(u.x, u.y) for u in users])
    d = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    keep = d.min(axis=1) <= radius
    return [u for u, k in zip(users, keep, strict=True) if k]


def _key(a: str, b: str) -> tuple[str, str]:
    first, second = sorted((a, b))
    return first, second


def compare(
    conflicts: list[SumoConflict],
    seen: Replay,
    traj: Trajectories,
    *,
    ttc_threshold: float = 1.5,
    visible: dict[tuple[str, str], list[float]] | None = None,
    warmup_s: float = 0.0,
    lookahead_s: float = 0.0,
) -> dict[str, Any]:
    """Recall, precision and TTC error of ``seen`` against SUMO's ``conflicts``, flagging as the engine does
    (``lookahead_s`` ahead); ``recall_without_lookahead`` counts only a TTC at or below the threshold itself.

    With ``visible`` (a camera's frames of each pair seen together, :func:`visible_pairs`) only the conflicts
    whose two vehicles the camera sees together around SUMO's minimum TTC count: a pair that drives through
    the picture once is not one whose queue conflict 100 m upstream the camera could have measured."""

    def in_view(c: SumoConflict) -> bool:
        if visible is None:
            return True
        times = visible.get(c.pair, ())
        if math.isnan(c.min_ttc_time):  # no minimum logged: seen at any time in the conflict's window
            return any(c.begin - VIEW_SLACK_S <= t <= c.end + VIEW_SLACK_S for t in times)
        return any(abs(t - c.min_ttc_time) <= VIEW_SLACK_S for t in times)

    by_pair: dict[tuple[str, str], list[SumoConflict]] = defaultdict(list)
    for c in conflicts:
        by_pair[c.pair].append(c)
    # SUMO logs each conflict twice (each vehicle as ego); one per pair and window
    positives: dict[tuple[str, str, float], SumoConflict] = {}
    artefacts = {
        (*c.pair, round(c.begin)) for c in conflicts if c.min_ttc_type == COLLISION_TYPE and c.begin >= warmup_s
    }
    for c in conflicts:
        if c.min_ttc_type == COLLISION_TYPE or c.begin < warmup_s:
            continue
        if c.min_ttc <= ttc_threshold and in_view(c):
            key = (*c.pair, round(c.begin))
            if key not in positives or c.min_ttc < positives[key].min_ttc:
                positives[key] = c

    def flagged_pairs(ahead: float) -> dict[tuple[str, str], list[float]]:
        out = {p: ts for p, ts in seen.flagged(ttc_threshold, ahead).items() if ts[-1] >= warmup_s}
        return out if visible is None else {p: ts for p, ts in out.items() if p in visible}

    def logged(pair: tuple[str, str], times: list[float]) -> bool:
        """Whether SUMO logs the pair as a conflict at all around one of ``times``."""
        return any(c.begin - SLACK_S <= t <= c.end + SLACK_S for c in by_pair.get(pair, []) for t in times)

    found_now = 0
    found, missed, errors, following_errors = 0, [], [], []
    for c in positives.values():
        series = [v for t, v in seen.ttc.get(c.pair, []) if c.begin - SLACK_S <= t <= c.end + SLACK_S]
        found_now += bool(series) and min(series) <= ttc_threshold
        if series and min(series) - lookahead_s <= ttc_threshold:
            found += 1
            errors.append(abs(min(series) - c.min_ttc))
        else:
            missed.append(c)
    # car following, where a lane-keeping camera sees all SUMO knows: every following conflict SUMO logs (TTC < 3 s)
    following: dict[tuple[str, str, float], SumoConflict] = {}
    for c in conflicts:
        if c.min_ttc_type in FOLLOWING_TYPES and c.begin >= warmup_s and in_view(c):
            following.setdefault((*c.pair, round(c.begin)), c)
    following_found = 0
    for c in following.values():
        series = [v for t, v in seen.ttc.get(c.pair, []) if c.begin - SLACK_S <= t <= c.end + SLACK_S]
        if series:
            following_found += 1
            following_errors.append(abs(min(series) - c.min_ttc))
    flagged = flagged_pairs(lookahead_s)
    false_pairs = [(pair, times) for pair, times in flagged.items() if not logged(pair, times)]
    true_pairs = len(flagged) - len(false_pairs)
    reasons = _false_reasons(false_pairs, traj)
    # the same precision without looking ahead: what the look-ahead costs in pairs SUMO does not log
    strict = flagged_pairs(0.0)
    strict_true = sum(1 for pair, times in strict.items() if logged(pair, times))
    sampling = _sampling(conflicts, set(positives), seen.fps, ttc_threshold, lookahead_s)
    return {
        "sumo_conflicts_ttc_le_threshold": len(positives),
        "sumo_conflicts_from_opposite_approaches": _opposite_approaches(list(positives.values()), traj),
        "sumo_ssm_collision_artefacts_left_out": len(artefacts),
        "found": found,
        "recall": round(found / len(positives), 3) if positives else None,
        "found_without_lookahead": found_now,
        "recall_without_lookahead": round(found_now / len(positives), 3) if positives else None,
        "flagged_pairs": len(flagged),
        "flagged_pairs_sumo_logs": true_pairs,
        "precision": round(true_pairs / len(flagged), 3) if flagged else None,
        "flagged_pairs_without_lookahead": len(strict),
        "flagged_pairs_sumo_logs_without_lookahead": strict_true,
        "precision_without_lookahead": round(strict_true / len(strict), 3) if strict else None,
        "ttc_abs_err_s_p50": _pct(errors, 50),
        "ttc_abs_err_s_p90": _pct(errors, 90),
        "by_type": {
            name: {
                "sumo": sum(1 for c in positives.values() if _type_name(c.min_ttc_type) == name),
                "missed": sum(1 for c in missed if _type_name(c.min_ttc_type) == name),
            }
            for name in sorted({_type_name(c.min_ttc_type) for c in positives.values()})
        },
        "following": {
            "sumo_conflicts_ttc_lt_3s": len(following),
            "found_with_finite_ttc": following_found,
            "ttc_abs_err_s_p50": _pct(following_errors, 50),
            "ttc_abs_err_s_p90": _pct(following_errors, 90),
            "errors": following_errors,
        },
        "false_positive_reasons": reasons,
        "sampling": sampling,
    }


def _sampling(
    conflicts: list[SumoConflict], keys: set[tuple[str, str, float]], fps: float, threshold: float, lookahead_s: float
) -> dict[str, Any] | None:
    """What SUMO's own TTC, seen only at the camera's frame instants, finds of ``keys`` (the positives): the most
    any engine measuring at those instants can, with and without looking ``lookahead_s`` ahead. None when SUMO
    logged no TTC series."""
    lowest: dict[tuple[str, str, float], float] = {}
    logged = False
    for c in conflicts:
        key = (*c.pair, round(c.begin))
        if key not in keys or not c.ttc_series:
            continue
        logged = True
        at_frames = [v for t, v in c.ttc_series if abs(t * fps - round(t * fps)) < 1e-6]
        if at_frames:
            lowest[key] = min(lowest.get(key, math.inf), min(at_frames))
    if not logged:
        return None
    now = sum(1 for v in lowest.values() if v <= threshold)
    ahead = sum(1 for v in lowest.values() if v - lookahead_s <= threshold)
    return {
        "fps": fps,
        "positives": len(keys),
        "found_at_frames": now,
        "recall_ceiling": round(now / len(keys), 3) if keys else None,
        "found_looking_ahead": ahead,
        "recall_ceiling_looking_ahead": round(ahead / len(keys), 3) if keys else None,
    }


def _opposite_approaches(conflicts: list[SumoConflict], traj: Trajectories) -> int:
    """How many of ``conflicts`` are between vehicles that came from opposite directions (headings a second
    before SUMO's minimum TTC more than 150 degrees apart): a crossing between them is a left turn's."""
    wanted = {v for c in conflicts for v in c.pair}
    heading: dict[tuple[str, float], float] = {}
    for row in np.flatnonzero(np.isin(traj.vehicle, list(wanted))):
        heading[(str(traj.vehicle[row]), round(float(traj.t[row]), 1))] = float(traj.heading[row])
    count = 0
    for c in conflicts:
        at = round(c.min_ttc_time - 1.0, 1)
        a, b = heading.get((c.ego, at)), heading.get((c.foe, at))
        if a is not None and b is not None and abs(math.remainder(a - b, math.tau)) > math.radians(150):
            count += 1
    return count


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for item in items:
        out[item] += 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


_TYPE_NAMES = {
    1: "following",
    2: "following",
    3: "following",
    4: "adjacent_lanes",
    5: "merging",
    6: "merging",
    7: "merging",
    8: "merging",
    9: "crossing",
    10: "crossing",
    11: "crossing",
    12: "in_conflict_area",
    13: "in_conflict_area",
    14: "in_conflict_area",
    15: "left_conflict_area",
    16: "left_conflict_area",
    17: "left_conflict_area",
    18: "following_passed",
    19: "merging_passed",
    20: "oncoming",
    COLLISION_TYPE: "collision",
}


def _type_name(code: int) -> str:
    return _TYPE_NAMES.get(code, f"type_{code}")


def _false_reasons(false_pairs: list[tuple[tuple[str, str], list[float]]], traj: Trajectories) -> dict[str, int]:
    """Why roadwatch flagged a pair SUMO did not log, from what the two vehicles were doing at the time."""
    index: dict[tuple[str, float], tuple[str, float, float]] = {}
    wanted = {v for pair, _ in false_pairs for v in pair}
    for row in np.flatnonzero(np.isin(traj.vehicle, list(wanted))):
        index[(str(traj.vehicle[row]), round(float(traj.t[row]), 1))] = (
            str(traj.lane[row]),
            float(traj.heading[row]),
            float(traj.speed[row]),
        )
    reasons = []
    for (a, b), times in false_pairs:
        t = times[0]
        sa, sb = index.get((a, round(t, 1))), index.get((b, round(t, 1)))
        before_a, before_b = index.get((a, round(t - 1.0, 1))), index.get((b, round(t - 1.0, 1)))
        if sa is None or sb is None:
            reasons.append("unknown")
            continue
        turn = abs(math.remainder(sa[1] - sb[1], math.tau))
        if (before_a and before_a[0] != sa[0] and not sa[0].startswith(":") and not before_a[0].startswith(":")) or (
            before_b and before_b[0] != sb[0] and not sb[0].startswith(":") and not before_b[0].startswith(":")
        ):
            reasons.append("lane_change")
        elif sa[0].startswith(":") or sb[0].startswith(":"):
            reasons.append("turning_in_junction" if turn > math.radians(20) else "in_junction")
        elif turn > math.radians(150):
            reasons.append("oncoming")
        elif sa[0] == sb[0]:
            reasons.append("same_lane_braking")
        else:
            reasons.append("other")
    return _count(reasons)


def pet_compare(conflicts: list[SumoConflict], seen: Replay, pet_threshold: float = 2.0) -> dict[str, Any]:
    """SUMO's crossing PETs under ``pet_threshold`` against roadwatch's from the driven paths."""
    positives: dict[tuple[str, str, float], SumoConflict] = {}
    for c in conflicts:
        if c.pet <= pet_threshold and c.min_ttc_type != COLLISION_TYPE:
            positives.setdefault((*c.pair, round(c.pet_time)), c)
    found, errors = 0, []
    for c in positives.values():
        near = [v for t, v in seen.pet.get(c.pair, []) if abs(t - c.pet_time) <= 3.0]
        if near:
            best = min(near, key=lambda v: abs(v - c.pet))
            errors.append(abs(best - c.pet))
            if best <= pet_threshold + 0.5:
                found += 1
    return {
        "sumo_pet_le_threshold": len(positives),
        "found": found,
        "recall": round(found / len(positives), 3) if positives else None,
        "pet_abs_err_s_p50": _pct(errors, 50),
    }


def visible_pairs(traj: Trajectories, camera: VirtualCamera, fps: float) -> dict[tuple[str, str], list[float]]:
    """The frames (times) at which the camera sees each pair together."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for when, rows in traj.frames(fps):
        _, inside = camera.project(np.c_[traj.x[rows], traj.y[rows]])
        names = sorted(str(v) for v in traj.vehicle[rows][inside])
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                out[a, b].append(when)
    return dict(out)


def run_scenario(name: str, workdir: Path, fps: float, noise_px: float) -> dict[str, Any]:
    scenario = SCENARIOS[name]
    started = time.monotonic()
    fcd, ssm_log = run(scenario, workdir / name)
    traj = read_fcd(fcd)
    conflicts = read_ssm(ssm_log)
    log(f"{name}: SUMO {time.monotonic() - started:.0f} s, {len(conflicts)} conflicts logged, {len(traj.t)} FCD rows")
    seen = replay(traj, fps)
    ahead = 1.0 / fps  # the engine looks one frame ahead (models.ssm.measure)
    result = compare(conflicts, seen, traj, warmup_s=WARMUP_S, lookahead_s=ahead)
    result["pet"] = pet_compare(conflicts, seen)
    result["sumo_collisions_reported"] = count_collisions(workdir / name)
    result["pairs_per_s"] = round(seen.pairs_evaluated / seen.engine_s) if seen.engine_s else None
    camera = VirtualCamera(target=scenario.camera_target, yaw=scenario.camera_yaw)
    seen_cam = replay(traj, fps, camera=camera, noise_px=noise_px, seed=scenario.seed)
    cam = compare(
        conflicts, seen_cam, traj, visible=visible_pairs(traj, camera, fps), warmup_s=WARMUP_S, lookahead_s=ahead
    )
    cam["noise_px"] = noise_px
    cam["calibration_rms_m"] = round(fit(camera.clicked_points()).rms_error_m, 3)
    result["via_camera"] = cam
    result["ceiling"] = {}
    for variant, (oracle, braking) in CEILING.items():
        told = replay(traj, fps, oracle=oracle, braking=braking)
        found = compare(conflicts, told, traj, warmup_s=WARMUP_S, lookahead_s=ahead)
        result["ceiling"][variant] = {
            k: found[k]
            for k in ("found", "sumo_conflicts_ttc_le_threshold", "recall", "flagged_pairs_sumo_logs", "flagged_pairs")
        } | {"precision": found["precision"], "false_positive_reasons": found["false_positive_reasons"]}
    result["duration_s"] = scenario.duration_s
    log(
        f"{name}: recall {result['recall']} precision {result['precision']}; "
        f"via camera {cam['recall']} / {cam['precision']}"
    )
    return result


def summarise(per_scenario: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Totals over the scenarios: the acceptance figures."""

    def nodes(path: tuple[str, ...]) -> list[dict[str, Any]]:
        """Each scenario's result at ``path``."""
        out = []
        for res in per_scenario.values():
            node = res
            for p in path:
                node = node[p]
            out.append(node)
        return out

    def total(path: tuple[str, ...], key: str) -> int:
        return sum(int(node[key]) for node in nodes(path))

    def ratio(path: tuple[str, ...], num: str, den: str) -> float | None:
        d = total(path, den)
        return round(total(path, num) / d, 3) if d else None

    def by_type(path: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """Recall by SUMO's conflict type over the scenarios: following and crossing are different problems."""
        sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for node in nodes(path):
            for name, counts in node["by_type"].items():
                sums[name][0] += counts["sumo"]
                sums[name][1] += counts["missed"]
        return {
            name: {"sumo": n, "found": n - missed, "recall": round((n - missed) / n, 3) if n else None}
            for name, (n, missed) in sorted(sums.items())
        }

    return {
        "sumo_conflicts_ttc_le_threshold": total((), "sumo_conflicts_ttc_le_threshold"),
        "by_type": by_type(()),
        "sumo_conflicts_from_opposite_approaches": total((), "sumo_conflicts_from_opposite_approaches"),
        "recall": ratio((), "found", "sumo_conflicts_ttc_le_threshold"),
        "recall_without_lookahead": ratio((), "found_without_lookahead", "sumo_conflicts_ttc_le_threshold"),
        "precision": ratio((), "flagged_pairs_sumo_logs", "flagged_pairs"),
        "precision_without_lookahead": ratio(
            (), "flagged_pairs_sumo_logs_without_lookahead", "flagged_pairs_without_lookahead"
        ),
        "sampling": {
            "recall_ceiling": ratio(("sampling",), "found_at_frames", "positives"),
            "recall_ceiling_looking_ahead": ratio(("sampling",), "found_looking_ahead", "positives"),
        },
        "via_camera": {
            "recall": ratio(("via_camera",), "found", "sumo_conflicts_ttc_le_threshold"),
            "precision": ratio(("via_camera",), "flagged_pairs_sumo_logs", "flagged_pairs"),
            "by_type": by_type(("via_camera",)),
        },
        "ceiling": {
            variant: {
                "recall": ratio(("ceiling", variant), "found", "sumo_conflicts_ttc_le_threshold"),
                "precision": ratio(("ceiling", variant), "flagged_pairs_sumo_logs", "flagged_pairs"),
            }
            for variant in CEILING
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ssm", description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--fps", type=float, default=2.0, help="camera analysis rate the trajectories are sampled at")
    parser.add_argument("--noise-px", type=float, default=1.0, help="pixel noise of the virtual camera (sigma)")
    parser.add_argument("--out", type=Path, default=RESULTS / "ssm.json")
    args = parser.parse_args(argv)
    th = Thresholds()
    with tempfile.TemporaryDirectory(prefix="roadwatch-sumo-") as tmp:
        per = {name: run_scenario(name, Path(tmp), args.fps, args.noise_px) for name in args.scenarios.split(",")}
    sumo: dict[str, Any] = {
        "fps": args.fps,
        "ttc_threshold_s": th.ttc_s,
        **summarise(per),
        "ttc_abs_err_s_p50": _pct([e for r in per.values() for e in r["following"]["errors"]], 50),
        "scenarios": per,
    }
    for r in per.values():
        r["following"].pop("errors")
        r["via_camera"]["following"].pop("errors")
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report["sumo"] = sumo
    save(args.out, report)


if __name__ == "__main__":
    main()
