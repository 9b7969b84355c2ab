"""The Faust tables of ``docs/ARCHITECTURE.md``; their values' shapes are in :mod:`streams.table_values`.

Camera-keyed tables are co-partitioned with the main topics: a worker holds the state of the
cameras whose partitions it owns, and ``/cameras/{id}/`` is routed there with ``table_route``.
``key_pool`` and ``vlm_spend`` are GlobalTables written through the partitioner (from the
scheduler or a web request alike), so every worker sees every key's cooldown and disable and
every budget's spend; each has one partition and a recovery buffer of 1, the configuration Faust
documents against a GlobalTable recovery loop with several instances.
"""

from __future__ import annotations

import logging
from typing import Any

from mode import BaseSignalT

from streams.app import app, settings
from streams.table_values import CameraState
from streams.write_behind import WriteBehind

#: Values are plain JSON (dicts and lists), readable in the changelog topics. Camera-keyed tables
#: have bytes keys, which Faust serializes raw, exactly as the topics key their records, so that
#: ``app.table_route`` hashes a camera id to the same partition (and worker) as its records; with
#: ``str`` keys Faust picks JSON and would hash ``"cam-1"`` with its quotes. Faust derives a
#: table's serializers from its ``key_type``/``value_type`` arguments, not from a schema.


logger = logging.getLogger(__name__)

MIB = 1024 * 1024


def rocksdb_options() -> dict[str, int]:
    """RocksDB settings for each table partition's database (a fresh dict: Faust's store pops keys
    from the one it is given).

    Faust's defaults are sized for one database a process: 64 MiB memtables x 3 and a 2 GiB block
    cache, each per database, and a worker opens one per table and partition (5 x 8 by default). Under
    load the unflushed memtables and their write-ahead logs grew a worker's RSS by 111 MB and its
    data dir by 78 MB a minute (bench/capacity.py's soak, 100 cameras; 22 and 3 with these): small
    memtables flush, and compaction drops the overwritten values (camera_state is rewritten on
    every frame), early. The block cache, and the memtables' total, are one budget for all the
    databases of a worker (``rocksdb_memory_mb``, :func:`streams.faust_seam.share_rocksdb_memory`);
    the cache sizes here serve only where that is not installed (the python-rocksdb driver).
    """
    return {
        "write_buffer_size": 4 * MIB,
        "max_write_buffer_number": 2,
        "target_file_size_base": 8 * MIB,
        "block_cache_size": 8 * MIB,
        "block_cache_compressed_size": 8 * MIB,
    }


def _partitioned(name: str, key_type: type) -> Any:
    """A table co-partitioned with the main topics, on the store's options above."""
    return app.Table(
        name, default=None, key_type=key_type, partitions=settings.topic_partitions, options=rocksdb_options()
    )


def camera_key(camera_id: str) -> bytes:
    """The key of a camera in the camera-keyed tables."""
    return camera_id.encode()


#: camera_id -> task-generator state: last frame, fps, groups assessed, VLM token bucket.
camera_state = _partitioned("camera_state", bytes)

#: detection_id -> compact detection (objects, groups, frame size) for the result join.
detections = _partitioned("detections", str)

#: task_id -> the final aggregated result (idempotence: a task_id seen here is a duplicate).
results = _partitioned("results", str)

#: camera_id -> what the web views show: latest results, counters, the last measured conflict (the
#: latest frame is held by the worker: agents/detection_join.py).
camera_view = _partitioned("camera_view", bytes)

#: camera_id -> the index of the camera's last 100 alerts, newest update first (:mod:`agents.alert_book`).
alert_index = _partitioned("alert_index", bytes)

#: camera_id NUL task_id -> one alert. Not held decoded (as the index is): each is written once or
#: twice and read again only to merge a repeat, and held they were most of a worker's alert memory.
alert_records = _partitioned("alert_records", bytes)

#: camera_id -> the camera's last 100 alerts, whole: the layout before ``alert_index``, read for
#: what it holds and emptied camera by camera; workers of the code before still use it.
alerts = _partitioned("alerts", bytes)

#: The camera-keyed tables rewritten per event, as the agents and the views use them: held decoded,
#: written back at most once every ``state_write_s`` a camera. Each was a table read and write, of
#: a value that grows with the camera's history, per event: camera_state per detection, the alerts
#: (then 100 a camera, whole) per alerting result. Not camera_view: its result counts must survive a crash or a
#: handoff exactly (tests/integration/test_faults.py counts them), and a rolled-back view would
#: count its redelivered results again or not at all.
camera_state_live: WriteBehind[bytes, CameraState | None] = WriteBehind(camera_state, settings.state_write_s)
alert_index_live: WriteBehind[bytes, list[list[Any]] | None] = WriteBehind(alert_index, settings.state_write_s)
alerts_legacy: WriteBehind[bytes, list[dict[str, Any]] | None] = WriteBehind(alerts, settings.state_write_s)
HELD: dict[str, WriteBehind[bytes, Any]] = {
    "camera_state": camera_state_live,
    "alert_index": alert_index_live,
    "alerts": alerts_legacy,
}


@app.on_partitions_revoked.connect
async def _drop_held(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    vlm_spend_live.flush()  # a GlobalTable: written outside events, and every worker reads it
    vlm_spend_live.drop()
    for name, live in HELD.items():
        lost = live.drop()
        if lost:
            logger.info("rebalance: %s of %d cameras had changes not yet written (state_write_s)", name, lost)


@app.on_before_shutdown.connect
async def _flush_spend(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    # a graceful stop revokes no partitions, so without this each restart forgot up to a few
    # seconds of spend per camera and account slice (a rolling deploy could overrun a daily budget);
    # sent after the consumer stopped and before the producer's last flush
    vlm_spend_live.flush()


#: The GlobalTables' store (see :func:`_global_table`).
GLOBAL_STORE = "memory://global"


def _global_table(name: str) -> Any:
    """A GlobalTable of str keys written through the partitioner, also outside events (the 1 s
    sync, an operator's POST): Faust's RocksDB store asserts a current event on every write (after
    the changelog send); the memory store, rebuilt from the changelog at start, takes them.

    The store's URL names a host: Faust picks ``self._store or app.conf.store``, and yarl's
    ``URL("memory://")`` is false, so a bare ``memory://`` quietly gave these tables RocksDB (and a
    write outside an event an AssertionError)."""
    return app.GlobalTable(
        name,
        default=None,
        key_type=str,
        partitions=1,
        recovery_buffer_size=1,
        use_partitioner=True,
        store=GLOBAL_STORE,
    )


#: ``cam:<camera>`` / ``acct:<account>@<slice>`` -> the day's VLM spend (agents/costs.py). Global, so
#: a worker reads the spend of every camera and every slice of an account's budget, whichever
#: worker booked it (a rebalance moves a slice's owner, not its spend).
vlm_spend = _global_table("vlm_spend")

#: vlm_spend as the spend ledger uses it: two rows (the camera's, the account slice's) change per VLM
#: call; each written back at most every ``spend_write_s``, by the call or by the scheduler's 1 s sync.
vlm_spend_live: WriteBehind[str, dict[str, Any] | None] = WriteBehind(
    vlm_spend, settings.spend_write_s, hold_reads=False
)

#: key alias -> persisted key state (state, cooldown_until, disabled reason, totals).
key_pool = _global_table("key_pool")
