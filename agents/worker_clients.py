"""What a worker holds for its whole life, built once when it starts and closed when it stops.

The key pool, the VLM session, the image store, the Redis result cache, the alert webhook, the
known cameras and the global task cap are shared by several agents and the web views. They
are built here, from the settings, by :meth:`WorkerClients.build`, which
:mod:`agents.lifecycle` runs as the worker starts (before any agent sees an event and before the
web server answers), and closed when it stops. Nothing is built when a module is imported, and
a unit test builds its own (:meth:`WorkerClients.build` with test settings, or the fields
directly) and installs it with :func:`install`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from agents.alerting import WebhookSender
from agents.costs import SpendLedger
from agents.key_pool import KeyPool, Shared
from agents.task_policy import GlobalCap
from agents.vlm_client import VlmClient
from models.cameras import load_cameras
from streams.cache import ResultCache
from streams.errors import ConfigError
from streams.images import ImageStore, open_store
from streams.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class WorkerClients:
    """The worker's shared clients and state; one per worker process."""

    settings: Settings
    pool: KeyPool
    vlm: VlmClient
    images: ImageStore
    cache: ResultCache
    webhook: WebhookSender | None
    #: The cameras this deployment knows (``cameras_file``), or None to accept any valid id.
    known_cameras: frozenset[str] | None
    #: The global task budget of this worker (its share is set by the scheduler on rebalance).
    global_cap: GlobalCap
    #: Bounds the VLM calls in flight in this worker.
    calls_gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(50))
    #: Today's spend against the daily budgets (rows in the ``vlm_spend`` table in a worker).
    spend: SpendLedger = field(default_factory=lambda: SpendLedger({}, {}, None, {}))

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        on_key_change: Callable[[Shared], None] | None = None,
        spend_rows: MutableMapping[Any, Any] | None = None,
    ) -> WorkerClients:
        """Everything from the settings; ``on_key_change`` persists key and quota state changes (the
        key_pool table), ``spend_rows`` holds the day's spend (the vlm_spend table)."""
        chain = settings.model_chain()
        keys = settings.api_keys()
        accounts = {k.account_name for k in keys}
        plain = [k.alias for k in keys if not k.account]
        if len(plain) > 1 and "dashscope" in settings.vlm_base_url:
            # DashScope counts every limit per account and model: ten keys of one account are one
            # quota, and taken for ten, the pool sends ten times what the account may
            logger.warning(
                "%d DashScope keys (%s) name no account: each is taken as its own account with its own quota; "
                "give the keys of one Model Studio account the same `account`",
                len(plain),
                ", ".join(plain),
            )
        unknown = sorted(set(settings.account_budgets()) - accounts)
        if unknown:  # a typo would leave the real account without its cap
            raise ConfigError(
                f"vlm_account_daily_budget names accounts no key belongs to: {unknown}"
                f" (keys' accounts: {sorted(accounts)})"
            )
        return cls(
            settings=settings,
            pool=KeyPool(
                keys,
                strategy=settings.key_strategy,
                cooldown_min_s=settings.cooldown_min_s,
                cooldown_max_s=settings.cooldown_max_s,
                on_change=on_key_change,
                models=chain,
                quotas=settings.quotas(),
                smoothing=settings.vlm_smoothing,
                ramp_start=settings.vlm_ramp_start,
                ramp_growth=settings.vlm_ramp_growth,
            ),
            vlm=VlmClient(
                settings.vlm_base_url,
                chain[0],
                timeout_s=settings.vlm_timeout_s,
                pool_size=settings.vlm_concurrency,
                max_tokens=settings.vlm_max_tokens,
                server_queue=settings.vlm_server_queue,
            ),
            images=open_store(settings.image_store, redis_url=settings.redis_url, ttl_s=settings.image_ttl_s),
            cache=ResultCache(
                settings.redis_url, settings.redis_ttl_s, settings.redis_retry_s, prefix=settings.redis_prefix
            ),
            webhook=(
                WebhookSender(
                    settings.alert_webhook_url,
                    max_age_s=settings.alert_webhook_max_age_s,
                    total_s=min(15.0, settings.rebalance_timeout_s / 3),
                )
                if settings.alert_webhook_url
                else None
            ),
            known_cameras=(
                frozenset(c.id for c in load_cameras(settings.cameras_file)) if settings.cameras_file else None
            ),
            global_cap=GlobalCap(settings.global_budget_per_min, share=1.0 / settings.topic_partitions),
            calls_gate=asyncio.Semaphore(settings.vlm_concurrency),
            spend=SpendLedger(
                settings.prices(),
                settings.account_budgets(),
                settings.camera_daily_budget,
                {} if spend_rows is None else spend_rows,
            ),
        )

    async def close(self) -> None:
        """Close the sessions and background tasks (the worker is stopping)."""
        await self.vlm.close()
        await self.cache.close()
        if self.webhook is not None:
            await self.webhook.close()


_current: WorkerClients | None = None


def install(clients: WorkerClients | None) -> None:
    """Make ``clients`` the worker's (the worker's start-up does this; so do unit tests)."""
    global _current
    _current = clients


def current() -> WorkerClients:
    """The worker's clients; an error before the worker started (importing builds nothing)."""
    if _current is None:
        raise RuntimeError("the worker's clients are built when the worker starts (agents.lifecycle)")
    return _current


def current_or_none() -> WorkerClients | None:
    """The worker's clients, or None before it started or after it stopped (for timers)."""
    return _current
