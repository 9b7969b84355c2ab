"""Which traffic groups are worth a VLM call: the task generator's decisions, as pure functions.

A group becomes a task when it is new, has changed materially (the pedestrian-vehicle gap shrank
by a fraction), or its last assessment is older than the refresh period; then only if the
camera's token bucket has a token. Kept free of Faust so that it is unit-tested directly and
replayed by the economy benchmark (``bench/economy.py``).

What is "new" follows the risk, not the track set: a group with pedestrians and vehicles is new
only when it holds a (pedestrian, vehicle) pair not assessed within the refresh period, so a
third car driving up to an assessed pedestrian-car pair costs a call, while the same pair
re-clustered with a parked bus does not. Groups without a pedestrian near a vehicle (vehicle
clusters, lone road users) and measured vehicle-vehicle conflicts may only spend tokens above a
reserve of ``RESERVE`` of the burst, so that they never empty the bucket a pedestrian stepping
out will need a moment later.

The per-camera state is a plain JSON dict that lives in the ``camera_state`` table; its shape is
:class:`streams.table_values.CameraState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from models.geometry import VEHICLES, box_gap
from streams.records import Conflict, DetectionResult, TaskReason, TrafficGroup, risk_rank
from streams.table_values import CameraState, SeenConflict

#: A gap that shrank to this fraction of the assessed one counts as a material change.
GAP_SHRINK = 0.7
#: So does a gap that crossed into one pedestrian height (within reach of the vehicle).
DANGER_GAP = 1.0
#: Frames whose decisions are remembered, so a redelivered frame makes the same tasks again.
RECENT_FRAMES = 64
#: A (pedestrian, vehicle) pair further apart than this many pedestrian heights is no risk pair
#: (the grouping's reach, models.grouping.cluster).
PAIR_REACH = 1.5
#: Groups at or above this interest have a pedestrian near a vehicle (see models.grouping).
RISK_INTEREST = 0.6
#: Earlier producer runs of a camera whose redelivered frames are still recognised.
EARLIER_RUNS = 3
#: Share of the burst that only risk groups may spend.
RESERVE = 0.8


@dataclass(frozen=True)
class Budget:
    """Task generation parameters (from Settings)."""

    refresh_s: float
    per_min: float
    burst: float
    min_interest: float


@dataclass(frozen=True)
class Decision:
    """A group to assess and why (new, changed, refresh, conflict), with the conflict that made it."""

    group: TrafficGroup
    reason: TaskReason
    conflict: Conflict | None = None


@dataclass(frozen=True)
class MeasuredAlert:
    """A conflict severe enough to alert on before the VLM answers, and the group it is in ("" if none)."""

    conflict: Conflict
    group_id: str


#: The group id of a measured conflict no group holds (a road user already out of view): no task,
#: no crop, so no VLM verdict will ever come for its alert.
UNGROUPED = "conflict-"


def conflict_key(conflict: Conflict) -> str:
    return f"{min(conflict.a, conflict.b)}~{max(conflict.a, conflict.b)}"


def conflicts_by_group(det: DetectionResult) -> dict[str, Conflict]:
    """Each group's most urgent measured conflict between two of its members (conflicts come most urgent first)."""
    out: dict[str, Conflict] = {}
    for conflict in det.conflicts or []:
        for group in det.groups:
            if group.group_id not in out and conflict.a in group.track_ids and conflict.b in group.track_ids:
                out[group.group_id] = conflict
                break
    return out


def measured_alerts(
    st: CameraState, det: DetectionResult, now_s: float, level: str, cooldown_s: float
) -> list[MeasuredAlert]:
    """The conflicts of ``det`` at or above ``level`` that raise a measured alert now, recorded in ``st``.

    One alert per pair of road users within ``cooldown_s``, unless its level rises: the VLM's
    answer to the group's task then confirms, escalates or downgrades that alert.
    """
    seen = st.setdefault("conflicts", {})
    frame = frame_key(det)
    out = []
    for conflict in det.conflicts or []:
        key = conflict_key(conflict)
        entry = seen.setdefault(key, _new_conflict(now_s))
        entry["last"] = now_s
        if risk_rank(conflict.level) < risk_rank(level):
            continue
        recent = now_s - entry["alert_at"] < cooldown_s
        if recent and risk_rank(conflict.level) <= risk_rank(entry["alert_level"]):
            if entry.get("alert_frame") == frame:
                # the frame that raised it, read again (its result's send failed, or the worker
                # died after the state was written): raised again under the same task id, which
                # the aggregator drops if the first one got through; silenced, it was lost
                out.append(MeasuredAlert(conflict, group_holding(det, conflict)))
            continue
        entry["alert_at"], entry["alert_level"], entry["alert_frame"] = now_s, conflict.level, frame
        out.append(MeasuredAlert(conflict, group_holding(det, conflict)))
    return out


