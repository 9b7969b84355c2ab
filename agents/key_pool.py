"""The pool of VLM API keys: selection, limits, failover and adaptive cooldowns.

Each worker keeps an in-memory :class:`KeyPool` for its fast decisions (which key is free
right now, how many calls are in flight) and persists every state change to the ``key_pool``
GlobalTable, so cooldowns and disables survive restarts and reach every worker.

Per-key limits across workers: *partitions own whole calls*. A key's requests per minute and
in-flight cap are dealt out over the ``P`` partitions of ``assessment-tasks`` in whole calls,
``L // P`` each and one more to ``L % P`` of them, dealt on from where the previous keys'
ended, so the keys' remainders spread evenly over the partitions. A worker may use the sum of
what its partitions hold. The workers' sums add up to exactly each limit (the partitions are
disjoint), so the limits hold for all workers together without a round trip per call; no
worker rounds a fraction up (``max_in_flight: 2`` over 4 workers is 2 calls, not 4), and none
rounds a key's small rpm down to nothing while another worker could use it: every call of the
limit belongs to some partition, and load follows the same partitions. The price: a key whose
limit is smaller than the number of workers serves only the workers whose partitions hold its
calls (a deployment with one key of ``max_in_flight: 2`` and four workers leaves two of them
without it); give each key limits of at least one call per worker, or several keys. Tokens per
minute are split in proportion. The assignment is recomputed on every rebalance.

Cooldown policy: a 429 cools the key for the server's Retry-After (or the adaptive time); a
server error cools it only when the key looks unhealthy (half of its recent calls failed, or three
in a row with 30% failed), because every key sees the server's background error rate, and a
healthy key cooled for it loses more capacity than the cooling saves. The adaptive time grows
from ``cooldown_min_s`` to ``cooldown_max_s`` with the recent failure rate. 401/403 and arrears
disable the key until re-enabled; an exhausted quota disables it until the window resets. State
changes (cooldowns, disables, enables) are persisted; per-call counters stay in memory.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streams import metrics
from streams.errors import NoKeyAvailable
from streams.settings import ApiKeyConfig, KeyStrategy
from streams.table_values import PersistedKey
from streams.vocabulary import VlmErrorKind

logger = logging.getLogger(__name__)

AVAILABLE, IN_USE, COOLING, DISABLED = "AVAILABLE", "IN_USE", "COOLING", "DISABLED"
STATES = (AVAILABLE, IN_USE, COOLING, DISABLED)
WINDOW_S = 60.5  # a little over a minute, so arrival jitter never crosses a server's 60 s window
RECENT = 20


@dataclass
class KeySlot:
    """One key's live state in this worker."""

    cfg: ApiKeyConfig
    #: Position in the configuration: where this key's share of the limits starts (see the module doc).
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
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    current_weight: float = 0.0

    @property
    def alias(self) -> str:
        return self.cfg.alias

    def failure_rate(self) -> float:
        return 0.0 if not self.recent else 1.0 - sum(self.recent) / len(self.recent)

    def state(self, now: float) -> str:
        if self.operator_disabled:
            return DISABLED
        if self.disabled and (self.disabled_until is None or now < self.disabled_until):
            return DISABLED
        if now < self.cooldown_until:
            return COOLING
        return IN_USE if self.in_flight else AVAILABLE


@dataclass
class Lease:
    """A key handed to one call; give it back with :meth:`KeyPool.release`."""

    slot: KeySlot
    started: float
    waited_s: float

    @property
    def alias(self) -> str:
        return self.slot.alias

    @property
    def secret(self) -> str:
        return self.slot.cfg.key.get_secret_value()


