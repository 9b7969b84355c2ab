"""The pool of VLM API keys: selection, provider quotas, a model chain, failover and adaptive cooldowns.

Each worker keeps an in-memory :class:`KeyPool` for its fast decisions (which key is free
right now, how many calls are in flight) and persists every state change to the ``key_pool``
GlobalTable, so cooldowns and disables survive restarts and reach every worker.

Quotas belong to the provider's unit, not to a key (``docs/ARCHITECTURE.md``, "The key pool"):
a key spends the budget of its (account, model), of its sub-workspace's (account, workspace,
model) when it has one, and its own when it declares ``rpm``/``tpm`` (:mod:`agents.budgets`).
A call may go out on a key and model only when every one of those budgets has room; budgets are
smoothed per second and ramp up from idle, and a 429 cools the whole (account, model), so ten
keys of one account are scheduled as the one quota they are. A key without an ``account`` is its
own account (a plain key list behaves as one account per key). The model chain is tried in
order: when the first model's budgets are spent or cooling, the next model serves.

Limits across workers: *partitions own whole calls*. A budget's requests per minute and a key's
in-flight cap are dealt out over the ``P`` partitions of ``assessment-tasks`` in whole calls,
``L // P`` each and one more to ``L % P`` of them, dealt on from where the previous limits'
ended, so the remainders spread evenly over the partitions. A worker may use the sum of what its
partitions hold. The workers' sums add up to exactly each limit (the partitions are disjoint),
so the limits hold for all workers together without a round trip per call; no worker rounds a
fraction up (``max_in_flight: 2`` over 4 workers is 2 calls, not 4), and none rounds a small rpm
down to nothing while another worker could use it. The price: a limit smaller than the number
of workers serves only the workers whose partitions hold its calls; give each limit at least one
call per worker. Tokens per minute and per-second rates are split in proportion. The assignment
is recomputed on every rebalance.

Cooldown policy: a 429 (rate or token limit) cools the (account, model), not a key's own limits
(which are ours, for every model), for the server's Retry-After (or the adaptive time); a burst
refusal cools it for a second, after which calls ramp up again (a pause of a second or more resets
the ramp to what the provider saw last). A server error cools a key only when the key looks
unhealthy (half of its recent calls failed, or three in a row with 30% failed), because every key
sees the server's background error rate; the same rule over a model's calls cools the (account,
model), so a failing model hands over to the next in the chain. The adaptive time grows from
``cooldown_min_s`` to ``cooldown_max_s`` with the recent failure rate. 401/403 and arrears disable
the key until re-enabled; an exhausted balance (OpenAI's ``insufficient_quota``) disables it until
the window resets.
State changes are persisted; per-call counters stay in memory.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.budgets import WINDOW_S, Budget
from streams import metrics
from streams.errors import NoKeyAvailable
from streams.settings import ApiKeyConfig, KeyStrategy, QuotaConfig
from streams.table_values import PersistedKey
from streams.vocabulary import VlmErrorKind

logger = logging.getLogger(__name__)

AVAILABLE, IN_USE, COOLING, DISABLED = "AVAILABLE", "IN_USE", "COOLING", "DISABLED"
STATES = (AVAILABLE, IN_USE, COOLING, DISABLED)
RECENT = 20
#: A burst refusal without a Retry-After: wait this long; the calls after it ramp up again (budgets.py).
BURST_COOL_S = 1.0
#: A model the provider says it does not serve (to an account) is not asked again for this long.
MODEL_COOL_S = 3600.0
#: Failover waits this long for a key the task has not tried before it takes one it has.
FAILOVER_WAIT_S = 1.0
#: Refusals that spent nothing (the provider refused before counting tokens).
REFUSED: frozenset[VlmErrorKind] = frozenset({"rate", "burst", "auth", "quota", "arrearage", "model"})


@dataclass
class KeySlot:
    """One key's live state in this worker."""

    cfg: ApiKeyConfig
    #: Position in the configuration: where this key's share of the in-flight cap starts.
    index: int = 0
    in_flight: int = 0
    calls: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    latency_ewma_ms: float = 0.0
    cooldown_until: float = 0.0
    disabled: bool = False
    disabled_reason: str = ""
    disabled_until: float | None = None
    updated_at: float = 0.0
    #: An operator's disable (POST /keys/{alias}/disable) holds until an operator's enable, whatever
    #: else is written; ``operator_version`` orders operator actions across workers without clocks.
    operator_disabled: bool = False
    operator_version: int = 0
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT))
    starts: deque[float] = field(default_factory=deque)
    current_weight: float = 0.0

    @property
    def alias(self) -> str:
        return self.cfg.alias

    @property
    def account(self) -> str:
        return self.cfg.account_name

    def failure_rate(self) -> float:
        return 0.0 if not self.recent else 1.0 - sum(self.recent) / len(self.recent)

    def state(self, now: float) -> str:
        """The key's own state (see :meth:`KeyPool.key_state` for its quotas' too)."""
        if self.operator_disabled:
            return DISABLED
        if self.disabled and (self.disabled_until is None or now < self.disabled_until):
            return DISABLED
        if now < self.cooldown_until:
            return COOLING
        return IN_USE if self.in_flight else AVAILABLE


