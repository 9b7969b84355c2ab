"""The conflict measures on cases worked by hand, the calibration's refusals, and SUMO as an oracle."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from models.calibration import CalibrationError, fit
from models.lanes import FlowMap
from models.ssm import (
    DEFAULT_EXTENT,
    MAX_TURN_RAD,
    GroundTrack,
    PathHistory,
    RoadUser,
    Thresholds,
    conflict_area_ttc,
    drac,
    measure,
    pair_ttc,
    quadratic_fit,
    time_to_collision,
)


def user(
    track_id: int,
    cls: str,
    x: float,
    y: float,
    vx: float,
    vy: float,
    *,
    heading: float | None = None,
    yaw_rate: float = 0.0,
) -> RoadUser:
    length, width = DEFAULT_EXTENT[cls]
    head = math.atan2(vy, vx) if heading is None else heading
    return RoadUser(track_id, cls, x, y, vx, vy, head, length, width, yaw_rate)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # follower 20 m behind at 10 m/s, leader at 5 m/s: gap 20 - 4.5 = 15.5 m closing at 5 m/s
        (user(1, "car", 0, 0, 10, 0), user(2, "car", 20, 0, 5, 0), 3.1),
        # head-on in the same lane: 30 - 4.5 = 25.5 m at 20 m/s
        (user(1, "car", 0, 0, 10, 0), user(2, "car", 30, 0, -10, 0), 1.275),
        # a pedestrian walking into the car's path: the boxes first overlap when the car's front
        # reaches x = 29.75 (t = 2.75) while the pedestrian is already inside the lane band (t >= 2.57)
        (user(1, "car", 0, 0, 10, 0), user(2, "person", 30, -5, 0, 1.5), 2.75),
        # already overlapping
        (user(1, "car", 0, 0, 0, 0), user(2, "car", 3, 0, 0, 0, heading=0.0), 0.0),
    ],
)
def test_ttc_matches_hand_worked_cases(a: RoadUser, b: RoadUser, expected: float) -> None:
    assert pair_ttc([a, b])[(1, 2)] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # parallel lanes 3.5 m apart: discs of the cars' length would collide, rectangles do not
        (user(1, "car", 0, 0, 10, 0), user(2, "car", 20, 3.5, 5, 0)),
        # a queue at a light: nobody moves
        (user(1, "car", 0, 0, 0, 0, heading=0.0), user(2, "car", 6, 0, 0, 0, heading=0.0)),
        # moving apart
        (user(1, "car", 0, 0, -5, 0), user(2, "car", 10, 0, 5, 0)),
        # two pedestrians are not a conflict pair
        (user(1, "person", 0, 0, 1, 0), user(2, "person", 2, 0, -1, 0)),
    ],
)
def test_pairs_that_never_meet_have_no_ttc(a: RoadUser, b: RoadUser) -> None:
    assert pair_ttc([a, b]) == {}


def test_a_turning_car_is_followed_along_its_arc() -> None:
    # heading north at 5 m/s turning left at 0.5 rad/s: a quarter circle of radius 10 m centred on
    # (-10, 0). A car coming south down x = -10 meets it near the end of the arc, which a straight
    # extrapolation misses entirely.
    turning = user(1, "car", 0, 0, 0, 5, yaw_rate=0.5)
    oncoming = user(2, "car", -10, 30, 0, -5)
    straight = user(1, "car", 0, 0, 0, 5)
    assert pair_ttc([straight, oncoming]) == {}
    assert 2.0 < pair_ttc([turning, oncoming])[(1, 2)] < 4.0


def test_drac_is_the_textbook_following_formula() -> None:
    # (v_f - v_l)^2 / (2 gap): 5^2 / (2 * 15.5)
    ttc = np.array([3.1])
    assert drac(np.array([5.0]), ttc)[0] == pytest.approx(25 / 31)
    assert drac(np.array([5.0]), np.array([np.inf]))[0] == 0.0


def test_measure_flags_by_threshold_and_names_the_pair() -> None:
    close = measure([user(1, "car", 0, 0, 10, 0), user(2, "person", 12, 0, 0, 0, heading=0.0)])
    assert [(c.a, c.b, c.pair) for c in close] == [(1, 2, "pedestrian-vehicle")]
    assert close[0].ttc_s == pytest.approx((12 - 2.25 - 0.25) / 10)
    far = measure([user(1, "car", 0, 0, 10, 0), user(2, "person", 40, 0, 0, 0, heading=0.0)])
    assert far == []  # TTC 3.75 s, DRAC 1.3 m/s^2: under both thresholds
    with pytest.raises(ValueError, match="ttc_s"):
        Thresholds(ttc_s=0)


def test_walking_up_to_a_standing_vehicle_is_no_conflict_but_a_moving_one_is() -> None:
    # a passenger walks at 1.2 m/s to the side door of a bus that stopped: closing in, TTC 0.5 s
    bus = user(1, "bus", 0, 0, 0, 0, heading=0.0)
    assert measure([bus, user(2, "person", 0, 2.4, 0, -1.2)]) == []
    # the same bus rolling at 2 m/s towards someone standing in its way is one
    rolling = user(1, "bus", 0, 0, 2.0, 0)
    assert [c.pair for c in measure([rolling, user(2, "person", 8.0, 0, 0, 0, heading=0.0)])] == ["pedestrian-vehicle"]
    # and a car running into a standing one is a rear-end conflict (one vehicle of the pair moves)
    assert measure([user(1, "car", 0, 0, 10, 0), user(2, "car", 12, 0, 0, 0, heading=0.0)]) != []


def test_pet_of_a_crossing_from_the_paths_driven() -> None:
    # the car passes (0, 0) at t = 3 and clears a 0.5 m pedestrian's path 0.25 s later; the pedestrian
    # reaches the car's 1.8 m wide path (0.25 + 0.9) / 1.0 s before (0, 0), at t = 6.85: PET 3.6 s
    paths = PathHistory()
    found = []
    for k in range(40):
        t = k * 0.5
        found += paths.add(t, [user(1, "car", -30 + 10 * t, 0, 10, 0), user(2, "person", 0, -8 + 1.0 * t, 0, 1.0)])
    assert len(found) == 1
    assert (found[0].first, found[0].second, found[0].pair) == (1, 2, "pedestrian-vehicle")
    assert found[0].pet_s == pytest.approx(3.6)


def test_ground_track_velocity_heading_and_turn_rate() -> None:
    track = GroundTrack()
    for k in range(6):
        state = track.update(k * 0.5, 2.0 * k * 0.5, 1.0)
    assert (state.vx, state.vy, state.yaw_rate) == pytest.approx((2.0, 0.0, 0.0), abs=1e-9)
    # braking at 2 m/s^2 from 10 m/s: the speed now, not half a window ago
    braking = GroundTrack()
    for k in range(5):
        t = k * 0.5
        state = braking.update(t, 10 * t - t * t, 0.0)
    assert state.vx == pytest.approx(10 - 2 * 2.0, abs=0.05)
    # a quarter circle of radius 10 at 5 m/s: 0.5 rad/s counter-clockwise
    turning = GroundTrack()
    for k in range(8):
        a = 0.5 * k * 0.5
        state = turning.update(k * 0.5, 10 * math.sin(a), 10 - 10 * math.cos(a))
    assert state.yaw_rate == pytest.approx(0.5, abs=0.05)
    assert state.heading == pytest.approx(0.5 * 3.5, abs=0.01)  # the heading now, not half a window ago
    # turning since its first heading, the chord of its first two positions (at 0.25 s)
    assert state.turned == pytest.approx(0.5 * 3.5 - 0.5 * 0.25, abs=0.02)
    # the same turn measured with 0.5 m of noise: a bend that noise could make is not read as one (the line fit,
    # whose heading is half a window old)
    noisy = GroundTrack()
    for k in range(8):
        a = 0.5 * k * 0.5
        state = noisy.update(k * 0.5, 10 * math.sin(a), 10 - 10 * math.cos(a), noise_m=0.5)
    assert state.heading == pytest.approx(0.5 * (3.5 - 0.5), abs=0.1)


def test_the_constant_acceleration_fit_is_least_squares_with_its_own_spread() -> None:
    rng = np.random.default_rng(5)
    for n in range(3, 12):
        times = np.sort(rng.uniform(0.0, 1.5, n))
        xs, ys = rng.normal(0, 20, n), rng.normal(0, 20, n)
        fit_ = quadratic_fit(list(zip(times, xs, ys, strict=True)), float(times[-1]))
        assert fit_ is not None
        tau = times - times[-1]
        cx, cy = np.polyfit(tau, xs, 2), np.polyfit(tau, ys, 2)
        assert (fit_.x, fit_.vx, fit_.ax) == pytest.approx((cx[2], cx[1], 2 * cx[0]), rel=1e-6, abs=1e-6)
        assert (fit_.y, fit_.vy, fit_.ay) == pytest.approx((cy[2], cy[1], 2 * cy[0]), rel=1e-6, abs=1e-6)
        design = np.stack([np.ones(n), tau, tau**2], axis=1)
        assert fit_.accel_sd == pytest.approx(2 * math.sqrt(np.linalg.inv(design.T @ design)[2, 2]), rel=1e-6)
    assert quadratic_fit([(0.0, 0.0, 0.0), (0.5, 5.0, 0.0)], 0.5) is None


def test_a_turn_is_read_from_the_positions_only_where_noise_could_not_have_bent_them() -> None:
    """The constant-acceleration fit gives a turning car's heading now; from noisy positions it would give
    every straight or braking car a turn, so each way (across, along) stands only past CURVATURE_SIGMAS; so
    does the line's own turn rate (its heading's change over a second)."""

    def turns(noise_m: float, brake: float = 0.0) -> int:
        """Of 200 cars going straight on (braking at ``brake`` from 10 m/s), seen with 0.3 m of noise (0.05 m when
        braking), at 2 fps: how many frames give a turn rate."""
        rng = np.random.default_rng(3)
        count = 0
        for _ in range(200):
            track = GroundTrack()
            for k in range(6):
                t = k * 0.5
                x = 10 * t - brake * t * t / 2
                sigma = 0.05 if brake else 0.3
                state = track.update(t, x + rng.normal(0, sigma), rng.normal(0, sigma), noise_m=noise_m)
                count += state.yaw_rate != 0.0
        return count

    # told the noise, a straight car turns in few frames: the fit's bend and the line's heading change over a
    # second each stand only past CURVATURE_SIGMAS of what the noise gives them (the line's alone turned 256 of
    # the 1,200 frames, the fit's about 630); a car braking hard is no more turning than one going on; an
    # infinite noise reads no turn at all
    assert turns(0.3) < turns(0.0) / 10
    assert turns(0.05, brake=3.0) <= 5 < turns(0.0, brake=3.0) / 4
    assert turns(math.inf) == turns(math.inf, brake=3.0) == 0
    # told the noise, a real turn is still read now where the camera sees it well (10 fps, 5 cm): a quarter
    # circle of radius 10 m at 5 m/s, whose heading the line gives a quarter of a radian late
    for noise_m, late in ((0.05, 0.1), (math.inf, 0.2)):
        rng = np.random.default_rng(4)
        track = GroundTrack()
        for k in range(30):
            a = 0.5 * k * 0.1
            state = track.update(
                k * 0.1, 10 * math.sin(a) + rng.normal(0, 0.05), 10 - 10 * math.cos(a) + rng.normal(0, 0.05), noise_m
            )
        error = abs(math.remainder(state.heading - 0.5 * 2.9, math.tau))
        assert (error < late) if noise_m < 1 else (error > late)


def test_a_car_braking_to_a_stop_is_not_read_as_reversing() -> None:
    """The parabola through a stop goes on backwards: read at the stop, a car braking at 4.5 m/s^2 (SUMO's
    default) reversed at 0.7 m/s and held a heading turned round while it stood."""
    for offset in (0.0, 0.1, 0.2, 0.3, 0.4):
        track = GroundTrack()
        for k in range(12):
            t = k * 0.5 + offset
            moving = min(t, 10 / 4.5)
            state = track.update(k * 0.5, 10 * moving - 4.5 * moving * moving / 2, 0.0)
            assert math.cos(state.heading) > 0.99 and state.vx >= 0.0


def test_a_turn_stopped_in_is_still_the_same_turn() -> None:
    """A left turner yielding half way stands, then creeps on: the turn it has made so far is kept, so the
    prediction still ends its turn at MAX_TURN_RAD rather than starting a new one; once it has driven
    straight on, the next turn counts from there."""
    for fps in (2.0, 10.0):
        track = GroundTrack()
        t, heading, x, y, speed = 0.0, 0.0, 0.0, 0.0, 5.0
        radius, readings = 12.0, []
        for step in range(400):  # 0.05 s steps
            dt = 0.05
            if step < 60 or heading >= math.pi / 2:  # straight, and straight again after a quarter turn
                rate = 0.0
            else:
                rate = speed / radius
            if heading >= math.radians(60) and step < 200:  # brake to a stop 60 degrees in, stand
                speed = max(0.0, speed - 4.0 * dt)
            elif step >= 200:  # then pull away gently, 1.5 m/s^2
                speed = min(5.0, speed + 1.5 * dt)
            heading = min(heading + rate * dt, math.pi / 2)
            x += speed * math.cos(heading) * dt
            y += speed * math.sin(heading) * dt
            t += dt
            if step % round(1 / (fps * dt)) == 0:
                state = track.update(t, x, y, noise_m=0.003)
                readings.append((heading, state.turned))
        in_turn = [turned for true, turned in readings if math.radians(70) < true < math.radians(89)]
        assert in_turn and min(in_turn) > math.radians(50), fps  # not restarted by the stop or the creep
        assert abs(readings[-1][1]) < math.radians(5), fps  # straight on for metres: the next turn starts here
    user = RoadUser(1, "car", 0.0, 0.0, 5.0, 0.0, 0.0, 4.5, 1.8, yaw_rate=0.3, turned=math.radians(95))
    assert user.turn_left == 0.0
    assert RoadUser(1, "car", 0.0, 0.0, 5.0, 0.0, 0.0, 4.5, 1.8, yaw_rate=-0.3, turned=-0.5).turn_left == (
        pytest.approx(MAX_TURN_RAD - 0.5)
    )


def test_a_car_leaving_a_turn_is_not_predicted_round_into_the_oncoming_lane() -> None:
    """A car that has turned left through a junction still has its turn rate for a frame or two; at that rate it
    was predicted on round, across the oncoming lane, into a car waiting there (most of the pairs the engine
    flagged in SUMO's signalised grid that SUMO never logged). A turn under way ends at MAX_TURN_RAD."""
    # westbound now, having turned 90 degrees left from northbound, still at 0.66 rad/s; a car stands in the
    # eastbound lane 3.2 m to its left, 12 m ahead
    leaving = RoadUser(1, "car", 140.5, 301.6, -10.0, 0.0, math.pi, 4.5, 1.8, yaw_rate=0.66, turned=math.pi / 2)
    waiting = RoadUser(2, "car", 128.5, 298.4, 0.0, 0.0, 0.0, 4.5, 1.8)
    assert pair_ttc([leaving, waiting], 3.0) == {}
    # a turn that has only begun still goes on round: the same car a quarter turn earlier meets the waiting one
    starting = RoadUser(1, "car", 140.5, 301.6, -10.0, 0.0, math.pi, 4.5, 1.8, yaw_rate=0.66, turned=0.0)
    assert pair_ttc([starting, waiting], 3.0)
    flow = FlowMap((100.0, 280.0, 160.0, 320.0))  # nothing learned: every step goes on at the car's own rate
    assert pair_ttc([leaving, waiting], 3.0, flow) == {}
    assert pair_ttc([starting, waiting], 3.0, flow)
    # and the same turning right (mirrored across y = 300): the turn's sign does not matter
    mirror = RoadUser(1, "car", 140.5, 298.4, -10.0, 0.0, math.pi, 4.5, 1.8, yaw_rate=-0.66, turned=-math.pi / 2)
    waiting_right = RoadUser(2, "car", 128.5, 301.6, 0.0, 0.0, 0.0, 4.5, 1.8)
    assert pair_ttc([mirror, waiting_right], 3.0) == {}
    assert pair_ttc([mirror, waiting_right], 3.0, flow) == {}
    assert pair_ttc([RoadUser(**{**mirror.__dict__, "turned": 0.0}), waiting_right], 3.0)


def test_a_slow_road_user_turning_back_is_not_given_its_old_heading() -> None:
    """Below the speed that moves the heading, the velocity was rebuilt along the old one: a
    pedestrian walking back west at 0.4 m/s still went east, and TTC read the pair's sign wrong."""
    track = GroundTrack()
    x = 0.0
    for k in range(6):  # east at 1.4 m/s
        x = 1.4 * k * 0.5
        state = track.update(k * 0.5, x, 0.0)
    assert state.vx == pytest.approx(1.4, abs=0.05)
    for k in range(6, 12):  # back west at 0.4 m/s
        x -= 0.4 * 0.5
        state = track.update(k * 0.5, x, 0.0)
    assert state.vx == pytest.approx(-0.4, abs=0.05) and abs(state.vy) < 1e-9
    assert state.heading == pytest.approx(0.0)  # the orientation held: too slow to tell


def test_lanes_straighten_a_car_leaving_a_bend() -> None:
    # eastbound traffic at y = 0 teaches the lane; a car coming out of a bend at 15 degrees is
    # predicted back along the lane, not across the oncoming one at y = 3.2
    lanes = FlowMap((-50, -20, 50, 20))
    for x in np.arange(-40, 40, 1.0):
        lanes.learn(np.array([[x, 0.0]] * 3), np.zeros(3), np.full(3, 10.0))
    steps = np.arange(0, 3.05, 0.1)
    pos, head = lanes.predict(
        np.array([[0.0, 0.0]]), np.array([math.radians(15)]), np.array([10.0]), np.zeros(1), steps
    )
    assert abs(head[0, -1]) < math.radians(1)
    assert pos[0, -1, 1] < 1.0  # straight on it would be at 30 * sin(15 deg) = 7.8 m
    oncoming = user(2, "car", 40, 3.2, -10, 0)
    leaving = user(1, "car", 0, 0, 10 * math.cos(math.radians(15)), 10 * math.sin(math.radians(15)))
    assert pair_ttc([leaving, oncoming], horizon_s=5.0) != {}
    assert pair_ttc([leaving, oncoming], horizon_s=5.0, lanes=lanes) == {}


def test_calibration_fits_and_refuses() -> None:
    square = [[0, 360, 0, 0], [640, 360, 40, 0], [640, 0, 40, 22.5], [0, 0, 0, 22.5]]
    calib = fit(square)
    assert calib.rms_error_m < 1e-6
    assert calib.to_ground([[320, 180]])[0] == pytest.approx([20, 11.25])
    assert calib.to_image([[20, 11.25]])[0] == pytest.approx([320, 180])
    with pytest.raises(CalibrationError, match="at least 4"):
        fit(square[:3])
    with pytest.raises(CalibrationError, match="one line"):
        fit([[0, 0, 0, 0], [100, 0, 10, 0], [200, 0, 20, 0], [0, 100, 0, 10]])
    with pytest.raises(CalibrationError, match=r"point 5 is off by \d") as refused:
        fit([*square, [320, 180, 25, 11.25]])
    assert "off by" in str(refused.value).split("\n", 1)[1]  # each point's error follows


def test_four_points_are_said_to_be_unchecked_and_a_fifth_catches_a_mistyped_one() -> None:
    square = [[0, 360, 0, 0], [640, 360, 40, 0], [640, 0, 40, 22.5], [0, 0, 0, 22.5]]
    typo = [[0, 360, 0, 0], [640, 360, 40, 0], [640, 0, 40, 2.25], [0, 0, 0, 22.5]]  # 22.5 typed 2.25
    four = fit(typo)  # accepted: 4 points fit any homography exactly
    assert not four.checked and four.rms_error_m < 1e-6 and "cannot show" in four.report()
    assert fit([*square, [160, 120, 10, 15]]).checked
    with pytest.raises(CalibrationError, match=r"point \d is off by \d"):
        fit([*typo, [160, 120, 10, 15]])


def test_five_points_that_are_four_on_a_line_and_one_are_refused_and_a_repeated_point_checks_nothing() -> None:
    on_a_line = [[100, 400, 0, 10], [300, 400, 5, 10], [500, 400, 10, 10], [700, 400, 15, 10]]
    with pytest.raises(CalibrationError, match="no 4 of them are in general position"):
        fit([*on_a_line, [400, 200, 7, 30]])
    square = [[100, 100, 0, 0], [500, 100, 10, 0], [500, 500, 10, 10], [100, 500, 0, 10]]
    assert not fit([*square, square[2]]).checked  # five rows, four points: nothing to catch a typo with
    # nor a fifth 1-3 px from the first: with it a third point mistyped by 3 m still fitted within 0.02 m
    typo = [[0, 360, 0, 0], [640, 360, 40, 0], [640, 0, 43, 22.5], [0, 0, 0, 22.5]]
    assert not any(fit([*typo, [d, 360, 0, 0]]).checked for d in (0.6, 1.4, 3.0))
    assert fit([*square, [300, 300, 5, 5]]).checked


def test_sumo_oracle_on_a_small_grid(tmp_path: Path) -> None:
    """The SUMO replay end to end on a 2-minute priority grid: every following conflict SUMO logs is seen
    with a TTC close to SUMO's, and the PETs of its crossings are found."""
    pytest.importorskip("sumo")
    from bench.ssm import compare, pet_compare, replay
    from sim.sumo import SCENARIOS, Scenario, read_fcd, read_ssm, run

    base = SCENARIOS["grid_priority"]
    small = Scenario("small", base.net, period_s=1.5, duration_s=150.0, seed=2)
    fcd, log = run(small, tmp_path)
    traj = read_fcd(fcd)
    conflicts = read_ssm(log)
    seen = replay(traj, 2.0)
    result = compare(conflicts, seen, traj)
    assert result["following"]["sumo_conflicts_ttc_lt_3s"] >= 3
    assert result["following"]["found_with_finite_ttc"] >= 0.9 * result["following"]["sumo_conflicts_ttc_lt_3s"]
    assert result["following"]["ttc_abs_err_s_p50"] <= 0.3
    pet = pet_compare(conflicts, seen)
    assert pet["sumo_pet_le_threshold"] >= 3
    assert pet["recall"] >= 0.8


def test_sumo_following_conflicts_under_the_threshold_are_flagged(tmp_path: Path) -> None:
    """Drivers who act once a second close up to following TTCs under 1.5 s (the default SUMO driver never
    does): on a 3-minute corridor the engine flags nearly all of them, with SUMO's TTC, and a camera down the
    road flags those it sees as they happen (not every pair it sees drive through once)."""
    pytest.importorskip("sumo")
    from bench.ssm import compare, replay, visible_pairs
    from sim.sumo import FOLLOWING_TYPES, SCENARIOS, Scenario, VirtualCamera, read_fcd, read_ssm, run

    base = SCENARIOS["corridor_reaction"]
    small = Scenario("small", base.net, period_s=1.0, duration_s=180.0, seed=2, sumo_args=base.sumo_args)
    fcd, log = run(small, tmp_path)
    traj = read_fcd(fcd)
    conflicts = read_ssm(log)
    under = [c for c in conflicts if c.min_ttc_type in FOLLOWING_TYPES and c.min_ttc <= 1.5]
    assert len({c.pair for c in under}) >= 20
    result = compare(conflicts, replay(traj, 2.0), traj, lookahead_s=0.5)
    following = result["by_type"]["following"]
    assert following["missed"] <= 0.1 * following["sumo"]
    assert result["ttc_abs_err_s_p50"] <= 0.3
    camera = VirtualCamera(target=base.camera_target, yaw=base.camera_yaw)
    seen = visible_pairs(traj, camera, 2.0)
    cam = compare(conflicts, replay(traj, 2.0, camera=camera, noise_px=1.0), traj, visible=seen, lookahead_s=0.5)
    in_view = cam["by_type"]["following"]
    assert in_view["sumo"] >= 5
    assert in_view["missed"] <= 0.2 * in_view["sumo"]
    # counted as visible only around the conflict: most pairs the camera sees together at some frame had theirs
    # out of its view (each conflict once: SUMO logs it from both vehicles)
    ever_seen = len({(*c.pair, round(c.begin)) for c in under if c.pair in seen})
    assert ever_seen >= 2 * in_view["sumo"]


def test_true_routes_follow_each_vehicle_own_path() -> None:
    """The ceiling's predictor: along the vehicle's own later path (round a corner), at its speed, or braking
    to a standstill; a position not in the frame is an error, not a guess."""
    from bench.ssm import TrueRoutes
    from sim.sumo import Trajectories

    # 10 m/s east for 2 s, then north round a right angle: one row each 0.1 s, decelerating at -2 m/s^2 in the end
    t = np.round(np.arange(0.0, 4.0, 0.1), 1)
    x = np.where(t <= 2.0, 10 * t, 20.0)
    y = np.where(t <= 2.0, 0.0, 10 * (t - 2.0))
    speed = np.where(t < 3.0, 10.0, 10.0 - 2.0 * (t - 3.0))
    traj = Trajectories(
        t=t,
        vehicle=np.array(["v"] * len(t)),
        x=x,
        y=y,
        heading=np.where(t <= 2.0, 0.0, math.pi / 2),
        speed=speed,
        lane=np.array(["l"] * len(t)),
    )
    steps = np.array([0.0, 0.5, 1.5])
    routes = TrueRoutes(traj)
    at = np.array([[10.0, 0.0]])  # t = 1.0
    routes.frame(np.array([10]), at)
    pos, head = routes.predict(at, np.array([0.0]), np.array([10.0]), np.zeros(1), steps)
    assert pos[0].ravel() == pytest.approx([10, 0, 15, 0, 20, 5], abs=1e-6)
    assert head[0, 2] == pytest.approx(math.pi / 2, abs=1e-6)
    braking = TrueRoutes(traj, braking=True)
    at = np.array([[20.0, 12.0]])  # t = 3.2: 9.6 m/s, -2 m/s^2, stops 23.04 m on
    braking.frame(np.array([32]), at)
    pos, _ = braking.predict(at, np.array([math.pi / 2]), np.array([9.6]), np.zeros(1), np.array([0.0, 1.0, 10.0]))
    assert pos[0, 1] == pytest.approx([20, 12 + 9.6 - 1.0], abs=0.05)
    assert pos[0, 2] == pytest.approx([20, 12 + 9.6**2 / 4], abs=0.05)
    with pytest.raises(KeyError):
        braking.predict(np.array([[3.0, 3.0]]), np.zeros(1), np.ones(1), np.zeros(1), steps)


def test_the_ceiling_takes_each_vehicle_turn_rate_from_its_headings() -> None:
    from bench.ssm import yaw_rates
    from sim.sumo import Trajectories

    t = np.round(np.arange(0.0, 3.0, 0.1), 1)
    turning = np.remainder(0.5 * t + math.pi, math.tau) - math.pi  # crosses +-pi: unwrapped, not a jump
    traj = Trajectories(
        t=np.r_[t, t],
        vehicle=np.array(["turns"] * len(t) + ["straight"] * len(t)),
        x=np.zeros(2 * len(t)),
        y=np.zeros(2 * len(t)),
        heading=np.r_[turning, np.full(len(t), 1.0)],
        speed=np.full(2 * len(t), 5.0),
        lane=np.array(["l"] * (2 * len(t))),
    )
    yaw = yaw_rates(traj)
    assert yaw[: len(t)] == pytest.approx(np.full(len(t), 0.5), abs=1e-6)
    assert not yaw[len(t) :].any()


def _crossing(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float], horizon: float = 3.0
) -> tuple[float, bool]:
    """conflict_area_ttc of two cars, each (x, y, heading, speed) going straight, 5 m by 1.8 m."""
    steps = np.arange(0.0, horizon + 0.05, 0.2)
    paths, heads, speeds = [], [], []
    for x, y, h, v in (a, b):
        paths.append(np.stack([x + np.cos(h) * v * steps, y + np.sin(h) * v * steps], axis=1)[None])
        heads.append(np.full((1, len(steps)), h))
        speeds.append(np.array([v]))
    ext = np.array([[5.0, 1.8]])
    ttc, crosses, _ = conflict_area_ttc(
        paths[0], heads[0], speeds[0], ext, paths[1], heads[1], speeds[1], ext, steps, horizon
    )
    return float(ttc[0]), bool(crosses[0])


