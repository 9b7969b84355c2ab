"""A provider quota as the key pool schedules it: one (account, model), a sub-workspace of one, or
one key's own limits.

DashScope counts RPM and TPM per account and model over every key of the account, enforces the
per-second rate (RPM/60, TPM/60) and refuses traffic that grows too fast ("Request rate
increased too quickly"). A :class:`Budget` therefore

* keeps this worker's calls and tokens of the last minute against its whole-call share of the
  limit (dealt over the partitions, see :mod:`agents.key_pool`);
* spaces calls evenly at its share of the per-second rate (a little under it, so arrival jitter
  never makes two calls look closer than the provider allows) instead of releasing a minute's
  calls at once;
* ramps up from idle: the calls of the current second may be at most ``growth`` times those of
  the second before (and at least ``start`` of the per-second rate, or one call a second), so a
  rise from nothing to full rate takes a few seconds instead of one burst (from a quarter of the
  rate to all of it in about four);
* cools as a whole on a 429, for every key that spends it.

With ``smoothing`` off only the minute windows apply (providers without per-second limits).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.5  # a little over a minute, so arrival jitter never crosses a server's 60 s window
#: Pace at this fraction of the per-second rate: headroom for the network's arrival jitter.
PACE = 0.97
RECENT = 20


@dataclass
class Shared:
    """State every worker shares through the key_pool table (cooldowns, disables)."""

    alias: str
    cooldown_until: float = 0.0
    disabled: bool = False
    disabled_reason: str = ""
    disabled_until: float | None = None
    updated_at: float = 0.0
    #: An operator's disable holds until an operator's enable; ``operator_version`` orders operator
    #: actions across workers without clocks.
    operator_disabled: bool = False
    operator_version: int = 0


@dataclass
class Budget(Shared):
    """One quota's state in this worker."""

    account: str = ""
    model: str = "*"
    workspace: str = ""
    rpm: int | None = None
    tpm: int | None = None
    rps: float | None = None
    tps: float | None = None
    #: Position among the budgets: where its share of the limits starts when dealt.
    index: int = 0
    #: Start times of this worker's calls in the last minute, and their tokens: ``[start, tokens]``,
    #: the estimate while the call is in flight, the provider's count after it.
    starts: deque[float] = field(default_factory=deque)
    tokens: deque[list[float]] = field(default_factory=deque)
    #: This worker's whole calls of ``rpm`` and its share of the other limits (set when dealt).
    rpm_cap: float = math.inf
    share: float = 1.0
    #: Server health (True: the call worked); and, apart, the recent 429s (True: refused).
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT))
    refused: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT))
    consecutive_failures: int = 0
    throttled: int = 0
    #: The calls per second the ramp allows now, and the earliest start of the next call (see :meth:`start`).
    ramp: float = 0.0
    tat: float = 0.0

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.rps, self.tps))

    def rate(self) -> float:
        """This worker's calls per second (inf: none declared)."""
        rates = []
        if self.rpm_cap != math.inf:
            rates.append(self.rpm_cap / 60.0)
        if self.rps is not None:
            rates.append(self.rps * self.share)
        return min(rates) if rates else math.inf

    def tpm_cap(self) -> float:
        return math.inf if self.tpm is None else self.tpm * self.share

    def tps_cap(self) -> float:
        caps = []
        if self.tpm is not None:
            caps.append(self.tpm * self.share / 60.0)
        if self.tps is not None:
            caps.append(self.tps * self.share)
        return min(caps) if caps else math.inf

    def prune(self, now: float) -> None:
        while self.starts and self.starts[0] <= now - WINDOW_S:
            self.starts.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.tokens.popleft()

    def calls_between(self, since: float, until: float) -> int:
        """Calls this worker started in (since, until]."""
        starts = self.starts
        return bisect_right(starts, until) - bisect_right(starts, since)

    def tokens_since(self, since: float) -> float:
        return sum(n for t, n in self.tokens if t > since)

    def free_at(self, now: float, tokens: int, *, smoothing: bool, start: float, growth: float) -> float:
        """When one more call of ``tokens`` (an estimate) fits this budget (now if it does)."""
        at = max(now, self.cooldown_until)
        self.prune(now)
        rpm = self.rpm_cap
        if rpm < 1:
            return math.inf
        if len(self.starts) >= rpm:
            at = max(at, self.starts[len(self.starts) - int(rpm)] + WINDOW_S)
        tpm = self.tpm_cap()
        if tpm != math.inf:
            used = sum(n for _, n in self.tokens)
            if used and used + tokens > tpm:
                # when enough of the window's tokens have left it
                need, freed = used + tokens - tpm, 0.0
                for t, n in self.tokens:
                    freed += n
                    if freed >= need:
                        at = max(at, t + WINDOW_S)
                        break
                else:  # pragma: no cover - the loop always frees enough (need <= used)
                    at = max(at, now + 1.0)
        if not smoothing:
            return at
        if self.rate() != math.inf and self.starts:
            at = max(at, self.tat)
        tps = self.tps_cap()
        if tps != math.inf:
            recent = self.tokens_since(at - 1.0)
            if recent and recent + tokens > tps * PACE:
                at = max(at, next(t for t, _ in self.tokens if t > at - 1.0) + 1.0 + 1e-3)
        return at

    def start(self, now: float, tokens: int, *, start: float = 0.25, growth: float = 1.5) -> list[float]:
        """Count a call starting now with ``tokens`` (estimated); returns its token entry.

        The ramp grows by ``growth`` a second while calls follow it; when demand fell below it
        (a gap longer than its pace), it falls back to ``growth`` times the rate just seen, and
        after idle to its floor, because the provider judges a rise against the last seconds.
        """
        rate = self.rate()
        if rate != math.inf:
            # at least a call a second (or the whole rate below that): a quarter of a small
            # per-worker share (60 rpm over 8 workers) would space the first calls 30 s apart
            floor = min(rate, max(rate * start, 1.0))
            ramp = max(self.ramp, floor)
            gap = now - self.starts[-1] if self.starts else math.inf
            idle = gap > 1.5 / ramp
            if idle:
                self.ramp = max(floor, min(ramp, growth / gap))
            else:
                self.ramp = min(rate, ramp * growth**gap)
            # the next call's earliest start (GCRA): spaced at the paced rate from where this one
            # was due, so a late wake-up (the event loop's delay) is made up instead of lowering
            # the rate by that delay: by at most half an interval where the provider's per-second
            # bucket holds more than one call (rate > 1/s), else by the pace's 3% headroom; from
            # idle, nothing to make up
            interval = 1.0 / (max(self.ramp, floor) * PACE)
            slack = interval * ((1.0 - PACE) + (0.5 if rate > 1.0 else 0.0))
            self.tat = (now if idle else max(self.tat, now - slack)) + interval
        self.starts.append(now)
        entry = [now, float(tokens)]
        self.tokens.append(entry)
        return entry

    @staticmethod
    def finish(entry: list[float], actual: int | None) -> None:
        """The call's actual tokens (None: unknown, the estimate stays; a refused call costs none)."""
        if actual is not None:
            entry[1] = float(actual)

    def failure_rate(self) -> float:
        return 0.0 if not self.recent else 1.0 - sum(self.recent) / len(self.recent)

    def refusal_rate(self) -> float:
        return 0.0 if not self.refused else sum(self.refused) / len(self.refused)

    def state(self, now: float) -> str:
        return "COOLING" if now < self.cooldown_until else "AVAILABLE"
