"""One /metrics for a supervisor's child processes: each scraped at collect time, merged.

A producer run with ``--processes N`` (or several devices) is N processes, each with its own
registry. Prometheus, the k8s manifest and compose scrape one port per container: with a port
per child the others' cameras were never scraped. The supervisor serves ``--metrics-port``
itself and its children serve loopback ports beside it; every sample keeps its labels and gets
``process`` (the child's index), so the children's families merge without clashing.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

logger = logging.getLogger(__name__)

#: The longest the children's scrape may take, all of them together (they are scraped at once):
#: a child that hangs must not stall the whole scrape past Prometheus's own timeout (10 s).
SCRAPE_TIMEOUT_S = 2.0


def scrape(port: int, deadline: float) -> list[Metric] | None:
    """The metric families of the process on ``port`` (127.0.0.1), or None when it has not
    answered by ``deadline`` (``time.monotonic()``) or answers something that does not parse
    (killed mid-reply, not started yet). The deadline holds for the whole reply, not each read:
    a child trickling its reply in is cut off like one that hangs."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=max(0.01, deadline - time.monotonic())
        ) as reply:
            chunks = []
            while chunk := reply.read(1 << 16):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError("reply still coming at the deadline")
            return list(text_string_to_metric_families(b"".join(chunks).decode()))
    except Exception as exc:  # any failure of one child is that child's up = 0, not the scrape's
        logger.debug("producer process on port %d did not answer its scrape: %s", port, exc)
        return None


class ChildrenCollector(Collector):
    """The metrics of the processes listening on ``ports`` (127.0.0.1), each sample labelled
    ``process`` with the child's index, and ``roadwatch_producer_process_up`` per child.

    Each scrape asks every child at once, from threads of its own: two scrapes at a time (two
    Prometheus servers, a person with curl) never queue behind each other's hung child."""

    def __init__(self, ports: list[int], timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self.ports = ports
        self.timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        deadline = time.monotonic() + self.timeout_s
        replies: list[list[Metric] | None] = [None] * len(self.ports)

        def ask(index: int, port: int) -> None:
            replies[index] = scrape(port, deadline)

        askers = [
            threading.Thread(target=ask, args=(i, port), daemon=True, name=f"child-metrics-{i}")
            for i, port in enumerate(self.ports)
        ]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(max(0.0, deadline - time.monotonic()) + 0.1)
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "roadwatch_producer_process_up", "1 while the producer process answers its scrape.", labels=["process"]
        )
        for index, (asker, families) in enumerate(zip(askers, list(replies), strict=True)):
            if families is None or asker.is_alive():
                up.add_metric([str(index)], 0.0)
                continue
            up.add_metric([str(index)], 1.0)
            for family in families:
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                into.samples += [
                    Sample(s.name, {**s.labels, "process": str(index)}, s.value, s.timestamp, s.exemplar)
                    for s in family.samples
                ]
        yield from merged.values()
        yield up
