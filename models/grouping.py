"""Traffic groups: objects clustered by proximity relative to their size.

Two objects belong together when the gap between their boxes is under ``reach`` times the
height of the smaller one (a pedestrian's height is the natural yardstick of "within reach").
Groups are the connected components of that relation. A group's ``interest`` ranks it for the
VLM budget: a pedestrian near a moving vehicle first, closer and faster meaning more.
"""

from __future__ import annotations

from models.geometry import VEHICLES, box_gap, union_box
from streams.records import Conflict, DetectedObject, TrafficGroup


def _height(o: DetectedObject) -> float:
    return max(1.0, o.bbox[3] - o.bbox[1])


def cluster(objects: list[DetectedObject], reach: float = 1.5) -> list[TrafficGroup]:
    """Connected components of 'within reach', each as a TrafficGroup."""
    parent = list(range(len(objects)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(objects):
        for j in range(i + 1, len(objects)):
            b = objects[j]
            if box_gap(a.bbox, b.bbox) <= reach * min(_height(a), _height(b)):
                parent[find(i)] = find(j)
    components: dict[int, list[int]] = {}
    for i in range(len(objects)):
        components.setdefault(find(i), []).append(i)
    return [describe([objects[i] for i in members], members) for members in components.values()]


def describe(members: list[DetectedObject], indexes: list[int]) -> TrafficGroup:
    people = [o for o in members if o.cls == "person"]
    vehicles = [o for o in members if o.cls in VEHICLES]
    min_gap: float | None = None
    if people and vehicles:
        min_gap = min(box_gap(p.bbox, v.bbox) / _height(p) for p in people for v in vehicles)
        kind = "pedestrian_vehicle"
        moving = max((v.speed for v in vehicles), default=0.0)
        interest = 0.6 + 0.3 * max(0.0, 1.0 - min_gap / 1.5) + (0.1 if moving > 20 else 0.0)
    elif len(vehicles) >= 2:
        kind, interest = "vehicle_cluster", 0.4
    elif len(people) >= 2:
        kind, interest = "pedestrian_cluster", 0.2
    else:
        kind, interest = "single", 0.1
    track_ids = sorted(o.track_id for o in members)
    return TrafficGroup(
        group_id="g" + "-".join(str(t) for t in track_ids),
        kind=kind,
        members=sorted(indexes),
        track_ids=track_ids,
        bbox=[round(v, 1) for v in union_box([o.bbox for o in members])],
        min_gap=None if min_gap is None else round(min_gap, 3),
        interest=round(min(1.0, interest), 3),
    )


def conflict_groups(
    objects: list[DetectedObject], groups: list[TrafficGroup], conflicts: list[Conflict]
) -> list[TrafficGroup]:
    """A group of its own for each measured conflict whose two road users no group holds together.

    A car 8 m from a pedestrian it will reach in a second is not "within reach" in pixels, so the
    clustering keeps them apart; the conflict's VLM task, and the verdict on its measured alert,
    need one group (and one crop) showing both.
    """
    index = {o.track_id: i for i, o in enumerate(objects)}
    extra: list[TrafficGroup] = []
    for c in conflicts:
        if c.a not in index or c.b not in index:
            continue
        if any(c.a in g.track_ids and c.b in g.track_ids for g in [*groups, *extra]):
            continue
        members = sorted((index[c.a], index[c.b]))
        extra.append(describe([objects[i] for i in members], members))
    return extra
