"""What a VLM call costs: tokens before it (an estimate) and after (the provider's ``usage``), money by
the price table, and the day's spend against the daily budgets per account and per camera.

Image tokens follow Qwen-VL's documented rule: the image is resized to multiples of 28 px within a
minimum and maximum pixel count, each 28x28 block is one token, plus two tokens that mark the image.
So the crop's area sets a call's cost, and ``vlm_max_crop_pixels`` (a downscale before encoding)
caps it. The text estimate is deliberately high (three characters a token; tokenizers average
about four in English), and the reservation counts ``max_tokens`` of output, so a call is only
made when its worst case fits what is left of a budget: a budget is never overrun by the calls in
flight when it runs out.

The day's spend lives in the ``vlm_spend`` GlobalTable, so every worker reads every row:

* ``cam:<camera>``: the camera's spend;
* ``acct:<account>@<slice>``: the account's spend booked against one of its ``P`` slices (one per
  ``assessment-tasks`` partition, ``budget / P`` each). A worker may spend the room left in the
  slices of the partitions it owns, pooled: a call is booked against whichever of those slices
  have room. A slice's row records what was spent against it whoever spent it, so when a
  rebalance moves a partition its slice moves with its spend, and the slices together never
  allow more than the budget (within the calls in flight at the moment of a rebalance). Budgets
  per slice, not per worker, because a worker's identity does not survive a rebalance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from streams.settings import PriceConfig

PATCH = 28
#: Qwen-VL's default resize bounds (4 and 1280 tokens of 28x28 px).
MIN_PIXELS = 4 * PATCH * PATCH
MAX_PIXELS = 1280 * PATCH * PATCH
IMAGE_MARKER_TOKENS = 2
CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 8


def resized(width: int, height: int, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The size Qwen-VL resizes an image to before cutting it into 28x28 patches."""
    h_bar = max(PATCH, round(height / PATCH) * PATCH)
    w_bar = max(PATCH, round(width / PATCH) * PATCH)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(PATCH, math.floor(height / beta / PATCH) * PATCH)
        w_bar = max(PATCH, math.floor(width / beta / PATCH) * PATCH)
    elif h_bar * w_bar < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / PATCH) * PATCH
        w_bar = math.ceil(width * beta / PATCH) * PATCH
    return w_bar, h_bar