def conflict_interest(conflict: Conflict) -> float:
    """Where a conflict's task ranks among the frame's candidates: conflicts with a pedestrian or a
    cyclist first, the graver first; a vehicle-vehicle conflict below every group with a pedestrian
    near a vehicle, so it spends only tokens above the reserve (its measured alert does not need
    the VLM; queued cars in conflict after conflict emptied the bucket a pedestrian stepping out
    needed a moment later)."""
    rank = max(0, risk_rank(conflict.level))
    if conflict.pair == "vehicle-vehicle":
        return RISK_INTEREST - 0.06 + 0.01 * rank
    return 2.0 + rank


def group_holding(det: DetectionResult, conflict: Conflict) -> str:
    """The group both road users of ``conflict`` are in ("" if none): the group the VLM judges, which
    is where every conflict of it alerts (not only its most urgent one: another had no group, so
    no task, and its alert awaited a verdict that could never come)."""
    for group in det.groups:
        if conflict.a in group.track_ids and conflict.b in group.track_ids:
            return group.group_id
    return ""


def _new_conflict(now_s: float) -> SeenConflict:
    return {"task_at": 0.0, "task_level": "none", "alert_at": 0.0, "alert_level": "none", "last": now_s}


def group_key(group: TrafficGroup) -> str:
    """The dedup key: the sorted set of track ids in the group."""
    return "-".join(str(t) for t in sorted(group.track_ids))


def planned_before(st: CameraState | None, det: DetectionResult) -> bool:
    """Whether ``det`` is a frame this camera's state remembers planning (a redelivery)."""
    return st is not None and frame_key(det) in st.get("recent", {})


def alerted_from(st: CameraState | None, det: DetectionResult) -> bool:
    """Whether ``det`` is the frame that raised one of the camera's measured alerts (a redelivery)."""
    frame = frame_key(det)
    return st is not None and any(e.get("alert_frame") == frame for e in st.get("conflicts", {}).values())


def frame_key(det: DetectionResult) -> str:
    """A frame's identity in the camera's state: the producer run and the frame number."""
    return f"{det.run}:{det.frame_seq}"


def new_state() -> CameraState:
    return {
        "last_seq": -1,
        "last_at": 0.0,
        "fps": 0.0,
        "tokens": None,
        "tokens_at": 0.0,
        "groups": {},
        "pairs": {},
        "groups_seen": 0,
        "tasks_made": 0,
        "skipped": {},
    }


def risk_pairs(group: TrafficGroup, det: DetectionResult) -> dict[str, float]:
    """The group's (pedestrian, vehicle) track pairs as "p>v" keys, each with its own gap.

    Per pair, not the group's ``min_gap``: clustering is transitive, so a pedestrian next to one
    car is grouped with every car next to that car; only pairs within reach of each other count,
    and only the pair's own gap says whether *it* came closer.
    """
    objects = det.objects
    members = [objects[i] for i in group.members if 0 <= i < len(objects)]
    people = [o for o in members if o.cls == "person"]
    vehicles = [o for o in members if o.cls in VEHICLES]
    gaps = {
        f"{p.track_id}>{v.track_id}": round(box_gap(p.bbox, v.bbox) / max(1.0, p.bbox[3] - p.bbox[1]), 3)
        for p in people
        for v in vehicles
    }
    return {pair: gap for pair, gap in gaps.items() if gap <= PAIR_REACH}


def _closer(gap: float | None, last_gap: float | None) -> bool:
    if gap is None or last_gap is None:
        return False
    return gap < last_gap * GAP_SHRINK or gap <= DANGER_GAP < last_gap


def _why(
    group: TrafficGroup, pairs: dict[str, float], st: CameraState, now_s: float, budget: Budget
) -> TaskReason | None:
    if pairs:
        seen = {p: st["pairs"][p] for p in pairs if p in st["pairs"]}
        if len(seen) < len(pairs):
            return "new"
        if any(_closer(pairs[p], seen[p].get("gap")) for p in pairs):
            return "changed"
        at = min(float(v["at"]) for v in seen.values())
    else:
        known = st["groups"].get(group_key(group))
        if known is None:
            return "new"
        if _closer(group.min_gap, known.get("gap")):
            return "changed"
        at = float(known["at"])
    if now_s - at >= budget.refresh_s:
        return "refresh"
    return None