def test_crossing_ttc_is_the_followers_time_to_an_area_the_leader_still_occupies() -> None:
    """SUMO's crossing TTC, worked by hand at a right angle: the area is 1.8 m wide (the other's width), each
    enters it when its front (2.5 m ahead of its centre) reaches it."""
    east, north = 0.0, math.pi / 2
    # a: 20 m from the crossing at 10 m/s enters at (20 - 2.5 - 0.9) / 10 = 1.66 s; b: 15 m away enters at
    # 1.16 s and leaves at (15 + 3.4) / 10 = 1.84 s, after a has arrived
    assert _crossing((-20, 0, east, 10), (0, -15, north, 10)) == pytest.approx((1.66, True), abs=1e-6)
    # b 8 m away has left (1.14 s) before a arrives: no conflict, though the paths cross
    ttc, crosses = _crossing((-20, 0, east, 10), (0, -8, north, 10))
    assert math.isinf(ttc) and crosses
    # b standing in a's lane never leaves: a's time to the area
    assert _crossing((-20, 0, east, 10), (0, 0, north, 0)) == pytest.approx((1.66, True), abs=1e-6)
    # parallel lanes never cross: left to the bodies' overlap
    ttc, crosses = _crossing((-20, 0, east, 10), (0, 3.5, east, 5))
    assert math.isinf(ttc) and not crosses