def image_tokens(width: int, height: int) -> int:
    """Tokens of one image of ``width`` x ``height`` pixels."""
    w_bar, h_bar = resized(max(1, width), max(1, height))
    return (w_bar // PATCH) * (h_bar // PATCH) + IMAGE_MARKER_TOKENS


def text_tokens(*texts: str) -> int:
    """A high estimate of the text's tokens."""
    return sum(math.ceil(len(t) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS for t in texts)


def downscale_factor(width: int, height: int, max_pixels: int) -> float:
    """The scale (<= 1) that brings an image within ``max_pixels``."""
    area = width * height
    return 1.0 if area <= max_pixels else math.sqrt(max_pixels / area)


@dataclass(frozen=True)
class Estimate:
    """A call's tokens before it is made: input as estimated, output at most ``max_tokens``."""

    prompt_tokens: int
    max_output_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.max_output_tokens


def price(prices: dict[str, PriceConfig], model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """The cost of a call by the price table (0 for a model without a price)."""
    p = prices.get(model)
    if p is None:
        return 0.0
    return prompt_tokens / 1000.0 * p.input_per_1k + completion_tokens / 1000.0 * p.output_per_1k


def today(now: float) -> str:
    """The UTC day budgets count in."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def camera_row(camera_id: str) -> str:
    return f"cam:{camera_id}"


def account_row(account: str, partition: int) -> str:
    return f"acct:{account}@{partition}"


@dataclass
class Reservation:
    """The worst-case cost of a call in flight, held against its camera's budget and its account's
    slices (``slices``: slice -> amount; empty without an account budget)."""

    account: str
    camera_id: str
    partition: int
    amount: float
    slices: dict[int, float] = field(default_factory=dict)


def _blank(day: str) -> dict[str, Any]:
    return {"day": day, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}


@dataclass
class SpendLedger:
    """Today's spend per account and camera, against the daily budgets (see the module doc)."""

    prices: dict[str, PriceConfig]
    account_budgets: dict[str, float]
    camera_budget: float | None
    #: The ``vlm_spend`` table (a dict in unit tests).
    rows: MutableMapping[Any, Any]
    clock: Callable[[], float] = time.time
    owned: frozenset[int] | None = None
    partitions: int = 1
    pending_slices: dict[tuple[str, int], float] = field(default_factory=dict)
    pending_cameras: dict[str, float] = field(default_factory=dict)

    def set_partitions(self, owned: frozenset[int], partitions: int) -> None:
        self.owned, self.partitions = owned, max(1, partitions)

    def _row(self, key: str) -> dict[str, Any] | None:
        value = self.rows.get(key)
        if isinstance(value, dict) and value.get("day") == today(self.clock()):
            return value
        return None

    def spent(self, key: str) -> float:
        row = self._row(key)
        return float(row["cost"]) if row else 0.0

    def _slices(self) -> list[int]:
        return list(range(self.partitions)) if self.owned is None else sorted(self.owned)

    def slice_left(self, account: str, part: int) -> float:
        """Room left in one of the account's slices (may be negative after an overrun)."""
        budget = self.account_budgets[account]
        return (
            budget / self.partitions
            - self.spent(account_row(account, part))
            - self.pending_slices.get((account, part), 0.0)
        )

    def account_share(self, account: str) -> float:
        """The account's budget in the slices this worker owns (inf without a budget)."""
        budget = self.account_budgets.get(account)
        if budget is None:
            return math.inf
        return budget * len(self._slices()) / self.partitions

    def account_left(self, account: str) -> float:
        """What this worker may still spend of the account today (inf without a budget): the room
        in its slices (an overrun slice lends nothing, and takes nothing from the others)."""
        if account not in self.account_budgets:
            return math.inf
        return sum(max(0.0, self.slice_left(account, p)) for p in self._slices())

    def camera_left(self, camera_id: str) -> float:
        """What the camera may still spend today (inf without a budget)."""
        if self.camera_budget is None:
            return math.inf
        return self.camera_budget - self.spent(camera_row(camera_id)) - self.pending_cameras.get(camera_id, 0.0)

    def worst_case(self, model: str, estimate: Estimate) -> float:
        return price(self.prices, model, estimate.prompt_tokens, estimate.max_output_tokens)

    def reserve(self, account: str, camera_id: str, partition: int, amount: float) -> Reservation:
        """Hold ``amount`` against the camera and the account's owned slices (the task's own slice
        first, then those with the most room)."""
        slices: dict[int, float] = {}
        if account in self.account_budgets:
            need = amount
            order = sorted(self._slices(), key=lambda p: (p != partition, -self.slice_left(account, p)))
            for p in order:
                if need <= 1e-12:
                    break
                take = min(need, max(0.0, self.slice_left(account, p)))
                if take > 0:
                    slices[p] = take
                    need -= take
            if need > 1e-12:  # more than the room left (callers check first): the task's own slice
                slices[partition] = slices.get(partition, 0.0) + need
            for p, take in slices.items():
                self.pending_slices[(account, p)] = self.pending_slices.get((account, p), 0.0) + take
        self.pending_cameras[camera_id] = self.pending_cameras.get(camera_id, 0.0) + amount
        return Reservation(account, camera_id, partition, amount, slices)

    def cancel(self, reservation: Reservation) -> None:
        """The reserved call was not made, or was refused before it cost anything."""
        for p, take in reservation.slices.items():
            _release(self.pending_slices, (reservation.account, p), take)
        _release(self.pending_cameras, reservation.camera_id, reservation.amount)

    def settle(self, reservation: Reservation, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Record a call's usage in place of its reservation; returns its cost. The cost is booked
        against the slices the call reserved; anything above the reservation (the worst-case
        estimate should prevent it) in the room of this worker's other slices, and only where there
        is none does the task's own slice run over."""
        self.cancel(reservation)
        cost = price(self.prices, model, prompt_tokens, completion_tokens)
        booked: dict[int, float] = {}
        left = cost
        for p, take in reservation.slices.items():
            part = min(left, take)
            booked[p] = part
            left -= part
        if left > 1e-12 and reservation.account in self.account_budgets:
            # above the reservation (a bad estimate): into the room of this worker's other slices
            for p in self._slices():
                room = self.slice_left(reservation.account, p) - booked.get(p, 0.0)
                if room > 0 and left > 1e-12:
                    part = min(left, room)
                    booked[p] = booked.get(p, 0.0) + part
                    left -= part
        if left > 1e-12 or not booked:  # no room anywhere: the task's own slice runs over
            booked[reservation.partition] = booked.get(reservation.partition, 0.0) + max(0.0, left)
        self._book(camera_row(reservation.camera_id), cost, prompt_tokens, completion_tokens, calls=1)
        for i, (p, part) in enumerate(booked.items()):
            first = i == 0  # the call and its tokens count once, on its first slice
            self._book(
                account_row(reservation.account, p),
                part,
                prompt_tokens if first else 0,
                completion_tokens if first else 0,
                calls=1 if first else 0,
            )
        return cost

    def _book(self, key: str, cost: float, prompt_tokens: int, completion_tokens: int, *, calls: int) -> None:
        row = dict(self._row(key) or _blank(today(self.clock())))
        row["calls"] += calls
        row["prompt_tokens"] += prompt_tokens
        row["completion_tokens"] += completion_tokens
        row["cost"] = round(row["cost"] + cost, 9)
        self.rows[key] = row

    def today_by_account(self) -> dict[str, dict[str, float]]:
        """Today's spend per account over all workers (for ``/keys/``), with the budget and this
        worker's room in it."""
        out: dict[str, dict[str, float]] = {}
        day = today(self.clock())
        for key, value in list(self.rows.items()):
            key = key.decode() if isinstance(key, bytes) else str(key)
            if not key.startswith("acct:") or not isinstance(value, dict) or value.get("day") != day:
                continue
            account = key[5:].rsplit("@", 1)[0]
            total = out.setdefault(account, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0})
            for name in ("calls", "prompt_tokens", "completion_tokens", "cost"):
                total[name] += value.get(name, 0)
        for account in self.account_budgets:
            out.setdefault(account, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0})
        for account, total in out.items():
            budget = self.account_budgets.get(account)
            total["budget"] = -1 if budget is None else budget
            left = self.account_left(account)
            total["left_here"] = -1 if left == math.inf else round(left, 6)
        return out


def _release(pending: dict[Any, float], name: Any, amount: float) -> None:
    left = pending.get(name, 0.0) - amount
    if left <= 1e-12:
        pending.pop(name, None)
    else:
        pending[name] = left
