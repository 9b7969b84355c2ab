"""The Faust topic objects of the contract (``docs/ARCHITECTURE.md``), with explicit partitions.

Agents subscribe with raw bytes and decode through :func:`streams.records.decode`, so that an
undecodable message goes to the topic's ``.dlq`` instead of crashing the agent (Faust's own
decoding would throw into the stream). The three main topics share one partition count, so a
camera's records are co-partitioned and one worker owns whole cameras. The names come from
:mod:`streams.topic_names`, which processes without a Faust app import instead of this module.
"""

from __future__ import annotations

from faust.types import TopicT

from streams.app import app, settings
from streams.topic_names import TopicNames

names = TopicNames(settings.topic_prefix)


def _raw_topic(name: str, partitions: int | None = None) -> TopicT:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions or settings.topic_partitions,
        replicas=settings.topic_replicas,
        config={"min.insync.replicas": str(settings.topic_min_insync)},
    )


detection_results_topic = _raw_topic(names.detection_results)
assessment_tasks_topic = _raw_topic(names.assessment_tasks)
risk_results_topic = _raw_topic(names.risk_results)
alerts_topic = _raw_topic(names.alerts)

#: One DLQ per consumed topic: ``<topic>.dlq``.
dlq_topics = {name: _raw_topic(names.dlq(name), partitions=1) for name in (*names.main, names.alerts)}