def test_a_road_user_braking_to_a_stop_short_of_the_area_is_no_crossing_conflict() -> None:
    """The arrival times slow each one at its current deceleration (SUMO's estimate): b, 15 m from the
    crossing at 10 m/s braking at 5 m/s^2, stops after 10 m, short of the area (11.6 m on); without braking it is
    a conflict."""
    steps = np.arange(0.0, 3.05, 0.2)
    a = np.stack([-20 + 10 * steps, np.zeros_like(steps)], axis=1)[None]
    b = np.stack([np.zeros_like(steps), -15 + 10 * steps], axis=1)[None]
    ha, hb = np.zeros((1, len(steps))), np.full((1, len(steps)), math.pi / 2)
    ext = np.array([[5.0, 1.8]])
    v = np.array([10.0])
    plain, _, _ = conflict_area_ttc(a, ha, v, ext, b, hb, v, ext, steps, 3.0)
    braking, _, _ = conflict_area_ttc(a, ha, v, ext, b, hb, v, ext, steps, 3.0, np.zeros(1), np.array([-5.0]))
    assert plain[0] == pytest.approx(1.66)
    assert math.isinf(braking[0])


def test_measure_flags_a_ttc_that_reaches_the_threshold_before_the_next_frame() -> None:
    """A follower closing at 5 m/s on a leader 9 m ahead: TTC 1.8 s (DRAC 1.4 m/s^2, under its threshold). At
    2 fps the next look is at 1.3 s, past the threshold: flagged now, with the TTC measured now."""
    users = [user(1, "car", 0, 0, 10, 0), user(2, "car", 13.5, 0, 5, 0)]
    assert measure(users, Thresholds()) == []
    flagged = measure(users, Thresholds(), lookahead_s=0.5)
    assert [c.ttc_s for c in flagged] == pytest.approx([1.8])
    assert measure(users, Thresholds(), lookahead_s=0.2) == []