def plan_tasks(
    state: CameraState | None, det: DetectionResult, now_s: float, budget: Budget, cap: float = float("inf")
) -> tuple[CameraState, list[Decision], dict[str, int]]:
    """Decide the tasks for one detection; returns (new state, decisions, skipped counts).

    ``cap`` is how many tasks the global budget still allows (see :class:`GlobalCap`).
    """
    if state is None:
        st = new_state()
    else:  # .get: states written before a field existed are still read
        copied = {
            **state,
            "groups": dict(state.get("groups", {})),
            "pairs": dict(state.get("pairs", {})),
            "conflicts": {k: dict(v) for k, v in state.get("conflicts", {}).items()},
        }
        st = cast(CameraState, copied)
    st["recent"] = dict(st.get("recent", {}))
    skipped: dict[str, int] = {}
    frame = frame_key(det)
    frame_at = det.captured_at / 1000.0
    if not det.run and det.frame_seq <= st["last_seq"] and frame_at > st["last_at"]:
        # a producer without run ids counting again: a frame behind the newest, captured after it,
        # is a restart, not a redelivery (those were captured before). Its frame 3 is not the old
        # frame 3, and its tracker's ids are new road users, as for a new run below.
        st["recent"] = {k: v for k, v in st["recent"].items() if not k.startswith(":")}
        st["last_seq"], st["groups"], st["pairs"], st["conflicts"] = -1, {}, {}, {}
    if frame in st["recent"]:
        # A frame seen before: a redelivery after a crash or rebalance. Its state change may have
        # reached the changelog while its tasks did not, so the tasks decided for it are made again
        # (same task ids: the aggregator drops what was already done).
        made = set(st["recent"][frame])
        # with the frame's measured conflict: the prompt of the task made again carries its measures
        conflicts = conflicts_by_group(det)
        replayed = [Decision(g, "replay", conflicts.get(g.group_id)) for g in det.groups if g.group_id in made]
        if len(replayed) < len(det.groups):
            skipped["seen_frame"] = len(det.groups) - len(replayed)
        return st, replayed, skipped
    # A frame never planned, behind newer ones, is a record the consumer read again only after
    # later ones (streams.faust_seam). It is planned like any frame, without moving the clock.
    run, earlier_runs = st.get("run", ""), list(st.get("runs", []))
    if det.run != run and det.run not in earlier_runs:
        # a restarted producer: its count starts again (whatever its clock says against the old one's)
        earlier_runs = [*earlier_runs, run][-EARLIER_RUNS:]
        st["run"], st["runs"], st["last_seq"], run = det.run, earlier_runs, -1, det.run
        # its tracker counts again from 1: what the old run's track ids (groups, pairs, conflicts)
        # remember would silence a new pair of the same ids (a crash-looping producer: always low ids)
        st["groups"], st["pairs"], st["conflicts"] = {}, {}, {}
    if det.run != run:  # a redelivered frame of an earlier run: planned, the clock stays
        late = True
    elif det.run:  # with run ids, a frame behind the newest is always a redelivery, never a restart
        late = det.frame_seq <= st["last_seq"]
    else:  # producers without run ids: a restart reset the count above
        late = det.frame_seq <= st["last_seq"]
    if not late:  # a newer frame, or (without run ids) a restarted count
        if st["last_at"] and frame_at > st["last_at"]:
            inst = 1.0 / (frame_at - st["last_at"])
            st["fps"] = inst if not st["fps"] else 0.8 * st["fps"] + 0.2 * inst
        st["last_seq"], st["last_at"] = det.frame_seq, frame_at

    # refill the camera's token bucket
    tokens = budget.burst if st["tokens"] is None else float(st["tokens"])
    if st["tokens_at"]:
        # a clock stepped back (or a state written by a worker whose clock runs ahead) refills nothing
        elapsed = max(0.0, now_s - float(st["tokens_at"]))
        tokens = min(budget.burst, tokens + elapsed * budget.per_min / 60.0)
    st["tokens_at"] = now_s

    st["groups_seen"] += len(det.groups)
    candidates: list[tuple[float, Decision, dict[str, float]]] = []
    conflicts = conflicts_by_group(det)
    seen_conflicts = st.setdefault("conflicts", {})
    for group in det.groups:
        conflict = conflicts.get(group.group_id)
        if conflict is not None:
            # a measured conflict comes ahead of the pixel heuristics: a pair not assessed for it
            # within the refresh period, or whose conflict got more severe, is worth a call
            entry = seen_conflicts.setdefault(conflict_key(conflict), _new_conflict(now_s))
            entry["last"] = now_s
            stale = now_s - entry["task_at"] >= budget.refresh_s
            if stale or risk_rank(conflict.level) > risk_rank(entry["task_level"]):
                candidates.append(
                    (conflict_interest(conflict), Decision(group, "conflict", conflict), risk_pairs(group, det))
                )
                continue
        if group.interest < budget.min_interest:
            skipped["low_interest"] = skipped.get("low_interest", 0) + 1
            continue
        key = group_key(group)
        pairs = risk_pairs(group, det)
        reason = _why(group, pairs, st, now_s, budget)
        if reason is None:
            skipped["unchanged"] = skipped.get("unchanged", 0) + 1
            for seen in [st["groups"].get(key), *(st["pairs"].get(p) for p in pairs)]:
                if seen is not None:
                    seen["last"] = now_s
            continue
        candidates.append((group.interest, Decision(group, reason), pairs))

    decisions: list[Decision] = []
    # kept for risky groups, but never the whole bucket: with a small burst the others would starve
    reserve = min(budget.burst * RESERVE, budget.burst - 1.0)
    for interest, decision, pairs in sorted(candidates, key=lambda c: -c[0]):
        if tokens < 1.0 or (interest < RISK_INTEREST and tokens < 1.0 + reserve):
            skipped["budget"] = skipped.get("budget", 0) + 1
            continue
        if len(decisions) >= cap:
            skipped["global_cap"] = skipped.get("global_cap", 0) + 1
            continue
        tokens -= 1.0
        decisions.append(decision)
        if decision.conflict is not None:
            entry = seen_conflicts[conflict_key(decision.conflict)]
            entry["task_at"], entry["task_level"] = now_s, decision.conflict.level
        gap = decision.group.min_gap
        st["groups"][group_key(decision.group)] = {"at": now_s, "gap": gap, "last": now_s}
        for pair, pair_gap in pairs.items():
            st["pairs"][pair] = {"at": now_s, "gap": pair_gap, "last": now_s}
    st["tokens"] = tokens
    st["tasks_made"] += len(decisions)
    st["recent"][frame] = [d.group.group_id for d in decisions]
    # remembered: the current run's window behind its clock, and the newest frames of earlier runs
    # (their redeliveries can still arrive after a restart)
    earlier_kept = 0
    for old in reversed(list(st["recent"])):
        old_run, _, old_seq = old.rpartition(":")
        if old_run == st.get("run", ""):
            keep = st["last_seq"] - RECENT_FRAMES < int(old_seq) <= st["last_seq"] or old == frame
        else:
            keep = old_run in st.get("runs", []) and earlier_kept < RECENT_FRAMES
            earlier_kept += keep
        if not keep:
            del st["recent"][old]

    # forget groups not seen for a while, so the state stays small
    horizon = now_s - 3 * budget.refresh_s
    for table in ("groups", "pairs"):
        st[table] = {k: v for k, v in st[table].items() if float(v.get("last", v["at"])) >= horizon}
    st["conflicts"] = {k: v for k, v in seen_conflicts.items() if v["last"] >= horizon}
    totals = dict(st.get("skipped", {}))
    for why, n in skipped.items():
        totals[why] = totals.get(why, 0) + n
    st["skipped"] = totals
    return st, decisions, skipped


class GlobalCap:
    """A token bucket over all of a worker's cameras: the global VLM spend cap.

    Cameras are spread over workers by partition, so each worker holds ``share`` (its partitions
    / all partitions) of the global rate; together they stay under it. The burst is 10 s of the
    rate. ``per_min`` 0 means no cap.
    """

    def __init__(self, per_min: float, share: float = 1.0) -> None:
        #: until the scheduler's first sync sets it, the share of one partition: a worker that
        #: starts does not take the whole cap's burst beside the workers already running
        self.per_min, self.share = per_min, share
        self.tokens, self.at = float("inf"), 0.0

    @property
    def burst(self) -> float:
        return max(1.0, self.per_min * self.share / 6.0)

    def available(self, now_s: float) -> float:
        if self.per_min <= 0:
            return float("inf")
        if self.at:
            self.tokens += max(0.0, now_s - self.at) * self.per_min * self.share / 60.0
        self.tokens = min(self.burst, self.tokens)  # also when the share shrank
        self.at = now_s
        return float(int(self.tokens))

    def spend(self, n: int) -> None:
        if self.per_min > 0:
            self.tokens -= n
