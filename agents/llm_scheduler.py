"""Agent ``assess_tasks``: assessment-tasks -> risk-assessment-results, through the key pool.

``vlm_concurrency`` Faust actors share the topic's stream; each handles one task at a time, so
the number of calls in flight is bounded without a queue of our own. Faust commits an offset
only when every earlier event of the partition has been acknowledged, and an actor
acknowledges a task only after its result is handed to the producer (which Faust flushes
before committing): a killed worker's successor re-runs the unfinished tasks, and the
aggregator drops the duplicates by task_id. The consumer thread keeps polling while calls are
slow, so a slow VLM never trips ``max.poll.interval``.

A call that failed on server trouble (5xx, timeout) is retried on another key, and on a model of
the chain that has not failed yet where there is one, up to ``vlm_max_retries`` times, after a
jittered backoff of ``vlm_backoff_base_s ** n`` seconds, never past the task's deadline. A call
refused because of its *key* or its quota (revoked, out of balance, rate limited) moves to
another key at once without spending a retry: the request was never judged. The calls of one
task are bounded by (keys x models) + ``vlm_max_retries``. A task that cannot get a key or an
answer before its deadline becomes an ``expired`` result, one whose daily budget (account or
camera) cannot cover the call's worst case a ``skipped`` one: nothing vanishes.

Spend: a call's worst case is reserved against the daily budgets before it is sent; its actual
usage replaces the reservation after. A call the provider may have billed without answering
usefully (an unparseable answer, a timeout or cancellation after it was sent) is booked at its
reported usage or, failing that, at the worst case: a budget errs on the side of stopping.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from faust.types import EventT
from mode import BaseSignalT

from agents.costs import Estimate, Reservation, SpendLedger, downscale_factor, image_tokens, text_tokens
from agents.key_pool import KeySlot, Lease
from agents.vlm_client import KEY_FAULTS, RETRYABLE, SYSTEM_PROMPT
from agents.worker_clients import WorkerClients, current, current_or_none
from streams import metrics
from streams.app import app, settings
from streams.dlq import guarded
from streams.errors import BadImage, ImageMissing, NoKeyAvailable, VlmError
from streams.images import header_size, resolve
from streams.records import AssessmentTask, RiskAssessment, TaskStatus, decode, describe_conflict, to_bytes
from streams.settings import Settings
from streams.table_values import PersistedKey
from streams.tables import key_pool, vlm_spend_live
from streams.topics import assessment_tasks_topic, risk_results_topic

logger = logging.getLogger(__name__)

#: A lease with less time than this left before the task's deadline makes no call (it could only be cut short).
MIN_CALL_S = 0.1


def describe(task: AssessmentTask) -> str:
    """The text part of the prompt: what the detector knows about the group."""
    group = task.group
    gap = "n/a" if group.min_gap is None else f"{group.min_gap:.2f} pedestrian heights"
    text = (
        f"Camera {task.camera_id}, group kind {group.kind}, {len(group.track_ids)} road users, "
        f"closest pedestrian-vehicle gap {gap}."
    )
    conflict = task.conflict
    if conflict is not None:  # a calibrated camera measured it: the model gets the numbers, not just the picture
        text += f" Measured on the ground: {describe_conflict(conflict)}."
    return f"{text} Ref {task.task_id}."


def _result(
    task: AssessmentTask,
    status: TaskStatus,
    *,
    model: str,
    level: str = "none",
    score: float = 0.0,
    summary: str = "",
    key_alias: str = "",
    attempts: int = 0,
    latency_ms: float = 0.0,
    queue_ms: float = 0.0,
    error: str | None = None,
    account: str = "",
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost: float = 0.0,
) -> RiskAssessment:
    return RiskAssessment(
        task_id=task.task_id,
        camera_id=task.camera_id,
        detection_id=task.detection_id,
        group_id=task.group.group_id,
        status=status,
        risk_level=level,
        risk_score=score,
        summary=summary,
        model=model,
        key_alias=key_alias,
        attempts=attempts,
        latency_ms=latency_ms,
        captured_at=task.captured_at,
        completed_at=time.time() * 1000.0,
        queue_ms=queue_ms,
        error=error,
        account=account,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=round(cost, 9),
    )


def _crop_for_call(jpeg: bytes, max_pixels: int) -> tuple[bytes, int, int]:
    """The crop as sent (downscaled within ``max_pixels``) and its size: image tokens grow with area."""
    width, height = header_size(jpeg)
    factor = downscale_factor(width, height, max_pixels)
    if factor >= 1.0:
        return jpeg, width, height
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadImage("crop does not decode")
    size = (max(1, int(width * factor)), max(1, int(height * factor)))
    ok, out = cv2.imencode(
        ".jpg", cv2.resize(image, size, interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 85]
    )
    if not ok:  # pragma: no cover - encoding a decoded image does not fail
        raise BadImage("crop does not re-encode")
    return out.tobytes(), size[0], size[1]


def model_chain(task: AssessmentTask, s: Settings) -> list[str]:
    """The models this task may use, best first (the best may be kept for the most interesting groups)."""
    chain = s.model_chain()
    if len(chain) > 1 and task.group.interest < s.vlm_first_model_min_interest:
        return chain[1:]
    return chain


async def assess(
    task: AssessmentTask, clients: WorkerClients, *, max_retries: int | None = None, partition: int = 0
) -> RiskAssessment:
    """Assess one task with failover across keys and models; always returns a result.

    ``partition`` is the task's ``assessment-tasks`` partition, where its spend is booked.
    """
    vlm, keys, s, ledger = clients.vlm, clients.pool, clients.settings, clients.spend
    retries = s.vlm_max_retries if max_retries is None else max_retries
    deadline = task.deadline / 1000.0
    chain = model_chain(task, s)
    model = chain[0]
    try:
        jpeg = await asyncio.to_thread(resolve, task.image, clients.images)  # decoding is CPU work
        jpeg, width, height = await asyncio.to_thread(_crop_for_call, jpeg, s.vlm_max_crop_pixels)
    except ImageMissing as exc:
        reason = "bad" if isinstance(exc, BadImage) else "missing"
        metrics.bad_images_total.labels(reason=reason).inc()
        return _result(task, "failed", model=model, error=f"image {reason}: {exc}")
    context = describe(task)
    estimate = Estimate(image_tokens(width, height) + text_tokens(SYSTEM_PROMPT, context), s.vlm_max_tokens)
    camera = task.camera_id

    def usable(slot: KeySlot, candidate: str) -> bool:
        """A daily budget left for the call's worst case (the account's share, the camera's)."""
        worst = ledger.worst_case(candidate, estimate)
        return ledger.account_left(slot.account) >= worst and ledger.camera_left(camera) >= worst

    if not keys.any_usable(chain, usable):
        scope = (
            "camera" if all(ledger.camera_left(camera) < ledger.worst_case(m, estimate) for m in chain) else "account"
        )
        metrics.budget_skipped_total.labels(scope=scope).inc()
        return _result(task, "skipped", model=model, error=f"the {scope}'s daily VLM budget is spent")
    queue_s, last_error, attempt, server_failures = 0.0, "", 0, 0
    tried: set[str] = set()
    failed_models: set[str] = set()  # a retry after a server error prefers a model that has not failed
    # Every key once, plus the retries: a provider refusing every key at once (429 with
    # Retry-After: 0) must not turn one task into a loop of calls.
    max_calls = max(1, len(keys.slots)) * len(chain) + retries
    while server_failures <= retries:
        if attempt >= max_calls:
            break
        if time.time() >= deadline:
            return _result(
                task, "expired", model=model, attempts=attempt, queue_ms=queue_s * 1000, error=last_error or None
            )
        try:
            models = sorted(chain, key=lambda m: m in failed_models)  # stable: chain order otherwise
            lease = await keys.acquire(
                deadline, exclude=frozenset(tried), models=models, tokens=estimate.total, usable=usable
            )
        except NoKeyAvailable as exc:
            if not keys.any_usable(chain, usable):  # spent while waiting
                metrics.budget_skipped_total.labels(scope="account").inc()
                return _result(task, "skipped", model=model, attempts=attempt, error="the daily VLM budget is spent")
            return _result(
                task,
                "expired",
                model=model,
                attempts=attempt,
                queue_ms=queue_s * 1000,
                error=f"{exc}; last error: {last_error or 'none'}",
            )
        if deadline - time.time() < MIN_CALL_S:
            # granted at (or past) the deadline: a call now could only be cut short, and paid for
            keys.abandon(lease)
            return _result(
                task, "expired", model=model, attempts=attempt, queue_ms=queue_s * 1000, error=last_error or None
            )
        # no await since the lease was granted: the budget check and this reservation are one step
        reservation = ledger.reserve(lease.account, camera, partition, ledger.worst_case(lease.model, estimate))
        queue_s += lease.waited_s
        metrics.queue_wait_seconds.observe(lease.waited_s)
        attempt += 1
        tried.add(lease.alias)
        metrics.vlm_in_flight.inc()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the call completes, and then the task outlives its cancellation
            async with clients.calls_gate, asyncio.timeout(max(MIN_CALL_S, deadline - time.time())):
                answer = await vlm.assess(lease.secret, jpeg, context, model=lease.model)
        except asyncio.CancelledError:
            keys.abandon(lease)  # the worker is stopping or rebalancing: the call says nothing of the key
            # sent: may be billed; the metric books what the ledger does (it showed less)
            _count_cost(
                lease,
                camera,
                ledger.settle(reservation, lease.model, estimate.prompt_tokens, estimate.max_output_tokens),
            )
            raise
        except TimeoutError:
            # the task's deadline cut the call (the client's own timeout is a VlmError): a backlog,
            # which says nothing of the key or the model (blamed, three such calls cooled a healthy
            # key for two minutes on every worker, and more tasks expired). Sent: may be billed.
            keys.abandon(lease)
            billed = ledger.settle(reservation, lease.model, estimate.prompt_tokens, estimate.max_output_tokens)
            _count_cost(lease, camera, billed)
            metrics.vlm_calls_total.labels(key_alias=lease.alias, outcome="deadline").inc()
            return _result(
                task,
                "expired",
                model=lease.model,
                key_alias=lease.alias,
                attempts=attempt,
                queue_ms=queue_s * 1000,
                error=f"{lease.alias} {lease.model}: the task's deadline came during the call",
            )
        except VlmError as err:
            billed = _book_failed(ledger, reservation, lease.model, estimate, err)
            if billed:
                _count_cost(lease, camera, billed)
            keys.release(lease, ok=False, kind=err.kind, retry_after=err.retry_after, reason=str(err))
            metrics.vlm_calls_total.labels(key_alias=lease.alias, outcome=err.kind).inc()
            metrics.vlm_model_calls_total.labels(account=lease.account, model=lease.model, outcome=err.kind).inc()
            last_error = f"{lease.alias} {lease.model}: {err}"
            logger.info("task %s camera %s: %s (attempt %d)", task.task_id, task.camera_id, last_error, attempt)
            if err.kind not in RETRYABLE:
                return _result(
                    task,
                    "failed",
                    model=lease.model,
                    key_alias=lease.alias,
                    attempts=attempt,
                    queue_ms=queue_s * 1000,
                    error=last_error,
                )
            if err.kind in KEY_FAULTS:
                continue  # not the request's fault: the next key at once, no retry spent
            failed_models.add(lease.model)
            server_failures += 1
            if server_failures > retries:
                break
            backoff = s.vlm_backoff_base_s**server_failures * random.uniform(0.5, 1.0)
            if time.time() + backoff >= deadline:
                return _result(
                    task, "expired", model=model, attempts=attempt, queue_ms=queue_s * 1000, error=last_error
                )
            await asyncio.sleep(backoff)
            continue
        except Exception:
            keys.abandon(lease)  # a bug, not the key's fault: free its slot; handle_task makes a failed result
            _count_cost(
                lease,
                camera,
                ledger.settle(reservation, lease.model, estimate.prompt_tokens, estimate.max_output_tokens),
            )
            raise
        finally:
            metrics.vlm_in_flight.dec()
        answered = answer.model or lease.model
        reported = answer.prompt_tokens is not None and answer.completion_tokens is not None
        # no usage in the answer: the estimate is booked (the prompt's, and every allowed output token)
        prompt_tokens, completion_tokens = (
            (answer.prompt_tokens, answer.completion_tokens)
            if answer.prompt_tokens is not None and answer.completion_tokens is not None
            else (estimate.prompt_tokens, estimate.max_output_tokens)
        )
        cost = ledger.settle(reservation, lease.model, prompt_tokens, completion_tokens)
        keys.release(
            lease,
            ok=True,
            latency_ms=answer.latency_ms,
            tokens=prompt_tokens + completion_tokens if reported else None,
        )
        metrics.vlm_calls_total.labels(key_alias=lease.alias, outcome="ok").inc()
        metrics.vlm_model_calls_total.labels(account=lease.account, model=lease.model, outcome="ok").inc()
        metrics.vlm_tokens_total.labels(account=lease.account, model=lease.model, direction="input").inc(prompt_tokens)
        metrics.vlm_tokens_total.labels(account=lease.account, model=lease.model, direction="output").inc(
            completion_tokens
        )
        _count_cost(lease, camera, cost)
        metrics.vlm_latency_seconds.observe(answer.latency_ms / 1000.0)
        a = answer.assessment
        return _result(
            task,
            "ok",
            level=a.risk_level,
            score=a.risk_score,
            summary=a.summary,
            key_alias=lease.alias,
            attempts=attempt,
            latency_ms=answer.latency_ms,
            queue_ms=queue_s * 1000,
            model=answered,
            account=lease.account,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
        )
    return _result(
        task,
        "failed",
        model=model,
        attempts=attempt,
        queue_ms=queue_s * 1000,
        error=f"gave up after {attempt} attempts; last error: {last_error}",
    )