def test_sumo_ttc_series_are_read_and_sampled_at_the_camera_rate(tmp_path: Path) -> None:
    """A conflict whose TTC dips under 1.5 s between two frames at 2 fps: a camera measuring at its frames
    cannot find it, one looking half a second ahead can (bench.ssm's sampling ceiling)."""
    from bench.ssm import _sampling
    from sim.sumo import read_ssm

    log = tmp_path / "ssm.xml"
    log.write_text(
        '<SSMLog><conflict begin="180.00" end="183.00" ego="a" foe="b">'
        '<timeSpan values="181.40 181.50 181.60 181.70 181.80 181.90 182.00"/>'
        '<TTCSpan values="2.02 1.82 1.63 1.47 1.28 NA NA"/>'
        '<minTTC time="181.80" position="0,0" type="11" value="1.28" speed="4.0"/>'
        '<maxDRAC time="NA" position="NA" type="NA" value="NA" speed="NA"/>'
        '<PET time="NA" position="NA" type="NA" value="NA" speed="NA"/>'
        "</conflict></SSMLog>"
    )
    (conflict,) = read_ssm(log)
    assert conflict.min_ttc == 1.28 and conflict.min_ttc_type == 11
    assert conflict.ttc_series[1] == (181.5, 1.82) and len(conflict.ttc_series) == 5
    keys = {("a", "b", 180.0)}
    at_2 = _sampling([conflict], keys, 2.0, 1.5, 0.5)
    assert at_2 is not None
    assert (at_2["found_at_frames"], at_2["found_looking_ahead"]) == (0, 1)
    at_10 = _sampling([conflict], keys, 10.0, 1.5, 0.1)
    assert at_10 is not None and at_10["found_at_frames"] == 1


