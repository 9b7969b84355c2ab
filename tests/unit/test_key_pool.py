"""The key pool: strategies, limits, failover and cooldowns, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from agents.key_pool import AVAILABLE, COOLING, DISABLED, IN_USE, KeyPool
from streams.errors import NoKeyAvailable
from streams.settings import ApiKeyConfig, parse_keys


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(n: int = 3, strategy: str = "least_loaded", smoothing: bool = True, **cfg: object) -> tuple[KeyPool, Clock]:
    clock = Clock()
    keys = [ApiKeyConfig(key=SecretStr(f"secret-{i}"), alias=f"key-{i}", **cfg) for i in range(1, n + 1)]
    return KeyPool(keys, strategy=strategy, clock=clock, smoothing=smoothing), clock  # type: ignore[arg-type]


def test_least_loaded_spreads_in_flight_calls():
    p, _ = pool(3)
    leases = [p.try_acquire() for _ in range(3)]
    assert sorted(lease.alias for lease in leases if lease) == ["key-1", "key-2", "key-3"]
    assert {row["state"] for row in p.snapshot()} == {IN_USE}


def picks(p: KeyPool, n: int) -> list[str]:
    """The aliases of ``n`` calls in a row, each released at once."""
    aliases = []
    for _ in range(n):
        lease = p.try_acquire()
        assert lease is not None
        aliases.append(lease.alias)
        p.release(lease, ok=True)
    return aliases


def test_round_robin_cycles():
    p, _ = pool(3, "round_robin")
    assert picks(p, 6) == ["key-1", "key-2", "key-3"] * 2


def test_weighted_follows_weights():
    clock = Clock()
    keys = [ApiKeyConfig(key=SecretStr("a"), alias="heavy", weight=3), ApiKeyConfig(key=SecretStr("b"), alias="light")]
    chosen = picks(KeyPool(keys, strategy="weighted", clock=clock), 8)
    assert chosen.count("heavy") == 6 and chosen.count("light") == 2


def test_latency_strategy_prefers_the_fast_key():
    p, _ = pool(2, "latency")
    for alias, latency in (("key-1", 900.0), ("key-2", 100.0)):
        lease = p.try_acquire()
        assert lease is not None
        lease.slot = p.by_alias[alias]
        p.release(lease, ok=True, latency_ms=latency)
    lease = p.try_acquire()
    assert lease is not None and lease.alias == "key-2"


def test_rpm_limit_is_never_exceeded_and_frees_after_the_window():
    p, clock = pool(1, rpm=3, smoothing=False)
    for _ in range(3):
        lease = p.try_acquire()
        assert lease is not None
        p.release(lease, ok=True)
    assert p.try_acquire() is None
    clock.now += 61
    assert p.try_acquire() is not None


def test_share_divides_the_limits_between_workers():
    got = []
    for owned in ({0, 1}, {2, 3}):
        p, _ = pool(1, rpm=10, smoothing=False)
        p.set_partitions(frozenset(owned), 4)
        n = 0
        while (lease := p.try_acquire()) is not None:
            n += 1
            p.release(lease, ok=True)
        got.append(n)
    assert sorted(got) == [4, 6] and sum(got) == 10  # whole calls, exactly the limit together


def test_rate_limit_cools_for_retry_after():
    p, clock = pool(2)
    lease = p.try_acquire()
    assert lease is not None
    p.release(lease, ok=False, kind="rate", retry_after=7)
    assert p.key_state(p.by_alias[lease.alias]) == COOLING  # its account's quota cools (a plain key: its own)
    assert p.key_state(p.by_alias["key-1" if lease.alias != "key-1" else "key-2"]) == AVAILABLE
    clock.now += 7.1
    assert p.key_state(p.by_alias[lease.alias]) == AVAILABLE


def test_transient_server_errors_do_not_cool_a_healthy_key_but_a_failing_key_cools():
    p, clock = pool(1)
    slot = p.by_alias["key-1"]
    for outcome in [True] * 8 + [False, False]:  # 20% failures, two in a row
        lease = p.try_acquire()
        assert lease is not None
        p.release(lease, ok=outcome, kind="" if outcome else "server")
    assert slot.state(clock.now) == AVAILABLE
    lease = p.try_acquire()
    assert lease is not None
    p.release(lease, ok=False, kind="server")  # three in a row, 27% of the last 11
    assert slot.state(clock.now) == AVAILABLE
    lease = p.try_acquire()
    assert lease is not None
    p.release(lease, ok=False, kind="server")  # four in a row, 33%
    assert slot.state(clock.now) == COOLING
    assert 10 <= slot.cooldown_until - clock.now <= 120


def test_a_few_early_failures_do_not_cool_a_key_but_a_dead_key_cools_fast():
    p, clock = pool(1)
    slot = p.by_alias["key-1"]
    for outcome in (False, True, False, True):  # 2 of 4: bad luck at a 10% error rate, not a bad key
        lease = p.try_acquire()
        assert lease is not None
        p.release(lease, ok=outcome, kind="" if outcome else "server")
    assert slot.state(clock.now) == AVAILABLE
    dead, _ = pool(1)
    for _ in range(3):  # a key whose every call fails cools after three
        lease = dead.try_acquire()
        assert lease is not None
        dead.release(lease, ok=False, kind="server")
    assert dead.by_alias["key-1"].state(clock.now) == COOLING


def test_cooldown_grows_with_the_failure_rate():
    p, _ = pool(
        1,
    )
    slot = p.by_alias["key-1"]
    slot.recent.extend([True] * 9 + [False])
    short = p.adaptive_cooldown(slot)
    slot.recent.extend([False] * 10)
    assert p.adaptive_cooldown(slot) > short >= 10


@pytest.mark.parametrize("kind", ["auth", "arrearage"])
def test_rejected_keys_are_disabled_until_enabled(kind: str):
    p, clock = pool(2)
    lease = p.try_acquire()
    assert lease is not None
    p.release(lease, ok=False, kind=kind)
    assert p.by_alias[lease.alias].state(clock.now) == DISABLED
    clock.now += 10_000
    assert p.by_alias[lease.alias].state(clock.now) == DISABLED
    p.enable(lease.alias)
    assert p.by_alias[lease.alias].state(clock.now) == AVAILABLE


def test_exhausted_quota_disables_until_reset():
    p, clock = pool(1)
    lease = p.try_acquire()
    assert lease is not None
    p.release(lease, ok=False, kind="quota", retry_after=30)
    assert p.by_alias["key-1"].state(clock.now) == DISABLED
    clock.now += 31
    assert p.by_alias["key-1"].state(clock.now) == AVAILABLE


@pytest.mark.parametrize("kind", ["quota", "arrearage"])
def test_an_empty_balance_disables_every_key_of_the_account_at_once(kind: str):
    """A balance is the account's: learning it one failed call per key spent a call on each."""
    clock = Clock()
    keys = [
        ApiKeyConfig(key=SecretStr(f"secret-{i}"), alias=f"key-{i}", account="a" if i < 3 else "b") for i in range(1, 4)
    ]
    p = KeyPool(keys, clock=clock)  # type: ignore[arg-type]
    lease = _lease(p, "key-1")
    p.release(lease, ok=False, kind=kind, retry_after=60)
    states = {alias: slot.state(clock.now) for alias, slot in p.by_alias.items()}
    assert states == {"key-1": DISABLED, "key-2": DISABLED, "key-3": AVAILABLE}