def _count_cost(lease: Lease, camera: str, cost: float) -> None:
    """A call's cost in the account's and the camera's cost counters."""
    metrics.vlm_cost_total.labels(account=lease.account, model=lease.model).inc(cost)
    metrics.camera_cost_total.labels(camera_id=camera).inc(cost)


def _book_failed(ledger: SpendLedger, reservation: Reservation, model: str, estimate: Estimate, err: VlmError) -> float:
    """Book a failed call the provider may have billed (an answer it sent, a call timed out after it
    was sent): at its ``usage`` where the answer said, else at the worst case; free the reservation
    of one it refused. Returns the cost booked."""
    if not err.billed:
        ledger.cancel(reservation)
        return 0.0
    prompt, completion = err.usage or (estimate.prompt_tokens, estimate.max_output_tokens)
    return ledger.settle(reservation, model, prompt, completion)


@app.agent(assessment_tasks_topic, name="assess_tasks", concurrency=settings.vlm_concurrency)
async def assess_tasks(stream):  # type: ignore[no-untyped-def]
    """One task in, exactly one result out (ok, failed or expired)."""
    async for event in stream.events():
        await guarded(event, handle_task)


async def handle_task(event: EventT[bytes]) -> None:
    task = decode(AssessmentTask, event.value)
    clients = current()
    if time.time() * 1000.0 > task.deadline:
        result = _result(
            task,
            "expired",
            model=clients.settings.model_chain()[0],
            error="deadline passed before the task was picked up",
        )
    else:
        try:
            result = await assess(task, clients, partition=event.message.partition)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not lose the task: it becomes a failed result
            logger.exception("task %s: unexpected error", task.task_id)
            result = _result(
                task,
                "failed",
                model=clients.settings.model_chain()[0],
                error=f"internal error: {type(exc).__name__}: {exc}",
            )
    await risk_results_topic.send(key=task.camera_id.encode(), value=to_bytes(result))