def test_a_shallow_crossing_already_inside_each_others_area_is_left_to_the_bodies() -> None:
    """At 30 degrees the area widens by a half-width over its tangent: two cars can both be in it with their
    bodies still apart. That is no collision (TTC 0, dropped) but the bodies' own first contact, 0.13 s on."""
    h = math.radians(150)

    def car(i: int, x: float, y: float, head: float) -> RoadUser:
        return RoadUser(i, "car", x, y, 8 * math.cos(head), 8 * math.sin(head), head, 4.5, 1.8)

    a, b = car(1, 1.0, 0.0, 0.0), car(2, 4.0 - 4 * math.cos(h), -4 * math.sin(h), h)
    (conflict,) = measure([a, b])
    contact = time_to_collision(
        np.array([[a.x, a.y]]),
        np.array([[a.vx, a.vy]]),
        np.array([a.heading]),
        np.array([[4.5, 1.8]]),
        np.array([[b.x, b.y]]),
        np.array([[b.vx, b.vy]]),
        np.array([b.heading]),
        np.array([[4.5, 1.8]]),
    )[0]
    assert conflict.ttc_s == pytest.approx(contact)
    assert 0 < contact < 0.2


def test_arrivals_slow_at_the_braking_kept_past_noise() -> None:
    from models.ssm import _arrival, _braking

    # 11.6 m from 10 m/s at -4 m/s^2: 10 t - 2 t^2 = 11.6, t = (10 - sqrt(7.2)) / 4
    assert _arrival(np.array([11.6]), np.array([10.0]), np.array([-4.0]))[0] == pytest.approx((10 - 7.2**0.5) / 4)
    assert math.isinf(_arrival(np.array([13.0]), np.array([10.0]), np.array([-4.0]))[0])  # stops at 12.5 m
    assert _arrival(np.array([-1.0]), np.array([0.0]), np.array([0.0]))[0] == 0.0  # there already
    assert _braking(np.array([-0.5, -3.0, -20.0, 2.0])).tolist() == [0.0, -3.0, -8.0, 0.0]