def test_failover_prefers_a_key_not_yet_tried():
    p, _ = pool(3)
    lease = p.try_acquire(exclude=frozenset({"key-1", "key-2"}))
    assert lease is not None and lease.alias == "key-3"


def test_failover_falls_back_to_a_tried_key_when_the_others_are_disabled():
    p, _ = pool(2)
    p.disable("key-2", "test")
    lease = p.try_acquire(exclude=frozenset({"key-1"}))
    assert lease is not None and lease.alias == "key-1"


def test_failover_retries_a_tried_key_that_is_free_rather_than_wait_for_a_cooling_one():
    p, clock = pool(2)
    p.release(_lease(p, "key-2"), ok=False, kind="rate", retry_after=30)
    first = _lease(p, "key-1")
    p.release(first, ok=False, kind="server")  # one transient error: key-1 is not cooled
    lease = p.try_acquire(exclude=frozenset({"key-1"}))
    assert lease is not None and lease.alias == "key-1"
    p.release(lease, ok=True)
    clock.now += 31  # key-2's account cooled off: an untried key is preferred again
    lease = p.try_acquire(exclude=frozenset({"key-1"}))
    assert lease is not None and lease.alias == "key-2"


def test_failover_waits_a_paced_moment_for_an_untried_key_rather_than_retry_the_failed_one():
    p, clock = pool(2, rpm=60)  # paced: a key's next call a second after its last
    first = _lease(p, "key-1")
    clock.now += 0.75
    p.release(_lease(p, "key-2"), ok=True)
    clock.now += 0.35
    p.release(first, ok=False, kind="server")  # key-1 is free again; key-2's next slot is 0.68 s away
    tried = frozenset({"key-1"})
    assert p.try_acquire(exclude=tried) is None
    wake = p.next_free_at(exclude=tried)
    assert 0.5 < wake - clock.now < 1.0  # acquire sleeps until key-2's slot, not 5 ms at a time
    clock.now = wake
    lease = p.try_acquire(exclude=tried)
    assert lease is not None and lease.alias == "key-2"


