"""Consumer lag and Faust's own stream metrics, exported with roadwatch's metrics.

Lag is what an operator watches first: messages in a partition not yet processed by this
worker. It is sampled every few seconds from the consumer's high-water marks and positions,
per topic and partition (bounded labels: partitions are few, and fixed). Faust's Prometheus
monitor (events per stream, runtimes, table operations, sends) goes into the same registry
with the prefix ``roadwatch_faust_``, so one scrape of ``/metrics`` has both.
"""

from __future__ import annotations

import logging

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

from streams import metrics
from streams.app import app

logger = logging.getLogger(__name__)

app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(metrics.REGISTRY, "roadwatch_faust"))


async def sample_lag() -> dict[tuple[str, int], int]:
    """Lag per assigned (topic, partition) of this worker; also sets the gauge."""
    consumer = app.consumer
    lags: dict[tuple[str, int], int] = {}
    for tp in sorted(consumer.assignment()):
        try:
            high = consumer.highwater(tp)
            pos = await consumer.position(tp)
        except Exception:  # not fetched yet, or revoked meanwhile
            logger.debug("no offsets for %s yet", tp, exc_info=True)
            continue
        if high is None or pos is None:
            continue
        lags[(tp.topic, tp.partition)] = max(0, int(high) - int(pos))
    metrics.consumer_lag.clear()
    for (topic, partition), lag in lags.items():
        metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
    return lags


@app.timer(interval=5.0)  # type: ignore[untyped-decorator]
async def lag_probe() -> None:
    try:
        await sample_lag()
    except Exception:
        logger.debug("lag sample failed", exc_info=True)
