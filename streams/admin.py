"""Creating roadwatch's topics before any worker joins the group.

Faust declares its topics while the worker starts, but when a table's changelog topic is not
yet in the cluster metadata at the moment the group leader assigns partitions, the group sync
can stall for good (seen with faust-streaming 0.15 on a fresh cluster). So every topic, the
tables' changelogs included, is created up front with explicit partitions and replication:
by ``python -m streams worker`` itself, by ``make topics`` and by the operator commands.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

logger = logging.getLogger(__name__)


def planned_topics(partitions: int | None = None, replicas: int | None = None) -> list[NewTopic]:
    """Every topic the app uses: main topics, DLQs and table changelogs."""
    import streams.tables  # noqa: F401  (registers the tables)
    from streams.app import app, settings
    from streams.topics import names

    parts = partitions or settings.topic_partitions
    rf = replicas or settings.topic_replicas
    isr = {"min.insync.replicas": str(min(settings.topic_min_insync, rf))}
    topics = [NewTopic(t, parts, rf, topic_configs=isr) for t in names.flow]
    topics += [NewTopic(names.dlq(t), 1, rf, topic_configs=isr) for t in names.flow]
    for table in app.tables.values():
        topics.append(
            NewTopic(
                table.changelog_topic.get_topic_name(),
                table.partitions or parts,
                rf,
                topic_configs={**isr, "cleanup.policy": "compact"},
            )
        )
    return topics


async def create_topics(bootstrap: str, partitions: int | None = None, replicas: int | None = None) -> list[str]:
    """Create the missing topics; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in planned_topics(partitions, replicas) if t.name not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        for _ in range(50):  # wait until the metadata shows them
            if {t.name for t in wanted} <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
        return [t.name for t in wanted]
    finally:
        await admin.close()


def ensure_topics() -> None:
    """Synchronous wrapper used before the worker starts."""
    from streams.app import settings

    created = asyncio.run(create_topics(settings.bootstrap_servers))
    if created:
        logger.info("created topics: %s", ", ".join(created))
