"""The Faust tables of ``shared/DESIGN.md``.

Camera-keyed tables are co-partitioned with the main topics: a worker holds the state of the
cameras whose partitions it owns, and ``/cameras/{id}/`` is routed there with ``table_route``.
``key_pool`` is a GlobalTable written through the partitioner (from the scheduler or a web
request alike), so every worker sees every key's cooldown and disable; it has one partition
and a recovery buffer of 1, the configuration Faust documents against a GlobalTable recovery
loop with several instances.
"""

from __future__ import annotations

from typing import Any

import faust

from streams.app import app, settings

#: Keys are strings, values plain JSON (dicts and lists): readable in the changelog topics.
JSON: faust.Schema[str, Any] = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")

#: camera_id -> task-generator state: last frame, fps, groups assessed, VLM token bucket.
camera_state = app.Table("camera_state", default=None, schema=JSON, partitions=settings.topic_partitions)

#: detection_id -> compact detection (objects, groups, frame size) for the result join.
detections = app.Table("detections", default=None, schema=JSON, partitions=settings.topic_partitions)

#: task_id -> the final aggregated result (idempotence: a task_id seen here is a duplicate).
results = app.Table("results", default=None, schema=JSON, partitions=settings.topic_partitions)

#: camera_id -> what the web views show: latest detection, latest results, counters.
camera_view = app.Table("camera_view", default=None, schema=JSON, partitions=settings.topic_partitions)

#: camera_id -> the last 100 alerts of the camera (list, newest first).
alerts = app.Table("alerts", default=None, schema=JSON, partitions=settings.topic_partitions)

#: key alias -> persisted key state (state, cooldown_until, disabled reason, totals).
key_pool = app.GlobalTable(
    "key_pool",
    default=None,
    schema=JSON,
    partitions=1,
    recovery_buffer_size=1,
    use_partitioner=True,
)
