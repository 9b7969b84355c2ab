"""The box noise a camera measures on its still road users (models.box_jitter)."""

from __future__ import annotations

import numpy as np
import pytest

from models.box_jitter import KEPT_RESIDUALS, MIN_RESIDUALS, STILL_MPS, BoxJitter


def feed(
    jitter: BoxJitter,
    sigma: float,
    rng: np.random.Generator,
    tracks: int = 20,
    frames: int = 15,
    speed: float = 0.0,
    start_t: float = 0.0,
    outliers: float = 0.0,
) -> None:
    """Still boxes at uneven frame times (a camera's clock jitters), their anchor shaken by ``sigma`` px."""
    times = start_t + np.cumsum(rng.uniform(0.05, 0.25, frames))
    for track in range(tracks):
        u0, v0 = rng.uniform(100, 1800), rng.uniform(300, 1000)
        for t in times:
            du, dv = rng.normal(0.0, sigma, 2)
            if rng.random() < outliers:
                dv += 40.0  # a box merged with a passer-by for a frame
            jitter.add(track, float(t), u0 + du, v0 + dv, speed)


@pytest.mark.parametrize("sigma", [0.8, 2.0, 5.0])
def test_the_noise_of_still_boxes_is_measured(sigma: float) -> None:
    jitter = BoxJitter(default_px=2.0)
    feed(jitter, sigma, np.random.default_rng(int(sigma * 10)))
    assert jitter.samples >= MIN_RESIDUALS
    assert jitter.sigma_px == pytest.approx(sigma, rel=0.12)


def test_the_default_stands_until_enough_was_seen_and_moving_boxes_teach_nothing() -> None:
    jitter = BoxJitter(default_px=2.0)
    feed(jitter, 6.0, np.random.default_rng(1), tracks=2, frames=10)  # 16 triples: 32 residuals
    assert jitter.samples < MIN_RESIDUALS and jitter.sigma_px == 2.0
    moving = BoxJitter(default_px=2.0)
    feed(moving, 6.0, np.random.default_rng(2), speed=STILL_MPS)
    assert moving.samples == 0 and moving.sigma_px == 2.0


def test_a_few_merged_boxes_barely_move_the_estimate() -> None:
    jitter = BoxJitter(default_px=2.0)
    feed(jitter, 3.0, np.random.default_rng(3), outliers=0.1)
    assert jitter.sigma_px == pytest.approx(3.0, rel=0.2)


def test_the_estimate_follows_a_detector_that_shakes_more_at_night() -> None:
    jitter = BoxJitter(default_px=2.0)
    rng = np.random.default_rng(4)
    feed(jitter, 1.0, rng)
    assert jitter.sigma_px == pytest.approx(1.0, rel=0.15)
    feed(jitter, 4.0, rng, tracks=KEPT_RESIDUALS // 26 + 1, start_t=100.0)  # 13 triples, 26 residuals a track
    assert jitter.sigma_px == pytest.approx(4.0, rel=0.15)


def test_a_frame_seen_twice_or_a_clock_stepping_back_adds_nothing() -> None:
    jitter = BoxJitter(default_px=2.0)
    for t in (1.0, 2.0, 2.0, 1.5):
        jitter.add(1, t, 100.0, 100.0, 0.0)
    assert jitter.samples == 0
