"""Dead-letter handling: a bad message is kept with its reason and origin, never crashes an agent."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from faust.types import EventT

from streams import metrics
from streams.errors import InvalidRecord
from streams.topics import dlq_topics

logger = logging.getLogger(__name__)


#: The most of a bad message's value a DLQ record carries. Base64 grows it by a third, so a
#: record near the broker's 1 MiB limit would not fit the producer's request limit as it is; the
#: rest is identified by size and sha256.
DLQ_VALUE_BYTES = 256 * 1024


def dlq_body(raw: bytes, reason: str, topic: str, partition: int, offset: int) -> dict[str, object]:
    """The DLQ record of a bad message: always well under the producer's request limit."""
    kept = raw[:DLQ_VALUE_BYTES]
    return {
        "error": reason[:2000],
        "source_topic": topic,
        "partition": partition,
        "offset": offset,
        "failed_at": time.time() * 1000,
        "value_size": len(raw),
        "value_sha256": hashlib.sha256(raw).hexdigest(),
        "value_truncated": len(kept) < len(raw),
        "value_b64": base64.b64encode(kept).decode(),
    }


async def send_to_dlq(event: EventT[bytes], reason: str) -> None:
    """Forward the raw message of ``event`` to ``<topic>.dlq`` with the reason and its origin."""
    message = event.message
    raw = message.value if isinstance(message.value, bytes) else b""
    body = dlq_body(raw, reason, message.topic, message.partition, message.offset)
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
