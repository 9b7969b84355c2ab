"""The topics of the contract in ``shared/DESIGN.md``, declared with explicit partitions.

Agents subscribe with raw bytes and decode through :func:`streams.records.decode`, so that an
undecodable message goes to the topic's ``.dlq`` instead of crashing the agent (Faust's own
decoding would throw into the stream). The three main topics share one partition count, so a
camera's records are co-partitioned and one worker owns whole cameras.
"""

from __future__ import annotations

from streams.app import app, settings

DETECTION_RESULTS = settings.topic_prefix + "detection-results"
ASSESSMENT_TASKS = settings.topic_prefix + "assessment-tasks"
RISK_RESULTS = settings.topic_prefix + "risk-assessment-results"
ALERTS = settings.topic_prefix + "alerts"

MAIN_TOPICS = (DETECTION_RESULTS, ASSESSMENT_TASKS, RISK_RESULTS)


def _raw_topic(name: str, partitions: int | None = None):  # type: ignore[no-untyped-def]
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


detection_results_topic = _raw_topic(DETECTION_RESULTS)
assessment_tasks_topic = _raw_topic(ASSESSMENT_TASKS)
risk_results_topic = _raw_topic(RISK_RESULTS)
alerts_topic = _raw_topic(ALERTS)

#: One DLQ per consumed topic: ``<topic>.dlq``.
dlq_topics = {name: _raw_topic(f"{name}.dlq", partitions=1) for name in MAIN_TOPICS}
