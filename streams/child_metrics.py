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
from concurrent.futures import ThreadPoolExecutor, wait

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

logger = logging.getLogger(__name__)

#: The longest the children's scrape may take, all of them together (they are scraped at once):
#: a child that hangs must not stall the whole scrape past Prometheus's own timeout (10 s).
SCRAPE_TIMEOUT_S = 2.0


def scrape(port: int, timeout_s: float) -> list[Metric] | None:
    """The metric families of the process on ``port`` (127.0.0.1), or None when it does not
    answer in time or answers something that does not parse (killed mid-reply, not started)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as reply:
            return list(text_string_to_metric_families(reply.read().decode()))
    except Exception as exc:  # any failure of one child is that child's up = 0, not the scrape's
        logger.debug("producer process on port %d did not answer its scrape: %s", port, exc)
        return None


class ChildrenCollector(Collector):
    """The metrics of the processes listening on ``ports`` (127.0.0.1), each sample labelled
    ``process`` with the child's index, and ``roadwatch_producer_process_up`` per child."""

    def __init__(self, ports: list[int], timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self.ports = ports
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max(1, len(ports)), thread_name_prefix="child-metrics")

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "roadwatch_producer_process_up", "1 while the producer process answers its scrape.", labels=["process"]
        )
        asked = [self._pool.submit(scrape, port, self.timeout_s) for port in self.ports]
        # the socket timeout bounds each read, not a reply trickling in: one deadline for all
        wait(asked, timeout=self.timeout_s)
        for index, reply in enumerate(asked):
            families = reply.result() if reply.done() else None
            up.add_metric([str(index)], 0.0 if families is None else 1.0)
            for family in families or []:
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                into.samples += [
                    Sample(s.name, {**s.labels, "process": str(index)}, s.value, s.timestamp, s.exemplar)
                    for s in family.samples
                ]
        yield from merged.values()
        yield up