def _lease(p: KeyPool, alias: str):  # type: ignore[no-untyped-def]
    """A lease on ``alias`` (the others excluded while it is free)."""
    lease = p.try_acquire(exclude=frozenset(a for a in p.by_alias if a != alias))
    assert lease is not None and lease.alias == alias
    return lease


def test_an_operators_disable_holds_after_the_providers_disable_has_expired():
    p, clock = pool(2)
    p.release(_lease(p, "key-1"), ok=False, kind="quota", retry_after=5)
    clock.now += 3600
    p.disable("key-1", "by hand", by_operator=True)
    assert p.key_state(p.by_alias["key-1"]) == DISABLED
    for _ in range(4):
        lease = p.try_acquire()
        assert lease is not None and lease.alias == "key-2"
        p.release(lease, ok=True)
    p.disable("key-2", "by hand", by_operator=True)
    assert p.try_acquire() is None  # not even as the last key left
    p.enable("key-1")
    lease = p.try_acquire()
    assert lease is not None and lease.alias == "key-1"


def test_the_first_429_without_retry_after_cools_briefly_and_a_run_of_them_longer():
    p, clock = pool(1)
    p.release(_lease(p, "key-1"), ok=False, kind="rate")
    first = p.by_alias["key-1"]
    budget = p.paths[(first.index, p.models[0])][0]
    assert budget.cooldown_until - clock.now == pytest.approx(26.5)  # not cooldown_max_s (120) for one refusal
    for _ in range(6):
        clock.now = budget.cooldown_until + 0.1
        p.release(_lease(p, "key-1"), ok=False, kind="rate")
    assert budget.cooldown_until - clock.now == pytest.approx(120)  # refused every time: the longest


def test_acquire_waits_for_the_first_key_to_recover_then_gives_up_at_the_deadline():
    async def scenario() -> None:
        p = KeyPool([ApiKeyConfig(key=SecretStr("s"), alias="k", max_in_flight=1)])
        lease = p.try_acquire()
        assert lease is not None
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: p.release(lease, ok=True))
        import time

        got = await p.acquire(time.time() + 2)
        assert got.alias == "k" and got.waited_s > 0.03
        with pytest.raises(NoKeyAvailable):
            await p.acquire(time.time() + 0.1)

    asyncio.run(scenario())


def test_a_task_no_key_may_serve_gives_up_at_once_unless_a_call_in_flight_can_make_room():
    """A spent budget (``usable`` refusing every key) with nothing in flight: a task must not wait
    for its deadline (bench.quotas' 600 s tasks did, past the benchmark's wait); a call in flight
    may settle below its reservation and free room, so then the task waits for it."""

    async def scenario() -> None:
        import time

        p = KeyPool([ApiKeyConfig(key=SecretStr("s"), alias="k", max_in_flight=2)])
        room = {"open": False}
        started = time.monotonic()
        with pytest.raises(NoKeyAvailable, match="no call in flight"):
            await p.acquire(time.time() + 30, usable=lambda slot, model: room["open"])
        assert time.monotonic() - started < 0.5
        lease = p.try_acquire()
        assert lease is not None

        def settle() -> None:
            room["open"] = True
            p.release(lease, ok=True)

        asyncio.get_running_loop().call_later(0.05, settle)
        got = await p.acquire(time.time() + 30, usable=lambda slot, model: room["open"])
        assert got.alias == "k" and got.waited_s > 0.03

    asyncio.run(scenario())


def test_merge_adopts_newer_state_from_another_worker():
    p, clock = pool(1)
    p.merge("key-1", {"cooldown_until": clock.now + 50, "disabled": False, "updated_at": clock.now + 1})
    assert p.by_alias["key-1"].state(clock.now) == COOLING
    p.merge("key-1", {"cooldown_until": 0, "disabled": True, "updated_at": clock.now - 100})  # older: ignored
    assert p.by_alias["key-1"].state(clock.now) == COOLING


def test_snapshot_and_persisted_state_never_hold_the_key():
    p, _ = pool(2)
    text = repr(p.snapshot()) + repr([p.persisted(s) for s in p.slots]) + repr(p.slots[0].cfg)
    assert "secret-" not in text


def test_keys_parse_from_strings_and_objects():
    keys = parse_keys('["k-one", {"key": "k-two", "alias": "backup", "weight": 2, "rpm": 60}]')
    assert [k.alias for k in keys] == ["key-1", "backup"]
    assert keys[1].rpm == 60 and keys[1].key.get_secret_value() == "k-two"
    assert [k.alias for k in parse_keys("a, b,c")] == ["key-1", "key-2", "key-3"]
    with pytest.raises(ValueError, match="duplicate"):
        parse_keys('[{"key": "a", "alias": "x"}, {"key": "b", "alias": "x"}]')
