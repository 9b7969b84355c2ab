"""Defects an adversarial review found, each pinned by a test that failed before its fix.

Every test is named after what it proves; the issue's item number is in its docstring.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator

import cv2
import numpy as np
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from agents.answer_parser import parse_answer
from agents.key_pool import KeyPool
from agents.worker_clients import WorkerClients
from sim.records import assessment_task, detection
from streams.cache import ORIGIN, OWN_PREFIX, parse_relayed, relay_message
from streams.dlq import dlq_body
from streams.errors import BadImage, ConfigError, ImageMissing, InvalidRecord
from streams.images import check_image
from streams.records import RECORD_TYPES, DetectionResult, decode, to_bytes
from streams.settings import ApiKeyConfig, Settings, parse_keys, redact_url
from tests.conftest import serve_on_loopback


# --- 2: a tiny image that claims to be huge ----------------------------------------------------
def _jpeg_claiming(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    i = data.index(b"\xff\xc0")  # baseline frame header: length(2) precision(1) height(2) width(2)
    data[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_an_image_whose_header_claims_20000_px_is_refused_before_any_decoder_runs(monkeypatch):
    """#12.2: a 631-byte JPEG claiming 20000x20000 px was decoded first (2.4 GB, 6.5 s)."""
    bomb = _jpeg_claiming(20000, 20000)
    assert len(bomb) < 1000

    def no_decoding(*args: object) -> None:
        raise AssertionError("the decoder ran on an image whose header is over the limit")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(BadImage, match="header claims 20000x20000"):
        check_image(bomb)


def test_a_plain_small_jpeg_still_passes():
    _, buf = cv2.imencode(".jpg", np.full((40, 60, 3), 128, np.uint8))
    check_image(buf.tobytes())


@pytest.mark.parametrize("keep", [0.5, 0.9, -10])
def test_a_cut_jpeg_is_refused_though_decoded_at_an_eighth(keep: float) -> None:
    """The check decodes a JPEG at an eighth of its size: every coefficient is still read, so a stream cut
    short (a half-written file, a dropped tail) is refused as before, not sent to the VLM."""
    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8), (9, 9), 3)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    check_image(data)
    cut = data[: int(len(data) * keep)] if keep > 0 else data[: int(keep)]
    with pytest.raises(BadImage, match="do not decode"):
        check_image(cut)


# --- 3: any payload on the Redis results channel ----------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        b"1",
        b"[]",
        b'"x"',
        b"null",
        b"{}",
        b'{"type": "result"}',
        b'{"type": "result", "camera_id": 5, "data": {}}',
        b'{"type": "alert", "camera_id": "../x", "data": {}}',
        b'{"type": "evil", "camera_id": "c", "data": {}}',
        b"[" * 100_000,
        b"\xff\xfe",
        7,
        None,
    ],
)
def test_any_payload_on_the_redis_channel_is_dropped_not_raised(payload):
    """#12.3: ``PUBLISH roadwatch:results 1`` raised AttributeError in the relay and crashed the app."""
    assert parse_relayed(payload) is None


def test_a_well_formed_relayed_result_is_delivered():
    body = json.dumps({"origin": "h:1", "type": "result", "camera_id": "cam-1", "data": {"a": 1}})
    assert parse_relayed(body.encode()) == ("h:1", "result", "cam-1", {"a": 1})


