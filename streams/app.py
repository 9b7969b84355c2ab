"""The Faust application: one ``app`` that every agent, table and web view registers with.

Settings come from :class:`streams.settings.Settings` and are passed into ``faust.App``
explicitly. Session and rebalance timeouts are ~10 s instead of Faust's 60 s so that a
restarted worker rejoins quickly (joining takes about half the timeout).
"""

from __future__ import annotations

import faust
from faust.types.transports import TransportT

from streams.commits import AtLeastOnceTransport
from streams.settings import get_settings

settings = get_settings()


class RoadwatchApp(faust.App):
    """Faust's App on a transport whose consumer cannot commit past an unprocessed event."""

    def _new_transport(self) -> TransportT:
        return AtLeastOnceTransport(self.conf.broker_consumer, self)


app = RoadwatchApp(
    settings.app_id,
    broker=settings.kafka_url,
    store=settings.store,
    datadir=str(settings.data_dir),
    autodiscover=["agents", "streams.views", "streams.lag"],
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
    # Wait for in-flight events before a rebalance goes on. With False, a worker that took over a
    # killed worker's partitions stalled on them in ~1 of 4 runs of the kill -9 test; with True,
    # 7 of 7 passed. The price: a rebalance waits for in-flight VLM calls (up to vlm_timeout_s).
    stream_wait_empty=True,
    web_enabled=True,
    web_bind=settings.web_host,
    web_port=settings.web_port,
    web_host=settings.web_host,
    web_transport=f"tcp://{settings.web_host}:{settings.web_port}",
    web_in_thread=False,
    logging_config=None,
)
