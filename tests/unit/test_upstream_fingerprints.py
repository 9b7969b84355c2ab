"""The upstream code that ``streams/faust_seam.py`` replaces or relies on, fingerprinted.

``faust-streaming`` and ``aiokafka`` are pinned in ``pyproject.toml`` and the lock file; when an
upgrade changes any of these, this test fails and names what to re-check in the seam. Update a
fingerprint only after reading the new upstream code against the seam's docstring.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from importlib.metadata import version

import pytest

#: (module:qualified name) -> (sha256 prefix of its source, what to re-check when it changes)
FINGERPRINTS: dict[str, tuple[str, str]] = {
    "faust.stores.rocksdb:RocksDBOptions.as_options": (
        "d2a1bea17736d2eb",
        "share_rocksdb_memory replaces its rocksdict branch with the same options and one shared cache and "
        "write buffer manager: carry over any option upstream added",
    ),
    "faust.transport.consumer:Consumer.__init__": (
        "302410d59e6972d1",
        "the private state AtLeastOnceConsumer reads and clears (_acked, _acked_index, _gap, _read_offset, "
        "_committed_offset, _unacked_messages, _active_partitions, _paused_partitions, _on_partitions_revoked)",
    ),
    "faust.transport.consumer:Consumer._new_offset": (
        "1d2c7ea89a7ad4f1",
        "AtLeastOnceConsumer._new_offset replaces it (faust-streaming#606); maybe upstream fixed the head check",
    ),
    "faust.transport.consumer:Consumer.on_partitions_revoked": (
        "d04b7ae72c6fc206",
        "AtLeastOnceConsumer.on_partitions_revoked is a reordered copy: finish and commit in-flight events first",
    ),
    "faust.transport.consumer:Consumer.perform_seek": (
        "0e8c130ff4b0afd8",
        "AtLeastOnceConsumer.perform_seek replaces it: pause, seek every partition to its head, resume",
    ),
    "faust.transport.consumer:Consumer._commit_offsets": (
        "1a69799041188441",
        "AtLeastOnceConsumer._commit relies on it flushing the producer just before calling _commit",
    ),
    "faust.transport.drivers.aiokafka:Consumer._commit": (
        "a20eec84e4b2ed50",
        "AtLeastOnceConsumer._commit holds commits back after an undelivered record, then calls it",
    ),
    "faust.topics:Topic._on_published": (
        "7cfe9ebd65964b0a",
        "SendFailureGuard learns of an undelivered record from the on_send_error sensor call here",
    ),
    "faust.transport.consumer:Consumer.track_message": (
        "217d7f1399a4cd8e",
        "in_flight() reads _unacked_messages as track_message fills it",
    ),
    "faust.transport.consumer:Consumer.ack": (
        "5fcf41cf45153475",
        "the commit rule consumes _acked / _acked_index as ack fills them",
    ),
    "faust.transport.drivers.aiokafka:Consumer.seek_to_committed": (
        "f1d483b861b0328b",
        "perform_seek takes the committed offsets from it (partitions committed at 0 or never come back as None)",
    ),
    "faust.transport.drivers.aiokafka:Consumer.seek_wait": ("e9db5bbc4ceb2543", "perform_seek's final seek"),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._ensure_consumer": (
        "ff4a4c693b7ec63f",
        "request_rejoin reaches the aiokafka consumer's coordinator through it",
    ),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_committed": (
        "775ab0adc4b052ab",
        "aiokafka's seek_to_committed skips partitions committed at 0: the reason perform_seek seeks again",
    ),
    "faust.app.base:App._start_span_from_rebalancing": (
        "bf2207cc3d05d4f8",
        "on_partitions_revoked opens the rebalance span with it",
    ),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": (
        "c2701bfc3e6f6cad",
        "BatchingConsumerThread sets the fetch's wait and minimum size on the consumer this builds",
    ),
    "faust.transport.drivers.aiokafka:Consumer._new_consumer_thread": (
        "0870ec53dea75083",
        "AtLeastOnceConsumer._new_consumer_thread builds the BatchingConsumerThread the same way",
    ),
    "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__": (
        "01506f316191f7c9",
        "BatchingConsumerThread sets _fetch_max_wait_ms / _fetch_min_bytes, read when the consumer starts",
    ),
    "faust.tables.base:Collection._new_store": (
        "914a2bda605d38f5",
        "streams.tables.GLOBAL_STORE names a host because a bare memory:// URL is false here",
    ),
    "faust.app.base:App.on_init_dependencies": (
        "7621a70a9b01f93f",
        "RoadwatchApp.on_init_dependencies puts the worker lifecycle service before the boot strategy's",
    ),
    "faust.types.models:ModelOptions": ("3b9864110de43681", "record_fields reads fields and defaults from it"),
    "aiokafka.consumer.group_coordinator:GroupCoordinator.request_rejoin": (
        "f70a261c91c38cb5",
        "request_rejoin (the stall guard's remedy) calls it",
    ),
    "aiokafka.client:AIOKafkaClient.force_metadata_update": ("cb7befef21c8f3f9", "force_metadata_update calls it"),
    "aiohttp.web_app:Application.__init__": (
        "408d45fbb8373365",
        "limit_request_body sets _client_max_size after construction",
    ),
}

#: The versions the seam was written and tested against (pinned in pyproject.toml).
TESTED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


def source_digest(target: str) -> str:
    module, qualname = target.split(":")
    obj: object = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]  # type: ignore[arg-type]


@pytest.mark.parametrize("dist", sorted(TESTED))
def test_the_pinned_versions_are_installed(dist):
    assert version(dist) == TESTED[dist], (
        f"{dist} {version(dist)} is not the tested {TESTED[dist]}: re-check faust_seam"
    )


def test_the_upstream_code_the_seam_replaces_is_unchanged():
    changed = [
        f"{target}: {recheck}" for target, (digest, recheck) in FINGERPRINTS.items() if source_digest(target) != digest
    ]
    assert not changed, "upstream changed; re-check streams/faust_seam.py:\n" + "\n".join(changed)
