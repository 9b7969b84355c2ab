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
* with several workers and a per-second bucket of fewer calls than there are partitions (1 rps
  over 8 partitions), starts calls only in this worker's slots of a grid on the shared clock:
  slot ``k`` of the whole quota's rate belongs to partition ``k mod P``, so the workers take
  turns instead of landing two calls in one of the provider's seconds (see :meth:`Budget.next_slot`);
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
#: Slots of a grid (several workers, a bucket of one call) pace at this fraction of the rate, and
#: a call may start up to ``GRID_LATE`` of a slot after it opens: 4% of a second at 1 rps for a
#: busy event loop's late wake-up, and still 1% of the interval for the network's jitter.
GRID_PACE = 0.95
GRID_LATE = 0.04
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
    #: With several workers and a small per-second bucket, slots of ``grid`` seconds on the shared
    #: clock: slot ``k`` is partition ``k % modulus``'s, and this worker starts calls only in the
    #: slots of its partitions (``slots``; see :meth:`next_slot` for ``late``). ``grid`` 0:
    #: no slots (one worker, no per-second rate, or a bucket every partition gets a call of).
    grid: float = 0.0
    slots: frozenset[int] = frozenset()
    modulus: int = 1
    late: float = 0.0

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

    def total_rate(self) -> float:
        """The whole quota's calls per second, over every worker (inf: none declared)."""
        rates = [r for r in ((self.rpm / 60.0) if self.rpm else None, self.rps) if r is not None]
        return min(rates) if rates else math.inf

    def set_slots(self, owned: frozenset[int] | None, partitions: int) -> None:
        """Slots for this worker when it shares a bucket too small to deal (see the module docstring).

        The provider's per-second bucket holds ``max(1, rate)`` calls. Where every partition gets a
        whole call of it, each worker's own pacing at its share is safe without coordination (the
        sum of the workers' paced streams fits the bucket); where not, two workers pacing a half
        call a second each would meet in one second, so they take turns on the clock instead.
        """
        rate = self.total_rate()
        if owned is None or not owned or len(owned) >= partitions or rate == math.inf or max(1.0, rate) >= partitions:
            self.grid, self.slots, self.modulus, self.late = 0.0, frozenset(), 1, 0.0
            return
        if rate < 2.0:  # a bucket of one call: consecutive calls at least an interval apart
            self.grid = 1.0 / (rate * GRID_PACE)
            self.late = self.grid * GRID_LATE
        else:  # a bucket of two or more calls absorbs a late start of up to half a slot
            self.grid = 1.0 / (rate * PACE)
            self.late = self.grid * 0.5
        self.slots, self.modulus = owned, partitions

    def next_slot(self, t: float) -> float:
        """The earliest start at or after ``t`` that keeps this worker's calls in its own slots.

        A start must fall in one of its slots, at most one a slot, an interval after its previous
        start; in the last slot of a run of its own it may be at most ``late`` after the slot
        opens (a wake-up a little late), since a later start would crowd the next worker's first
        call. Anywhere in a slot followed by another of its own, a late start only delays its own
        next call.
        """
        g, modulus, slots = self.grid, self.modulus, self.slots
        if self.starts:  # a call a slot, a provider's interval apart (and 1% more, for jitter)
            last = self.starts[-1]
            t = max(t, last + g * (GRID_PACE + 0.01), (math.floor(last / g) + 1) * g)
        for _ in range(2 * modulus + 2):
            k = math.floor(t / g)
            if k % modulus in slots and (t - k * g <= self.late or (k + 1) % modulus in slots):
                return t
            t = (k + 1) * g
        return t

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
        if self.rate() != math.inf and self.starts and (not self.grid or self.ramp < self.rate()):
            at = max(at, self.tat)  # in slots, the worker's own pacing only while it ramps up
        if self.grid:
            at = self.next_slot(at)
        tps = self.tps_cap()
        if tps != math.inf:
            recent = self.tokens_since(at - 1.0)
            if recent and recent + tokens > tps * PACE:
                at = max(at, next(t for t, _ in self.tokens if t > at - 1.0) + 1.0 + 1e-3)
            if self.tokens:
                # a call larger than this worker's share of a second spends the seconds after it
                # too: the one-second window alone let every worker start one such call a second
                last_t, last_n = self.tokens[-1]
                if last_n > tps * PACE:
                    at = max(at, last_t + last_n / (tps * PACE))
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
            # in slots, a worker waits up to a round of the others' slots between its own
            idle = gap > self.grid * self.modulus + 1.5 / ramp
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
        """The share of recent calls refused, over at least half of RECENT: the first 429 after a
        start is not a 100% rate (it cooled a quota for ``cooldown_max_s``, two minutes, where the
        provider's window clears within one)."""
        return 0.0 if not self.refused else sum(self.refused) / max(len(self.refused), RECENT // 2)

    def state(self, now: float) -> str:
        return "COOLING" if now < self.cooldown_until else "AVAILABLE"
