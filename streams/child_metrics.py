"""One /metrics for a supervisor's child processes: each scraped at collect time, merged.

A producer run with ``--processes N`` (or several devices) is N processes, each with its own
registry. Prometheus, the k8s manifest and compose scrape one port per container: with a port
per child the others' cameras were never scraped. The supervisor serves ``--metrics-port``
itself and its children serve loopback ports beside it; every sample keeps its labels and gets
``process`` (the child's index), so the children's families merge without clashing.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

logger = logging.getLogger(__name__)

#: The longest one child's scrape may take: a child that hangs must not stall the whole scrape.
SCRAPE_TIMEOUT_S = 2.0


class ChildrenCollector(Collector):
    """The metrics of the processes listening on ``ports`` (127.0.0.1), each sample labelled
    ``process`` with the child's index, and ``roadwatch_producer_process_up`` per child."""

    def __init__(self, ports: list[int], timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self.ports = ports
        self.timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "roadwatch_producer_process_up", "1 while the producer process answers its scrape.", labels=["process"]
        )
        for index, port in enumerate(self.ports):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=self.timeout_s) as reply:
                    text = reply.read().decode()
            except OSError as exc:  # not started yet, exited, or hung past the timeout
                logger.debug("producer process %d (port %d) did not answer its scrape: %s", index, port, exc)
                up.add_metric([str(index)], 0.0)
                continue
            up.add_metric([str(index)], 1.0)
            for family in text_string_to_metric_families(text):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                into.samples += [
                    Sample(s.name, {**s.labels, "process": str(index)}, s.value, s.timestamp, s.exemplar)
                    for s in family.samples
                ]
        yield from merged.values()
        yield up
