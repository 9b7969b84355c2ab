"""The soak's settled figures: growth from a given minute to the end, against that minute."""

from __future__ import annotations

from bench.capacity import settled


def test_growth_is_measured_from_the_minute_asked():
    samples = [
        {
            "minute": m,
            "rss_mb": 100.0 + 10 * min(m, 10),
            "data_dir_mb": 50.0,
            "cpu_ms_per_detection": 4.0,
            "lag_messages": 0,
        }
        for m in range(1, 21)
    ]
    samples[-1]["cpu_ms_per_detection"] = 5.0
    five, ten = settled(samples), settled(samples, 10)
    assert five is not None and ten is not None
    assert five["minutes"] == 15 and five["rss_growth"] == round(200 / 150 - 1, 4)
    assert ten["minutes"] == 10 and ten["rss_growth"] == 0.0 and ten["cpu_per_detection_ratio"] == 1.25
    assert settled(samples[:10], 10) is None
