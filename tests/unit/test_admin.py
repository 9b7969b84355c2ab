"""What the topic set-up refuses (streams.admin); the broker's side is in tests/integration/test_stack.py."""

from __future__ import annotations

import pytest
from aiokafka.admin import NewTopic

from streams.admin import creation_errors, partition_mismatches, planned_topics


def test_a_topic_another_worker_created_meanwhile_is_no_error_and_a_refusal_is_named() -> None:
    errors = creation_errors(
        [
            ("a", 0, None),
            ("b", 36, "Topic 'b' already exists."),  # two workers starting at once
            ("c", 38, "Replication factor: 3 larger than available brokers: 1."),
            ("d", 44, ""),  # a v0 response carries no message
            ("e", 7, "Timed out."),  # the controller may still create it: the metadata wait tells
        ]
    )
    assert errors == [
        "c: InvalidReplicationFactorError (Replication factor: 3 larger than available brokers: 1.)",
        "d: PolicyViolationError (no message)",
    ]


def test_only_topics_kept_with_other_partitions_than_planned_are_named() -> None:
    kept = [NewTopic("flow", 8, 1), NewTopic("dlq", 1, 1), NewTopic("gone", 8, 1)]
    assert partition_mismatches(kept, {"flow": 4, "dlq": 1}) == ["flow: 4 partitions in the cluster, 8 planned"]


def test_every_table_changelog_is_planned_with_its_source_topics_partitions() -> None:
    """A changelog with other partitions than the topic its table is keyed by reads keys from the wrong one:
    `make topics --partitions 6` made 6-partition topics and 8-partition changelogs (the setting's)."""
    topics = {t.name: t for t in planned_topics(partitions=6, replicas=1)}
    changelogs = [t for name, t in topics.items() if name.endswith("-changelog")]
    keyed = [t for t in changelogs if t.num_partitions == 6]
    assert len(keyed) >= 5 and all(t.num_partitions == 1 for t in changelogs if t not in keyed)  # global: 1
    assert all(t.topic_configs["cleanup.policy"] == "compact" for t in changelogs)


def test_a_global_tables_changelog_keeps_one_partition_when_the_topics_have_one_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ROADWATCH_TOPIC_PARTITIONS=1, a global table's one partition read as 'keyed like the flow topics':
    `make topics --partitions 6` planned its changelog with 6, and every worker then refused it."""
    import importlib

    module = importlib.import_module("streams.app")  # `streams.app` the attribute is the Faust app
    monkeypatch.setattr(module, "settings", module.settings.model_copy(update={"topic_partitions": 1}))
    topics = planned_topics(partitions=6, replicas=1)
    global_tables = [t for t in module.app.tables.values() if t.is_global]
    assert global_tables
    by_name = {t.name: t.num_partitions for t in topics}
    assert all(by_name[t.changelog_topic.get_topic_name()] == 1 for t in global_tables)
