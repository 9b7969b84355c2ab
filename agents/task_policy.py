"""Which traffic groups are worth a VLM call: the task generator's decisions, as pure functions.

A group becomes a task when it is new (a track set not assessed before), has changed
materially (the pedestrian-vehicle gap shrank by a fraction), or its last assessment is older
than the refresh period; then only if the camera's token bucket has a token. Kept free of
Faust so that it is unit-tested directly and replayed by the economy benchmark.

The per-camera state is a plain JSON dict (it lives in the ``camera_state`` table):
``{"last_seq", "last_at", "fps", "tokens", "tokens_at", "groups": {key: {"at", "gap"}},
"groups_seen", "tasks_made"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.records import DetectionResult, TrafficGroup

#: A gap that shrank to this fraction of the assessed one counts as a material change.
GAP_SHRINK = 0.7
#: Frames whose decisions are remembered, so a redelivered frame makes the same tasks again.
RECENT_FRAMES = 64


@dataclass(frozen=True)
class Budget:
    """Task generation parameters (from Settings)."""

    refresh_s: float
    per_min: float
    burst: float
    min_interest: float


@dataclass(frozen=True)
class Decision:
    """A group to assess and why (new, changed, refresh)."""

    group: TrafficGroup
    reason: str


def group_key(group: TrafficGroup) -> str:
    """The dedup key: the sorted set of track ids in the group."""
    return "-".join(str(t) for t in sorted(group.track_ids))


def new_state() -> dict[str, Any]:
    return {
        "last_seq": -1,
        "last_at": 0.0,
        "fps": 0.0,
        "tokens": None,
        "tokens_at": 0.0,
        "groups": {},
        "groups_seen": 0,
        "tasks_made": 0,
        "skipped": {},
    }


def _why(group: TrafficGroup, seen: dict[str, Any] | None, now_s: float, budget: Budget) -> str | None:
    if seen is None:
        return "new"
    last_gap = seen.get("gap")
    if group.min_gap is not None and last_gap is not None and group.min_gap < last_gap * GAP_SHRINK:
        return "changed"
    if now_s - float(seen["at"]) >= budget.refresh_s:
        return "refresh"
    return None


def plan_tasks(
    state: dict[str, Any] | None, det: DetectionResult, now_s: float, budget: Budget
) -> tuple[dict[str, Any], list[Decision], dict[str, int]]:
    """Decide the tasks for one detection; returns (new state, decisions, skipped counts)."""
    st = new_state() if state is None else {**state, "groups": dict(state.get("groups", {}))}
    st["recent"] = dict(st.get("recent", {}))
    skipped: dict[str, int] = {}
    if det.frame_seq <= st["last_seq"]:
        # A frame seen before: a redelivery after a crash or rebalance. Its state change may have
        # reached the changelog while its tasks did not, so the tasks decided for it are made again
        # (same task ids: the aggregator drops what was already done). Older frames are stale.
        made = set(st["recent"].get(str(det.frame_seq), []))
        replayed = [Decision(g, "replay") for g in det.groups if g.group_id in made]
        if len(replayed) < len(det.groups):
            skipped["stale_frame"] = len(det.groups) - len(replayed)
        return st, replayed, skipped
    frame_at = det.captured_at / 1000.0
    if st["last_at"] and frame_at > st["last_at"]:
        inst = 1.0 / (frame_at - st["last_at"])
        st["fps"] = inst if not st["fps"] else 0.8 * st["fps"] + 0.2 * inst
    st["last_seq"], st["last_at"] = det.frame_seq, frame_at

    # refill the camera's token bucket
    tokens = budget.burst if st["tokens"] is None else float(st["tokens"])
    if st["tokens_at"]:
        tokens = min(budget.burst, tokens + (now_s - float(st["tokens_at"])) * budget.per_min / 60.0)
    st["tokens_at"] = now_s

    st["groups_seen"] += len(det.groups)
    candidates: list[tuple[float, Decision]] = []
    for group in det.groups:
        if group.interest < budget.min_interest:
            skipped["low_interest"] = skipped.get("low_interest", 0) + 1
            continue
        key = group_key(group)
        reason = _why(group, st["groups"].get(key), now_s, budget)
        if reason is None:
            skipped["unchanged"] = skipped.get("unchanged", 0) + 1
            if key in st["groups"]:
                st["groups"][key]["last"] = now_s
            continue
        candidates.append((group.interest, Decision(group, reason)))

    decisions: list[Decision] = []
    for _, decision in sorted(candidates, key=lambda c: -c[0]):
        if tokens < 1.0:
            skipped["budget"] = skipped.get("budget", 0) + 1
            continue
        tokens -= 1.0
        decisions.append(decision)
        st["groups"][group_key(decision.group)] = {"at": now_s, "gap": decision.group.min_gap, "last": now_s}
    st["tokens"] = tokens
    st["tasks_made"] += len(decisions)
    st["recent"][str(det.frame_seq)] = [d.group.group_id for d in decisions]
    for old in sorted(st["recent"], key=int)[:-RECENT_FRAMES]:
        del st["recent"][old]

    # forget groups not seen for a while, so the state stays small
    horizon = now_s - 3 * budget.refresh_s
    st["groups"] = {k: v for k, v in st["groups"].items() if float(v.get("last", v["at"])) >= horizon}
    totals = dict(st.get("skipped", {}))
    for reason, n in skipped.items():
        totals[reason] = totals.get(reason, 0) + n
    st["skipped"] = totals
    return st, decisions, skipped
