"""The box noise a camera measures on its still road users (models.box_jitter)."""

from __future__ import annotations

import numpy as np
import pytest

from models.box_jitter import MIN_RESIDUALS, BoxJitter


def feed(
    jitter: BoxJitter,
    sigma: float,
    rng: np.random.Generator,
    tracks: int = 20,
    frames: int = 15,
    start_t: float = 0.0,
    first_track: int = 0,
    px_per_s: float = 0.0,
    outliers: float = 0.0,
    u_sigma: float | None = None,
) -> None:
    """Boxes at uneven frame times (a camera's clock jitters), their anchor shaken by ``sigma`` px (``u_sigma``
    across), standing or moving ``px_per_s``."""
    times = start_t + np.cumsum(rng.uniform(0.05, 0.6, frames))
    for track in range(first_track, first_track + tracks):
        u0, v0 = rng.uniform(100, 1800), rng.uniform(300, 1000)
        for t in times:
            du = rng.normal(0.0, sigma if u_sigma is None else u_sigma)
            dv = rng.normal(0.0, sigma) + (40.0 if rng.random() < outliers else 0.0)  # a box merged for a frame
            jitter.add(track, float(t), u0 + du, v0 + dv + px_per_s * (t - start_t))
        jitter.estimate()


@pytest.mark.parametrize("sigma", [0.8, 2.0, 6.0])
def test_the_noise_of_still_boxes_is_measured_from_any_start(sigma: float) -> None:
    """Stillness is judged on the pixels against the noise measured so far: a shaky detector's (6 px, three
    times the default) is found, not only its quiet frames."""
    jitter = BoxJitter(default_px=2.0)
    rng = np.random.default_rng(int(sigma * 10))
    for round_ in range(6):
        feed(jitter, sigma, rng, start_t=100.0 * round_, first_track=100 * round_)
    assert jitter.samples >= MIN_RESIDUALS
    assert jitter.estimate() == pytest.approx(sigma, rel=0.12)


def test_the_default_stands_until_enough_was_seen_and_moving_boxes_teach_nothing() -> None:
    jitter = BoxJitter(default_px=2.0)
    feed(jitter, 3.0, np.random.default_rng(1), tracks=2, frames=10)  # 16 residuals an axis
    assert jitter.samples < MIN_RESIDUALS and jitter.estimate() == 2.0
    moving = BoxJitter(default_px=2.0)
    feed(moving, 3.0, np.random.default_rng(2), px_per_s=200.0)  # a car crossing the picture
    assert moving.samples == 0 and moving.estimate() == 2.0


def test_the_larger_axis_is_the_noise_and_a_few_merged_boxes_barely_move_it() -> None:
    """A bottom centre's height is one box edge; its across, the mean of two."""
    jitter = BoxJitter(default_px=2.0)
    feed(jitter, 3.0, np.random.default_rng(3), u_sigma=3.0 / np.sqrt(2), outliers=0.05, tracks=40)
    assert jitter.estimate() == pytest.approx(3.0, rel=0.15)


def test_one_car_parked_for_hours_does_not_make_the_noise_its_own() -> None:
    jitter = BoxJitter(default_px=2.0)
    rng = np.random.default_rng(5)
    feed(jitter, 0.7, rng, tracks=1, frames=3000)  # a steady box, all day: one road user measures nothing
    assert jitter.estimate() == 2.0
    for round_ in (1, 2):  # the kept residuals full: the parked car's share is PER_TRACK of them
        feed(jitter, 4.0, rng, tracks=12, frames=30, start_t=2000.0 * round_, first_track=100 * round_)
    assert jitter.estimate() == pytest.approx(4.0, rel=0.15)


def test_the_estimate_follows_a_detector_that_shakes_more_at_night_and_keeps_the_last_when_none_stand() -> None:
    jitter = BoxJitter(default_px=2.0)
    rng = np.random.default_rng(4)
    feed(jitter, 1.0, rng)
    assert jitter.estimate() == pytest.approx(1.0, rel=0.15)
    for round_ in range(1, 4):
        feed(jitter, 4.0, rng, start_t=100.0 * round_, first_track=100 * round_)
    assert jitter.estimate() == pytest.approx(4.0, rel=0.15)
    feed(jitter, 4.0, rng, start_t=900.0, first_track=900, px_per_s=80.0)  # only traffic driving past
    assert jitter.estimate() == pytest.approx(4.0, rel=0.15)


def test_a_frame_seen_twice_or_a_clock_stepping_back_adds_nothing() -> None:
    jitter = BoxJitter(default_px=2.0)
    for t in (1.0, 2.0, 2.0, 1.5):
        jitter.add(1, t, 100.0, 100.0)
    assert jitter.samples == 0
