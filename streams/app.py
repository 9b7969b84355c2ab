"""The Faust application: one ``app`` that every agent, table and web view registers with.

Settings come from :class:`streams.settings.Settings` and are passed into ``faust.App``
explicitly. Session and rebalance timeouts are ~10 s instead of Faust's 60 s so that a
restarted worker rejoins quickly (joining takes about half the timeout).
"""

from __future__ import annotations

import faust

from streams.settings import get_settings

settings = get_settings()

app = faust.App(
    settings.app_id,
    broker=settings.kafka_url,
    store=settings.store,
    datadir=str(settings.data_dir),
    autodiscover=["agents", "streams.views"],
    origin="streams",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replicas,
    topic_allow_declare=True,
    topic_disable_leader=True,
    table_standby_replicas=0,
    broker_session_timeout=settings.session_timeout_s,
    broker_rebalance_timeout=settings.rebalance_timeout_s,
    broker_heartbeat_interval=settings.heartbeat_s,
    broker_commit_interval=settings.commit_interval_s,
    broker_max_poll_interval=settings.max_poll_interval_s,
    producer_acks=-1,
    producer_linger=0.005,
    producer_compression_type="lz4",
    consumer_auto_offset_reset="earliest",
    stream_wait_empty=False,
    web_enabled=True,
    web_bind=settings.web_host,
    web_port=settings.web_port,
    web_host=settings.web_host,
    web_transport=f"tcp://{settings.web_host}:{settings.web_port}",
    web_in_thread=False,
    logging_config=None,
)