Shared = KeySlot | Budget


@dataclass
class Lease:
    """A key and model handed to one call; give it back with :meth:`KeyPool.release`."""

    slot: KeySlot
    started: float
    waited_s: float
    model: str = ""
    budgets: tuple[Budget, ...] = ()
    #: Each budget's token entry of this call (the estimate until the provider's count replaces it).
    entries: tuple[list[float], ...] = ()

    @property
    def alias(self) -> str:
        return self.slot.alias

    @property
    def account(self) -> str:
        return self.slot.account

    @property
    def secret(self) -> str:
        return self.slot.cfg.key.get_secret_value()


def quota_alias(account: str, model: str, workspace: str = "") -> str:
    """The name a quota's shared state goes by (never a key)."""
    return f"quota:{account}/{workspace}/{model}" if workspace else f"quota:{account}/{model}"


class KeyPool:
    """Chooses a key and model per call and learns from each outcome."""

    def __init__(
        self,
        keys: Iterable[ApiKeyConfig],
        *,
        strategy: KeyStrategy = "least_loaded",
        cooldown_min_s: float = 10.0,
        cooldown_max_s: float = 120.0,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[Shared], None] | None = None,
        models: Sequence[str] = ("qwen-vl-plus",),
        quotas: Iterable[QuotaConfig] = (),
        smoothing: bool = True,
        ramp_start: float = 0.25,
        ramp_growth: float = 1.5,
    ) -> None:
        self.slots = [KeySlot(cfg, index=i) for i, cfg in enumerate(keys)]
        self.by_alias = {s.alias: s for s in self.slots}
        for alias in self.by_alias:
            if alias.startswith(("quota:", "key:")):
                raise ValueError(f"key alias {alias!r}: 'quota:' and 'key:' name the pool's quotas")
        self.models = list(models) or ["qwen-vl-plus"]
        self.strategy = strategy
        self.cooldown_min_s = cooldown_min_s
        self.cooldown_max_s = cooldown_max_s
        self.clock = clock
        self.on_change = on_change
        self.smoothing, self.ramp_start, self.ramp_growth = smoothing, ramp_start, ramp_growth
        self.budgets: dict[str, Budget] = {}
        #: (key index, model) -> the budgets a call with that key and model spends.
        self.paths: dict[tuple[int, str], tuple[Budget, ...]] = {}
        self._build_budgets(list(quotas))
        #: This worker's ``assessment-tasks`` partitions and their total (None: it has them all).
        self.owned: frozenset[int] | None = None
        self.partitions = 1
        #: Per key, this worker's whole calls of its in-flight limit (dealt on rebalance).
        self._caps: dict[int, float] = {}
        self._deal()
        self._rr = itertools.count()
        self._changed = asyncio.Event()

    def _build_budgets(self, quotas: list[QuotaConfig]) -> None:
        accounts = {s.account for s in self.slots}
        workspaces = {(s.account, s.cfg.workspace) for s in self.slots if s.cfg.workspace}
        for q in quotas:
            if q.account not in accounts:
                raise ValueError(
                    f"vlm_quotas: no key belongs to account {q.account!r} (keys' accounts: {sorted(accounts)})"
                )
            if q.workspace and (q.account, q.workspace) not in workspaces:
                raise ValueError(f"vlm_quotas: no key of account {q.account!r} is in workspace {q.workspace!r}")
            if q.model != "*" and q.model not in self.models:
                logger.warning("vlm_quotas: model %s of account %s is not in the model chain", q.model, q.account)

        def declared(account: str, workspace: str, model: str) -> QuotaConfig | None:
            exact = [q for q in quotas if (q.account, q.workspace, q.model) == (account, workspace, model)]
            wildcard = [q for q in quotas if (q.account, q.workspace, q.model) == (account, workspace, "*")]
            found = exact or wildcard
            return found[0] if found else None

        def budget(alias: str, account: str, model: str, workspace: str, q: Any) -> Budget:
            if alias not in self.budgets:
                self.budgets[alias] = Budget(
                    alias=alias,
                    account=account,
                    model=model,
                    workspace=workspace,
                    rpm=getattr(q, "rpm", None),
                    tpm=getattr(q, "tpm", None),
                    rps=getattr(q, "rps", None),
                    tps=getattr(q, "tps", None),
                    index=len(self.budgets),
                )
            return self.budgets[alias]

        for slot in self.slots:
            own = None
            if slot.cfg.rpm is not None or slot.cfg.tpm is not None:  # the key's own limits, every model
                own = budget(f"key:{slot.alias}", slot.account, "*", "", slot.cfg)
            for model in self.models:
                path = [
                    budget(quota_alias(slot.account, model), slot.account, model, "", declared(slot.account, "", model))
                ]
                ws = slot.cfg.workspace
                ws_quota = declared(slot.account, ws, model) if ws else None
                if ws_quota is not None:
                    path.append(budget(quota_alias(slot.account, model, ws), slot.account, model, ws, ws_quota))
                if own is not None:
                    path.append(own)
                self.paths[(slot.index, model)] = tuple(path)

    # --- limits ----------------------------------------------------------------------------
    def set_partitions(self, owned: frozenset[int], partitions: int) -> None:
        """The ``assessment-tasks`` partitions this worker owns, of ``partitions``."""
        self.owned, self.partitions = frozenset(p for p in owned if 0 <= p < partitions), max(1, partitions)
        self._deal()
        self._changed.set()

    @property
    def share(self) -> float:
        """This worker's fraction of the partitions (of every tokens-per-minute and per-second limit)."""
        return 1.0 if self.owned is None else len(self.owned) / self.partitions

    def _dealt(self, limit: int | None, dealt: int) -> tuple[float, int]:
        """This worker's whole calls of ``limit``, dealt on from ``dealt``; and the new ``dealt``."""
        if limit is None:
            return math.inf, dealt
        if self.owned is None:
            return float(limit), dealt
        base, extra = divmod(limit, self.partitions)
        start = dealt % self.partitions
        cap = float(sum(base + (1 if (p - start) % self.partitions < extra else 0) for p in self.owned))
        return cap, dealt + extra

    def _deal(self) -> None:
        """Deal every rpm and in-flight limit over the partitions (see the module docstring)."""
        dealt = 0
        for slot in self.slots:
            self._caps[slot.index], dealt = self._dealt(slot.cfg.max_in_flight, dealt)
        dealt = 0
        for b in sorted(self.budgets.values(), key=lambda b: b.index):
            b.rpm_cap, dealt = self._dealt(b.rpm, dealt)
            b.share = self.share
            b.set_slots(self.owned if self.smoothing else None, self.partitions)
            if self.owned and b.rpm is not None and b.rpm_cap < 1:
                # whole calls cannot be dealt finer: this worker's cameras get no call of it at all
                logger.warning(
                    "quota %s: %d calls a minute over %d partitions leave this worker's %d partition(s) none; "
                    "its tasks on %s expire unless another model serves. Use at most %d partitions for it",
                    b.alias,
                    b.rpm,
                    self.partitions,
                    len(self.owned),
                    b.model,
                    b.rpm,
                )

    def _key_free_at(self, slot: KeySlot, now: float) -> float:
        state = slot.state(now)
        if state == DISABLED:
            # an operator's disable holds until an operator's enable, whatever the provider's says
            return math.inf if slot.operator_disabled or slot.disabled_until is None else slot.disabled_until
        if slot.in_flight >= self._caps[slot.index]:
            return math.inf  # frees on release, which wakes waiters
        return max(now, slot.cooldown_until)

    def _free_at(self, slot: KeySlot, model: str, now: float, tokens: int = 0) -> float:
        """When ``slot`` can take one more call of ``model`` (now if it can)."""
        at = self._key_free_at(slot, now)
        if at == math.inf:
            return at
        for b in self.paths[(slot.index, model)]:
            at = max(
                at,
                b.free_at(now, tokens, smoothing=self.smoothing, start=self.ramp_start, growth=self.ramp_growth),
            )
            if at == math.inf:
                break
        return at

    # --- choosing --------------------------------------------------------------------------
    def _choose(self, ready: list[KeySlot]) -> KeySlot:
        if self.strategy == "round_robin":
            return ready[next(self._rr) % len(ready)]
        if self.strategy == "weighted":  # smooth weighted round robin (nginx)
            total = sum(s.cfg.weight for s in ready)
            for s in ready:
                s.current_weight += s.cfg.weight
            best = max(ready, key=lambda s: s.current_weight)
            best.current_weight -= total
            return best
        if self.strategy == "latency":
            return min(ready, key=lambda s: (s.latency_ewma_ms if s.calls else 0.0, s.in_flight))
        return min(ready, key=lambda s: (s.in_flight, len(s.starts), s.calls))

    def try_acquire(
        self,
        exclude: frozenset[str] = frozenset(),
        *,
        models: Sequence[str] | None = None,
        tokens: int = 0,
        usable: Callable[[KeySlot, str], bool] | None = None,
    ) -> Lease | None:
        """A lease on the best key free right now, for the first model of ``models`` that has one.

        Keys in ``exclude`` (those a task already failed on) are used only when no other key will
        be free within ``FAILOVER_WAIT_S``, so failover moves to another key whenever one can
        take the call soon (a paced key's next slot is a fraction of a second away); a tried key
        that its failure did not cool (one transient error) serves rather than the task waiting
        for a cooling key, maybe until its deadline. ``usable`` may rule out a key and model (a
        spent daily budget).
        """
        now = self.clock()
        for model in models or self.models:
            free_at = self._failover_free_at(model, now, tokens, exclude, usable)
            ready = [s for s, at in free_at if at <= now]
            if not ready:
                continue
            untried = [s for s in ready if s.alias not in exclude]
            ready = untried or ready
            slot = self._choose(ready)
            slot.in_flight += 1
            slot.calls += 1
            slot.starts.append(now)
            path = self.paths[(slot.index, model)]
            entries = tuple(b.start(now, tokens, start=self.ramp_start, growth=self.ramp_growth) for b in path)
            return Lease(slot=slot, started=now, waited_s=0.0, model=model, budgets=path, entries=entries)
        return None

    def _failover_free_at(
        self,
        model: str,
        now: float,
        tokens: int,
        exclude: frozenset[str],
        usable: Callable[[KeySlot, str], bool] | None,
    ) -> list[tuple[KeySlot, float]]:
        """Each allowed key with when it may take a call of ``model``: a key in ``exclude`` only
        once no other will be free within ``FAILOVER_WAIT_S``."""
        allowed = [(s, self._free_at(s, model, now, tokens)) for s in self.slots if usable is None or usable(s, model)]
        if not exclude:
            return allowed
        soonest_untried = min((at for s, at in allowed if s.alias not in exclude), default=math.inf)
        if soonest_untried - now > FAILOVER_WAIT_S:
            return allowed
        return [(s, at) for s, at in allowed if s.alias not in exclude]

    def next_free_at(
        self,
        models: Sequence[str] | None = None,
        tokens: int = 0,
        usable: Callable[[KeySlot, str], bool] | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> float:
        now = self.clock()
        return min(
            (at for m in models or self.models for _, at in self._failover_free_at(m, now, tokens, exclude, usable)),
            default=math.inf,
        )

    def any_usable(self, models: Sequence[str] | None, usable: Callable[[KeySlot, str], bool]) -> bool:
        """Whether ``usable`` allows some key for some of ``models`` (a daily budget left)."""
        return any(usable(s, m) for m in models or self.models for s in self.slots)

    async def acquire(
        self,
        deadline: float,
        exclude: frozenset[str] = frozenset(),
        *,
        models: Sequence[str] | None = None,
        tokens: int = 0,
        usable: Callable[[KeySlot, str], bool] | None = None,
    ) -> Lease:
        """Wait for a key until ``deadline`` (epoch s); raises NoKeyAvailable after it, or at once
        when ``usable`` rules out every key and no call in flight can change that."""
        started = self.clock()
        while True:
            lease = self.try_acquire(exclude, models=models, tokens=tokens, usable=usable)
            if lease is not None:
                lease.waited_s = self.clock() - started
                return lease
            now = self.clock()
            if now >= deadline:
                raise NoKeyAvailable(f"no key free before the deadline (waited {now - started:.1f}s)")
            if usable is not None and not self.any_usable(models, usable):
                # a spent daily budget: only a call in flight settling below its reservation can
                # make room; with none, waiting would hold the task until its deadline for nothing
                if not any(s.in_flight for s in self.slots):
                    raise NoKeyAvailable("no key may serve it, and no call in flight can make room")
            wake = min(self.next_free_at(models, tokens, usable, exclude), deadline)
            self._changed.clear()
            try:  # asyncio.timeout: unlike wait_for on 3.11, never swallows a cancellation
                async with asyncio.timeout(max(0.005, min(wake - now, 1.0))):
                    await self._changed.wait()
            except TimeoutError:
                pass

    # --- outcomes --------------------------------------------------------------------------
    def release(
        self,
        lease: Lease,
        *,
        ok: bool,
        kind: VlmErrorKind | None = None,
        latency_ms: float = 0.0,
        tokens: int | None = None,
        retry_after: float | None = None,
        reason: str = "",
    ) -> None:
        """Record the outcome of the call made with ``lease``; ``tokens``: the provider's count."""
        slot, now = lease.slot, self.clock()
        slot.in_flight = max(0, slot.in_flight - 1)
        actual = 0 if (not ok and kind in REFUSED) else tokens
        for entry in lease.entries:
            Budget.finish(entry, actual)
        model_budget = lease.budgets[0] if lease.budgets else None
        if ok or kind in ("content", "request", "parse"):  # the key worked; the request did not
            slot.successes += ok
            slot.failures += not ok
            slot.consecutive_failures = 0
            slot.recent.append(True)
            if model_budget is not None:
                model_budget.recent.append(True)
                model_budget.refused.append(False)
                model_budget.consecutive_failures = 0
            if latency_ms:
                a = 0.2
                slot.latency_ewma_ms = (
                    latency_ms if not slot.latency_ewma_ms else ((1 - a) * slot.latency_ewma_ms + a * latency_ms)
                )
        else:
            slot.failures += 1
            if kind not in ("rate", "burst", "model"):  # a quota's refusal or a model's absence: not the key's health
                slot.consecutive_failures += 1
                slot.recent.append(False)
            self._react(lease, kind, retry_after, reason, now)
        self._changed.set()

    def abandon(self, lease: Lease) -> None:
        """The call made with ``lease`` was cancelled: free its slot, learn nothing from it."""
        lease.slot.in_flight = max(0, lease.slot.in_flight - 1)
        self._changed.set()

    @staticmethod
    def unhealthy(slot: KeySlot | Budget) -> bool:
        """A key (or model) whose server errors are its own, not the background rate every key sees.

        At a 10% transient error rate two failures in a row happen to ~45% of keys within a
        minute (measured in bench/key_pool.py), so they alone must not cool a key. Nor may a
        failure rate over a few samples: 2 of a key's first 4 calls fail for 1 key in 20 at that
        rate, and cooled one of ten keys for 92 s in a benchmark run. A rate counts from 10
        samples (5 of 10 at 10%: 1 key in 600); a dead key still cools after 3 failures in a row.
        """
        samples = len(slot.recent)
        rate = slot.failure_rate()
        return (samples >= 10 and rate >= 0.5) or (slot.consecutive_failures >= 3 and rate >= 0.3)

    def adaptive_cooldown(self, slot: KeySlot | Budget, *, refusals: bool = False) -> float:
        """From ``cooldown_min_s`` up to ``cooldown_max_s`` with the recent failure rate (of a
        quota's 429s with ``refusals``, else of server errors)."""
        rate = slot.refusal_rate() if refusals and isinstance(slot, Budget) else slot.failure_rate()
        span = self.cooldown_max_s - self.cooldown_min_s
        return self.cooldown_min_s + span * min(1.0, rate * 1.5)

    def _react(
        self, lease: Lease, kind: VlmErrorKind | None, retry_after: float | None, reason: str, now: float
    ) -> None:
        slot = lease.slot
        if kind == "auth":
            self.disable(slot.alias, reason or "key rejected (401/403)")
        elif kind in ("arrearage", "quota"):
            # a balance is the account's: every key of it is refused alike, and learning that one
            # failed call per key spent a call (and a task's attempt) on each
            keys = [s.alias for s in self.slots if s.account == slot.account]
            if kind == "arrearage":  # until an operator re-enables them
                logger.error("account %s in arrears: its %d key(s) disabled until re-enabled", lease.account, len(keys))
                why, until = reason or "account in arrears", None
            else:
                why, until = reason or "quota exhausted", now + (retry_after if retry_after is not None else 3600.0)
            for alias in keys:
                self.disable(alias, why, until=until)
        elif kind == "model":
            # the account does not serve the model: its every key is refused alike, for the hour
            # (an operator's fix is a restart; a model enabled meanwhile is tried again after it)
            for b in lease.budgets:
                if b.model != "*":
                    self._cool(b, now + MODEL_COOL_S)
            logger.error("model %s not served to account %s: %s", lease.model, lease.account, reason)
        elif kind in ("rate", "burst"):
            # the provider counts per account and model: every key of it is refused alike. A key's
            # own limits (``key:``, every model) are ours, not the provider's: a refusal of one
            # model leaves that key's other models alone.
            for b in lease.budgets:
                if b.model == "*":
                    continue
                b.throttled += 1
                if kind == "burst":
                    wait = retry_after if retry_after is not None else BURST_COOL_S
                else:
                    # refusals grow the next cooldown; they are not the model's health (server errors)
                    b.refused.append(True)
                    wait = retry_after if retry_after is not None else self.adaptive_cooldown(b, refusals=True)
                self._cool(b, now + wait)
            metrics.quota_throttled_total.labels(account=lease.account, model=lease.model, kind=kind).inc()
        elif kind == "server":
            if self.unhealthy(slot):
                self._cool(slot, now + (retry_after if retry_after is not None else self.adaptive_cooldown(slot)))
            if lease.budgets:
                b = lease.budgets[0]
                b.recent.append(False)
                b.consecutive_failures += 1
                if self.unhealthy(b):  # the model itself fails: the chain's next model serves meanwhile
                    self._cool(b, now + self.adaptive_cooldown(b))

    def _cool(self, item: Shared, until: float) -> None:
        if until > item.cooldown_until:
            item.cooldown_until = until
            self._publish(item)

    def disable(self, alias: str, reason: str, *, until: float | None = None, by_operator: bool = False) -> None:
        """Disable a key: by the provider's answer (until re-enabled, or ``until``), or by an operator."""
        slot = self.by_alias[alias]
        if by_operator:
            slot.operator_disabled = True
            slot.operator_version += 1
        else:
            slot.disabled, slot.disabled_until = True, until
        slot.disabled_reason = reason
        logger.warning("key %s disabled: %s", alias, reason)
        self._publish(slot)

    def enable(self, alias: str) -> None:
        """An operator's enable: clears the operator's disable and the provider's."""
        slot = self.by_alias[alias]
        slot.operator_disabled = False
        slot.operator_version += 1
        slot.disabled, slot.disabled_reason, slot.disabled_until = False, "", None
        slot.cooldown_until, slot.consecutive_failures = 0.0, 0
        slot.recent.clear()
        logger.info("key %s enabled", alias)
        self._publish(slot)

    def _publish(self, item: Shared) -> None:
        """A state change (cooldown, disable, enable): wake waiters and persist it."""
        item.updated_at = self.clock()
        self._changed.set()
        if self.on_change is not None:
            self.on_change(item)

    # --- sharing state ---------------------------------------------------------------------
    def shared(self, alias: str) -> Shared | None:
        """A key's or a quota's state, by the name it is persisted under."""
        return self.by_alias.get(alias) or self.budgets.get(alias)

    def persisted(self, item: Shared) -> PersistedKey:
        """What the key_pool table keeps of a key or quota (never the key itself)."""
        return {
            "alias": item.alias,
            "cooldown_until": item.cooldown_until,
            "disabled": item.disabled,
            "disabled_reason": item.disabled_reason,
            "disabled_until": item.disabled_until,
            "updated_at": item.updated_at,
            "operator_disabled": item.operator_disabled,
            "operator_version": item.operator_version,
        }

    def merge(self, alias: str, data: Mapping[str, Any]) -> bool:
        """Apply another worker's (or an earlier run's) state of a key or quota; True when ours is ahead.

        The operator's switch follows ``operator_version`` (a disable wins a tie), never a clock,
        so a cooldown another worker writes cannot undo a disable. The provider's state (cooldown,
        disable) follows the newer ``updated_at``. When the record is behind this worker's operator
        state (another worker overwrote it before it saw the switch), the caller writes ours back.
        """
        slot = self.shared(alias)
        if slot is None:
            return False
        version, op_disabled = int(data.get("operator_version") or 0), bool(data.get("operator_disabled"))
        changed = False
        if version > slot.operator_version or (
            version == slot.operator_version and op_disabled and not slot.operator_disabled
        ):
            if not op_disabled:  # an operator's enable elsewhere clears the provider's disable too
                slot.disabled, slot.disabled_until, slot.cooldown_until = False, None, 0.0
            slot.operator_disabled, slot.operator_version = op_disabled, version
            slot.disabled_reason = str(data.get("disabled_reason") or "")
            changed = True
        behind = version < slot.operator_version or (slot.operator_disabled and not op_disabled)
        if float(data.get("updated_at", 0)) > slot.updated_at:
            slot.cooldown_until = max(slot.cooldown_until, float(data.get("cooldown_until") or 0))
            slot.disabled = bool(data.get("disabled"))
            if not slot.operator_disabled:
                slot.disabled_reason = str(data.get("disabled_reason") or "")
            until = data.get("disabled_until")
            slot.disabled_until = float(until) if until is not None else None
            slot.updated_at = float(data["updated_at"])
            changed = True
        if changed:
            self._changed.set()
        return behind

    def republish(self, alias: str) -> None:
        """Write this worker's state of a key or quota again (the shared record is behind it)."""
        item = self.shared(alias)
        if item is not None and self.on_change is not None:
            self.on_change(item)

    def key_state(self, slot: KeySlot, now: float | None = None) -> str:
        """The key's state, COOLING also when every model's quota it spends is cooling."""
        now = self.clock() if now is None else now
        state = slot.state(now)
        if state in (AVAILABLE, IN_USE) and all(
            any(b.cooldown_until > now for b in self.paths[(slot.index, m)]) for m in self.models
        ):
            return COOLING
        return state

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-key view for /keys/ and metrics: aliases and numbers only."""
        now = self.clock()
        rows = []
        for s in self.slots:
            state = self.key_state(s, now)
            cooling_until = max(
                [s.cooldown_until, *(b.cooldown_until for m in self.models for b in self.paths[(s.index, m)])]
            )
            while s.starts and s.starts[0] <= now - WINDOW_S:
                s.starts.popleft()
            for st in STATES:
                metrics.key_state.labels(key_alias=s.alias, state=st).set(1 if st == state else 0)
            rows.append(
                {
                    "alias": s.alias,
                    "account": s.account,
                    "workspace": s.cfg.workspace,
                    "state": state,
                    "cooldown_remaining_s": round(max(0.0, cooling_until - now), 1) if state == COOLING else 0.0,
                    "disabled_reason": s.disabled_reason if state == DISABLED else "",
                    "in_flight": s.in_flight,
                    "calls": s.calls,
                    "successes": s.successes,
                    "failures": s.failures,
                    "success_rate": round(s.successes / s.calls, 4) if s.calls else None,
                    "latency_ewma_ms": round(s.latency_ewma_ms, 1),
                    "weight": s.cfg.weight,
                    "rpm": s.cfg.rpm,
                    "calls_last_min": len(s.starts),
                }
            )
        return rows

    def quota_snapshot(self) -> list[dict[str, Any]]:
        """Per (account, model) quota: limits, this worker's share and use, state. Names only."""
        now = self.clock()
        rows = []
        for b in self.budgets.values():
            b.prune(now)
            keys = sorted({s.alias for (i, m), path in self.paths.items() if b in path for s in [self.slots[i]]})
            rows.append(
                {
                    "quota": b.alias,
                    "account": b.account,
                    "model": b.model,
                    "workspace": b.workspace,
                    "keys": keys,
                    "rpm": b.rpm,
                    "tpm": b.tpm,
                    "rps": b.rps,
                    "rpm_share": None if b.rpm_cap == math.inf else b.rpm_cap,
                    "state": b.state(now),
                    "cooldown_remaining_s": round(max(0.0, b.cooldown_until - now), 1),
                    "calls_last_min": len(b.starts),
                    "tokens_last_min": int(sum(n for _, n in b.tokens)),
                    "throttled": b.throttled,
                }
            )
        return rows
