"""Dead-letter handling: a bad message is kept with its reason and origin, never crashes an agent."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable

from faust.types import EventT

from streams import metrics
from streams.errors import InvalidRecord
from streams.topics import dlq_topics

logger = logging.getLogger(__name__)


async def send_to_dlq(event: EventT[bytes], reason: str) -> None:
    """Forward the raw message of ``event`` to ``<topic>.dlq`` with the reason and its origin."""
    message = event.message
    raw = message.value if isinstance(message.value, bytes) else b""
    body = {
        "error": reason[:2000],
        "source_topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "failed_at": time.time() * 1000,
        "value_b64": base64.b64encode(raw[:1_000_000]).decode(),
    }
    logger.warning("DLQ %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason[:300])
    metrics.dlq_total.labels(topic=message.topic).inc()
    await dlq_topics[message.topic].send(key=message.key, value=json.dumps(body).encode())


async def guarded(event: EventT[bytes], handle: Callable[[EventT[bytes]], Awaitable[None]]) -> None:
    """Run an agent's handler for one event; a bad or unexpected message goes to the DLQ.

    An agent must never die on one message: Faust would stop consuming its partitions.
    """
    try:
        await handle(event)
    except InvalidRecord as exc:
        await send_to_dlq(event, str(exc))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.exception(
            "unexpected error on %s[%s]@%s", event.message.topic, event.message.partition, event.message.offset
        )
        await send_to_dlq(event, f"internal error: {type(exc).__name__}: {exc}")
