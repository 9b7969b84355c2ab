"""Handing the C heap's free pages back to the operating system, every ``heap_trim_s``.

A worker's allocations follow its backlog: a burst of records (a rebalance, a slow VLM, a
broker stall) fills fetch buffers, decoded events and in-flight tasks, and once the burst has
been worked off glibc keeps the freed pages in its arenas for the next one. ``malloc_trim(0)``
returns every whole free page of every arena. It runs on a thread (ctypes lets the GIL go), not
on the event loop: it walks every arena under its lock, which with a large fragmented heap is
not free. In the 30-minute soak (``bench/results/capacity.json``, ``soak``) RSS was 409-439 MiB
from minute 9 on while the trims handed back about 43 MiB a minute: buffers freed after each
burst and taken again at the next (``roadwatch_heap_trimmed_bytes_total`` counts that gross flow,
not a saving). glibc only: elsewhere (musl, a preloaded jemalloc) it logs that once and does
nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from typing import Any

from streams import metrics
from streams.app import app, settings

logger = logging.getLogger(__name__)


def _malloc_trim() -> Any | None:
    """glibc's ``malloc_trim``, resolved once at import (no ``ldconfig`` run on the event loop)."""
    try:
        trim_fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim_fn.argtypes = [ctypes.c_size_t]
    trim_fn.restype = ctypes.c_int
    return trim_fn


_MALLOC_TRIM = _malloc_trim()


def rss_bytes() -> int:
    """This process's resident set (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> int | None:
    """Give the C heap's free pages back: the drop in RSS across the call (other threads' own
    allocations meanwhile included, never below 0), or None without glibc."""
    if _MALLOC_TRIM is None:
        return None
    before = rss_bytes()
    _MALLOC_TRIM(0)
    return max(0, before - rss_bytes())


async def heap_trim() -> None:
    released = await asyncio.to_thread(trim)
    if released is not None:
        metrics.heap_trimmed_bytes_total.inc(released)


if settings.heap_trim_s > 0:
    if _MALLOC_TRIM is None:
        logger.info("ROADWATCH_HEAP_TRIM_S: this C library has no malloc_trim (not glibc); nothing is trimmed")
    else:
        app.timer(interval=settings.heap_trim_s)(heap_trim)
