"""Trimming the C heap: freed blocks that glibc kept in its arenas go back to the OS."""

from __future__ import annotations

import pytest

from streams.heap import rss_bytes, trim


def test_trim_gives_back_what_a_burst_left_behind():
    if trim() is None:
        pytest.skip("no glibc malloc_trim here")
    burst = [bytearray(1000) for _ in range(200_000)]  # 200 MB of blocks too big for pymalloc
    pin = bytearray(1000)  # above the burst: its pages cannot simply shrink off the heap's top
    held = rss_bytes()
    del burst
    kept = rss_bytes()
    released = trim()
    assert released is not None
    assert kept > held - 100e6  # freed, but glibc kept most of it: the high-water mark a soak sees
    assert released > 100e6 and rss_bytes() < kept - 100e6
    del pin