class KeyPool:
    """Chooses a key per call and learns from each outcome."""

    def __init__(
        self,
        keys: Iterable[ApiKeyConfig],
        *,
        strategy: KeyStrategy = "least_loaded",
        cooldown_min_s: float = 10.0,
        cooldown_max_s: float = 120.0,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[KeySlot], None] | None = None,
    ) -> None:
        self.slots = [KeySlot(cfg, index=i) for i, cfg in enumerate(keys)]
        self.by_alias = {s.alias: s for s in self.slots}
        self.strategy = strategy
        self.cooldown_min_s = cooldown_min_s
        self.cooldown_max_s = cooldown_max_s
        self.clock = clock
        self.on_change = on_change
        #: This worker's ``assessment-tasks`` partitions and their total (None: it has them all).
        self.owned: frozenset[int] | None = None
        self.partitions = 1
        #: Per key, this worker's whole calls of its rpm and in-flight limits (dealt on rebalance).
        self._caps: dict[tuple[int, str], float] = {}
        self._deal()
        self._rr = itertools.count()
        self._changed = asyncio.Event()

    # --- limits ----------------------------------------------------------------------------
    def set_partitions(self, owned: frozenset[int], partitions: int) -> None:
        """The ``assessment-tasks`` partitions this worker owns, of ``partitions``."""
        self.owned, self.partitions = frozenset(p for p in owned if 0 <= p < partitions), max(1, partitions)
        self._deal()
        self._changed.set()

    @property
    def share(self) -> float:
        """This worker's fraction of the partitions (of every key's tokens per minute)."""
        return 1.0 if self.owned is None else len(self.owned) / self.partitions

    def _deal(self) -> None:
        """Deal every key's rpm and in-flight limits over the partitions (see the module docstring)."""
        self._caps = {}
        for kind in ("rpm", "max_in_flight"):
            dealt = 0  # extras the keys before this one dealt: the next key deals on from there
            for slot in self.slots:
                limit: int | None = getattr(slot.cfg, kind)
                if limit is None:
                    cap = float("inf")
                elif self.owned is None:
                    cap = float(limit)
                else:
                    base, extra = divmod(limit, self.partitions)
                    start = dealt % self.partitions
                    cap = float(sum(base + (1 if (p - start) % self.partitions < extra else 0) for p in self.owned))
                    dealt += extra
                self._caps[(slot.index, kind)] = cap

    def _cap(self, slot: KeySlot, kind: Literal["rpm", "max_in_flight"]) -> float:
        """This worker's whole calls of ``slot``'s ``kind`` limit."""
        return self._caps[(slot.index, kind)]

    def _prune(self, slot: KeySlot, now: float) -> None:
        while slot.starts and slot.starts[0] <= now - WINDOW_S:
            slot.starts.popleft()
        while slot.tokens and slot.tokens[0][0] <= now - WINDOW_S:
            slot.tokens.popleft()

    def _free_at(self, slot: KeySlot, now: float) -> float:
        """When ``slot`` can take one more call (now if it can)."""
        state = slot.state(now)
        if state == DISABLED:
            return slot.disabled_until if slot.disabled_until is not None else float("inf")
        at = max(now, slot.cooldown_until)
        self._prune(slot, now)
        rpm = self._cap(slot, "rpm")
        if rpm < 1:
            return float("inf")
        if len(slot.starts) >= rpm:
            at = max(at, slot.starts[len(slot.starts) - int(rpm)] + WINDOW_S)
        tpm = float("inf") if slot.cfg.tpm is None else slot.cfg.tpm * self.share
        if slot.tokens and sum(t for _, t in slot.tokens) >= tpm:
            at = max(at, slot.tokens[0][0] + WINDOW_S)
        if slot.in_flight >= self._cap(slot, "max_in_flight"):
            at = float("inf")  # frees on release, which wakes waiters
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

    def try_acquire(self, exclude: frozenset[str] = frozenset()) -> Lease | None:
        """A lease on the best key free right now, or None.

        Keys in ``exclude`` (those a task already failed on) are used only when every other
        key is disabled or capped, so failover moves to another key whenever one exists.
        """
        now = self.clock()
        others = [s for s in self.slots if s.alias not in exclude]
        if all(self._free_at(s, now) == float("inf") for s in others):
            others = self.slots
        ready = [s for s in others if self._free_at(s, now) <= now]
        if not ready:
            return None
        slot = self._choose(ready)
        slot.in_flight += 1
        slot.calls += 1
        slot.starts.append(now)
        return Lease(slot=slot, started=now, waited_s=0.0)

    def next_free_at(self) -> float:
        now = self.clock()
        return min((self._free_at(s, now) for s in self.slots), default=float("inf"))

    async def acquire(self, deadline: float, exclude: frozenset[str] = frozenset()) -> Lease:
        """Wait for a key until ``deadline`` (epoch s); raises NoKeyAvailable after it."""
        started = self.clock()
        while True:
            lease = self.try_acquire(exclude)
            if lease is not None:
                lease.waited_s = self.clock() - started
                return lease
            now = self.clock()
            if now >= deadline:
                raise NoKeyAvailable(f"no key free before the deadline (waited {now - started:.1f}s)")
            wake = min(self.next_free_at(), deadline)
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
        tokens: int = 0,
        retry_after: float | None = None,
        reason: str = "",
    ) -> None:
        """Record the outcome of the call made with ``lease``."""
        slot, now = lease.slot, self.clock()
        slot.in_flight = max(0, slot.in_flight - 1)
        if tokens:
            slot.tokens.append((now, tokens))
        if ok or kind in ("content", "request", "parse"):  # the key worked; the request did not
            slot.successes += ok
            slot.failures += not ok
            slot.consecutive_failures = 0
            slot.recent.append(True)
            if latency_ms:
                a = 0.2
                slot.latency_ewma_ms = (
                    latency_ms if not slot.latency_ewma_ms else ((1 - a) * slot.latency_ewma_ms + a * latency_ms)
                )
        else:
            slot.failures += 1
            slot.consecutive_failures += 1
            slot.recent.append(False)
            self._react(slot, kind, retry_after, reason, now)
        self._changed.set()

    def abandon(self, lease: Lease) -> None:
        """The call made with ``lease`` was cancelled: free its slot, learn nothing from it."""
        lease.slot.in_flight = max(0, lease.slot.in_flight - 1)
        self._changed.set()

    @staticmethod
    def unhealthy(slot: KeySlot) -> bool:
        """A key whose server errors are its own, not the background rate every key sees.

        At a 10% transient error rate two failures in a row happen to ~45% of keys within a
        minute (measured in bench/key_pool.py), so they alone must not cool a key. Nor may a
        failure rate over a few samples: 2 of a key's first 4 calls fail for 1 key in 20 at that
        rate, and cooled one of ten keys for 92 s in a benchmark run. A rate counts from 10
        samples (5 of 10 at 10%: 1 key in 600); a dead key still cools after 3 failures in a row.
        """
        samples = len(slot.recent)
        rate = slot.failure_rate()
        return (samples >= 10 and rate >= 0.5) or (slot.consecutive_failures >= 3 and rate >= 0.3)

    def adaptive_cooldown(self, slot: KeySlot) -> float:
        span = self.cooldown_max_s - self.cooldown_min_s
        return self.cooldown_min_s + span * min(1.0, slot.failure_rate() * 1.5)

    def _react(
        self, slot: KeySlot, kind: VlmErrorKind | None, retry_after: float | None, reason: str, now: float
    ) -> None:
        if kind == "auth":
            self.disable(slot.alias, reason or "key rejected (401/403)")
        elif kind == "arrearage":
            logger.error("key %s: account in arrears; key disabled until re-enabled", slot.alias)
            self.disable(slot.alias, reason or "account in arrears")
        elif kind == "quota":
            until = now + (retry_after if retry_after is not None else 3600.0)
            self.disable(slot.alias, reason or "quota exhausted", until=until)
        elif kind == "rate" or (kind == "server" and self.unhealthy(slot)):
            wait = retry_after if retry_after is not None else self.adaptive_cooldown(slot)
            slot.cooldown_until = max(slot.cooldown_until, now + wait)
            self._publish(slot)

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

    def _publish(self, slot: KeySlot) -> None:
        """A state change (cooldown, disable, enable): wake waiters and persist it."""
        slot.updated_at = self.clock()
        self._changed.set()
        if self.on_change is not None:
            self.on_change(slot)

    # --- sharing state ---------------------------------------------------------------------
    def persisted(self, slot: KeySlot) -> PersistedKey:
        """What the key_pool table keeps of a key (never the key itself)."""
        return {
            "alias": slot.alias,
            "cooldown_until": slot.cooldown_until,
            "disabled": slot.disabled,
            "disabled_reason": slot.disabled_reason,
            "disabled_until": slot.disabled_until,
            "updated_at": slot.updated_at,
            "operator_disabled": slot.operator_disabled,
            "operator_version": slot.operator_version,
        }

    def merge(self, alias: str, data: Mapping[str, Any]) -> bool:
        """Apply another worker's (or an earlier run's) state of a key; True when ours is ahead.

        The operator's switch follows ``operator_version`` (a disable wins a tie), never a clock,
        so a cooldown another worker writes cannot undo a disable. The provider's state (cooldown,
        disable) follows the newer ``updated_at``. When the record is behind this worker's operator
        state (another worker overwrote it before it saw the switch), the caller writes ours back.
        """
        slot = self.by_alias.get(alias)
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
        """Write this worker's state of a key again (the shared record is behind it)."""
        slot = self.by_alias[alias]
        if self.on_change is not None:
            self.on_change(slot)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-key view for /keys/ and metrics: aliases and numbers only."""
        now = self.clock()
        rows = []
        for s in self.slots:
            state = s.state(now)
            for st in STATES:
                metrics.key_state.labels(key_alias=s.alias, state=st).set(1 if st == state else 0)
            rows.append(
                {
                    "alias": s.alias,
                    "state": state,
                    "cooldown_remaining_s": round(max(0.0, s.cooldown_until - now), 1),
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