def test_a_crossing_drac_is_the_gentler_way_out_not_closing_speed_over_twice_the_ttc() -> None:
    """SUMO's crossing DRAC, by hand, for the right-angle case above (TTC 1.66 s): a may arrive only as b
    leaves (1.84 s), slowing from 10 m/s over 16.6 m: 2 (10 - 16.6 / 1.84) / 1.84 = 1.063 m/s^2; b after a
    (2.34 s) would need 4.31. The closing speed over twice the TTC said 4.26. With b standing in a's path,
    a must stop in 16.6 m: 100 / 33.2 = 3.01."""

    def car(i: int, x: float, y: float, head: float, v: float) -> RoadUser:
        return RoadUser(i, "car", x, y, v * math.cos(head), v * math.sin(head), head, 5.0, 1.8)

    east, north = 0.0, math.pi / 2
    (c,) = measure([car(1, -20, 0, east, 10), car(2, 0, -15, north, 10)], lookahead_s=0.5)
    assert (c.ttc_s, c.drac_mps2) == pytest.approx((1.66, 2 * (10 - 16.6 / 1.84) / 1.84))
    (c,) = measure([car(1, -20, 0, east, 10), car(2, 0, 0, north, 0)], lookahead_s=0.5)
    assert (c.ttc_s, c.drac_mps2) == pytest.approx((1.66, 100 / 33.2))


