"""Dead-letter handling: a bad message is kept with its reason and origin, never crashes an agent."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerClosed
from faust.exceptions import ProducerSendError
from faust.types import EventT

from streams import metrics
from streams.errors import InvalidRecord
from streams.faust_seam import SEND_FAILURES
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


def undeliverable_now(exc: BaseException) -> bool:
    """Whether ``exc`` is Kafka failing to take a record for now (a broker away, a leader moving,
    the producer stopping), not this event's fault: such an event must be handled again, not
    dead-lettered (a record too large or refused by an ACL is its own fault: DLQ)."""
    cause = exc.__cause__ if isinstance(exc, ProducerSendError) else exc
    return isinstance(cause, KafkaTimeoutError | ProducerClosed) or (
        isinstance(cause, KafkaError) and bool(cause.retriable)
    )


async def guarded(event: EventT[bytes], handle: Callable[[EventT[bytes]], Awaitable[None]]) -> None:
    """Run an agent's handler for one event; a bad or unexpected message goes to the DLQ.

    An agent must never die on one message: Faust would stop consuming its partitions. A send
    the producer could not even queue (the broker unreachable past the request timeout) is no
    bad message: it goes where an undelivered record goes (``streams.faust_seam``: commits
    held, the event read again after the rejoin), not to the DLQ, which would have lost it.
    """
    try:
        await handle(event)
    except InvalidRecord as exc:
        await _dead_letter(event, str(exc))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if undeliverable_now(exc):
            _read_again(event, exc)
            return
        logger.exception(
            "unexpected error on %s[%s]@%s", event.message.topic, event.message.partition, event.message.offset
        )
        await _dead_letter(event, f"internal error: {type(exc).__name__}: {exc}")


async def _dead_letter(event: EventT[bytes], reason: str) -> None:
    try:
        await send_to_dlq(event, reason)
    except Exception as exc:
        if not undeliverable_now(exc):
            raise
        _read_again(event, exc)  # the DLQ is unreachable too: the event is handled again later


def _read_again(event: EventT[bytes], exc: BaseException) -> None:
    logger.warning(
        "%s[%s]@%s: a record could not be sent (%s): the event will be handled again",
        event.message.topic,
        event.message.partition,
        event.message.offset,
        exc,
    )
    SEND_FAILURES.on_send_error(None, exc, None)
