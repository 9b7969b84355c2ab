"""The Faust application: one ``app`` that every agent, table and web view registers with.

This module builds the app and nothing else (faust's ``examples/fastapi_project`` layout):
importing the record contract (:mod:`streams.records`, :mod:`streams.topic_names`,
:mod:`streams.settings`) does not import it. Settings come from :class:`streams.settings.Settings`
and are passed into ``faust.App`` explicitly. Session and rebalance timeouts are ~10 s instead of
Faust's 60 s so that a restarted worker rejoins quickly (joining takes about half the timeout).

What a worker holds for its whole life (the key pool, the VLM session, stores, caches) is built
when the worker starts and closed when it stops, by the callbacks registered with
:meth:`RoadwatchApp.on_startup`: they run in a service that starts before the agents, the
tables and the web server, and stops after them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from itertools import chain

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types.transports import TransportT
from mode import Service, ServiceT

from streams import metrics
from streams.errors import ConfigError
from streams.faust_seam import SEND_FAILURES, AtLeastOnceTransport, share_rocksdb_memory
from streams.settings import Settings, get_settings

Hook = Callable[[], Awaitable[None]]


class WorkerLifecycle(Service):
    """Runs the registered start callbacks in order, and their stop callbacks in reverse."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.starts: list[Hook] = []
        self.stops: list[Hook] = []

    async def on_start(self) -> None:
        for start in self.starts:
            await start()

    async def on_stop(self) -> None:
        for stop in reversed(self.stops):
            try:
                await stop()
            except Exception:
                self.log.exception("a stop callback failed")


class RoadwatchApp(faust.App):
    """Faust's App on a transport whose consumer cannot commit past an unprocessed event, with a
    start-up service for the worker's clients."""

    lifecycle: WorkerLifecycle
    #: the consumer's fetch batching (:class:`streams.faust_seam.BatchingConsumerThread`)
    fetch_wait_ms: int = 1500
    fetch_min_bytes: int = 1

    def _new_transport(self) -> TransportT:
        return AtLeastOnceTransport(self.conf.broker_consumer, self)

    def on_startup(self, start: Hook, stop: Hook | None = None) -> Hook:
        """Register ``start`` (and ``stop``) to run when the worker starts (stops), before its agents."""
        if not hasattr(self, "lifecycle"):
            self.lifecycle = WorkerLifecycle()
        self.lifecycle.starts.append(start)
        if stop is not None:
            self.lifecycle.stops.append(stop)
        return start

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        first: list[ServiceT] = [self.lifecycle] if hasattr(self, "lifecycle") else []
        return chain(first, super().on_init_dependencies())


def require_compiled_streams() -> None:
    """Refuse to run on Faust's pure-Python stream iterator: it acknowledges the events it skips in
    a rebalance, which the commit rule of :mod:`streams.faust_seam` would then commit over (lost
    events). It is used, silently, under ``NO_CYTHON=1`` or when Faust's extension fails to load."""
    import faust.streams

    if getattr(faust.streams, "_CStreamIterator", None) is None:
        raise ConfigError(
            "Faust's compiled stream iterator is not loaded (NO_CYTHON set, or faust-streaming built without "
            "its extension): roadwatch's at-least-once commits need it; install the faust-streaming wheel"
        )


def create_app(settings: Settings) -> RoadwatchApp:
    """The app for ``settings``; tables, topics and agents register with it as they are imported."""
    require_compiled_streams()
    app = RoadwatchApp(
        settings.app_id,
        broker=settings.kafka_url,
        store=settings.store,
        datadir=str(settings.data_dir),
        autodiscover=["agents", "web", "streams.lag", "streams.heap"],
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
        producer_linger=settings.producer_linger_ms / 1000.0,
        producer_compression_type="lz4",
        consumer_auto_offset_reset="earliest",
        # Wait for in-flight events before a rebalance goes on. With False, a worker that took over a
        # killed worker's partitions stalled on them in ~1 of 4 runs of the kill -9 test; with True,
        # 7 of 7 passed. The price: a rebalance waits for in-flight VLM calls (up to vlm_timeout_s).
        stream_wait_empty=True,
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=settings.advertised_web_host(),  # the canonical URL other workers forward to
        web_transport=f"tcp://{settings.web_host}:{settings.web_port}",
        web_in_thread=False,
        logging_config=None,
    )
    app.fetch_wait_ms, app.fetch_min_bytes = settings.fetch_wait_ms, settings.fetch_min_bytes
    if settings.store.startswith("rocksdb"):
        cache = share_rocksdb_memory(settings.rocksdb_memory_mb * 1024 * 1024)
        metrics.rocksdb_memory.set_function(cache.get_usage)
    # Faust's own stream, table and send metrics, in the registry /metrics serves.
    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(metrics.REGISTRY, "roadwatch_faust"))
    SEND_FAILURES.app = app
    app.sensors.add(SEND_FAILURES)
    return app


settings = get_settings()
app = create_app(settings)
