"""Which cameras a deployment accepts: records of unknown cameras go to the DLQ.

An unknown camera id would grow tables and metric labels without bound. Both agents that read
``detection-results`` ask here; the task generator counts and dead-letters, the recorder skips.
"""

from __future__ import annotations

from streams import metrics
from streams.errors import InvalidRecord
from streams.records import DetectionResult


def check_camera(det: DetectionResult, known: frozenset[str] | None, *, count: bool = True) -> None:
    """Raise :class:`InvalidRecord` when ``known`` is set and does not hold the record's camera."""
    if known is not None and det.camera_id not in known:
        if count:
            metrics.unknown_cameras_total.inc()
        raise InvalidRecord(f"unknown camera {det.camera_id!r} (not in the cameras file)")