def sync_key_pool(clients: WorkerClients, persisted: dict[str, PersistedKey], owned: frozenset[int] | None) -> None:
    """Adopt newer key states other workers wrote, and this worker's share of the limits.

    ``owned`` is the ``assessment-tasks`` partitions this worker has (None: not assigned yet).
    """
    for alias, data in persisted.items():
        if isinstance(data, dict) and clients.pool.merge(str(alias), data):
            clients.pool.republish(str(alias))
    if owned is not None:
        clients.pool.set_partitions(owned, clients.settings.topic_partitions)
        clients.spend.set_partitions(owned, clients.settings.topic_partitions)
        # detections and tasks share camera keys, so partitions: the same share of the global cap
        clients.global_cap.share = len(owned) / clients.settings.topic_partitions
    clients.pool.snapshot()  # refreshes the key-state gauges


def _sync() -> None:
    clients = current_or_none()
    if clients is None:  # stopping
        return
    assigned = app.assignor.assigned_actives() if app.assignor else set()
    tasks_topic = assessment_tasks_topic.get_topic_name()
    owned = frozenset(tp.partition for tp in assigned if tp.topic == tasks_topic) if assigned else None
    sync_key_pool(clients, dict(key_pool.items()), owned)
    vlm_spend_live.flush(due_only=True)  # spend held since spend_write_s, for the other workers' budgets


@app.timer(interval=1.0)  # type: ignore[untyped-decorator]
async def sync_key_pool_often() -> None:
    _sync()


@app.on_rebalance_complete.connect
async def _reshare(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    _sync()
