"""Quotas as the provider counts them (#14): per (account, model), smoothed per second, ramped from
idle, cooled together; the model chain; tokens, cost and daily budgets; the simulated provider."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator

import cv2
import numpy as np
import pytest
from pydantic import SecretStr, ValidationError

from agents.costs import Estimate, SpendLedger, account_row, camera_row, image_tokens, price
from agents.key_pool import COOLING, KeyPool
from agents.vlm_client import VlmClient
from sim.vlm import SimConfig, SimVlm, count_tokens
from streams.errors import VlmError
from streams.settings import ApiKeyConfig, PriceConfig, QuotaConfig, Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def account_keys(n: int = 10, account: str = "acct", prefix: str = "k") -> list[ApiKeyConfig]:
    return [
        ApiKeyConfig(key=SecretStr(f"{prefix}-secret-{i}"), alias=f"{prefix}-{i}", account=account) for i in range(n)
    ]


def drive(pool: KeyPool, clock: Clock, seconds: float, step: float = 0.005) -> list[tuple[float, str, str]]:
    """Take every call the pool grants, releasing each at once; (time, key, model) of each."""
    calls = []
    end = clock.now + seconds
    while clock.now < end:
        while (lease := pool.try_acquire(tokens=0)) is not None:
            calls.append((clock.now, lease.alias, lease.model))
            pool.release(lease, ok=True, tokens=0)
        clock.now += step
    return calls


def max_in_window(times: list[float], window: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_ten_keys_of_one_account_are_paced_as_the_one_quota_they_share():
    clock = Clock()
    pool = KeyPool(account_keys(10), clock=clock, models=["qwen-vl-max"], quotas=[QuotaConfig(account="acct", rpm=120)])
    start = clock.now
    times = [t - start for t, _, _ in drive(pool, clock, 120.0)]
    assert max_in_window(times, 60.0) <= 120  # the account's minute, whatever the number of keys
    assert max_in_window(times, 1.0) <= 2  # the per-second rate (RPM/60): no burst
    assert sum(1 for t in times if 60 <= t < 120) >= 0.95 * 120  # and the quota is used
    per_second = [sum(1 for t in times if k <= t < k + 1) for k in range(8)]
    assert per_second[0] == 1  # the ramp starts at its floor (a quarter of the rate) ...
    for before, now in itertools.pairwise(per_second):
        assert now <= max(2, 2 * before - 1)  # ... and grows slower than the provider refuses


def test_without_smoothing_a_minute_of_calls_goes_out_at_once():
    """The baseline the smoothing exists for: the provider refuses this burst."""
    clock = Clock()
    pool = KeyPool(
        account_keys(10),
        clock=clock,
        models=["qwen-vl-max"],
        quotas=[QuotaConfig(account="acct", rpm=120)],
        smoothing=False,
    )
    start = clock.now
    times = [t - start for t, _, _ in drive(pool, clock, 2.0)]
    assert len(times) == 120 and max_in_window(times, 1.0) == 120


def test_a_429_cools_every_key_of_the_account_for_that_model_and_the_next_model_serves():
    clock = Clock()
    pool = KeyPool(
        account_keys(4),
        clock=clock,
        models=["qwen-vl-max", "qwen-vl-plus"],
        quotas=[QuotaConfig(account="acct", model="qwen-vl-max", rpm=600), QuotaConfig(account="acct", rpm=600)],
    )
    lease = pool.try_acquire()
    assert lease is not None and lease.model == "qwen-vl-max"
    pool.release(lease, ok=False, kind="rate", retry_after=20)
    clock.now += 1.0
    nxt = pool.try_acquire()
    assert nxt is not None and nxt.model == "qwen-vl-plus"  # every key of the account is refused on max
    assert all(row["state"] == COOLING for row in pool.quota_snapshot() if row["model"] == "qwen-vl-max")
    assert pool.key_state(pool.by_alias[lease.alias]) != COOLING  # the key still serves the next model
    clock.now += 20.0
    back = pool.try_acquire()
    assert back is not None and back.model == "qwen-vl-max"


def test_two_accounts_are_two_quotas_and_a_plain_key_is_its_own_account():
    clock = Clock()
    keys = account_keys(3, "a", "a") + account_keys(3, "b", "b") + [ApiKeyConfig(key=SecretStr("p-1"), alias="plain")]
    pool = KeyPool(
        keys,
        clock=clock,
        smoothing=False,
        quotas=[QuotaConfig(account="a", rpm=10), QuotaConfig(account="b", rpm=5), QuotaConfig(account="plain", rpm=2)],
    )
    calls = drive(pool, clock, 1.0)
    by_account: dict[str, int] = {}
    for _, alias, _ in calls:
        by_account[alias[0]] = by_account.get(alias[0], 0) + 1
    assert by_account == {"a": 10, "b": 5, "p": 2}


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_an_account_quota_is_dealt_over_the_workers_in_whole_calls(workers):
    partitions, got = 8, 0
    for w in range(workers):
        clock = Clock()
        pool = KeyPool(account_keys(10), clock=clock, smoothing=False, quotas=[QuotaConfig(account="acct", rpm=13)])
        pool.set_partitions(frozenset(range(w, partitions, workers)), partitions)
        got += len(drive(pool, clock, 0.5))
    assert got == 13


def test_tokens_per_minute_count_estimates_in_flight_and_the_providers_count_after():
    clock = Clock()
    pool = KeyPool(account_keys(2), clock=clock, smoothing=False, quotas=[QuotaConfig(account="acct", tpm=1000)])
    leases = [pool.try_acquire(tokens=300) for _ in range(3)]
    assert all(lease is not None for lease in leases)
    assert pool.try_acquire(tokens=300) is None  # 900 reserved + 300 > 1000
    for lease in leases:
        assert lease is not None
        pool.release(lease, ok=True, tokens=100)  # the provider counted 100 each
    assert pool.try_acquire(tokens=300) is not None


def test_quotas_naming_no_known_account_or_workspace_are_refused():
    with pytest.raises(ValueError, match="no key belongs to account 'typo'"):
        KeyPool(account_keys(2), quotas=[QuotaConfig(account="typo", rpm=10)])
    with pytest.raises(ValueError, match="workspace 'ws'"):
        KeyPool(account_keys(2), quotas=[QuotaConfig(account="acct", workspace="ws", rpm=10)])


def test_a_workspace_has_its_own_limit_within_the_account():
    clock = Clock()
    keys = [
        ApiKeyConfig(key=SecretStr("w-1"), alias="ws-key", account="acct", workspace="ws"),
        ApiKeyConfig(key=SecretStr("m-1"), alias="main-key", account="acct"),
    ]
    pool = KeyPool(
        keys,
        clock=clock,
        smoothing=False,
        quotas=[QuotaConfig(account="acct", rpm=10), QuotaConfig(account="acct", workspace="ws", rpm=3)],
    )
    calls = drive(pool, clock, 0.5)
    assert len(calls) == 10 and sum(1 for _, alias, _ in calls if alias == "ws-key") <= 3


def test_settings_refuse_budgets_without_prices_and_duplicate_quotas():
    with pytest.raises(ValidationError, match="no price"):
        Settings(camera_daily_budget=1.0)
    with pytest.raises(ValidationError, match="declared twice"):
        Settings(vlm_quotas='[{"account": "a", "rpm": 1}, {"account": "a", "rpm": 2}]')
    with pytest.raises(ValidationError, match="not valid JSON"):
        Settings(vlm_prices="{oops")
    ok = Settings(
        vlm_models="qwen-vl-max,qwen-vl-plus",
        vlm_prices='{"qwen-vl-max": {"input_per_1k": 0.003, "output_per_1k": 0.009}, '
        '"qwen-vl-plus": {"input_per_1k": 0.001, "output_per_1k": 0.003}}',
        vlm_account_daily_budget='{"acct": 2.5}',
    )
    assert ok.model_chain() == ["qwen-vl-max", "qwen-vl-plus"] and ok.account_budgets() == {"acct": 2.5}


# --- tokens and cost ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "tokens"),
    [((28, 28), 4 + 2), ((448, 448), 256 + 2), ((640, 480), 23 * 17 + 2), ((4000, 3000), None)],
)
def test_image_tokens_follow_the_area(size, tokens):
    got = image_tokens(*size)
    if tokens is None:
        assert 1000 <= got <= 1280 + 2  # capped by the model's maximum pixels
    else:
        assert got == tokens


def test_the_estimate_is_never_below_what_the_provider_counts():
    """The reservation is a worst case, so a budget is never overrun by calls in flight."""
    from agents.vlm_client import SYSTEM_PROMPT, build_request

    for width, height in ((64, 128), (300, 200), (640, 640)):
        jpeg = cv2.imencode(".jpg", np.zeros((height, width, 3), np.uint8))[1].tobytes()
        context = "Camera cam-7, group kind pedestrian_vehicle, 2 road users, gap 0.40 pedestrian heights. Ref ab12cd."
        messages = build_request("qwen-vl-plus", jpeg, context, 300)["messages"]
        counted, _ = count_tokens(messages, "")
        from agents.costs import text_tokens

        estimate = image_tokens(width, height) + text_tokens(SYSTEM_PROMPT, context)
        assert counted <= estimate <= counted * 1.6


def _ledger(**kw: object) -> tuple[SpendLedger, Clock, dict[str, object]]:
    clock, rows = Clock(), {}
    prices = {"m": PriceConfig(input_per_1k=1.0, output_per_1k=2.0)}
    ledger = SpendLedger(prices, kw.get("accounts", {}), kw.get("camera"), rows, clock=clock)  # type: ignore[arg-type]
    return ledger, clock, rows


def test_a_camera_budget_counts_reservations_and_actual_spend():
    ledger, clock, rows = _ledger(camera=1.0)
    worst = ledger.worst_case("m", Estimate(prompt_tokens=200, max_output_tokens=100))
    assert worst == pytest.approx(0.4)
    first = ledger.reserve("a", "cam", 3, worst)
    second = ledger.reserve("a", "cam", 3, worst)
    assert ledger.camera_left("cam") == pytest.approx(0.2)  # two worst cases in flight
    assert ledger.settle(first, "m", 150, 20) == pytest.approx(0.19)
    ledger.cancel(second)
    assert ledger.camera_left("cam") == pytest.approx(0.81)
    assert rows[camera_row("cam")]["calls"] == 1 and rows[account_row("a", 3)]["cost"] == pytest.approx(0.19)
    clock.now += 86_400  # a new UTC day: nothing spent yet
    assert ledger.camera_left("cam") == pytest.approx(1.0)


def test_an_account_budget_is_shared_by_the_workers_partitions():
    ledger, _, rows = _ledger(accounts={"a": 8.0})
    ledger.set_partitions(frozenset({0, 1}), 8)  # a quarter of the partitions: 2.0 of the budget
    assert ledger.account_left("a") == pytest.approx(2.0)
    rows[account_row("a", 0)] = {"day": time.strftime("%Y-%m-%d", time.gmtime(1_000_000.0)), "cost": 0.5}
    rows[account_row("a", 5)] = {"day": time.strftime("%Y-%m-%d", time.gmtime(1_000_000.0)), "cost": 9.0}  # not ours
    assert ledger.account_left("a") == pytest.approx(1.5)
    assert ledger.account_left("other") == math.inf


def test_a_rebalance_moves_an_accounts_budget_slices_with_their_spend():
    """Worker A spends 6 of 8 while it owns every partition; after a rebalance A and B together may
    spend only the 2 left, whichever partitions the spend went through (one table: global)."""
    a, _, rows = _ledger(accounts={"acct": 8.0})
    a.set_partitions(frozenset(range(8)), 8)
    for _ in range(8):  # every call through partition 0, 0.75 each
        a.settle(a.reserve("acct", "cam", 0, 0.75), "m", 750, 0)
    assert a.account_left("acct") == pytest.approx(2.0)
    b = SpendLedger(a.prices, {"acct": 8.0}, None, rows, clock=a.clock)
    a.set_partitions(frozenset({0, 1, 2, 3}), 8)
    b.set_partitions(frozenset({4, 5, 6, 7}), 8)
    assert a.account_left("acct") + b.account_left("acct") == pytest.approx(2.0)
    assert sum(v["calls"] for k, v in rows.items() if k.startswith("acct:")) == 8  # a call counts once
    held = b.reserve("acct", "cam-2", 5, b.account_left("acct"))  # B takes all it may
    assert b.account_left("acct") == pytest.approx(0.0) and sum(held.slices.values()) == pytest.approx(held.amount)
    b.settle(held, "m", round(held.amount * 1000), 0)
    a_left = a.account_left("acct")
    assert a.reserve("acct", "cam", 1, a_left).amount == a_left  # and A what its slices hold
    spent = sum(v["cost"] for k, v in rows.items() if k.startswith("acct:"))
    assert spent + a_left == pytest.approx(8.0)  # never more than the budget between them


def test_a_cost_above_its_reservation_fills_other_slices_before_one_runs_over():
    ledger, _, _ = _ledger(accounts={"acct": 4.0})
    ledger.set_partitions(frozenset({0, 1}), 4)  # two slices of 1.0
    reservation = ledger.reserve("acct", "cam", 0, 0.5)
    assert reservation.slices == {0: 0.5}
    ledger.settle(reservation, "m", 1500, 0)  # 1.5: more than the worst case (a bad estimate)
    assert ledger.account_left("acct") == pytest.approx(0.5)  # the excess went into slice 1's room
    ledger.settle(ledger.reserve("acct", "cam", 0, 0.5), "m", 1500, 0)  # no room left anywhere: slice 0 runs over
    assert ledger.spent(account_row("acct", 0)) == pytest.approx(2.0)
    ledger.set_partitions(frozenset({1}), 4)
    assert ledger.account_left("acct") == 0.0  # slice 1 is full; slice 0's overrun is not its debt
    ledger.set_partitions(frozenset({0, 2}), 4)
    assert ledger.account_left("acct") == pytest.approx(1.0)  # an overrun slice takes nothing from the others


def test_the_spend_table_is_global_so_every_worker_reads_every_slice():
    from faust.tables.globaltable import GlobalTable

    from streams.tables import key_pool, vlm_spend

    assert isinstance(vlm_spend, GlobalTable) and vlm_spend.use_partitioner
    assert isinstance(key_pool, GlobalTable)


def test_a_budget_for_an_account_no_key_belongs_to_is_refused(tmp_path):
    from agents.worker_clients import WorkerClients
    from streams.errors import ConfigError

    settings = Settings(
        image_store=f"file://{tmp_path}",
        vlm_keys="sk-aaaa1111",
        vlm_prices='{"qwen-vl-plus": {"input_per_1k": 1, "output_per_1k": 1}}',
        vlm_account_daily_budget='{"acount-typo": 5}',
    )
    with pytest.raises(ConfigError, match="acount-typo"):
        WorkerClients.build(settings)


def test_verify_keys_reports_the_exact_models_limits_over_the_wildcard():
    from ops.verify_keys import quota_groups

    settings = Settings(
        vlm_keys='[{"key": "sk-aaaa1111", "account": "a"}, {"key": "sk-bbbb2222", "account": "a"}]',
        vlm_models="qwen-vl-max,qwen-vl-plus",
        vlm_quotas='[{"account": "a", "rpm": 600}, {"account": "a", "model": "qwen-vl-plus", "rpm": 60}]',
    )
    limits = {g["model"]: g["limits"] for g in quota_groups(settings)}
    assert limits == {"qwen-vl-max": {"account": {"rpm": 600}}, "qwen-vl-plus": {"account": {"rpm": 60}}}


def test_a_429_on_one_model_leaves_the_keys_own_limits_for_the_other_models():
    clock = Clock()
    key = ApiKeyConfig(key=SecretStr("sk-own-limit"), alias="k", rpm=600)
    pool = KeyPool([key], clock=clock, models=["m1", "m2"], smoothing=False)
    lease = pool.try_acquire(models=["m1"])
    assert lease is not None
    pool.release(lease, ok=False, kind="rate", retry_after=30)
    assert pool.budgets["key:k"].cooldown_until == 0.0  # our own limit, not the provider's
    assert pool.try_acquire(models=["m1"]) is None
    assert pool.try_acquire(models=["m2"]) is not None


def test_refusals_are_not_counted_as_a_models_server_failures():
    """Ten 429s then one 5xx: the model is throttled, not failing, and keeps serving."""
    clock = Clock()
    pool = KeyPool(account_keys(3), clock=clock, models=["m1", "m2"], smoothing=False)
    for _ in range(10):
        lease = pool.try_acquire(models=["m1"])
        assert lease is not None
        pool.release(lease, ok=False, kind="rate", retry_after=0)
    lease = pool.try_acquire(models=["m1"])
    assert lease is not None
    pool.release(lease, ok=False, kind="server")
    budget = pool.budgets["quota:acct/m1"]
    assert budget.cooldown_until <= clock.now and budget.refusal_rate() > 0.9
    assert pool.adaptive_cooldown(budget, refusals=True) == pool.cooldown_max_s


def test_the_ramp_floor_never_spaces_a_small_share_further_than_its_rate():
    """60 rpm over 8 partitions, this worker owning one: 7.5 calls a minute, one every ~8 s from the
    first call on (a quarter of that share would wait 33 s): its slot comes once in each round of
    eight slots of the whole rate paced at 95% (agents.budgets)."""
    clock = Clock()
    pool = KeyPool(account_keys(2), clock=clock, quotas=[QuotaConfig(account="acct", rpm=60, rps=1)])
    pool.set_partitions(frozenset({3}), 8)
    times = [t for t, _, _ in drive(pool, clock, 30.0, step=0.05)]
    assert len(times) >= 3
    assert times[1] - times[0] == pytest.approx(8 / 0.95, abs=0.1)


async def test_a_retry_after_a_server_error_moves_to_a_model_that_has_not_failed(tmp_path):
    import dataclasses

    from agents.answer_parser import Assessment
    from agents.llm_scheduler import assess
    from agents.vlm_client import VlmAnswer
    from agents.worker_clients import WorkerClients
    from sim.records import assessment_task, detection

    class FirstModelDown:
        """A provider whose first model answers 503 (a model outage, not a key's)."""

        calls: list[str] = []

        async def assess(self, api_key: str, jpeg: bytes, context: str, *, model: str | None = None) -> VlmAnswer:
            self.calls.append(str(model))
            if model == "m1":
                raise VlmError("server", "HTTP 503", status=503)
            return VlmAnswer(Assessment("low", 0.2, "fine"), 5.0, 100, 10, str(model))

        async def close(self) -> None:
            return None

    settings = Settings(
        image_store=f"file://{tmp_path}", vlm_keys="sk-aaaa1111,sk-bbbb2222", vlm_models="m1,m2", vlm_backoff_base_s=1.0
    )
    provider = FirstModelDown()
    clients = dataclasses.replace(WorkerClients.build(settings), vlm=provider)  # type: ignore[arg-type]
    result = await assess(assessment_task(detection("cam-m", 1), "t-m", deadline_in_ms=10_000), clients)
    await clients.close()
    assert result.status == "ok" and result.model == "m2"
    assert provider.calls == ["m1", "m2"]


async def test_a_model_the_account_is_not_served_hands_the_task_to_the_next_model(tmp_path):
    """A 404 model_not_found (a typo, a retired model) failed every task instead of trying the chain's
    next model; and the first model is not asked again (every key of the account is refused alike)."""
    import dataclasses

    from agents.answer_parser import Assessment
    from agents.llm_scheduler import assess
    from agents.vlm_client import VlmAnswer, classify_error
    from agents.worker_clients import WorkerClients
    from sim.records import assessment_task, detection

    class NoSuchFirstModel:
        calls: list[str] = []

        async def assess(self, api_key: str, jpeg: bytes, context: str, *, model: str | None = None) -> VlmAnswer:
            self.calls.append(str(model))
            if model == "m1":
                body = '{"error": {"code": "model_not_found", "message": "The model `m1` does not exist."}}'
                raise classify_error(404, body)
            return VlmAnswer(Assessment("low", 0.2, "fine"), 5.0, 100, 10, str(model))

        async def close(self) -> None:
            return None

    settings = Settings(image_store=f"file://{tmp_path}", vlm_keys="sk-aaaa1111", vlm_models="m1,m2")
    provider = NoSuchFirstModel()
    clients = dataclasses.replace(WorkerClients.build(settings), vlm=provider)  # type: ignore[arg-type]
    first = await assess(assessment_task(detection("cam-m", 1), "t-1", deadline_in_ms=10_000), clients)
    second = await assess(assessment_task(detection("cam-m", 2), "t-2", deadline_in_ms=10_000), clients)
    await clients.close()
    assert (first.status, first.model, second.status, second.model) == ("ok", "m2", "ok", "m2")
    assert provider.calls == ["m1", "m2", "m2"]


async def test_a_failed_call_the_provider_billed_is_booked_and_one_it_refused_is_not(tmp_path):
    """An unparseable answer is billed at its usage (the provider's ground truth); a call that timed
    out after it was sent, at its worst case; a 429 costs nothing."""
    import dataclasses

    from agents.costs import camera_row
    from agents.llm_scheduler import assess
    from agents.worker_clients import WorkerClients
    from sim.records import assessment_task, detection

    prices = '{"qwen-vl-plus": {"input_per_1k": 1.0, "output_per_1k": 2.0}}'
    for mode in ("garbage", "hang"):
        sim = SimVlm(
            SimConfig(
                latency_ms=5,
                p95_ms=10,
                garbage_rate=1.0 if mode == "garbage" else 0.0,
                timeout_rate=1.0 if mode == "hang" else 0.0,
                hang_s=3.0,
            )
        )
        async with sim.serving() as url:
            settings = Settings(
                vlm_base_url=url,
                image_store=f"file://{tmp_path}",
                vlm_keys="sk-aaaa1111",
                vlm_prices=prices,
                vlm_timeout_s=0.3,
                vlm_max_retries=0,
                vlm_max_tokens=100,
                camera_daily_budget=10.0,
            )
            clients = WorkerClients.build(settings)
            rows: dict[str, object] = {}
            clients = dataclasses.replace(clients, spend=dataclasses.replace(clients.spend, rows=rows))
            result = await assess(assessment_task(detection("cam-x", 1), "t-x", deadline_in_ms=10_000), clients)
            await clients.close()
            usage = (await _usage(url))["quotas"]
        assert result.status == "failed", result
        booked = rows[camera_row("cam-x")]
        if mode == "garbage":
            (truth,) = usage
            assert (booked["prompt_tokens"], booked["completion_tokens"]) == (
                truth["prompt_tokens"],
                truth["completion_tokens"],
            )
        else:  # nothing came back: the worst case, every allowed output token
            assert sum(c.get("hang", 0) for c in sim.stats.values()) == 1  # the call reached it and hung
            assert all(q.get("calls", 0) == 0 for q in usage)  # and it answered nothing, no usage either
            assert booked["completion_tokens"] == 100 and booked["cost"] > 0
    limited = SpendLedger({}, {}, None, {})
    assert limited.camera_left("any") == math.inf


def test_the_usage_is_read_only_when_the_answer_has_one():
    from agents.vlm_client import _usage

    assert _usage({"usage": {"prompt_tokens": 12, "completion_tokens": 3}}) == (12, 3)
    assert _usage({"usage": None}) is None and _usage({}) is None
    assert _usage({"usage": {"prompt_tokens": "n/a"}}) is None


# --- the simulated provider and the real client -----------------------------------------------
@pytest.fixture
async def provider() -> AsyncIterator[tuple[SimVlm, str]]:
    keys = {f"acct-key-{i:04d}" for i in range(10)}
    sim = SimVlm(
        SimConfig(
            keys=keys,
            accounts={k: "acct" for k in keys},
            limits={"qwen-vl-plus": {"rpm": 600}},
            latency_ms=30,
            p95_ms=60,
        )
    )
    async with sim.serving() as url:
        yield sim, url


async def _load(url: str, pool: KeyPool, seconds: float, callers: int = 20) -> tuple[int, int]:
    """Callers taking keys from ``pool`` for ``seconds``; (accepted, refused) calls."""
    jpeg = cv2.imencode(".jpg", np.zeros((96, 64, 3), np.uint8))[1].tobytes()
    vlm = VlmClient(url, "qwen-vl-plus", timeout_s=5, pool_size=callers, max_tokens=50)
    end, counts = time.time() + seconds, [0, 0]

    async def caller() -> None:
        while time.time() < end:
            try:
                lease = await pool.acquire(end)
            except Exception:
                return
            try:
                answer = await vlm.assess(lease.secret, jpeg, "group kind single. Ref abcdef")
            except VlmError as exc:
                counts[1] += 1
                pool.release(lease, ok=False, kind=exc.kind, retry_after=exc.retry_after)
            else:
                counts[0] += 1
                pool.release(lease, ok=True, tokens=answer.prompt_tokens + answer.completion_tokens)

    await asyncio.gather(*(caller() for _ in range(callers)))
    await vlm.close()
    return counts[0], counts[1]


async def test_the_paced_pool_uses_an_accounts_quota_without_a_refusal_and_the_burst_baseline_is_refused(provider):
    sim, url = provider
    keys = [
        ApiKeyConfig(key=SecretStr(k), alias=f"key-{i}", account="acct") for i, k in enumerate(sorted(sim.cfg.keys))
    ]
    quotas = [QuotaConfig(account="acct", rpm=600)]
    paced = KeyPool(keys, quotas=quotas)
    accepted, refused = await _load(url, paced, 6.0)
    assert refused == 0, {k: v for k, v in sim.quotas[("acct", "qwen-vl-plus")].usage.items() if "429" in k}
    assert accepted >= 25  # the ramp from 2 calls a second, then the per-second rate
    await asyncio.sleep(2.5)  # the provider's last seconds empty: a fresh start for the baseline
    sim.quotas.clear()
    accepted_b, refused_b = await _load(url, KeyPool(keys, quotas=quotas, smoothing=False), 6.0)
    assert refused_b > 0  # the same quota released a minute at a time: the provider refuses the bursts
    usage = {(q["account"], q["model"]): q for q in (await _usage(url))["quotas"]}
    assert usage[("acct", "qwen-vl-plus")]["calls"] == accepted_b


async def _usage(url: str) -> dict[str, object]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(url.removesuffix("/v1") + "/admin/usage") as resp:
            return await resp.json()


async def test_the_provider_counts_image_tokens_by_area_in_usage(provider):
    sim, url = provider
    key = sorted(sim.cfg.keys)[0]
    vlm = VlmClient(url, "qwen-vl-plus", timeout_s=5, pool_size=2, max_tokens=50)
    small = cv2.imencode(".jpg", np.zeros((56, 56, 3), np.uint8))[1].tobytes()
    large = cv2.imencode(".jpg", np.zeros((448, 448, 3), np.uint8))[1].tobytes()
    a = await vlm.assess(key, small, "Ref abcdef")
    b = await vlm.assess(key, large, "Ref abcdef")
    await vlm.close()
    assert b.prompt_tokens - a.prompt_tokens == (256 + 2) - (4 + 2)
    assert price({"qwen-vl-plus": PriceConfig(input_per_1k=1, output_per_1k=0)}, "qwen-vl-plus", 1000, 5) == 1.0


async def test_the_scheduler_books_cost_and_model_and_skips_once_the_camera_budget_is_spent(provider, tmp_path):
    import dataclasses

    from agents.llm_scheduler import assess
    from agents.worker_clients import WorkerClients
    from sim.records import assessment_task, detection

    sim, url = provider
    keys = sorted(sim.cfg.keys)
    settings = Settings(
        vlm_base_url=url,
        image_store=f"file://{tmp_path}",
        vlm_keys=",".join(keys),
        vlm_prices='{"qwen-vl-plus": {"input_per_1k": 0.5, "output_per_1k": 1.0}}',
        camera_daily_budget=0.5,
        vlm_max_tokens=100,
    )
    clients = WorkerClients.build(settings)
    clients = dataclasses.replace(
        clients, pool=KeyPool([k.model_copy(update={"account": "acct"}) for k in settings.api_keys()])
    )
    statuses, cost = [], 0.0
    for seq in range(1, 12):
        result = await assess(assessment_task(detection("cam-b", seq), f"t{seq}", deadline_in_ms=10_000), clients)
        statuses.append(result.status)
        if result.status == "ok":
            assert result.model == "qwen-vl-plus" and result.account == "acct" and result.prompt_tokens > 0
            assert result.cost == pytest.approx(
                price(settings.prices(), "qwen-vl-plus", result.prompt_tokens, result.completion_tokens)
            )
            cost += result.cost
        else:
            assert result.status == "skipped" and "camera" in (result.error or "")
    await clients.close()
    assert "ok" in statuses and statuses[-1] == "skipped"
    assert statuses == sorted(statuses)  # "ok" until the budget is spent, "skipped" from then on
    assert cost <= 0.5
    usage = (await _usage(url))["quotas"]
    billed = sum(price(settings.prices(), "qwen-vl-plus", q["prompt_tokens"], q["completion_tokens"]) for q in usage)
    assert billed == pytest.approx(cost)  # the provider's ground truth


def test_the_best_model_can_be_kept_for_the_most_interesting_groups():
    from agents.llm_scheduler import model_chain
    from sim.records import assessment_task, detection

    s = Settings(vlm_models="qwen-vl-max,qwen-vl-plus", vlm_first_model_min_interest=0.7)
    task = assessment_task(detection("cam-i", 1), "t-i", deadline_in_ms=10_000)
    dull = task.derive(group=task.group.derive(interest=0.5))
    keen = task.derive(group=task.group.derive(interest=0.9))
    assert model_chain(dull, s) == ["qwen-vl-plus"]
    assert model_chain(keen, s) == ["qwen-vl-max", "qwen-vl-plus"]
    assert model_chain(dull, Settings(vlm_models="qwen-vl-max,qwen-vl-plus")) == ["qwen-vl-max", "qwen-vl-plus"]


def test_a_large_crop_is_downscaled_within_the_pixel_budget_before_it_is_sent():
    from agents.llm_scheduler import _crop_for_call

    big = cv2.imencode(".jpg", np.full((1200, 1600, 3), 90, np.uint8))[1].tobytes()
    sent, width, height = _crop_for_call(big, 401_408)
    assert width * height <= 401_408 and abs(width / height - 4 / 3) < 0.01
    decoded = cv2.imdecode(np.frombuffer(sent, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (height, width)
    assert image_tokens(width, height) < image_tokens(1600, 1200)
    small = cv2.imencode(".jpg", np.zeros((100, 80, 3), np.uint8))[1].tobytes()
    assert _crop_for_call(small, 401_408) == (small, 80, 100)


async def test_with_the_queue_header_the_provider_queues_a_burst_instead_of_refusing_it(provider):
    sim, url = provider
    key = sorted(sim.cfg.keys)[0]
    jpeg = cv2.imencode(".jpg", np.zeros((56, 56, 3), np.uint8))[1].tobytes()

    async def burst(queue: bool) -> list[str]:
        vlm = VlmClient(url, "qwen-vl-plus", timeout_s=20, pool_size=30, max_tokens=20, server_queue=queue)

        async def one() -> str:
            try:
                await vlm.assess(key, jpeg, "Ref abcdef")
                return "ok"
            except VlmError as exc:
                return exc.kind

        try:
            return await asyncio.gather(*(one() for _ in range(20)))
        finally:
            await vlm.close()

    refused = await burst(queue=False)  # 20 at once against 10 a second
    assert "ok" in refused and set(refused) - {"ok"} <= {"rate", "burst"} and refused.count("ok") < 20
    await asyncio.sleep(2.5)
    sim.quotas.clear()
    started = time.monotonic()
    queued = await burst(queue=True)
    assert queued == ["ok"] * 20 and time.monotonic() - started > 1.0  # served, at the provider's pace


def run_workers(
    keys: list[ApiKeyConfig],
    quotas: list[QuotaConfig],
    owned: list[frozenset[int]],
    limits: dict[str, float],
    *,
    partitions: int = 8,
    seconds: float = 120.0,
    lateness_s: float = 0.03,
    seed: int = 1,
) -> tuple[int, int]:
    """Workers sharing ``keys`` under continuous demand against the simulated provider's admission
    (its per-second bucket, minute window and growth limit); each worker wakes when its pool says
    a key is free, late by up to ``lateness_s`` (a busy event loop), and each call reaches the
    provider up to 3 ms after it left. Returns (accepted, refused)."""
    import heapq
    import random

    rng = random.Random(seed)
    clock = Clock()
    provider = SimVlm(SimConfig(limits={"m": limits}))
    pools = []
    for mine in owned:
        pool = KeyPool(keys, clock=clock, models=["m"], quotas=quotas)
        pool.set_partitions(mine, partitions)
        pools.append(pool)
    wake = [clock.now] * len(pools)
    arrivals: list[tuple[float, int, int, object]] = []
    accepted = refused = 0
    end, seq = clock.now + seconds, itertools.count()
    while True:
        t = min(min(wake), arrivals[0][0] if arrivals else math.inf)
        if t > end:
            return accepted, refused
        clock.now = t
        if arrivals and arrivals[0][0] <= t:
            _, _, w, lease = heapq.heappop(arrivals)
            account = lease.slot.account  # type: ignore[attr-defined]
            refusal = provider.admit(provider.quotas[(account, "m")], limits, t, 0)
            if refusal is None:
                accepted += 1
                pools[w].release(lease, ok=True, tokens=0)  # type: ignore[arg-type]
            else:
                refused += 1
                pools[w].release(lease, ok=False, kind=refusal[0], retry_after=None)  # type: ignore[arg-type]
            continue
        w = wake.index(t)
        while (lease := pools[w].try_acquire(models=["m"])) is not None:
            heapq.heappush(arrivals, (t + rng.uniform(0.0, 0.003), next(seq), w, lease))
        wake[w] = max(pools[w].next_free_at(models=["m"]), t + 0.001) + rng.uniform(0.0, lateness_s)


@pytest.mark.parametrize(
    ("rpm", "owned"),
    [
        (60, [frozenset(range(4)), frozenset(range(4, 8))]),  # 1 call/s over two workers
        (60, [frozenset({0, 3, 5}), frozenset({1, 2, 4, 6, 7})]),  # an uneven split
        (60, [frozenset({0, 1, 2}), frozenset({3, 4, 5}), frozenset({6, 7})]),
        (120, [frozenset(range(4)), frozenset(range(4, 8))]),  # the quota benchmark's account
        (180, [frozenset(range(4)), frozenset(range(4, 8))]),  # 1.5 calls/s each
    ],
)
def test_workers_sharing_one_account_take_turns_and_are_never_refused(rpm, owned):
    """Each worker paces its share on its own clock: unaligned, two workers' calls at 1/s over
    two land in one of the provider's seconds, and its one-call bucket refuses one of them
    (measured: half the calls of bench.key_pool with 2 workers). In slots of the whole rate on
    the shared clock, the workers' calls never come closer than the provider allows."""
    seconds = 120.0
    accepted, refused = run_workers(
        account_keys(4), [QuotaConfig(account="acct", rpm=rpm)], owned, {"rpm": rpm}, seconds=seconds
    )
    assert refused == 0
    assert accepted >= 0.9 * rpm / 60.0 * seconds  # the ramp, then the whole rate


def test_keys_of_their_own_accounts_shared_by_two_workers_are_never_refused():
    """bench.key_pool's keys: ten keys of 60 rpm, each its own account, over two workers."""
    keys = [ApiKeyConfig(key=SecretStr(f"own-secret-{i}"), alias=f"own-{i}", rpm=60) for i in range(10)]
    owned = [frozenset(range(4)), frozenset(range(4, 8))]
    accepted, refused = run_workers(keys, [], owned, {"rpm": 60}, seconds=120.0)
    assert refused == 0
    assert accepted >= 0.9 * 10 * 120.0


def test_calls_larger_than_a_worker_s_token_share_a_second_are_paced_on_their_tokens():
    """100,000 tokens a minute (about 1,667 a second) over 8 workers owning a partition each: a
    worker's share is 208 tokens a second, less than one 1,650-token call. The one-second window
    let each worker start one such call every second: 8 x 1,650 = 13,200 tokens in a second,
    which the provider refuses. Together the workers must stay at the quota's rate."""
    calls_per_worker = []
    for w in range(8):
        clock = Clock()
        pool = KeyPool(account_keys(2), clock=clock, quotas=[QuotaConfig(account="acct", tpm=100_000)])
        pool.set_partitions(frozenset({w}), 8)
        starts = []
        end = clock.now + 60.0
        while clock.now < end:
            while (lease := pool.try_acquire(tokens=1650)) is not None:
                starts.append(clock.now)
                pool.release(lease, ok=True, tokens=1650)
            clock.now += 0.05
        calls_per_worker.append(starts)
    per_second = 8 * max(max_in_window(s, 1.0) for s in calls_per_worker)
    total_tokens_in_minute = 1650 * sum(len(s) for s in calls_per_worker)
    assert total_tokens_in_minute <= 100_000
    # no second in which all workers' calls could exceed a second's worth of the minute by much:
    # each worker's calls are at least its share's interval apart
    gaps = [b - a for s in calls_per_worker for a, b in itertools.pairwise(s)]
    assert gaps and min(gaps) >= 1650 / (100_000 / 60 / 8) * 0.97 - 0.05, (min(gaps), per_second)


def test_a_worker_dealt_no_whole_call_of_a_quota_says_so(caplog):
    """4 calls a minute over 8 partitions: the workers owning partitions 4-7 get none, and their
    tasks expire; that is said at the assignment, not found from expired results."""
    pool = KeyPool(account_keys(2), clock=Clock(), quotas=[QuotaConfig(account="acct", rpm=4)])
    with caplog.at_level("WARNING"):
        pool.set_partitions(frozenset({1}), 8)
    assert not [r for r in caplog.records if "leave this worker" in r.getMessage()]
    with caplog.at_level("WARNING"):
        pool.set_partitions(frozenset({5, 6}), 8)
    assert any("4 calls a minute over 8 partitions" in r.getMessage() for r in caplog.records)


def test_dashscope_keys_without_an_account_are_warned_about(caplog, tmp_path):
    """DashScope counts per account: ten plain keys taken as ten accounts send ten times the quota."""
    from agents.worker_clients import WorkerClients

    url = "https://dashscope.aliyuncs.com/compatible-mode/v1"
    with caplog.at_level("WARNING"):
        WorkerClients.build(
            Settings(image_store=f"file://{tmp_path}", vlm_base_url=url, vlm_keys="sk-aaaa1111,sk-bbbb2222")
        )
    assert any("name no account" in r.getMessage() for r in caplog.records)
    assert not any("sk-aaaa1111" in r.getMessage() for r in caplog.records)  # aliases only
    caplog.clear()
    keys = '[{"key": "sk-aaaa1111", "account": "a"}, {"key": "sk-bbbb2222", "account": "a"}]'
    with caplog.at_level("WARNING"):
        WorkerClients.build(Settings(image_store=f"file://{tmp_path}", vlm_base_url=url, vlm_keys=keys))
    assert not any("name no account" in r.getMessage() for r in caplog.records)


async def test_a_call_cancelled_mid_flight_is_in_the_cost_metric_as_in_the_ledger(tmp_path):
    """A call sent and then cancelled (a rebalance) was booked in the ledger at its worst case but
    not in roadwatch_vlm_cost_total: /metrics showed less than was spent."""
    import dataclasses

    from agents.llm_scheduler import assess
    from agents.vlm_client import VlmAnswer
    from agents.worker_clients import WorkerClients
    from sim.records import assessment_task, detection
    from streams import metrics

    class Slow:
        async def assess(self, api_key: str, jpeg: bytes, context: str, *, model: str | None = None) -> VlmAnswer:
            await asyncio.sleep(30)
            raise AssertionError("cancelled before")

        async def close(self) -> None:
            return None

    prices = '{"qwen-vl-plus": {"input_per_1k": 1.0, "output_per_1k": 2.0}}'
    settings = Settings(image_store=f"file://{tmp_path}", vlm_keys="sk-aaaa1111", vlm_prices=prices)
    clients = dataclasses.replace(WorkerClients.build(settings), vlm=Slow())  # type: ignore[arg-type]
    counted = metrics.vlm_cost_total.labels(account="key-1", model="qwen-vl-plus")
    before = counted._value.get()
    call = asyncio.ensure_future(assess(assessment_task(detection("cam-x", 1), "t-x", deadline_in_ms=20_000), clients))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await clients.close()
    assert counted._value.get() - before > 0  # the worst case the ledger booked
