"""Measured conflicts in the pipeline: a trigger ahead of the pixel rules, alerts before the VLM, its verdict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from agents.alerting import judged, merge_alert, pending_measured
from agents.llm_scheduler import describe
from agents.task_generator import measured_results_for, tasks_for
from agents.task_policy import Budget, GlobalCap, measured_alerts, plan_tasks
from models.calibration import fit
from models.ground_view import GroundView, Seen, conflict_level
from models.ssm import Thresholds
from sim.records import assessment_task, detection
from streams.records import Conflict, DetectedObject, DetectionResult, TrafficGroup, decode, to_bytes
from streams.settings import Settings

BUDGET = Budget(refresh_s=20.0, per_min=6.0, burst=3.0, min_interest=0.3)


def with_conflict(det: DetectionResult, level: str = "high", ttc: float | None = 0.8) -> DetectionResult:
    a, b = det.groups[0].track_ids
    det.conflicts = [Conflict(a=a, b=b, pair="pedestrian-vehicle", ttc_s=ttc, speeds_mps=[1.4, 8.0], level=level)]
    return det


@pytest.mark.parametrize(
    ("ttc", "pet", "drac", "level"),
    [
        (0.4, None, 0.0, "critical"),
        (None, 0.9, 0.0, "high"),
        (1.4, None, 0.0, "medium"),
        (None, 1.9, 0.0, "medium"),
        (2.5, None, 3.5, "medium"),
        (2.5, None, 1.0, "low"),
    ],
)
def test_conflict_levels(ttc: float | None, pet: float | None, drac: float, level: str) -> None:
    assert conflict_level(ttc, pet, drac, Thresholds()) == level


def test_a_ttc_reaching_its_threshold_before_the_next_frame_is_medium() -> None:
    assert conflict_level(1.8, None, 0.0, Thresholds()) == "low"
    assert conflict_level(1.8, None, 0.0, Thresholds(), lookahead_s=0.5) == "medium"


def test_the_meter_looks_ahead_by_the_time_between_its_frames() -> None:
    """A follower closing at 5 m/s on a leader 9 m ahead (TTC 1.8 s): at 2 fps the next look comes after the
    TTC has passed 1.5 s, so the pair is flagged (medium) with the TTC measured now; at 10 fps it is not yet;
    a camera that paused for seconds does not widen the look beyond MAX_LOOKAHEAD_S."""
    from models.ground_view import MAX_LOOKAHEAD_S, ConflictMeter
    from models.lanes import FlowMap
    from models.ssm import RoadUser

    def pair(t: float) -> dict[int, RoadUser]:
        return {
            1: RoadUser(1, "car", 10 * t, 0.0, 10.0, 0.0, 0.0, 4.5, 1.8),
            2: RoadUser(2, "car", 13.5 + 10 * t, 0.0, 5.0, 0.0, 0.0, 4.5, 1.8),
        }

    for fps, flagged in ((2.0, True), (10.0, False)):
        meter = ConflictMeter(FlowMap((-50, -50, 200, 50)), Thresholds())
        assert meter.conflicts(0.0, pair(0.0), list(pair(0.0).values())) == []  # no interval known yet
        users = pair(1 / fps)
        found = meter.conflicts(1 / fps, users, list(users.values()))
        assert [(c.ttc_s, c.level, c.lookahead_s) for c in found] == ([(1.8, "medium", 0.5)] if flagged else [])
    meter.conflicts(60.0, users, list(users.values()))
    assert meter.lookahead_s == MAX_LOOKAHEAD_S


def test_a_conflict_makes_a_task_ahead_of_the_pixel_rules_and_again_only_when_it_worsens() -> None:
    state, decisions, _ = plan_tasks(None, detection("c", 1, track_base=10), 100.0, BUDGET)
    assert [d.reason for d in decisions] == ["new"]
    # the same pair a second later: the pixel rules see nothing new, the measured conflict does
    state, decisions, _ = plan_tasks(state, with_conflict(detection("c", 2, track_base=10), "medium"), 101.0, BUDGET)
    assert [(d.reason, d.conflict.level if d.conflict else None) for d in decisions] == [("conflict", "medium")]
    state, decisions, _ = plan_tasks(state, with_conflict(detection("c", 3, track_base=10), "medium"), 102.0, BUDGET)
    assert decisions == []
    state, decisions, _ = plan_tasks(state, with_conflict(detection("c", 4, track_base=10), "critical"), 103.0, BUDGET)
    assert [d.reason for d in decisions] == ["conflict"]


def test_a_conflict_task_carries_its_measures_into_the_prompt() -> None:
    det = with_conflict(detection("c", 1))
    tasks = tasks_for(det, 100.0, {}, GlobalCap(0), Settings())
    assert [t.reason for t in tasks] == ["conflict"] and tasks[0].conflict is not None
    text = describe(tasks[0])
    assert "time to collision 0.8 s" in text and "1.4 m/s and 8.0 m/s" in text


def test_measured_alerts_once_per_pair_unless_the_level_rises() -> None:
    state, _, _ = plan_tasks(None, detection("c", 1), 100.0, BUDGET)
    first = measured_alerts(state, with_conflict(detection("c", 2, track_base=2)), 100.0, "high", 60.0)
    assert [a.group_id for a in first] == ["g3-4"]
    assert measured_alerts(state, with_conflict(detection("c", 3, track_base=2)), 101.0, "high", 60.0) == []
    worse = measured_alerts(state, with_conflict(detection("c", 4, track_base=2), "critical"), 102.0, "high", 60.0)
    assert len(worse) == 1
    assert measured_alerts(state, with_conflict(detection("c", 5, track_base=2), "medium"), 103.0, "high", 60.0) == []


def test_a_measured_result_alerts_without_a_vlm_call_and_reads_back() -> None:
    states: dict[bytes, object] = {}
    det = with_conflict(detection("c", 1))
    tasks_for(det, 100.0, states, GlobalCap(0), Settings())  # type: ignore[arg-type]
    results = measured_results_for(det, 100.0, states, Settings())  # type: ignore[arg-type]
    assert len(results) == 1
    result = decode(type(results[0]), to_bytes(results[0]))
    assert (result.status, result.risk_level, result.model, result.group_id) == ("measured", "high", "ssm", "g3-4")
    assert result.task_id.endswith(":measured") and "time to collision 0.8 s" in result.summary


def alert(task: str, level: str, at_s: float, source: str = "vlm") -> dict[str, object]:
    return {
        "task_id": task,
        "group_id": "g",
        "level": level,
        "score": 0.5,
        "summary": task,
        "raised_at": at_s * 1000,
        "camera_id": "c",
        "source": source,
        "verdict": "",
    }


@pytest.mark.parametrize(
    ("vlm_level", "verdict"), [("high", "confirmed"), ("critical", "escalated"), ("low", "downgraded")]
)
def test_the_vlm_judges_the_same_measured_alert(vlm_level: str, verdict: str) -> None:
    recent, publish = merge_alert([], alert("m", "high", 100, "measured"), 60.0, 10)
    assert publish and pending_measured(recent, "g", 101_000, 60.0)
    recent, publish = merge_alert(recent, alert("v", vlm_level, 101), 60.0, 10)
    assert publish and len(recent) == 1
    updated = recent[0]
    assert (updated["task_id"], updated["level"], updated["verdict"], updated["measured_level"]) == (
        "m",
        vlm_level,
        verdict,
        "high",
    )
    assert not pending_measured(recent, "g", 102_000, 60.0)
    # after the verdict, more VLM answers merge as before: published only when the level escalates
    _, again = merge_alert(recent, alert("v2", vlm_level, 102), 60.0, 10)
    assert not again
    assert judged(alert("m", "high", 1, "measured"), alert("v", "none", 2))["verdict"] == "downgraded"


def test_version_1_records_still_read() -> None:
    det = detection("c", 1)
    old = orjson.loads(to_bytes(det))
    old["v"] = 1
    del old["conflicts"]
    for obj in old["objects"]:
        del obj["ground"], obj["velocity"]
    back = decode(DetectionResult, orjson.dumps(old))
    assert back.conflicts is None and back.objects[0].ground is None


def test_the_ground_view_measures_a_pedestrian_stepping_in_front_of_a_car() -> None:
    # a top-down camera at 10 px a metre: a car driving east at 10 m/s, a pedestrian walking north into its lane
    calib = fit([[0, 400, 0, 0], [800, 400, 80, 0], [800, 0, 80, 40], [0, 0, 0, 40]])
    view = GroundView(calib, "centre")
    seen = []
    for k in range(8):
        t = k * 0.5
        car_x = (10 + 10 * t) * 10
        # the pedestrian walks north from y = 14 m at 1.5 m/s; the car drives along y = 20 m and would
        # hit them at x = 44.8 m, t = 3.2 s
        ped_y = 400 - (14 + 1.5 * t) * 10
        frame = [
            Seen(1, "car", [car_x - 22, 400 - 209, car_x + 22, 400 - 191]),
            Seen(2, "person", [445, ped_y - 3, 451, ped_y + 3]),
        ]
        users, conflicts = view.observe(t, frame)
        seen += [(t, c) for c in conflicts]
        if t == 2.0:
            assert users[1].vx == pytest.approx(10, abs=0.3) and users[2].vy == pytest.approx(1.5, abs=0.2)
    assert {(c.a, c.b, c.pair) for _, c in seen} == {(1, 2, "pedestrian-vehicle")}
    at_two = [c for t, c in seen if t == 2.0]
    assert at_two and at_two[0].ttc_s == pytest.approx(1.2, abs=0.15) and at_two[0].level == "medium"
    assert at_two[0].speeds_mps is not None and math.isclose(at_two[0].speeds_mps[0], 10, abs_tol=0.3)


def test_the_simulated_cameras_ship_a_calibration() -> None:
    from models.cameras import load_cameras

    cams = load_cameras(Path(__file__).parents[2] / "deploy" / "cameras.sim.yaml")
    assert cams and all(c.calibration is not None for c in cams)
    calib = cams[0].calibration.fitted()  # type: ignore[union-attr]
    assert calib.checked  # five points: a mistyped one would show
    assert np.allclose(calib.to_ground([[320, 90], [100, 300]]), [[20, 16.875], [6.25, 3.75]])  # 16 px a metre


def test_an_assessment_task_without_a_conflict_describes_as_before() -> None:
    task = assessment_task(detection("c", 1), "t-1", 10_000)
    assert "Measured" not in describe(task)


def test_the_camera_frame_keeps_the_most_urgent_conflict_between_takes_and_the_road_users_on_the_ground() -> None:
    from agents.detection_join import DetectionJoin, record_detection
    from streams.tables import camera_key

    join = DetectionJoin(detections={}, camera_view={})
    first = with_conflict(detection("c", 1), "high", ttc=0.9)
    first.objects[0].ground, first.objects[0].velocity = [3.0, 4.0], [0.0, 1.4]
    record_detection(join, first, 1000.0, 0, joined=True)
    view = join.camera_view[camera_key("c")]
    assert view is not None and view["last_conflict"]["ttc_s"] == 0.9
    assert join.frames["c"]["latest_detection"]["ground"] == [
        {"id": 3, "cls": "person", "x": 3.0, "y": 4.0, "vx": 0.0, "vy": 1.4}
    ]  # type: ignore[index]
    # within the second: not taken, but the worse conflict is held for the next take, the milder one is not
    record_detection(join, with_conflict(detection("c", 2), "critical", ttc=0.3), 1000.3, 0, joined=True)
    record_detection(join, with_conflict(detection("c", 3), "medium", ttc=1.4), 1000.6, 0, joined=True)
    record_detection(join, detection("c", 4), 1001.2, 0, joined=False)
    assert join.camera_view[camera_key("c")]["last_conflict"]["ttc_s"] == 0.3  # type: ignore[index]
    assert join.frames["c"]["latest_detection"]["frame_seq"] == 4
    join.forget_frames()  # a rebalance: the last conflict is the table's, it stays
    record_detection(join, detection("c", 5), 1002.3, 0, joined=False)
    assert join.camera_view[camera_key("c")]["last_conflict"]["ttc_s"] == 0.3  # type: ignore[index]


def test_an_answer_about_a_frame_before_the_conflict_does_not_judge_it() -> None:
    measured = {**alert("m", "high", 100, "measured"), "captured_at": 100_000.0}
    recent, _ = merge_alert([], measured, 60.0, 10)
    earlier = {**alert("v", "none", 101), "captured_at": 99_000.0}
    assert not pending_measured(recent, "g", 101_000, 60.0, captured_at=99_000.0)
    recent, publish = merge_alert(recent, earlier, 60.0, 10)
    assert not publish and recent[0]["verdict"] == ""
    later = {**alert("v2", "critical", 102), "captured_at": 100_500.0}
    recent, publish = merge_alert(recent, later, 60.0, 10)
    assert publish and recent[0]["verdict"] == "escalated"


def test_a_graver_answer_about_an_earlier_frame_is_still_published_and_the_conflict_still_awaits() -> None:
    measured = {**alert("m", "high", 100, "measured"), "captured_at": 100_000.0}
    recent, _ = merge_alert([], measured, 60.0, 10)
    earlier = {**alert("v", "critical", 101), "captured_at": 99_000.0}
    recent, publish = merge_alert(recent, earlier, 60.0, 10)
    assert publish and len(recent) == 1 and recent[0]["level"] == "critical"
    assert pending_measured(recent, "g", 101_500, 60.0)  # the answer about its own frame is still to come
    same_frame = {**alert("v2", "critical", 102), "captured_at": 100_000.0}
    recent, publish = merge_alert(recent, same_frame, 60.0, 10)
    # judged against what the measures found (high), not the earlier answer shown meanwhile
    assert (recent[0]["verdict"], recent[0]["measured_level"], recent[0]["measured_summary"]) == (
        "escalated",
        "high",
        "m",
    )


def test_a_measured_alert_the_measures_make_graver_after_a_verdict_awaits_the_vlm_again() -> None:
    recent, _ = merge_alert([], {**alert("m", "high", 100, "measured"), "captured_at": 100_000.0}, 60.0, 10)
    recent, _ = merge_alert(recent, {**alert("v", "low", 101), "captured_at": 100_000.0}, 60.0, 10)
    assert recent[0]["verdict"] == "downgraded" and recent[0]["level"] == "low"
    graver = {**alert("m2", "critical", 102, "measured"), "captured_at": 102_000.0}
    recent, publish = merge_alert(recent, graver, 60.0, 10)
    assert publish and recent[0]["level"] == "critical" and recent[0]["source"] == "measured"
    assert not recent[0].get("verdict")  # not "escalated": the VLM said low; the measures said critical
    assert pending_measured(recent, "g", 102_500, 60.0, captured_at=102_000.0)
    assert "measured_level" not in recent[0] and "vlm_task_id" not in recent[0]  # the first verdict's, gone
    recent, publish = merge_alert(recent, {**alert("v2", "low", 103), "captured_at": 102_000.0}, 60.0, 10)
    assert publish and (recent[0]["level"], recent[0]["verdict"]) == ("low", "downgraded")
    assert (recent[0]["measured_level"], recent[0]["measured_summary"]) == ("critical", "m2")


def test_every_conflict_inside_a_group_alerts_on_that_group() -> None:
    state, _, _ = plan_tasks(None, detection("c", 1), 100.0, BUDGET)
    det = detection("c", 2, track_base=2)
    a, b = det.groups[0].track_ids
    det.groups[0].track_ids = [a, b, 9]  # a third road user in the group, in a second conflict
    det.conflicts = [
        Conflict(a=a, b=b, pair="pedestrian-vehicle", ttc_s=0.4, level="critical"),
        Conflict(a=a, b=9, pair="pedestrian-vehicle", ttc_s=0.9, level="high"),
    ]
    alerts = measured_alerts(state, det, 100.0, "high", 60.0)
    assert [(x.conflict.b, x.group_id) for x in alerts] == [(b, det.groups[0].group_id), (9, det.groups[0].group_id)]


def test_a_pixel_beyond_the_horizon_has_no_ground_point() -> None:
    from sim.sumo import VirtualCamera

    # 5 m up, looking at a point 40 m ahead: the horizon is 100 px above the image centre (v = 260)
    camera = VirtualCamera(target=(0.0, 0.0), height_m=5.0, back_m=40.0, focal_px=800.0)
    calib = fit(camera.clicked_points())
    near = calib.to_ground([[640, 600]])[0]
    assert np.isfinite(near).all()
    sky = calib.to_ground([[640, 100]])[0]  # above the horizon: the homography alone mirrors it behind the camera
    assert np.isnan(sky).all()
    # a pixel's ground grows with the distance: what a box's jitter moves its ground point by
    step = calib.metres_per_pixel([[640, 600], [640, 360]])
    assert 0.0 < step[0] < 0.05 < step[1] < 1.0
    assert step[1] == pytest.approx(np.hypot(*(calib.to_ground([[640, 361]])[0] - calib.to_ground([[640, 360]])[0])))
    assert np.isnan(calib.metres_per_pixel([[640, 100]])).all()


def test_jittery_frame_times_still_give_a_track_its_three_positions() -> None:
    from models.ssm import GroundTrack

    track = GroundTrack()
    for t in (0.0, 0.51, 1.03, 1.55):  # 2 fps with a little capture jitter: two intervals span more than 1 s
        track.update(t, t, 0.0)
    assert len(track.samples) >= 3


def test_a_slow_road_user_moves_the_way_it_goes_before_its_heading_is_known() -> None:
    from models.ssm import GroundTrack

    track = GroundTrack()
    for k in range(4):
        state = track.update(k * 0.5, -0.4 * k * 0.5, 0.0)  # west at 0.4 m/s: under the heading's minimum speed
    assert state.vx == pytest.approx(-0.4, abs=0.01)


def test_a_conflict_between_road_users_in_different_groups_gets_a_group_of_its_own() -> None:
    from models.grouping import cluster, conflict_groups
    from streams.records import DetectedObject

    person = DetectedObject(track_id=1, cls="person", conf=0.9, bbox=[100.0, 100.0, 112.0, 134.0])
    car = DetectedObject(track_id=2, cls="car", conf=0.9, bbox=[300.0, 100.0, 370.0, 134.0])  # far in pixels
    other = DetectedObject(track_id=3, cls="car", conf=0.9, bbox=[380.0, 100.0, 450.0, 134.0])
    objects = [person, car, other]
    groups = cluster(objects)
    assert not any({1, 2} <= set(g.track_ids) for g in groups)
    conflict = Conflict(a=2, b=1, pair="pedestrian-vehicle", ttc_s=0.9, level="high")
    extra = conflict_groups(objects, groups, [conflict, conflict])
    assert [(g.track_ids, g.members, g.kind) for g in extra] == [([1, 2], [0, 1], "pedestrian_vehicle")]
    assert extra[0].interest >= 0.3  # above the shipped min_group_score: the producer crops it
    assert conflict_groups(objects, [*groups, *extra], [conflict]) == []


def test_queued_cars_in_conflict_leave_the_reserve_to_a_pedestrian() -> None:
    budget = Budget(refresh_s=20.0, per_min=30.0, burst=20.0, min_interest=0.3)
    state = None
    for seq in range(1, 5):  # 8 following conflicts a frame, each between two new cars
        det = detection("c", seq, track_base=1000 * seq)
        det.groups, det.objects = [], []
        groups, objects, conflicts = [], [], []
        for k in range(8):
            a, b = 1000 * seq + 2 * k + 1, 1000 * seq + 2 * k + 2
            cars = [
                DetectedObject(
                    track_id=t, cls="car", conf=0.9, bbox=[100.0 * k, 10.0 * i, 100.0 * k + 60, 10.0 * i + 30]
                )
                for i, t in enumerate((a, b))
            ]
            objects += cars
            groups.append(
                TrafficGroup(
                    group_id=f"g{a}-{b}",
                    kind="vehicle_cluster",
                    track_ids=[a, b],
                    members=[len(objects) - 2, len(objects) - 1],
                    bbox=[100.0 * k, 0.0, 100.0 * k + 60, 40.0],
                    min_gap=0.2,
                    interest=0.4,
                )
            )
            conflicts.append(Conflict(a=a, b=b, pair="vehicle-vehicle", ttc_s=0.9, level="high"))
        det.objects, det.groups, det.conflicts = objects, groups, conflicts
        state, decisions, _ = plan_tasks(state, det, 100.0 + seq * 0.5, budget)
        assert state["tokens"] >= budget.burst * 0.8 - 1e-9  # the reserve stays
    pedestrian = with_conflict(detection("c", 9, track_base=9000), "medium")
    _, decisions, _ = plan_tasks(state, pedestrian, 102.5, budget)
    assert [d.reason for d in decisions] == ["conflict"]


def test_a_pet_conflict_counts_when_the_first_road_user_has_left_the_frame() -> None:
    from models.ground_view import ConflictMeter
    from models.lanes import FlowMap
    from models.ssm import RoadUser

    def run(car_gone_from: float) -> list[tuple[float, float | None, str]]:
        meter = ConflictMeter(FlowMap((-60, -60, 60, 60)), Thresholds())
        out = []
        for k in range(12):
            t = k * 0.5
            car = RoadUser(1, "car", -20 + 10 * t, 0.0, 10.0, 0.0, 0.0, 4.5, 1.8)  # over x = 0 at t = 2
            ped = RoadUser(2, "person", 0.0, -5.1 + 1.5 * t, 0.0, 1.5, math.pi / 2, 0.5, 0.5)  # at y = 0 at t = 3.4
            users = {2: ped} if t >= car_gone_from else {1: car, 2: ped}
            out += [(t, c.pet_s, c.level) for c in meter.conflicts(t, users, list(users.values())) if c.pet_s]
        return out

    seen_throughout = run(car_gone_from=99.0)
    assert seen_throughout == [(3.5, 0.38, "critical")]
    assert run(car_gone_from=3.5) == seen_throughout  # out of view (or missed) when the pedestrian crosses


def test_a_measured_alert_on_no_group_awaits_no_verdict() -> None:
    from agents.task_policy import UNGROUPED

    lone = {**alert("m", "high", 100, "measured"), "group_id": UNGROUPED + "1~2"}
    recent, publish = merge_alert([], lone, 60.0, 10)
    assert publish and not pending_measured(recent, UNGROUPED + "1~2", 101_000, 60.0)
    assert pending_measured(merge_alert([], alert("m", "high", 100, "measured"), 60.0, 10)[0], "g", 101_000, 60.0)


def test_a_restarted_producers_new_pair_is_not_silenced_by_the_old_runs_pair_of_the_same_ids():
    from agents.task_policy import Budget, measured_alerts, plan_tasks
    from streams.records import Conflict, DetectedObject, DetectionResult, TrafficGroup

    budget = Budget(refresh_s=20, per_min=60, burst=10, min_interest=0.3)

    def frame(run: str, seq: int, t: float) -> DetectionResult:
        objects = [
            DetectedObject(track_id=1, cls="person", conf=0.9, bbox=[100, 100, 120, 160], speed=0.0),
            DetectedObject(track_id=2, cls="car", conf=0.9, bbox=[130, 110, 230, 170], speed=0.0),
        ]
        group = TrafficGroup(
            group_id="g1-2",
            kind="pedestrian_vehicle",
            members=[0, 1],
            track_ids=[1, 2],
            bbox=[100, 100, 230, 170],
            min_gap=0.1,
            interest=0.9,
        )
        conflict = Conflict(a=1, b=2, pair="pedestrian-vehicle", ttc_s=0.4, level="critical")
        return DetectionResult(
            camera_id="cam",
            frame_seq=seq,
            captured_at=t * 1000,
            frame_w=640,
            frame_h=480,
            model="m",
            objects=objects,
            groups=[group],
            crops={},
            run=run,
            conflicts=[conflict],
        )

    first = frame("run-a", 10, 1000.0)
    state, decisions, _ = plan_tasks(None, first, 1000.0, budget)
    assert len(measured_alerts(state, first, 1000.0, "high", 60)) == 1
    # 10 s later the producer has restarted: its tracker counts from 1, and 1 and 2 are other road users
    second = frame("run-b", 0, 1010.0)
    state, decisions, _ = plan_tasks(state, second, 1010.0, budget)
    assert [d.reason for d in decisions] == ["conflict"]
    assert len(measured_alerts(state, second, 1010.0, "high", 60)) == 1


def test_a_conflict_group_without_its_crop_spends_no_budget_and_is_not_marked_assessed() -> None:
    """The producer crops only groups above min_group_score (or the image store was down): planned,
    such a group spent a token and was marked assessed, and no task or result ever followed."""
    states: dict[bytes, object] = {}
    bare = with_conflict(detection("c", 1, track_base=10))
    bare.crops = {}
    assert tasks_for(bare, 100.0, states, GlobalCap(0), Settings()) == []  # type: ignore[arg-type]
    state = next(iter(states.values()))
    assert state["tasks_made"] == 0 and not state["conflicts"]  # type: ignore[index]
    # the same pair's next frame has its crop: the conflict is new to the policy, so a task
    tasks = tasks_for(with_conflict(detection("c", 2, track_base=10)), 100.5, states, GlobalCap(0), Settings())  # type: ignore[arg-type]
    assert [t.reason for t in tasks] == ["conflict"]


def test_a_frame_read_again_raises_its_measured_alert_again_under_the_same_task_id() -> None:
    """A frame re-read (its result's send failed, or the worker died after its state was written)
    found its alert in the cooldown and raised nothing: the alert that needs no VLM was lost."""
    states: dict[bytes, object] = {}
    det = with_conflict(detection("c", 1, track_base=2))
    tasks_for(det, 100.0, states, GlobalCap(0), Settings())  # type: ignore[arg-type]
    first = measured_results_for(det, 100.0, states, Settings())  # type: ignore[arg-type]
    tasks = tasks_for(det, 100.5, states, GlobalCap(0), Settings())  # type: ignore[arg-type]
    again = measured_results_for(det, 100.5, states, Settings())  # type: ignore[arg-type]
    assert [r.task_id for r in again] == [r.task_id for r in first] and len(first) == 1
    # the task made again carries the frame's measures into its prompt
    assert [(t.reason, t.conflict is not None) for t in tasks] == [("replay", True)]
    # the next frame of the same pair, within the cooldown: no new alert
    nxt = with_conflict(detection("c", 2, track_base=2))
    tasks_for(nxt, 101.0, states, GlobalCap(0), Settings())  # type: ignore[arg-type]
    assert measured_results_for(nxt, 101.0, states, Settings()) == []  # type: ignore[arg-type]


def test_an_answer_about_a_frame_long_after_the_measured_one_does_not_judge_it() -> None:
    """The conflict's own task failed; an answer 30 s later (the scene calm by then) 'downgraded'
    the measured alert. It judges only about a frame within VERDICT_WINDOW_S after it."""
    measured = {**alert("m", "high", 100, "measured"), "captured_at": 99_500.0}
    recent, _ = merge_alert([], measured, 60.0, 10)
    late = {**alert("v", "none", 130), "captured_at": 129_500.0}
    assert not pending_measured(recent, "g", 130_000, 60.0, late["captured_at"])
    recent, publish = merge_alert(recent, late, 60.0, 10)
    assert not publish and recent[0]["level"] == "high" and not recent[0].get("verdict")
    soon = {**alert("v2", "low", 102), "captured_at": 101_500.0}  # two seconds after: its verdict
    assert pending_measured(recent, "g", 102_000, 60.0, soon["captured_at"])
    recent, publish = merge_alert(recent, soon, 60.0, 10)
    assert publish and recent[0]["verdict"] == "downgraded"


def _oblique() -> tuple[object, list[list[float]]]:
    """A camera 8 m up over a road, 10 m behind y = 0, looking 50 m ahead; its points out to 60 m."""
    from sim.sumo import VirtualCamera

    camera = VirtualCamera(target=(0.0, 40.0), height_m=8.0, back_m=50.0, focal_px=1400.0, width=1920, height=1080)
    ground = np.array([[x, y] for y in (10.0, 25.0, 40.0, 60.0) for x in (-6.0, 6.0)])
    pix, inside = camera.project(ground)
    assert inside.all()
    return camera, [[u, v, x, y] for (u, v), (x, y) in zip(pix.tolist(), ground.tolist(), strict=True)]


def test_a_calibration_with_the_image_upside_down_is_refused() -> None:
    """v counted up from the bottom is a homography too (all errors 0): the horizon then lay below
    the points, and every box nearer than it had no ground position or a wrong one."""
    from models.calibration import CalibrationError

    _, points = _oblique()
    assert fit(points).checked
    flipped = [[u, 1080 - v, x, y] for u, v, x, y in points]
    with pytest.raises(CalibrationError, match="horizon below the points"):
        fit(flipped)


def test_far_towards_the_horizon_a_parked_car_gets_no_position_and_no_phantom_speed() -> None:
    """Where a pixel spans metres, a one-pixel jitter of a parked car's box read as 5-14 m/s."""
    from models.calibration import MAX_M_PER_PX

    camera, points = _oblique()
    calib = fit(points)
    view = GroundView(calib, "bottom")
    rng = np.random.default_rng(1)
    for distance, measured in ((30.0, True), (300.0, False)):
        pix, _ = camera.project(np.array([[2.0, distance]]))
        u, v = (float(c) for c in pix[0])
        speeds = []
        for k in range(12):
            jitter = float(rng.integers(-1, 2))
            users, _ = view.observe(k * 0.5, [Seen(int(distance), "car", (u - 5, v - 8, u + 5, v + jitter))])
            speeds += [users[int(distance)].speed] if int(distance) in users else []
        if measured:
            assert len(speeds) == 12 and max(speeds) < 0.5  # near: parked, and measured so
        else:
            assert speeds == []  # far: no position rather than a made-up speed
            step = np.hypot(*(np.diff(calib.to_ground([[u, v], [u, v + 1]]), axis=0)[0]))
            assert np.isnan(step)
    near = calib.to_ground([[960.0, 1000.0], [960.0, 1001.0]])
    assert np.hypot(*(near[1] - near[0])) < MAX_M_PER_PX


def _clipped_box(camera: object, x: float, y: float, heading: float) -> list[float] | None:
    """A car's image box as a detector gives it: clipped to the frame; None once wholly out of it."""
    from sim.sumo import VirtualCamera

    assert isinstance(camera, VirtualCamera)
    c, s = math.cos(heading), math.sin(heading)
    corners = [
        (x + c * dl - s * dw, y + s * dl + c * dw, z) for dl in (-2.25, 2.25) for dw in (-0.9, 0.9) for z in (0.0, 1.5)
    ]
    homog = np.c_[np.array(corners), np.ones(8)] @ camera.projection().T
    pix = homog[:, :2] / homog[:, 2:3]
    x1, y1 = np.maximum(pix.min(axis=0), 0.0)
    x2, y2 = np.minimum(pix.max(axis=0), [camera.width - 1.0, camera.height - 1.0])
    return [float(x1), float(y1), float(x2), float(y2)] if x2 > x1 and y2 > y1 else None


def test_a_car_leaving_at_the_bottom_of_the_frame_is_not_read_as_stopping() -> None:
    """A box clipped at the frame's bottom kept its bottom centre on one ground line while the car drove
    on: its speed fell towards nothing and the car 12 m behind it, at the same 10 m/s, got a TTC of about
    a second to a car that had not slowed at all."""
    from models.ground_view import cut_at_edge

    camera, points = _oblique()
    view = GroundView(fit(points), "bottom")
    heading = -math.pi / 2  # towards the camera, out at the bottom of the frame
    cut_seen, measured = 0, []
    for k in range(24):  # 5 fps: the leader from 40 m to 0 m ahead of the camera's footprint
        t = k * 0.2
        seen = []
        for track, start in ((1, 40.0), (2, 52.0)):
            box = _clipped_box(camera, 0.0, start - 10.0 * t, heading)
            if box is not None:
                cut = cut_at_edge(box, 1920, 1080, "bottom")
                cut_seen += cut
                seen.append(Seen(track, "car", box, cut))
        users, conflicts = view.observe(t, seen)
        assert not conflicts, f"t={t:.1f}: {conflicts}"
        if 1 in users and len(view.tracks[1][1].samples) >= 3:
            measured.append(users[1].speed)
    assert cut_seen >= 3  # the leader left through the bottom edge, clipped for several frames
    assert measured and min(measured) == pytest.approx(10.0, abs=0.5)
    # the steady view the detector saw is the frame shifted: a box is cut by the nearer of their edges
    assert not cut_at_edge([30, 10, 80, 1065], 1920, 1080, "bottom")
    assert cut_at_edge([30, 10, 80, 1065], 1920, 1080, "bottom", (0.0, 8.0))  # the frame's bottom, 8 px lower
    assert cut_at_edge([30, 10, 80, 1079], 1920, 1080, "bottom", (0.0, -8.0))  # the steady view's bottom
    assert cut_at_edge([0, 10, 80, 500], 1920, 1080, "bottom", (8.0, 0.0))  # the steady view's left
    assert cut_at_edge([1880, 10, 1919, 500], 1920, 1080, "bottom", (-8.0, 0.0))
    assert cut_at_edge([30, 10, 80, 1075], 1920, 1080, "bottom")  # YOLO at 640 px boxes a 1920 frame in 3 px steps
    assert not cut_at_edge([30, 0, 80, 500], 1920, 1080, "bottom")  # a cut top moves no bottom centre
    assert cut_at_edge([30, 0, 80, 500], 1920, 1080, "centre")


def _speed_errors(measure_jitter: bool, box_sd: float = 6.0, fps: float = 5.0) -> tuple[float, list[float]]:
    """A shaky detector (``box_sd`` px on every box edge) over parked cars and a car driving away at 10 m/s, lap
    after lap: the camera's jitter estimate, and the driving car's speed error frame by frame."""
    camera, points = _oblique()
    view = GroundView(fit(points), "bottom")
    if not measure_jitter:
        view.jitter.add = lambda *args: None  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    parked = [(x, y) for x in (-8.0, 8.0) for y in (15.0, 25.0, 35.0, 45.0)]
    errors = []
    for k in range(int(40 * fps)):
        t = k / fps
        lap = int(t // 4.0)
        cars = [(100 + i, x, y) for i, (x, y) in enumerate(parked)] + [(1000 + lap, 2.0, 12.0 + 10.0 * (t - 4.0 * lap))]
        seen = []
        for track, x, y in cars:
            box = _clipped_box(camera, x, y, math.pi / 2)
            assert box is not None
            seen.append(Seen(track, "car", [c + float(rng.normal(0.0, box_sd)) for c in box]))
        users, _ = view.observe(t, seen)
        mover = users.get(1000 + lap)
        if mover is not None and len(view.tracks[1000 + lap][1].samples) >= 3 and t > 10:
            errors.append(abs(mover.speed - 10.0))
    return view.jitter.estimate(), errors


@pytest.mark.parametrize("fps", [2.0, 5.0])
def test_a_shaky_detector_is_measured_on_parked_cars_and_not_read_as_speed_changes(fps: float) -> None:
    """The box noise was a constant 2 px: a detector shaking its boxes by 6 px had its noise read as braking
    and speeding up (the constant-acceleration fit passed a noise test three times too tight)."""
    sigma, measured = _speed_errors(True, fps=fps)
    assert sigma == pytest.approx(6.0, rel=0.15)  # the bottom centre's height: the bottom edge's 6 px
    fixed_sigma, fixed = _speed_errors(False, fps=fps)
    assert fixed_sigma == 2.0
    assert len(measured) == len(fixed) > 15 * fps
    assert np.percentile(measured, 90) < 0.75 * np.percentile(fixed, 90)
    assert np.median(measured) < np.median(fixed)


def test_the_ground_grid_is_drawn_for_an_oblique_camera() -> None:
    """OpenCV scales the homography to make its last entry 1: the ground side of an oblique camera's
    horizon can be the negative one, and the grid drew nothing there."""
    from models.calibration import draw_grid

    _, points = _oblique()
    calib = fit(points)
    frame = np.zeros((1080, 1920, 3), np.uint8)
    drawn = draw_grid(frame, calib)
    green = (drawn[..., 1] > 0) & (drawn[..., 2] == 0)
    assert green.sum() > 10_000


def test_a_slow_camera_still_measures_speeds() -> None:
    """At 0.5 fps every frame came more than the track gap (2 s) after the last: no track had a speed."""
    view = GroundView(
        fit([[0, 360, 0, 0], [640, 360, 40, 0], [640, 0, 40, 22.5], [0, 0, 0, 22.5]]), "centre", frame_interval_s=2.0
    )
    state = None
    for k in range(5):
        t = k * 2.05  # a little late each time
        x = 16.0 * (5.0 + 1.5 * t)  # 1.5 m/s along x, 16 px a metre
        users, _ = view.observe(t, [Seen(1, "person", (x - 4, 100, x + 4, 120))])
        state = users[1]
    assert state is not None and state.speed == pytest.approx(1.5, abs=0.05)


def test_a_frame_read_again_after_its_deadline_still_gets_its_tasks_and_alert_back() -> None:
    """A lost send is read again late (a session timeout, recovery, other workers' drain): the stale
    check came first, so a frame the state marks as planned and alerted on made neither its task
    (not even an 'expired' result) nor its alert again: both vanished."""
    s = Settings()  # type: ignore[call-arg]
    states: dict[bytes, object] = {}
    det = with_conflict(detection("c", 1, track_base=2))
    det.captured_at = 1_000_000.0  # 1000 s
    first_tasks = tasks_for(det, 1000.2, states, GlobalCap(0), s)  # type: ignore[arg-type]
    first = measured_results_for(det, 1000.2, states, s)  # type: ignore[arg-type]
    assert len(first_tasks) == 1 and len(first) == 1
    late = 1000.0 + s.task_deadline_s + 15
    tasks = tasks_for(det, late, states, GlobalCap(0), s)  # type: ignore[arg-type]
    assert [(t.task_id, t.reason) for t in tasks] == [(first_tasks[0].task_id, "replay")]
    assert tasks[0].deadline < late * 1000  # past: the scheduler answers 'expired' without a call
    again = measured_results_for(det, late, states, s)  # type: ignore[arg-type]
    assert [r.task_id for r in again] == [first[0].task_id]
    # a frame never planned, as old: a backlog, skipped
    backlog = with_conflict(detection("c", 2, track_base=20))
    backlog.captured_at = 1_000_500.0
    assert tasks_for(backlog, late, states, GlobalCap(0), s) == []  # type: ignore[arg-type]
    assert measured_results_for(backlog, late, states, s) == []  # type: ignore[arg-type]
