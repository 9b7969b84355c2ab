"""The detection side on synthetic video: motion detector, tracker, traffic groups, cameras file."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.cameras import load_cameras
from models.crops import crop_group
from models.detectors import MotionDetector, ReplayDetector
from models.grouping import cluster
from models.tracking import Tracker, iou
from sim.scene import Scene
from streams.errors import ConfigError
from streams.records import DetectedObject


def motion_recall(scene: Scene, frames: int, start_s: float) -> tuple[float, int]:
    """Share of moving objects the motion path of the producer (detector, then the tracker's
    merge splitting) finds at IoU >= 0.5, over ``frames`` frames at 2 fps."""
    detector, tracker = MotionDetector(), Tracker()
    detector.warm_up("c", [scene.render(t * 0.5)[0] for t in range(10)])
    hits = total = 0
    for i in range(frames):
        t = start_s + i * 0.5
        frame, truth = scene.render(t)
        found = tracker.split_merged(detector.detect("c", frame, i), t)
        tracker.update(found, t)
        for box in truth:
            if box.moving:
                total += 1
                hits += any(iou(box.bbox, d.bbox) >= 0.5 for d in found)
    return hits / total, total


def test_motion_detection_finds_90_percent_of_moving_objects_in_the_labelled_scenario():
    from sim.scenarios import LABELLED
    from sim.source import scene_from_url

    hits = total = 0.0
    for url in LABELLED.values():
        recall, n = motion_recall(scene_from_url(url), 240, 30.0)
        hits, total = hits + recall * n, total + n
    # measured 0.910 (0.84-0.96 per camera; 0.885 without the tracker's merge splitting)
    assert total > 3000 and hits / total >= 0.90


def test_motion_detection_in_a_crowded_scene_is_bounded_by_overlaps():
    # 4 lanes at 0.5 vehicles/s and a pedestrian every 4 s: a third of the moving objects overlap
    # another one. Measured 0.818 (0.79 without merge splitting); objects in the clear: 0.99.
    recall, total = motion_recall(Scene(seed=5, vehicle_rate=0.5, pedestrian_rate=0.25), 120, 10.0)
    assert total > 300 and recall >= 0.80


def test_tracker_keeps_ids_of_objects_moving_fast_between_frames():
    scene = Scene(seed=9, vehicle_rate=0.3, pedestrian_rate=0.0, noise=0)
    tracker = Tracker()
    ids: dict[int, set[int]] = {}
    for i in range(40):
        t = 20 + i * 0.5
        truth = scene.truth(t)
        from models.detectors import Detection

        tracks = tracker.update([Detection(b.cls, 0.9, b.bbox) for b in truth], t)
        for box, track in zip(truth, tracks, strict=True):
            ids.setdefault(box.actor_id, set()).add(track.track_id)
    stable = sum(1 for s in ids.values() if len(s) == 1)
    assert stable / len(ids) >= 0.9


def _obj(track: int, cls: str, box: list[float], speed: float = 50.0) -> DetectedObject:
    return DetectedObject(track_id=track, cls=cls, conf=0.9, bbox=box, speed=speed)


def test_pedestrian_near_a_vehicle_is_one_interesting_group_and_far_things_are_apart():
    objects = [
        _obj(1, "person", [100, 100, 112, 134]),
        _obj(2, "car", [120, 100, 190, 134]),
        _obj(3, "car", [500, 100, 570, 134]),
    ]
    groups = sorted(cluster(objects), key=lambda g: -g.interest)
    assert [g.kind for g in groups] == ["pedestrian_vehicle", "single"]
    near = groups[0]
    assert near.track_ids == [1, 2] and near.group_id == "g1-2"
    assert near.min_gap is not None and near.min_gap < 0.5
    assert near.interest > 0.8


def test_crop_covers_the_group_with_a_margin():
    frame, _ = Scene(seed=1).render(10)
    jpeg, w, h, region = crop_group(frame, [100.0, 100.0, 200.0, 150.0])
    assert jpeg[:2] == b"\xff\xd8" and w > 100 and h > 50
    assert region[0] < 100 and region[2] > 200


def test_cameras_file_errors_name_the_field(tmp_path: Path):
    path = tmp_path / "cams.yaml"
    path.write_text("cameras:\n  - {id: 'bad id!', url: 'sim://scene', fps: 0, colour: red}\n")
    with pytest.raises(ConfigError) as err:
        load_cameras(path)
    text = str(err.value)
    assert "cameras.0.id" in text and "cameras.0.fps" in text and "cameras.0.colour" in text


def test_shipped_simulated_cameras_file_is_valid():
    cams = load_cameras(Path(__file__).resolve().parents[2] / "deploy" / "cameras.sim.yaml")
    assert len(cams) >= 4


def test_replay_detector_reads_recorded_detections(tmp_path: Path):
    path = tmp_path / "replay.jsonl"
    path.write_text(
        '{"camera_id": "c", "frame_seq": 0, "objects": [{"cls": "car", "conf": 0.9, "bbox": [1, 2, 30, 20]}]}\n'
    )
    assert ReplayDetector(path).detect("c", None, 0)[0].cls == "car"  # type: ignore[arg-type]
