"""The worker's start and stop: its shared clients (:mod:`agents.worker_clients`) are built as it
starts, before any agent handles an event, and closed after the agents stopped."""

from __future__ import annotations

import logging

from agents.key_pool import Shared
from agents.worker_clients import WorkerClients, current, current_or_none, install
from streams.app import app, settings
from streams.tables import key_pool, vlm_spend_live

logger = logging.getLogger(__name__)


def persist_key(slot: Shared) -> None:
    """Every key and quota state change goes to the key_pool GlobalTable (seen by all workers)."""
    try:
        key_pool[slot.alias] = current().pool.persisted(slot)
    except Exception:  # the producer is not started (shutdown): keep going, but say so
        logger.warning("key %s: state not persisted to the key_pool table", slot.alias, exc_info=True)


async def build_clients() -> None:
    install(WorkerClients.build(settings, on_key_change=persist_key, spend_rows=vlm_spend_live))


async def close_clients() -> None:
    clients = current_or_none()
    if clients is None:  # the start failed before they were built: its own error says why
        return
    await clients.close()
    install(None)


app.on_startup(build_clients, close_clients)
