"""Stable per-camera track ids for detections, by greedy matching on predicted boxes.

At an analysis rate of a few frames per second a car moves more than its own width between
frames, so plain IoU loses it: each track predicts its box from its velocity, and a detection
matches the track whose predicted box overlaps it most, or failing that whose centre is
nearest relative to the object's size. Unmatched tracks survive ``max_missed`` frames.

A pixel-based detector sees a pedestrian crossing in front of a car as one blob: exactly the
moment that matters. :meth:`Tracker.split_merged` undoes that: a detection that holds the
predicted boxes of two or more established tracks is replaced by those boxes (clipped to it),
so each road user keeps its box and id through the overlap (the classic blob-tracker merge
handling). A track counts only in the blob holding most of it; a vehicle's prediction that
reaches out of the blob slides back in first (it may have stopped while merged); a second track
on the same road user is left out. A blob no larger than the vehicle in it is split too when a
pedestrian tracked into it walks unlike the vehicle (crossing in front of a bus, within its
outline). Objects that were never seen apart stay merged here; the motion detector cuts two
pedestrians side by side apart from their outline alone (:func:`models.detectors.pair_cut`).

The reverse happens too: a lamp post or a sign in front of the road cuts a passing car into two
blobs, each too narrow to look like a car. Pieces that lie inside one established vehicle
track's predicted box, side by side with the same top and bottom, claimed by no other track,
and cut where other vehicles were cut before (a post does not move; two cars that were one
blob part anywhere) are joined back into one box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import count, pairwise

import numpy as np

from models.detectors import Detection
from models.geometry import areas, intersections, iou, iou_matrix, union_box

#: A track's predicted box must lie this much inside a blob to count as part of it.
SPLIT_INSIDE = 0.6
#: A prediction that reaches out of the blob (SPLIT_TOUCH of it still inside) is slid back in by
#: up to SPLIT_SLIDE of its size before that test.
SPLIT_TOUCH, SPLIT_SLIDE = 0.3, 0.6
#: ... and the blob must be this much bigger than the largest such track (else it is just that one).
SPLIT_BLOB = 1.25
#: ... unless it holds vehicles and pedestrians whose velocities differ by at least CROSS_APART
#: of the faster one's speed (a pedestrian in front of a bus, within its outline).
CROSS_APART = 0.5
#: ... and by at least CROSS_MIN of the pedestrian's height a second (a walker covers about 0.8).
CROSS_MIN = 0.25
#: ... measured no longer than CROSS_COAST_S ago (a walker crosses a bus's width in about that).
CROSS_COAST_S = 1.5
#: A pedestrian whose predicted box overlaps another detection this much (IoU) was found apart.
SEEN_APART_IOU = 0.3
#: ... and two tracks whose parts overlap this much (IoU) are one road user (a pedestrian in
#: front of a car overlaps it far less).
DUPLICATE_IOU = 0.4
#: A piece joins a track's other pieces when this much of it lies in the track's predicted box
#: (grown by JOIN_MARGIN of its size each side), and it is smaller than JOIN_PIECE of that box.
JOIN_INSIDE, JOIN_MARGIN, JOIN_PIECE = 0.7, 0.15, 0.8
#: ... and when JOIN_EVIDENCE tracks were already cut in the gap's columns (CUT_CELL px wide).
JOIN_EVIDENCE, CUT_CELL = 3, 8
#: A track's cut is recorded from the blobs inside its predicted box grown this much each side
#: (the piece that comes out from behind a post lies beyond the box of the piece it follows).
CUT_MARGIN = 0.5


Box = tuple[float, float, float, float]


@dataclass
class Track:
    """One object followed across frames."""

    track_id: int
    cls: str
    bbox: Box
    at: float
    vx: float = 0.0
    vy: float = 0.0
    missed: int = 0
    hits: int = 1
    #: when it last matched a detection of its own, not its prediction (see split_merged): its
    #: velocity is as old
    measured_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.measured_at = self.at

    def predict(self, t: float) -> Box:
        dt = t - self.at
        x1, y1, x2, y2 = self.bbox
        return x1 + self.vx * dt, y1 + self.vy * dt, x2 + self.vx * dt, y2 + self.vy * dt

    @property
    def speed(self) -> float:
        return math.hypot(self.vx, self.vy)


@dataclass
class Tracker:
    """Tracks of one camera."""

    max_missed: int = 3
    max_center_dist: float = 1.5
    tracks: list[Track] = field(default_factory=list)
    _ids: count[int] = field(default_factory=lambda: count(1))
    #: detections made by split_merged (by id) -> the track they continue
    _coasting: dict[int, int] = field(default_factory=dict)
    #: where vehicles have come apart in pieces: image column (CUT_CELL px) -> tracks cut there
    _cuts: dict[int, set[int]] = field(default_factory=dict)

    def split_merged(self, detections: list[Detection], t: float) -> list[Detection]:
        """Detections with merged blobs split into the established tracks they contain."""
        established = [tr for tr in self.tracks if tr.hits >= 2 and tr.missed <= 1]
        detections = self._join_pieces(detections, established, t)
        if len(established) < 2:
            return detections
        out: list[Detection] = []
        preds = [track.predict(t) for track in established]
        blob_arr = np.array([det.bbox for det in detections], np.float64).reshape(-1, 4)
        pred_arr = np.array(preds, np.float64)
        # share of each track's prediction inside each blob; a track belongs to the blob holding
        # most of it (not to a neighbour it brushes)
        share = intersections(pred_arr, blob_arr) / np.maximum(areas(pred_arr), 1e-9)[:, None]
        home = share.argmax(axis=1) if len(detections) else np.zeros(0, np.int64)
        for di, det in enumerate(detections):
            inside = []
            for k in np.flatnonzero((home == di) & (share[:, di] >= SPLIT_TOUCH)).tolist():
                track, whole = established[k], preds[k]
                # a vehicle that stopped while merged is where it stood, not where its velocity
                # would carry it: the prediction slides back into the blob (a pedestrian's
                # does not: sliding cost 1 point of pedestrian recall on the distant scene)
                slide = SPLIT_SLIDE if track.cls != "person" else 0.0
                pred = _clip(_slide_into(whole, det.bbox, slide), det.bbox)
                if pred is not None and _area(pred) >= SPLIT_INSIDE * _area(whole):
                    inside.append((track, pred))
            inside = _distinct(inside)
            biggest = max((_area(track.bbox) for track, _ in inside), default=0.0)
            if len(inside) >= 2 and _area(det.bbox) >= SPLIT_BLOB * biggest:
                for track, pred in inside:
                    # the part of the blob where the track is predicted to be
                    part = Detection(track.cls, round(det.conf * 0.9, 3), pred)
                    self._coasting[id(part)] = track.track_id
                    out.append(part)
            elif len(inside) >= 2 and _crossing(inside, t) and not _seen_apart(inside, blob_arr, di):
                # the blob is the vehicle, measured as ever; the pedestrian in front coasts on
                vehicle = next(track for track, _ in inside if track.cls != "person")
                out.append(Detection(vehicle.cls, det.conf, det.bbox))
                for track, pred in inside:
                    if track.cls == "person":
                        part = Detection(track.cls, round(det.conf * 0.9, 3), pred)
                        self._coasting[id(part)] = track.track_id
                        out.append(part)
            else:
                out.append(det)
        return out

    def _join_pieces(self, detections: list[Detection], established: list[Track], t: float) -> list[Detection]:
        """Detections with the pieces of one occluded road user joined into one box."""
        if not established or len(detections) < 2:
            return detections
        preds = [tr.predict(t) for tr in established]
        pred_arr = np.array(preds, np.float64)
        blob_arr = np.array([det.bbox for det in detections], np.float64)
        own = np.maximum(areas(blob_arr), 1e-9)[:, None]
        in_wide = intersections(blob_arr, _grow_all(pred_arr, CUT_MARGIN)) / own
        in_grown = intersections(blob_arr, _grow_all(pred_arr, JOIN_MARGIN)) / own
        near = iou_matrix(blob_arr, pred_arr)
        touches = near > 0.05
        joined: dict[int, list[int]] = {}  # track -> pieces it may take
        cut: dict[int, list[int]] = {}  # track -> blobs inside it, claimed by others or not
        for di, det in enumerate(detections):
            best = np.flatnonzero(in_wide[di] == in_wide[di].max())
            # a piece often lies wholly in two neighbours' widened boxes: the nearer one takes it
            k = int(best[0]) if len(best) == 1 else int(best[np.argmax(in_grown[di, best] + near[di, best])])
            if in_wide[di, k] < JOIN_INSIDE or established[k].cls == "person":
                continue  # only vehicles break on a pole
            cut.setdefault(k, []).append(di)
            if in_grown[di, k] < JOIN_INSIDE:
                continue
            claimed = bool(touches[di].sum() - touches[di, k])
            if _area(det.bbox) < JOIN_PIECE * _area(preds[k]) and not claimed:
                joined.setdefault(k, []).append(di)  # a piece another track also claims stays
        for k, blobs in cut.items():
            boxes = sorted(detections[di].bbox for di in blobs)
            if len(boxes) >= 2 and _side_by_side(boxes) and self._fills(boxes, preds[k]):
                self._record_cuts(boxes, established[k].track_id)
        out: list[Detection] = []
        taken: set[int] = set()
        for k, pieces in joined.items():
            if len(pieces) < 2:
                continue
            boxes = sorted(detections[di].bbox for di in pieces)
            if not _side_by_side(boxes) or not all(self._cut_known(a, b) for a, b in pairwise(boxes)):
                continue
            if not self._fills(boxes, preds[k]):
                continue
            taken.update(pieces)
            union = union_box(boxes)
            part = Detection(established[k].cls, max(detections[di].conf for di in pieces), union)
            self._coasting[id(part)] = established[k].track_id
            out.append(part)
        rest = [d for di, d in enumerate(detections) if di not in taken]
        return out + self._join_at_known_cuts(rest)

    def _join_at_known_cuts(self, detections: list[Detection]) -> list[Detection]:
        """Side-by-side pieces joined where vehicles are known to be cut, tracked apart or not.

        At 10 fps each piece of a car behind a post soon has a track of its own, which keeps the
        track-based join above from claiming it; the post's columns are known by then.
        """
        order = sorted(range(len(detections)), key=lambda i: detections[i].bbox[0])
        out: list[Detection] = []
        used: set[int] = set()
        for n, i in enumerate(order):
            if i in used:
                continue
            box = detections[i].bbox
            for j in order[n + 1 :]:
                other = detections[j].bbox
                if j in used or other[0] - box[2] > box[3] - box[1]:
                    continue
                joined = union_box([box, other])
                wide = joined[2] - joined[0] >= joined[3] - joined[1]  # two pedestrians side by side are not a car
                # nor two road users each twice as tall as wide, either side of a wide post
                upright = _upright(box) and _upright(other)
                if wide and not upright and _side_by_side([box, other]) and self._cut_known(box, other):
                    box = joined
                    used.add(j)
            used.add(i)
            if box == detections[i].bbox:
                out.append(detections[i])
            else:
                out.append(Detection("car", detections[i].conf, box))
        return out

    def _cut_known(self, a: Box, b: Box) -> bool:
        """Whether JOIN_EVIDENCE tracks were cut in the columns between ``a`` and ``b`` (median over them)."""
        cells = range(int(a[2] // CUT_CELL), int(b[0] // CUT_CELL) + 1)
        seen = sorted(len(self._cuts.get(cell, ())) for cell in cells)
        return bool(seen) and seen[len(seen) // 2] >= JOIN_EVIDENCE

    @staticmethod
    def _fills(boxes: list[Box], pred: Box) -> bool:
        """Whether these pieces together are about the size of the track's predicted box."""
        return 0.6 * _area(pred) <= _area(union_box(boxes)) <= 1.3 * _area(pred)

    def _record_cuts(self, boxes: list[Box], track_id: int) -> None:
        """Remember the columns where this vehicle track came apart in pieces.

        A post stands still and upright, so the vehicles passing behind it, in every lane, are
        cut in the same columns of the image; two cars that drove as one blob and now come
        apart do so anywhere. Pieces are joined once JOIN_EVIDENCE tracks were cut in the gap's
        columns. Recorded whether or not the pieces are joined now: at 10 fps each piece soon
        has a track of its own, and the evidence must still build up.
        """
        for a, b in pairwise(boxes):
            for cell in range(int(a[2] // CUT_CELL), int(b[0] // CUT_CELL) + 1):
                tracks = self._cuts.setdefault(cell, set())
                if len(tracks) < 2 * JOIN_EVIDENCE:
                    tracks.add(track_id)

    def update(self, detections: list[Detection], t: float) -> list[Track]:
        """Assign each detection a track; returns the tracks matched in this frame, in order.

        Call :meth:`split_merged` first to track road users through a merge.
        """
        coasting, self._coasting = self._coasting, {}
        pairs: list[tuple[float, int, int]] = []
        if self.tracks and detections:
            pred_arr = np.array([track.predict(t) for track in self.tracks], np.float64)
            boxes = np.array([det.bbox for det in detections], np.float64)
            overlap = iou_matrix(pred_arr, boxes)
            size = np.maximum(np.maximum(pred_arr[:, 2] - pred_arr[:, 0], pred_arr[:, 3] - pred_arr[:, 1]), 1.0)
            pc, dc = _centers(pred_arr), _centers(boxes)
            dist = np.hypot(pc[:, None, 0] - dc[None, :, 0], pc[:, None, 1] - dc[None, :, 1]) / size[:, None]
            track_person = np.array([track.cls == "person" for track in self.tracks])
            det_person = np.array([det.cls == "person" for det in detections])
            kind = np.where(track_person[:, None] == det_person[None, :], 0.2, -0.5)
            score = overlap - 0.2 * dist + kind
            near = (overlap > 0.05) | (dist < self.max_center_dist)
            row_of = {track.track_id: ti for ti, track in enumerate(self.tracks)}
            for di, det in enumerate(detections):  # a split part goes back to its own track
                ti = row_of.get(coasting.get(id(det), -1))
                if ti is not None:
                    near[ti, di] = False
                    pairs.append((10.0, ti, di))
            ti_s, di_s = np.nonzero(near)
            pairs += zip(score[ti_s, di_s].tolist(), ti_s.tolist(), di_s.tolist(), strict=True)
        pairs.sort(reverse=True)
        used_t: set[int] = set()
        matched: dict[int, Track] = {}
        for score, ti, di in pairs:
            if ti in used_t or di in matched or score < -0.3:
                continue
            used_t.add(ti)
            track, det = self.tracks[ti], detections[di]
            dt = max(1e-3, t - track.at)
            cx0, cy0 = _center(track.bbox)
            cx1, cy1 = _center(det.bbox)
            if id(det) not in coasting:  # a coasting track keeps its velocity: its box was predicted
                a = 0.6 if track.hits > 1 else 1.0
                track.vx = a * (cx1 - cx0) / dt + (1 - a) * track.vx
                track.vy = a * (cy1 - cy0) / dt + (1 - a) * track.vy
            track.bbox, track.at, track.missed, track.cls = det.bbox, t, 0, det.cls
            if id(det) not in coasting:
                track.measured_at = t
            track.hits += 1
            matched[di] = track
        for ti, track in enumerate(self.tracks):
            if ti not in used_t:
                track.missed += 1
        self.tracks = [tr for tr in self.tracks if tr.missed <= self.max_missed]
        for di, det in enumerate(detections):
            if di not in matched:
                track = Track(next(self._ids), det.cls, det.bbox, t)
                self.tracks.append(track)
                matched[di] = track
        return [matched[di] for di in range(len(detections))]


def _crossing(inside: list[tuple[Track, Box]], t: float) -> bool:
    """Whether the tracks in a blob are vehicles and pedestrians who walk unlike every vehicle there.

    A pedestrian crossing in front of a bus is a blob no larger than the bus; a piece of the bus
    once taken for a pedestrian moves with the bus, and must not be split off it for ever. A
    velocity not measured for more than CROSS_COAST_S is a guess (the pedestrian may have stopped
    behind the bus) and proves nothing. One vehicle: a blob of two is larger than either.
    """
    vehicles = [track for track, _ in inside if track.cls != "person"]
    people = [track for track, _ in inside if track.cls == "person"]
    if any(t - track.measured_at > CROSS_COAST_S for track, _ in inside):
        return False  # a velocity kept through a long merge (a bus that stopped in it) proves nothing
    return (
        len(vehicles) == 1
        and bool(people)
        and all(
            math.hypot(p.vx - v.vx, p.vy - v.vy)
            >= max(CROSS_APART * max(v.speed, p.speed), CROSS_MIN * (p.bbox[3] - p.bbox[1]))
            for p in people
            for v in vehicles
        )
    )


def _seen_apart(inside: list[tuple[Track, Box]], blobs: np.ndarray, home: int) -> bool:
    """Whether a pedestrian in blob ``home`` was also found on their own this frame (a detector
    that reports a bus and the pedestrian in front of it: nothing to split, the box is there)."""
    people = np.array([pred for track, pred in inside if track.cls == "person"], np.float64).reshape(-1, 4)
    others = np.delete(blobs, home, axis=0)
    return bool(len(others)) and bool((iou_matrix(people, others) >= SEEN_APART_IOU).any())


def _distinct(
    inside: list[tuple[Track, Box]],
) -> list[tuple[Track, Box]]:
    """The tracks in a blob less those that duplicate a longer-lived one (two tracks on one road user).

    A road user that stops, or comes apart in pieces for a moment, can leave a second track on
    itself; splitting the blob by both would report the road user twice.
    """
    kept: list[tuple[Track, Box]] = []
    for track, part in sorted(inside, key=lambda tp: -tp[0].hits):
        if all(iou(part, other) < DUPLICATE_IOU for _, other in kept):
            kept.append((track, part))
    return kept


def _side_by_side(boxes: list[Box]) -> bool:
    """Pieces (sorted by left edge) of one thing cut by a post: apart, narrow gaps, same top and bottom.

    A pedestrian in front of a car is not one: its top and bottom are the pedestrian's own.
    """
    height = max(b[3] - b[1] for b in boxes)
    for a, b in pairwise(boxes):
        gap = b[0] - a[2]
        if gap < 0 or gap > height or abs(a[1] - b[1]) > 0.15 * height or abs(a[3] - b[3]) > 0.15 * height:
            return False
    return True


def _slide_into(b: Box, to: Box, limit: float) -> Box:
    """``b`` moved (by at most ``limit`` of its width and height) to lie inside ``to`` as far as it fits."""
    dx = _shift_into(b[0], b[2], to[0], to[2], limit * (b[2] - b[0]))
    dy = _shift_into(b[1], b[3], to[1], to[3], limit * (b[3] - b[1]))
    return b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy


def _shift_into(lo: float, hi: float, to_lo: float, to_hi: float, limit: float) -> float:
    if hi - lo > to_hi - to_lo:
        return 0.0  # wider than the blob: nothing to slide
    shift = to_lo - lo if lo < to_lo else (to_hi - hi if hi > to_hi else 0.0)
    return max(-limit, min(limit, shift))


def _grow_all(boxes: np.ndarray, margin: float) -> np.ndarray:
    """Each row box grown by ``margin`` of its width and height on every side."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.stack(
        [boxes[:, 0] - margin * w, boxes[:, 1] - margin * h, boxes[:, 2] + margin * w, boxes[:, 3] + margin * h], axis=1
    )


def _centers(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def _center(b: Box) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _clip(b: Box, to: Box) -> Box | None:
    x1, y1, x2, y2 = max(b[0], to[0]), max(b[1], to[1]), min(b[2], to[2]), min(b[3], to[3])
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _upright(box: Box) -> bool:
    """A pedestrian's shape: a vehicle's piece cut off by a post is not this tall for its width."""
    return box[3] - box[1] >= 2.0 * (box[2] - box[0])
