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
from collections.abc import Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import RequestTimedOutError, TopicAlreadyExistsError, for_code

from streams.errors import ConfigError

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
        # a table keyed like the flow topics has their partitions, also when ``partitions`` overrides the
        # setting its declaration took (`make topics --partitions 6` made 6-partition topics and 8-partition
        # changelogs); a global table keeps its own (one)
        topics.append(
            NewTopic(
                table.changelog_topic.get_topic_name(),
                (table.partitions or 1) if table.is_global else parts,
                rf,
                topic_configs={**isr, "cleanup.policy": "compact"},
            )
        )
    return topics


async def create_topics(bootstrap: str, partitions: int | None = None, replicas: int | None = None) -> list[str]:
    """Create the missing topics; returns the names created.

    Raises :class:`ConfigError` naming each topic the broker refused (a replication factor over the
    brokers there are, a policy) and each existing topic whose partitions differ from the plan: a
    table's changelog must have as many partitions as the topic it is keyed by, and a worker that
    plans 8 partitions of a 4-partition topic reads a quarter of its keys from the wrong changelog
    partition. Both were silent: the worker started, and Faust failed or created the topics itself.
    """
    planned = planned_topics(partitions, replicas)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        kept = [t for t in planned if t.name in existing]
        if kept:
            described = await admin.describe_topics([t.name for t in kept])
            counts = {d["topic"]: len(d["partitions"]) for d in described if not d["error_code"]}
            refuse(partition_mismatches(kept, counts))
        wanted = [t for t in planned if t.name not in existing]
        if wanted:
            response = await admin.create_topics(wanted)
            refuse(creation_errors(response.topic_errors))
        missing = {t.name for t in wanted}
        for _ in range(50):  # wait until the metadata shows them
            missing -= set(await admin.list_topics())
            if not missing:
                break
            await asyncio.sleep(0.1)
        if missing:  # a slow controller (its request timed out): the worker's own metadata wait may still see them
            logger.warning("topics not yet in the cluster's metadata after 5 s: %s", ", ".join(sorted(missing)))
        return [t.name for t in wanted]
    finally:
        await admin.close()


def creation_errors(topic_errors: Sequence[tuple[Any, ...]]) -> list[str]:
    """What a CreateTopics response refused, one line a topic (one created meanwhile by another worker is no
    error)."""
    out = []
    for topic, code, *message in topic_errors:
        if code in (0, TopicAlreadyExistsError.errno, RequestTimedOutError.errno):
            continue  # timed out: the controller may still create it; the metadata wait below tells
        reason = message[0] if message and message[0] else "no message"
        out.append(f"{topic}: {for_code(code).__name__} ({reason})")
    return out


def partition_mismatches(kept: Sequence[NewTopic], counts: dict[str, int]) -> list[str]:
    """The existing topics whose partition count is not the planned one, one line each."""
    return [
        f"{t.name}: {counts[t.name]} partitions in the cluster, {t.num_partitions} planned"
        for t in kept
        if t.name in counts and counts[t.name] != t.num_partitions
    ]


def refuse(problems: list[str]) -> None:
    if problems:
        raise ConfigError(
            "topics: "
            + "; ".join(problems)
            + " (the workers' ROADWATCH_TOPIC_PARTITIONS / ROADWATCH_TOPIC_REPLICAS, or `python -m ops.stack"
            " topics --partitions/--replicas`, must be what the cluster holds or can hold; or delete the topics"
            " named here to have them created anew)"
        )


def ensure_topics() -> None:
    """Synchronous wrapper used before the worker starts."""
    from streams.app import settings

    created = asyncio.run(create_topics(settings.bootstrap_servers))
    if created:
        logger.info("created topics: %s", ", ".join(created))
