"""What the aggregator joins results with, written where each detection is decoded anyway.

The task generator decodes every detection to plan its tasks; it also keeps here what the rest
of the pipeline needs of it, so no second agent decodes the same record (#13: decoding and the
table writes were most of a worker's time per detection):

* the detection itself, for the result join, only when it made a task (only those are ever
  joined), in the expiring ``detections`` table;
* its camera's latest-frame summary, for the dashboard, at most once every ``view_every_s`` a
  camera, in this worker's memory (``frames``), not a table: the worker that owns a camera's
  partition consumes its detections and answers its web views (``table_route`` on
  ``camera_view``, the same key and partition), and after a crash or a rebalance the camera's next
  detection, within ``view_every_s``, takes it again. Written through ``camera_view``, the summary
  was a decode, an encode, a RocksDB put and a changelog record a camera a second;
* the most urgent conflict measured since the last take, in ``camera_view`` (when there is one):
  the dashboard shows the last conflict until the next, which may be hours later.

The join table is keyed by detection of the event's own partition (detections and results share
the camera key and partition count), so the aggregator finds the join record on the worker that
owns the camera.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import murmur2
from mode import BaseSignalT

from agents.expiry import ExpiringIndex
from streams.app import app, settings
from streams.images import image_url
from streams.records import DetectionResult, record_to_dict, urgency
from streams.settings import Settings
from streams.table_values import CameraFrame, CameraView, CompactDetection
from streams.tables import camera_key, camera_view, detections

#: The settings' defaults, for a join built without the worker's settings (unit tests).
DEFAULTS = Settings.model_construct()


def camera_partition(value: dict[str, Any]) -> int | None:
    """The partition of a table value written before values recorded theirs: its camera's, as the
    producer's partitioner (Kafka's murmur2 of the key) put its records there."""
    camera_id = value.get("camera_id")
    if not isinstance(camera_id, str):
        return None
    return int(murmur2(camera_id.encode()) & 0x7FFFFFFF) % settings.topic_partitions


@dataclass
class DetectionJoin:
    """The join table, the cameras' latest frames, and when each camera's frame was last taken."""

    detections: MutableMapping[str, CompactDetection | None]
    camera_view: MutableMapping[bytes, CameraView | None]
    expiry: ExpiringIndex = field(default_factory=lambda: ExpiringIndex(DEFAULTS.detection_ttl()))
    view_every_s: float = 1.0
    #: camera id -> its latest frame (and when it was taken), for the cameras whose detections this
    #: worker consumes
    frames: dict[str, CameraFrame] = field(default_factory=dict)
    #: each camera's most urgent conflict since its frame was last taken (calibrated cameras)
    conflicts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def mark_stale(self) -> None:
        """After a rebalance: keys written elsewhere (the frames went when the partitions were revoked)."""
        self.expiry.mark_stale()

    def forget_frames(self) -> None:
        """Partitions revoked: the cameras may move, and a frame kept here would list a camera on two
        workers (their ``/cameras/``); those that stay are taken again from their next detection."""
        self.frames.clear()
        self.conflicts.clear()


#: The worker's join, on its Faust tables.
detection_join = DetectionJoin(
    detections,
    camera_view,
    expiry=ExpiringIndex(settings.detection_ttl(), partition_of=camera_partition),
)


@app.on_rebalance_complete.connect
async def _rescan(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    detection_join.mark_stale()


@app.on_partitions_revoked.connect
async def _forget_frames(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    detection_join.forget_frames()


#: Road users of a frame shown on the bird's-eye view.
GROUND_SHOWN = 40


def empty_view(camera_id: str) -> CameraView:
    return {"camera_id": camera_id, "results": [], "counts": {}}


def compact_detection(det: DetectionResult, now_s: float, partition: int) -> CompactDetection:
    """What the join needs of a detection: frame facts, objects and groups, crop references."""
    return {
        "at": now_s,
        "p": partition,
        "camera_id": det.camera_id,
        "frame_seq": det.frame_seq,
        "captured_at": det.captured_at,
        "frame_w": det.frame_w,
        "frame_h": det.frame_h,
        "model": det.model,
        "objects": [record_to_dict(o) for o in det.objects],
        "groups": [record_to_dict(g) for g in det.groups],
        # crops by reference only: inline ones would make every changelog write heavy
        "crops": {gid: {"url": image_url(ref), "region": ref.region} for gid, ref in det.crops.items() if ref.uri},
    }


def record_detection(join: DetectionJoin, det: DetectionResult, now: float, partition: int, *, joined: bool) -> None:
    """Keep ``det`` for the join when it made a task (``joined``), and as its camera's latest frame
    when that view is due. ``partition`` is the current event's (:mod:`agents.expiry`)."""
    if joined:
        join.detections[det.detection_id] = compact_detection(det, now, partition)
        join.expiry.add(det.detection_id, now, partition)
    join.expiry.expire(join.detections, now, partition)
    if det.conflicts:
        worst = min(det.conflicts, key=lambda c: urgency(c.ttc_s, c.pet_s))
        held = join.conflicts.get(det.camera_id)
        if held is None or urgency(held.get("ttc_s"), held.get("pet_s")) >= urgency(worst.ttc_s, worst.pet_s):
            join.conflicts[det.camera_id] = {**record_to_dict(worst), "captured_at": det.captured_at}
    taken = join.frames.get(det.camera_id)
    if taken is not None and now - taken["updated_at"] < join.view_every_s:
        return
    best = max(det.groups, key=lambda g: g.interest, default=None)
    latest = {
        "frame_seq": det.frame_seq,
        "captured_at": det.captured_at,
        "frame_w": det.frame_w,
        "frame_h": det.frame_h,
        "model": det.model,
        "objects": len(det.objects),
        "groups": [
            {"group_id": g.group_id, "kind": g.kind, "bbox": g.bbox, "min_gap": g.min_gap, "interest": g.interest}
            for g in det.groups
        ],
        "crop": image_url(det.crops[best.group_id]) if best and best.group_id in det.crops else None,
        "crop_group": best.group_id if best else None,
        # calibrated cameras: each road user on the ground, for the bird's-eye view and speeds
        "ground": [
            {
                "id": o.track_id,
                "cls": o.cls,
                "x": o.ground[0],
                "y": o.ground[1],
                "vx": o.velocity[0],
                "vy": o.velocity[1],
            }
            for o in det.objects[:GROUND_SHOWN]
            if o.ground and o.velocity
        ],
    }
    join.frames[det.camera_id] = {"latest_detection": latest, "updated_at": now}
    conflict = join.conflicts.pop(det.camera_id, None)
    if conflict is not None:
        key = camera_key(det.camera_id)
        view = join.camera_view.get(key) or empty_view(det.camera_id)
        view["last_conflict"] = conflict
        view["updated_at"] = now
        join.camera_view[key] = view