# --- 4: a retry loop that ignored the deadline and cancellation -------------------------------
@pytest.fixture
async def throttling_vlm() -> AsyncIterator[tuple[str, list[float]]]:
    """An endpoint that refuses every key with 429 and ``Retry-After: 0``; records each call's time."""
    calls: list[float] = []

    async def chat(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        await asyncio.sleep(0.02)
        body = {"error": {"code": "Throttling.RateQuota", "message": "Requests rate limit exceeded"}}
        return web.json_response(body, status=429, headers={"Retry-After": "0"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner, port = await serve_on_loopback(app)
    yield f"http://127.0.0.1:{port}/v1", calls
    await runner.cleanup()


def _clients(url: str, tmp_path, keys: int) -> WorkerClients:
    import dataclasses

    built = WorkerClients.build(Settings(vlm_base_url=url, image_store=f"file://{tmp_path}", vlm_max_retries=2))
    pool = KeyPool([ApiKeyConfig(key=SecretStr(f"k-{i:04d}"), alias=f"key-{i}") for i in range(keys)])
    return dataclasses.replace(built, pool=pool)


async def test_a_provider_refusing_every_key_costs_at_most_keys_plus_retries_calls(throttling_vlm, tmp_path):
    """#12.4: 429 with Retry-After: 0 on every key made ~890 calls/s for one task."""
    from agents.llm_scheduler import assess

    url, calls = throttling_vlm
    clients = _clients(url, tmp_path, keys=3)
    result = await assess(assessment_task(detection("cam", 1), "t-loop", deadline_in_ms=5_000), clients)
    await clients.close()
    assert result.status in ("failed", "expired")
    assert len(calls) <= 3 + 2, f"{len(calls)} calls for one task"


async def test_a_task_past_its_deadline_makes_no_further_call(throttling_vlm, tmp_path):
    """#12.4: the deadline wins over a key that is free again at once."""
    from agents.llm_scheduler import assess

    url, calls = throttling_vlm
    clients = _clients(url, tmp_path, keys=50)
    started = time.monotonic()
    result = await assess(assessment_task(detection("cam", 2), "t-late", deadline_in_ms=150), clients)
    await clients.close()
    assert result.status == "expired"
    assert calls and all(t - started < 0.16 for t in calls), "calls made after the deadline"


async def test_calls_the_deadline_cuts_short_blame_neither_key_nor_model(tmp_path):
    """A backlog handed tasks with little time left to a healthy provider answering in 1 s: each
    call cut by the task's deadline counted as the key's server error, and three cooled it for
    two minutes on every worker."""
    from agents.key_pool import AVAILABLE
    from agents.llm_scheduler import assess
    from sim.vlm import SimConfig, SimVlm

    sim = SimVlm(SimConfig(latency_ms=1000, p95_ms=1000))
    async with sim.serving() as url:
        clients = _clients(url, tmp_path, keys=1)
        for i in range(4):
            task = assessment_task(detection("cam", 10 + i), f"t-short-{i}", deadline_in_ms=300)
            result = await assess(task, clients)
            assert result.status == "expired" and "deadline" in (result.error or ""), result
        slot = clients.pool.slots[0]
        assert clients.pool.key_state(slot) == AVAILABLE and slot.failures == 0
        assert all(b.consecutive_failures == 0 for path in clients.pool.paths.values() for b in path)
        # a task granted its key with no time left makes no call at all
        late = assessment_task(detection("cam", 20), "t-late-lease", deadline_in_ms=50)
        requests_before = sum(c["requests"] for c in sim.stats.values())
        try:
            assert (await assess(late, clients)).status == "expired"
            assert sum(c["requests"] for c in sim.stats.values()) == requests_before
            assert slot.in_flight == 0
        finally:
            await clients.close()


async def test_a_cancelled_assessment_stops_calling_at_once(throttling_vlm, tmp_path):
    """#12.4: the loop survived cancellation."""
    from agents.llm_scheduler import assess

    url, calls = throttling_vlm
    clients = _clients(url, tmp_path, keys=1000)
    running = asyncio.ensure_future(
        assess(assessment_task(detection("cam", 3), "t-cancel", deadline_in_ms=30_000), clients)
    )
    await asyncio.sleep(0.2)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, timeout=2)
    await asyncio.sleep(0.05)  # a request sent before the cancellation may still reach the server
    made = len(calls)
    await asyncio.sleep(0.3)
    assert len(calls) == made, "calls went on after the cancellation"
    assert sum(s.in_flight for s in clients.pool.slots) == 0, "a cancelled call kept its key busy"
    await clients.close()


# --- 5: DLQ records of big messages -----------------------------------------------------------
@pytest.mark.parametrize("size", [900_000, 1_000_000, 1_048_000])
def test_a_dlq_record_fits_the_producer_request_limit_whatever_the_message_size(size):
    """#12.5: a 900 KB record became a 1.2 MB DLQ record and crashed all three agents."""
    raw = b"x" * size
    body = json.dumps(dlq_body(raw, "too big", "t", 0, 1)).encode()
    assert len(body) < 1_048_576 // 2
    record = json.loads(body)
    assert record["value_size"] == size and record["value_truncated"] and len(record["value_sha256"]) == 64


# --- 6: decode leaks ----------------------------------------------------------------------------
def _detection_with(**changes: object) -> bytes:
    data = json.loads(to_bytes(detection("cam-1", 1)))
    data.update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "body",
    [
        _detection_with(objects=[{"track_id": 1, "cls": "car", "conf": "high", "bbox": [1, 2, 3, 4]}]),
        _detection_with(objects=[{"track_id": 1, "cls": "car", "conf": 0.5, "bbox": ["a", "b", "c", "d"]}]),
        _detection_with(frame_seq=10**30),
        _detection_with(
            groups=[{"group_id": "g", "kind": "k", "members": "01", "track_ids": [], "bbox": [1, 1, 2, 2]}]
        ),
        b'{"camera_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["string conf", "string bbox values", "frame_seq 1e30", "members a string", "100k-deep JSON"],
)
def test_decode_raises_only_invalid_record(body):
    """#12.6: decode leaked TypeError and RecursionError, and its callers crashed."""
    with pytest.raises(InvalidRecord):
        decode(DetectionResult, body)


json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_type=st.sampled_from(RECORD_TYPES), tree=json_trees, base=st.booleans())
def test_every_record_type_decodes_any_json_tree_or_says_why(record_type, tree, base):
    """#12.6: arbitrary JSON, alone or grafted onto a valid record's fields, never escapes as another error."""
    if base and isinstance(tree, dict):
        data = json.loads(to_bytes(detection("cam-1", 1)))
        data.update(tree)
        tree = data
    try:
        decode(record_type, json.dumps(tree).encode())
    except InvalidRecord:
        pass


# --- 9: empty and placeholder secrets ----------------------------------------------------------
@pytest.mark.parametrize(
    "token", ["", "   ", "REPLACE-WITH-A-LONG-RANDOM-TOKEN", "replace-me-with-ROADWATCH_WEB_TOKEN", "short"]
)
def test_an_empty_or_placeholder_web_token_is_refused_at_start(token):
    """#12.9: ``ROADWATCH_WEB_TOKEN=`` compared equal to no credentials and turned auth off."""
    with pytest.raises(ValidationError, match="ROADWATCH_WEB_TOKEN"):
        Settings(web_token=SecretStr(token))


def test_a_placeholder_token_is_accepted_only_with_auth_explicitly_off():
    assert Settings(web_token=SecretStr(""), web_auth=False).web_auth is False


def test_the_example_files_placeholder_keys_are_refused():
    """#12.9: the keys of deploy/secrets/vlm-keys.example and the k8s Secret are no keys."""
    for raw in ("replace-me-staging-key-1", "REPLACE-WITH-KEY-1"):
        with pytest.raises(ValueError, match="placeholder"):
            parse_keys(raw)


async def test_an_empty_token_lets_no_request_through():
    from web.auth import WebAuth

    class Request:
        path = "/keys/"
        headers: dict[str, str] = {}
        query: dict[str, str] = {}

    auth = WebAuth()
    assert not auth.allows(Request()), "before the worker started, nothing passes"
    unchecked = Settings.model_construct(web_auth=True, web_token=SecretStr(""), data_dir=Settings().data_dir)
    with pytest.raises(ConfigError, match="empty"):
        await auth.load(unchecked)
    assert not auth.allows(Request())


# --- 16: small ones ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://***:***@cache:6379/0"),
        ("https://user:pw@hooks.example.com/x?y=1", "https://***:***@hooks.example.com/x?y=1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_check_config_never_prints_credentials_inside_urls(url, shown):
    """#12.16: check-config printed the Redis and webhook URLs with their passwords."""
    assert redact_url(url) == shown


def test_a_webhook_s_secret_path_and_the_keys_never_show_in_check_config_or_a_repr():
    from streams.settings import redact_webhook

    shown = redact_webhook("https://hooks.slack.com/services/T0AAAA/B0BBBB/xYzSecretPart")
    assert shown == "https://hooks.slack.com/<path hidden>"
    # a traceback that shows locals, a test's assertion diff, a debug log of the settings
    s = Settings(vlm_keys="sk-stand-in-0123456789abcdef")
    assert "0123456789abcdef" not in repr(s) and "0123456789abcdef" not in str(s.model_dump())
    assert [k.alias for k in s.api_keys()] == ["key-1"]


@pytest.mark.parametrize(
    ("answer", "level", "score"),
    [
        ('{"risk_score": 8}', "high", 0.8),
        ('{"risk_level": "high", "risk_score": 8}', "high", 0.8),
        ('{"risk_level": "none", "risk_score": 8}', "none", 0.08),
        ('{"risk_score": 80}', "high", 0.8),
        ('{"risk_score": 0.8}', "high", 0.8),
    ],
)
def test_a_score_on_a_0_to_10_scale_is_read_as_tenths(answer, level, score):
    """#12.16: a 0-10 score of 8 was read as 0.08 (a percentage)."""
    parsed = parse_answer(answer)
    assert (parsed.risk_level, parsed.risk_score) == (level, score)


# --- 8: an operator's disable undone by another worker ----------------------------------------
def test_an_operator_disable_survives_another_workers_cooldown_write_whatever_the_clocks():
    """#12.8: workers persisted whole key records and the newest updated_at won: worker B's
    cooldown re-enabled a key worker A's operator had disabled."""
    from agents.key_pool import DISABLED, KeySlot

    table: dict[str, dict[str, object]] = {}  # the key_pool GlobalTable: the last writer wins

    def worker(clock_offset_s: float) -> KeyPool:
        pool: KeyPool | None = None

        def persist(slot: KeySlot) -> None:
            assert pool is not None
            table[slot.alias] = dict(pool.persisted(slot))

        keys = [ApiKeyConfig(key=SecretStr(f"secret-{i}"), alias=f"key-{i}") for i in (1, 2)]
        pool = KeyPool(keys, clock=lambda: time.time() + clock_offset_s, on_change=persist)
        return pool

    def sync(pool: KeyPool) -> None:
        for alias, data in list(table.items()):
            if pool.merge(alias, data):
                pool.republish(alias)

    a, b = worker(0.0), worker(+120.0)  # B's clock runs two minutes ahead
    a.disable("key-1", "disabled by operator", by_operator=True)
    lease = b.try_acquire(frozenset({"key-2"}))  # B has not synced yet: it still calls key-1
    assert lease is not None and lease.alias == "key-1"
    b.release(lease, ok=False, kind="rate", retry_after=5.0)  # and writes key-1's cooldown over A's record
    for _ in range(2):
        sync(a)
        sync(b)
    now = time.time()
    assert a.by_alias["key-1"].state(now) == DISABLED
    assert b.by_alias["key-1"].state(now + 120) == DISABLED
    assert table["key-1"]["operator_disabled"] is True

    b.enable("key-1")  # an operator's enable on the other worker holds too
    for _ in range(2):
        sync(a)
        sync(b)
    assert a.by_alias["key-1"].state(now) != DISABLED and b.by_alias["key-1"].state(now + 120) != DISABLED

    # the provider's disable (a 401) on the worker whose clock runs ahead; an operator's enable on
    # the other one, older by that clock, still clears it everywhere
    lease = b.try_acquire(frozenset({"key-1"}))
    assert lease is not None and lease.alias == "key-2"
    b.release(lease, ok=False, kind="auth")
    for _ in range(2):
        sync(a)
        sync(b)
    assert a.by_alias["key-2"].state(now) == DISABLED
    a.enable("key-2")
    for _ in range(2):
        sync(a)
        sync(b)
    assert a.by_alias["key-2"].state(now) != DISABLED and b.by_alias["key-2"].state(now + 120) != DISABLED


# --- 11: task ids after a producer restart -----------------------------------------------------
def test_a_restarted_producer_makes_new_task_ids_and_a_redelivery_keeps_its_own():
    """#12.11: frame and track ids restart with the producer, so its new frames made the old task
    ids and the aggregator dropped their results as duplicates (49 of 49 with a replayed source)."""
    from agents.task_policy import Budget, plan_tasks
    from streams.records import make_task_id

    budget = Budget(refresh_s=20.0, per_min=600.0, burst=100.0, min_interest=0.3)
    first_run = [detection("c", seq, run="run-a") for seq in range(3)]
    state = None
    ids_a = []
    for i, det in enumerate(first_run):
        state, decisions, _ = plan_tasks(state, det, 100.0 + i, budget)
        ids_a += [make_task_id(det.camera_id, det.frame_seq, d.group.group_id, det.run) for d in decisions]
    restarted = [detection("c", seq, run="run-b") for seq in range(3)]  # the same frame and track ids
    ids_b = []
    for i, det in enumerate(restarted):
        state, decisions, _ = plan_tasks(state, det, 130.0 + i, budget)
        assert [d.reason for d in decisions] != ["replay"]
        ids_b += [make_task_id(det.camera_id, det.frame_seq, d.group.group_id, det.run) for d in decisions]
    assert ids_b and not set(ids_a) & set(ids_b)
    assert {d.detection_id for d in first_run}.isdisjoint(d.detection_id for d in restarted)
    _, again, _ = plan_tasks(state, restarted[2], 140.0, budget)  # a redelivery of the new run
    assert [d.reason for d in again] == ["replay"]
    assert make_task_id("c", 2, again[0].group.group_id, "run-b") in ids_b


def test_a_restarted_producer_without_run_ids_makes_new_task_ids_too():
    """A producer that sends no run id (another team's, per the topic contract) counts frames from 0
    again after a restart: its frames made the task and detection ids of its previous run's frames,
    and the aggregator dropped their results as already seen for an hour. The capture time tells
    the runs apart; a redelivered record keeps its ids."""
    from agents.task_policy import Budget, plan_tasks
    from streams.records import make_task_id

    budget = Budget(refresh_s=20.0, per_min=600.0, burst=100.0, min_interest=0.3)

    def frames(start_ms: float) -> list[DetectionResult]:
        dets = [detection("c", seq) for seq in range(3)]
        for i, det in enumerate(dets):
            det.captured_at = start_ms + 500.0 * i
        return [decode(DetectionResult, to_bytes(d)) for d in dets]  # as the worker reads them

    state = None
    ids: list[list[str]] = [[], []]
    runs = [frames(1_700_000_000_000.0), frames(1_700_000_002_000.0)]  # restarted 2 s later
    for r, run in enumerate(runs):
        for i, det in enumerate(run):
            state, decisions, _ = plan_tasks(state, det, 100.0 + 10 * r + i, budget)
            assert decisions and [d.reason for d in decisions] != ["replay"]
            ids[r] += [make_task_id(det.camera_id, det.frame_seq, d.group.group_id, det.run_key) for d in decisions]
    assert not set(ids[0]) & set(ids[1])
    assert {d.detection_id for d in runs[0]}.isdisjoint(d.detection_id for d in runs[1])
    again = decode(DetectionResult, to_bytes(runs[1][2]))  # a redelivery of the new run's frame
    _, replayed, _ = plan_tasks(state, again, 140.0, budget)
    assert [d.reason for d in replayed] == ["replay"]
    assert make_task_id("c", 2, replayed[0].group.group_id, again.run_key) in ids[1]
    assert again.detection_id == runs[1][2].detection_id


# --- 10: per-key limits across workers ---------------------------------------------------------
def _workers(keys: list[ApiKeyConfig], partitions: int, workers: int) -> list[KeyPool]:
    pools = []
    for w in range(workers):
        pool = KeyPool(keys)
        pool.set_partitions(frozenset(range(w, partitions, workers)), partitions)
        pools.append(pool)
    return pools


def _calls_now(pool: KeyPool) -> dict[str, int]:
    """How many calls each key takes on this worker right now (in flight, none released)."""
    taken: dict[str, int] = {}
    while (lease := pool.try_acquire()) is not None:
        taken[lease.alias] = taken.get(lease.alias, 0) + 1
    return taken


@pytest.mark.parametrize("workers", [2, 4, 8])
def test_a_keys_in_flight_cap_holds_for_all_workers_together(workers):
    """#12.10: max(1, share) let 4 workers run 4 calls on a key with max_in_flight=2."""
    keys = [ApiKeyConfig(key=SecretStr("k-1"), alias="key-1", max_in_flight=2)]
    total = sum(_calls_now(p).get("key-1", 0) for p in _workers(keys, partitions=8, workers=workers))
    assert total == 2


def test_a_small_rpm_is_dealt_out_in_whole_calls_and_no_worker_is_left_without_capacity():
    """#12.10: rpm 6 at a 1/8 share (0.75 calls) made the key unusable on every worker.

    The per-second bucket of such a key holds one call, so the eight workers take turns in slots
    (agents.budgets): over ten minutes every worker calls, and no key goes over its minute.
    """
    keys = [ApiKeyConfig(key=SecretStr(f"k-{i}"), alias=f"key-{i}", rpm=6) for i in range(10)]
    now = [1_000_000.0]
    pools = []
    for w in range(8):
        pool = KeyPool(keys, clock=lambda: now[0])
        pool.set_partitions(frozenset({w}), 8)
        pools.append(pool)
    calls: list[tuple[float, int, str]] = []
    end = now[0] + 600.0
    while now[0] < end:
        for w, pool in enumerate(pools):
            while (lease := pool.try_acquire()) is not None:
                calls.append((now[0], w, lease.alias))
                pool.release(lease, ok=True)
        now[0] += 0.05
    for alias in (k.alias for k in keys):
        times = sorted(t for t, _, a in calls if a == alias)
        assert all(b - a >= 60.0 / 6 * 0.99 for a, b in itertools.pairwise(times)), "a call per 10 s"
        assert len(times) >= 0.7 * 6 * 10
    per_worker = [sum(1 for _, w, _ in calls if w == worker) for worker in range(8)]
    assert min(per_worker) >= 0.5 * len(calls) / 8, "each worker holds a share of the calls"


# --- 15: skips for missing system packages under CI ---------------------------------------------
@pytest.mark.parametrize(
    ("reason", "ci", "fails"),
    [
        ("redis-server is not installed", "true", True),
        ("Debian's chromium is not installed (bash .ci/system-deps.sh)", "true", True),
        ("No module named 'playwright'", "true", True),
        ("redis-server is not installed", "", False),
        ("needs a GPU", "true", False),
    ],
)
def test_under_ci_a_skip_for_a_missing_system_package_is_a_failure(reason, ci, fails):
    """#12.15: `make test` on a fresh machine skipped a quarter of what it claims."""
    from tests.conftest import skip_is_failure

    assert skip_is_failure(reason, {"CI": ci}) is fails


def test_a_rebalance_timeout_shorter_than_a_task_is_refused_at_start():
    """#12.16: a rebalance waits for in-flight tasks (up to their 30 s deadline) under a 10 s timeout."""
    with pytest.raises(ValidationError, match="rebalance_timeout_s"):
        Settings(rebalance_timeout_s=10, task_deadline_s=30)
    defaults = Settings()
    assert defaults.rebalance_timeout_s > defaults.task_deadline_s


@pytest.mark.parametrize(
    "bad",
    [
        {"ROADWATCH_REBALANCE_TIMEOUT_S": "20"},  # a model check: pydantic printed the whole input
        {"ROADWATCH_TASK_DEADLINE_S": "fast"},
        {"ROADWATCH_WEB_TOKEN": "short"},
    ],
)
def test_a_refused_setting_shows_no_part_of_a_key_or_token(monkeypatch, bad):
    key = "test-key-0123456789abcdef-not-a-secret"  # a stand-in: long enough to show any slice of it
    monkeypatch.setenv("ROADWATCH_VLM_KEYS", key)
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    text = str(refused.value)
    for secret in (key, *bad.values()):
        if secret != "fast" and secret != "20":
            assert all(secret[i : i + 6] not in text for i in range(len(secret) - 5)), text


@pytest.mark.parametrize("interval", [0.001, 0.5])
def test_a_heap_trim_every_few_milliseconds_is_refused_at_start(interval):
    with pytest.raises(ValidationError, match="heap_trim_s must be 0"):
        Settings(heap_trim_s=interval)
    assert Settings(heap_trim_s=0).heap_trim_s == 0 and Settings(heap_trim_s=1).heap_trim_s == 1


# --- 12: Redis shared by two deployments -------------------------------------------------------
def test_two_deployments_sharing_a_redis_use_their_own_keys_and_channel():
    """#12.12: every deployment wrote roadwatch:camera:<id>:latest and published on roadwatch:results,
    so two sharing a Redis overwrote each other's camera entries and saw each other's results."""
    from streams.cache import ResultCache

    one = Settings(app_id="roadwatch", topic_prefix="")
    two = Settings(app_id="roadwatch", topic_prefix="staging-")
    caches = [ResultCache("redis://127.0.0.1:1/0", 60, 1.0, prefix=s.redis_prefix) for s in (one, two)]
    assert caches[0].camera_key("cam-1") == "roadwatch:camera:cam-1:latest"  # the default deployment's keys stay
    assert caches[0].camera_key("cam-1") != caches[1].camera_key("cam-1")
    assert caches[0].task_key("t") != caches[1].task_key("t")
    assert caches[0].channel != caches[1].channel


async def test_an_empty_token_file_is_refused_and_a_raced_token_file_is_shared(tmp_path):
    """A worker that died between creating the token file and writing it left it empty, and an
    empty token equals "no credentials"; two workers on one data dir could read a half-written file."""
    from web.auth import WebAuth, make_token_file

    data = tmp_path / "data"
    data.mkdir()
    (data / "web-token").write_text("")
    with pytest.raises(ConfigError, match="web-token"):
        await WebAuth().load(Settings(data_dir=data, web_auth=True, web_token=None))
    fresh = tmp_path / "fresh" / "web-token"
    make_token_file(fresh)
    first = fresh.read_text()
    make_token_file(fresh)  # the second worker: keeps the first's token
    assert fresh.read_text() == first and len(first) >= 24 and oct(fresh.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in fresh.parent.iterdir()] == ["web-token"]


def test_a_restarted_producer_with_a_slower_clock_and_old_runs_redeliveries_are_handled():
    """Review of #12.11: a new run whose clock is behind the old one's counted as late forever, and an
    earlier run's redelivered frame was planned again instead of replayed."""
    from agents.task_policy import Budget, plan_tasks

    budget = Budget(refresh_s=20.0, per_min=600.0, burst=100.0, min_interest=0.3)
    old = detection("c", 7, run="run-a")
    state, first, _ = plan_tasks(None, old, 100.0, budget)
    behind = detection("c", 0, run="run-b", track_base=50)
    behind_clock = {**json.loads(to_bytes(behind)), "captured_at": old.captured_at - 60_000}
    restarted = decode(DetectionResult, json.dumps(behind_clock).encode())
    state, _, _ = plan_tasks(state, restarted, 101.0, budget)
    assert state["run"] == "run-b" and state["last_seq"] == 0, "the new run's count took over"
    state, _, _ = plan_tasks(state, detection("c", 1, run="run-b", track_base=52), 102.0, budget)
    assert state["last_seq"] == 1 and "run-b:0" in state["recent"]
    _, again, _ = plan_tasks(state, old, 103.0, budget)  # the earlier run's frame, redelivered
    assert [d.reason for d in again] == ["replay"] and [d.group.group_id for d in again] == [
        d.group.group_id for d in first
    ]


def test_a_wildcard_bind_never_advertises_a_wildcard_or_loopback_address(monkeypatch):
    """#12.7 and its review: 0.0.0.0 was advertised as is; a Debian host name resolves to 127.0.1.1."""
    import socket

    monkeypatch.setattr(socket, "gethostbyname", lambda name: "127.0.1.1")
    monkeypatch.setattr(socket, "getfqdn", lambda: "worker-3.example.internal")
    assert Settings(web_host="0.0.0.0").advertised_web_host() == "worker-3.example.internal"
    monkeypatch.setattr(socket, "gethostbyname", lambda name: "10.1.2.3")
    assert Settings(web_host="0.0.0.0").advertised_web_host() == "10.1.2.3"
    assert Settings(web_host="0.0.0.0", web_advertise_host="pod-ip").advertised_web_host() == "pod-ip"
    assert Settings(web_host="127.0.0.1").advertised_web_host() == "127.0.0.1"


def test_the_relay_message_is_the_payload_once_and_starts_with_its_origin():
    body = b'{"task_id":"t1","risk_level":"high","detection":{"objects":[1,2]}}'
    message = relay_message("result", "cam-1", body)
    assert message.startswith(OWN_PREFIX)  # skipped unparsed by the worker that sent it
    assert parse_relayed(message) == (ORIGIN, "result", "cam-1", json.loads(body))
    assert not relay_message("alert", "cam-1", body).replace(OWN_PREFIX, b'{"origin":"other:1",').startswith(OWN_PREFIX)


def test_the_file_store_takes_the_same_crop_from_several_threads_at_once(tmp_path):
    """The producer's analysis threads may store byte-identical crops at once: with one temporary
    name per crop, one thread's rename took the file another was about to rename (FileNotFoundError)."""
    from concurrent.futures import ThreadPoolExecutor

    from streams.images import FileImageStore

    store = FileImageStore(tmp_path / "img", ttl_s=60)
    _, buf = cv2.imencode(".jpg", np.full((40, 60, 3), 90, np.uint8))
    jpeg = buf.tobytes()

    def put_many(_: int) -> set[str]:
        return {store.put(jpeg) for _ in range(300)}

    with ThreadPoolExecutor(8) as pool:
        uris = set().union(*pool.map(put_many, range(8)))
    # one name (two URIs if the puts crossed a minute, each its own folder's)
    assert len({uri.rsplit("-", 1)[1] for uri in uris}) == 1 and len(uris) <= 2
    assert all(store.get(uri) == jpeg for uri in uris)
    assert not list((tmp_path / "img").glob("**/*.tmp"))  # no temporary file left behind


def test_the_file_store_sweeps_whole_minutes_past_the_ttl(tmp_path, monkeypatch):
    """Crops go in one folder per minute; the sweep removes a folder once its last minute is older than the
    TTL, by its name, without looking at its files; flat files of the store before are still read and swept,
    and a reference naming no minute or an odd one is refused."""
    from streams import images
    from streams.images import FileImageStore

    clock = [1_000_000.0]
    monkeypatch.setattr(images.time, "time", lambda: clock[0])
    store = FileImageStore(tmp_path / "img", ttl_s=120)
    old = store.put(b"old crop")
    legacy = tmp_path / "img" / f"{FileImageStore.name_for(b'legacy')}.jpg"
    legacy.write_bytes(b"legacy")
    os.utime(legacy, (clock[0], clock[0]))
    assert store.get(f"file://{legacy.stem}") == b"legacy"
    clock[0] += 150  # the first minute ended 130-150 s ago: past the TTL of 120 s
    fresh = store.put(b"new crop")
    assert store.get(fresh) == b"new crop"
    for gone in (old, f"file://{legacy.stem}"):
        with pytest.raises(ImageMissing):
            store.get(gone)
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [fresh.removeprefix("file://").split("-")[0]]
    for bad in ("file://x1-abc", "file://-abc", "file://12-../etc", "file://12-ABC"):
        with pytest.raises(ImageMissing, match="malformed"):
            store.get(bad)


def test_with_auth_off_only_a_local_host_and_a_same_site_page_get_in():
    from types import SimpleNamespace

    from web.auth import WebAuth

    auth = WebAuth()
    auth.required = False  # the local stack (make run)

    def request(host: str, origin: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(host=host, headers={} if origin is None else {"Origin": origin}, path="/keys/")

    for host in ("127.0.0.1:6066", "localhost:6066", "[::1]:6066", "10.0.0.5:6066", "localhost"):
        assert auth.cross_site(request(host)) is None, host
    assert auth.cross_site(request("127.0.0.1:6066", "http://127.0.0.1:6066")) is None  # the dashboard itself
    # a page elsewhere POSTing to the keys, or opening /ws
    assert "another site" in auth.cross_site(request("127.0.0.1:6066", "https://evil.example"))
    assert "another site" in auth.cross_site(request("127.0.0.1:6066", "null"))  # a sandboxed frame
    # DNS rebinding: the attacker's own name, pointed at 127.0.0.1, is same-origin with itself
    assert "not localhost" in auth.cross_site(request("evil.example:6066", "http://evil.example:6066"))
    auth.required = True  # with auth on such a page lacks the token; names behind a proxy are fine
    assert auth.cross_site(request("roadwatch.example.com", "https://roadwatch.example.com")) is None


async def test_a_token_header_that_is_not_utf8_is_refused_not_a_server_error():
    """A header aiohttp decodes with surrogates (bytes \\xff\\xfe) made ``allows`` raise: a 500 and a
    logged traceback for anyone without the token."""
    from types import SimpleNamespace

    from web.auth import WebAuth

    auth = WebAuth()
    auth.required, auth.token = True, "b" * 48
    bad = b"Bearer \xff\xfe".decode("utf-8", "surrogateescape")
    assert auth.allows(SimpleNamespace(path="/keys/", headers={"Authorization": bad}, query={})) is False
    good = SimpleNamespace(path="/keys/", headers={"Authorization": "Bearer " + "b" * 48}, query={})
    assert auth.allows(good) is True


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "roadwatch.example.com"])
def test_auth_is_turned_off_only_on_a_loopback_address(host):
    """Auth off on a public bind opened the views and the key commands to every host."""
    with pytest.raises(ValueError, match="loopback"):
        Settings(web_auth=False, web_host=host)
    for local in ("127.0.0.1", "::1", "localhost"):
        assert Settings(web_auth=False, web_host=local).web_auth is False
    assert Settings(web_auth=True, web_host=host).web_host == host


async def test_a_cached_value_that_is_not_json_is_left_out_not_a_failed_view():
    """One foreign value in Redis made ``latest()`` raise, and every dashboard's /cameras/ a 500."""
    from streams.cache import ResultCache

    class Client:
        async def mget(self, keys):
            return [b'{"risk_level": "low"}', b"not json", None]

        async def zrangebyscore(self, *a, **k):
            return [b"cam-1", b"evil:key", b"cam 2"]

    cache = ResultCache("redis://127.0.0.1:1/0", 300, 5.0)
    cache.client = lambda: Client()  # type: ignore[method-assign,assignment,return-value]
    assert await cache.latest(["a", "b", "c"]) == {"a": {"risk_level": "low"}}
    assert await cache.known_cameras() == ["cam-1"]