def test_a_ground_track_given_a_time_it_has_passed_starts_over_from_there() -> None:
    track = GroundTrack()
    track.update(0.0, 0.0, 0.0)
    track.update(0.5, 5.0, 0.0)
    state = track.update(0.0, 1.0, 0.0)  # a clock stepped back: no two samples at one time (it divided by 0)
    assert (state.x, state.vx) == (1.0, 0.0) and len(track.samples) == 1
    state = track.update(0.5, 6.0, 0.0)
    assert state.vx == pytest.approx(10.0)


def test_a_car_queued_since_it_came_into_view_points_down_its_lane_not_across_the_next() -> None:
    from models.ground_view import GroundView, Seen

    px = 16.0  # a top-down camera, 16 px a metre

    def box(x: float, y: float, w: float, h: float) -> list[float]:
        return [px * (x - w / 2), px * (y - h / 2), px * (x + w / 2), px * (y + h / 2)]

    corners = [[0, 0, 0, 0], [1600, 0, 100, 0], [1600, 1600, 100, 100], [0, 1600, 0, 100], [800, 400, 50, 25]]
    view = GroundView(fit(corners), anchor="centre")
    t, track = 0.0, 100
    for _ in range(12):  # traffic north in two lanes, 3 m apart, teaches the camera its lanes
        for i in range(20):
            y = 10 + 4.0 * i
            view.observe(t, [Seen(track, "car", box(48, y, 1.8, 4.5)), Seen(track + 1, "car", box(51, y, 1.8, 4.5))])
            t += 0.5
        track, t = track + 2, t + 3.0
    conflicts = []
    for i in range(20):  # car 1 stands queued in the left lane; car 2 passes it in the right one at 8 m/s
        users, found = view.observe(
            t, [Seen(1, "car", box(48, 50, 1.8, 4.5)), Seen(2, "car", box(51, 20 + 4.0 * i, 1.8, 4.5))]
        )
        conflicts += found
        t += 0.5
    assert users[1].heading == pytest.approx(math.pi / 2, abs=0.2)  # laid along x it reached into the next lane
    assert conflicts == []


def test_a_turn_budget_is_spent_only_turning_the_turn_s_way() -> None:
    """Where no lane is learned a turning car goes on at its own rate for at most ``turn_left``; a learned lane
    that steered it the other way first has spent none of it."""
    flow = FlowMap((-10.0, -20.0, 60.0, 20.0))
    for _ in range(5):  # a lane bearing 0.2 rad right, learned only over the first 4 m
        flow.learn(np.array([[-1.0, 0.0], [1.0, 0.0]]), np.full(2, -0.2), np.full(2, 5.0))
    steps = np.arange(0.0, 3.05, 0.1)
    _, headings = flow.predict(
        np.array([[0.0, 0.0]]), np.array([0.0]), np.array([5.0]), np.array([0.5]), steps, np.array([0.5])
    )
    assert headings[0].min() < -0.1  # steered right by the lane first
    assert headings[0, -1] == pytest.approx(headings[0].min() + 0.5, abs=1e-6)  # then the whole 0.5 rad left
