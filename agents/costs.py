"""What a VLM call costs: tokens before it (an estimate) and after (the provider's ``usage``), money by
the price table, and the day's spend against the daily budgets per account and per camera.

Image tokens follow Qwen-VL's documented rule: the image is resized to multiples of 28 px within a
minimum and maximum pixel count, each 28x28 block is one token, plus two tokens that mark the image.
So the crop's area sets a call's cost, and ``vlm_max_crop_pixels`` (a downscale before encoding)
caps it. The text estimate is deliberately high (three characters a token; tokenizers average
about four in English), and the reservation counts ``max_tokens`` of output, so a call is only
made when its worst case fits what is left of a budget: a budget is never overrun by the calls in
flight when it runs out.

The day's spend lives in the ``vlm_spend`` table, written by the scheduler while it handles a task,
so a row lands in the changelog partition of that task and follows it on a rebalance:

* ``cam:<camera>``: the camera's spend (a camera's tasks are all in one partition);
* ``acct:<account>@<partition>``: the account's spend through that partition. A worker may spend
  the share of an account's budget its partitions hold (``budget * owned / partitions``), as the
  key pool deals rate limits: the workers' shares add up to the budget without a round trip.
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
    """The worst-case cost of a call in flight, held against its account's and camera's budgets."""

    account: str
    camera_id: str
    partition: int
    amount: float


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
    pending_accounts: dict[str, float] = field(default_factory=dict)
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

    def account_share(self, account: str) -> float:
        """This worker's share of the account's daily budget (inf without a budget)."""
        budget = self.account_budgets.get(account)
        if budget is None:
            return math.inf
        return budget * (1.0 if self.owned is None else len(self.owned) / self.partitions)

    def account_left(self, account: str) -> float:
        """What this worker may still spend of the account today (inf without a budget)."""
        share = self.account_share(account)
        if share == math.inf:
            return share
        parts = range(self.partitions) if self.owned is None else sorted(self.owned)
        spent = sum(self.spent(account_row(account, p)) for p in parts)
        return share - spent - self.pending_accounts.get(account, 0.0)

    def camera_left(self, camera_id: str) -> float:
        """What the camera may still spend today (inf without a budget)."""
        if self.camera_budget is None:
            return math.inf
        return self.camera_budget - self.spent(camera_row(camera_id)) - self.pending_cameras.get(camera_id, 0.0)

    def worst_case(self, model: str, estimate: Estimate) -> float:
        return price(self.prices, model, estimate.prompt_tokens, estimate.max_output_tokens)

    def reserve(self, account: str, camera_id: str, partition: int, amount: float) -> Reservation:
        self.pending_accounts[account] = self.pending_accounts.get(account, 0.0) + amount
        self.pending_cameras[camera_id] = self.pending_cameras.get(camera_id, 0.0) + amount
        return Reservation(account, camera_id, partition, amount)

    def cancel(self, reservation: Reservation) -> None:
        """The reserved call was not made, or was refused before it cost anything."""
        for pending, name in (
            (self.pending_accounts, reservation.account),
            (self.pending_cameras, reservation.camera_id),
        ):
            left = pending.get(name, 0.0) - reservation.amount
            if left <= 1e-12:
                pending.pop(name, None)
            else:
                pending[name] = left

    def settle(self, reservation: Reservation, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Record a call's actual usage in place of its reservation; returns its cost.

        Call from the task's event (the rows are table writes in its partition)."""
        self.cancel(reservation)
        cost = price(self.prices, model, prompt_tokens, completion_tokens)
        day = today(self.clock())
        for key in (camera_row(reservation.camera_id), account_row(reservation.account, reservation.partition)):
            row = self._row(key) or {"day": day, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
            row = dict(row)
            row["calls"] += 1
            row["prompt_tokens"] += prompt_tokens
            row["completion_tokens"] += completion_tokens
            row["cost"] = round(row["cost"] + cost, 9)
            self.rows[key] = row
        return cost

    def today_by_account(self) -> dict[str, dict[str, float]]:
        """Today's spend per account through this worker's partitions (for ``/keys/``)."""
        out: dict[str, dict[str, float]] = {}
        day = today(self.clock())
        for key, value in list(self.rows.items()):
            key = key.decode() if isinstance(key, bytes) else str(key)
            if not key.startswith("acct:") or not isinstance(value, dict) or value.get("day") != day:
                continue
            account = key[5:].rsplit("@", 1)[0]
            total = out.setdefault(account, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0})
            for name in total:
                total[name] += value.get(name, 0)
        for account, total in out.items():
            share = self.account_share(account)
            total["budget_share"] = -1 if share == math.inf else round(share, 6)
        return out
