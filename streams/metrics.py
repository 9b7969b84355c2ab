"""Prometheus metrics of every stage, in one registry per process.

Names carry their unit and labels stay bounded: camera ids and key aliases are labels, task ids
never are. ``/metrics`` on the worker and the producer's own port serve :data:`REGISTRY`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60)

relay_dropped_total = Counter(
    "roadwatch_relay_dropped_total",
    "Messages on the Redis results channel that were not a result or alert of ours (dropped).",
    registry=REGISTRY,
)
frames_total = Counter("roadwatch_frames_total", "Frames analysed by the producer.", ["camera_id"], registry=REGISTRY)
frames_dropped_total = Counter(
    "roadwatch_frames_dropped_total",
    "Frames dropped (grabbed but not analysed, Kafka too slow, a record too large or not sent).",
    ["camera_id", "reason"],
    registry=REGISTRY,
)
objects_dropped_total = Counter(
    "roadwatch_objects_dropped_total",
    "Detections over the producer's per-frame cap (the least confident, smallest) left out.",
    ["camera_id"],
    registry=REGISTRY,
)
crops_unstored_total = Counter(
    "roadwatch_crops_unstored_total",
    "Crops the image store did not take (unreachable): their groups went out without a crop.",
    ["camera_id"],
    registry=REGISTRY,
)
camera_up = Gauge("roadwatch_camera_up", "1 while the camera delivers frames.", ["camera_id"], registry=REGISTRY)
detector_seconds = Histogram(
    "roadwatch_detector_seconds", "Detector latency per frame.", ["backend"], registry=REGISTRY
)
detections_total = Counter(
    "roadwatch_detections_total", "Detection results consumed.", ["camera_id"], registry=REGISTRY
)
groups_seen_total = Counter(
    "roadwatch_groups_seen_total", "Traffic groups seen by the task generator.", ["camera_id"], registry=REGISTRY
)
tasks_total = Counter(
    "roadwatch_tasks_total", "Assessment tasks made, by reason.", ["camera_id", "reason"], registry=REGISTRY
)
tasks_skipped_total = Counter(
    "roadwatch_tasks_skipped_total", "Groups not made into tasks, by reason.", ["reason"], registry=REGISTRY
)
records_newer_schema_total = Counter(
    "roadwatch_records_newer_schema_total",
    "Records of a newer schema version than this worker's, read for the fields it knows (a rolling upgrade).",
    ["record"],
    registry=REGISTRY,
)
measured_skipped_total = Counter(
    "roadwatch_measured_skipped_total",
    "Detections with conflicts not checked for a measured alert, by reason (stale: captured longer ago than the "
    "task deadline, by the worker's clock: a backlog, or a producer clock behind).",
    ["reason"],
    registry=REGISTRY,
)
vlm_calls_total = Counter(
    "roadwatch_vlm_calls_total", "VLM calls by outcome and key alias.", ["key_alias", "outcome"], registry=REGISTRY
)
vlm_model_calls_total = Counter(
    "roadwatch_vlm_model_calls_total",
    "VLM calls by account, model and outcome.",
    ["account", "model", "outcome"],
    registry=REGISTRY,
)
vlm_tokens_total = Counter(
    "roadwatch_vlm_tokens_total",
    "Tokens the provider counted (its usage), by account, model and direction (input, output).",
    ["account", "model", "direction"],
    registry=REGISTRY,
)
vlm_cost_total = Counter(
    "roadwatch_vlm_cost_total", "Cost of VLM calls by the price table.", ["account", "model"], registry=REGISTRY
)
camera_cost_total = Counter(
    "roadwatch_camera_cost_total", "Cost of VLM calls per camera.", ["camera_id"], registry=REGISTRY
)
quota_throttled_total = Counter(
    "roadwatch_quota_throttled_total",
    "429s of an (account, model) quota: rate (RPM/TPM) or burst (grew too fast).",
    ["account", "model", "kind"],
    registry=REGISTRY,
)
budget_skipped_total = Counter(
    "roadwatch_budget_skipped_total",
    "Tasks skipped because a daily budget was spent, by scope (account, camera).",
    ["scope"],
    registry=REGISTRY,
)
vlm_latency_seconds = Histogram(
    "roadwatch_vlm_latency_seconds", "VLM call latency.", buckets=LATENCY_BUCKETS_S, registry=REGISTRY
)
vlm_in_flight = Gauge("roadwatch_vlm_in_flight", "VLM calls in flight on this worker.", registry=REGISTRY)
key_state = Gauge("roadwatch_key_state", "1 for the key's current state.", ["key_alias", "state"], registry=REGISTRY)
queue_wait_seconds = Histogram(
    "roadwatch_queue_wait_seconds", "Time a task waited for a key.", buckets=LATENCY_BUCKETS_S, registry=REGISTRY
)
results_total = Counter(
    "roadwatch_results_total",
    "Risk results aggregated, by status and level.",
    ["status", "risk_level"],
    registry=REGISTRY,
)
duplicates_total = Counter(
    "roadwatch_duplicate_results_total", "Redelivered results ignored by task_id.", registry=REGISTRY
)
e2e_seconds = Histogram(
    "roadwatch_e2e_seconds", "Capture to aggregated result.", buckets=LATENCY_BUCKETS_S, registry=REGISTRY
)
alerts_total = Counter("roadwatch_alerts_total", "Alerts raised.", ["camera_id", "level"], registry=REGISTRY)
webhook_total = Counter(
    "roadwatch_alert_webhook_total", "Alert webhook deliveries by outcome.", ["outcome"], registry=REGISTRY
)
dlq_total = Counter("roadwatch_dlq_total", "Messages sent to a DLQ.", ["topic"], registry=REGISTRY)
redis_degraded = Gauge("roadwatch_redis_degraded", "1 while Redis writes are skipped.", registry=REGISTRY)
redis_skipped_total = Counter(
    "roadwatch_redis_skipped_writes_total", "Cache writes skipped while Redis was down.", registry=REGISTRY
)
ws_clients = Gauge("roadwatch_ws_clients", "Connected WebSocket clients.", registry=REGISTRY)
ws_dropped_total = Counter(
    "roadwatch_ws_dropped_messages_total", "Messages not sent to slow WebSocket clients.", registry=REGISTRY
)
consumer_lag = Gauge(
    "roadwatch_consumer_lag_messages",
    "Messages not yet consumed by this worker, per topic partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
frames_grabbed_total = Counter(
    "roadwatch_frames_grabbed_total", "Frames read from the camera by its grabber.", ["camera_id"], registry=REGISTRY
)
camera_reconnects_total = Counter(
    "roadwatch_camera_reconnects_total", "Times a camera's source was reopened.", ["camera_id"], registry=REGISTRY
)
bad_images_total = Counter(
    "roadwatch_bad_images_total",
    "Tasks failed because their crop was missing or unusable.",
    ["reason"],
    registry=REGISTRY,
)
unknown_cameras_total = Counter(
    "roadwatch_unknown_camera_records_total",
    "Detections of cameras not in ROADWATCH_CAMERAS_FILE.",
    registry=REGISTRY,
)
consumer_stalls_total = Counter(
    "roadwatch_consumer_stalls_total",
    "Checks that found a partition stalled (each triggers a rejoin).",
    registry=REGISTRY,
)

heap_trimmed_bytes_total = Counter(
    "roadwatch_heap_trimmed_bytes_total",
    "Sum of the RSS drop across each trim of the C heap's free pages (ROADWATCH_HEAP_TRIM_S): a gross flow, "
    "pages taken again after a trim count again at the next.",
    registry=REGISTRY,
)

rocksdb_memory = Gauge(
    "roadwatch_rocksdb_memory_bytes",
    "The worker's RocksDB block cache in use, memtables included (ROADWATCH_ROCKSDB_MEMORY_MB bounds it).",
    registry=REGISTRY,
)
