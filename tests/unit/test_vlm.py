"""The VLM client against the simulated endpoint (real HTTP on loopback), and the scheduler's failover."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from agents.key_pool import DISABLED, KeyPool
from agents.vlm_client import VlmClient, classify_error
from sim.records import crop_b64
from sim.vlm import SimConfig, SimVlm
from streams.errors import VlmError
from streams.settings import ApiKeyConfig

GOOD = "good-key-1111"
OTHER = "good-key-2222"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimVlm, str]]:
    sim = SimVlm(SimConfig(keys={GOOD, OTHER}, latency_ms=5, p95_ms=10))
    async with sim.serving() as url:
        yield sim, url


def client(url: str, timeout_s: float = 5.0) -> VlmClient:
    return VlmClient(url, "qwen-vl-plus", timeout_s=timeout_s, pool_size=10, max_tokens=100)


JPEG = base64.b64decode(crop_b64())
CONTEXT = (
    "Camera c, group kind pedestrian_vehicle, 2 road users, "
    "closest pedestrian-vehicle gap 0.20 pedestrian heights. Ref abcdef123456."
)


async def test_a_good_key_gets_a_parsed_assessment_echoing_the_ref(sim):
    _, url = sim
    vlm = client(url)
    answer = await vlm.assess(GOOD, JPEG, CONTEXT)
    await vlm.close()
    assert answer.assessment.risk_level in ("high", "critical")
    assert "abcdef123456" in answer.assessment.summary
    assert answer.prompt_tokens > 0


@pytest.mark.parametrize(
    ("setup", "kind"),
    [
        ({"key": "wrong-key-0000"}, "auth"),
        ({"rpm": 1, "calls": 2}, "rate"),
        ({"limits": {"qwen-vl-plus": {"tpm": 50}}, "calls": 1}, "rate"),
        ({"fail_rate": 1.0}, "server"),
        ({"garbage_rate": 1.0}, "parse"),
    ],
)
async def test_each_failure_has_the_kind_the_pool_reacts_to(sim, setup, kind):
    simulator, url = sim
    for name in ("rpm", "limits", "fail_rate", "garbage_rate"):
        if name in setup:
            setattr(simulator.cfg, name, setup[name])
    vlm = client(url)
    with pytest.raises(VlmError) as err:
        for _ in range(setup.get("calls", 1)):
            await vlm.assess(setup.get("key", GOOD), JPEG, CONTEXT)
    await vlm.close()
    assert err.value.kind == kind
    if kind == "rate":
        assert err.value.retry_after is not None and err.value.retry_after > 0


async def test_a_hung_server_is_a_timeout_of_kind_server(sim):
    simulator, url = sim
    simulator.cfg.timeout_rate, simulator.cfg.hang_s = 1.0, 5.0
    vlm = client(url, timeout_s=0.3)
    with pytest.raises(VlmError) as err:
        await vlm.assess(GOOD, JPEG, CONTEXT)
    await vlm.close()
    assert err.value.kind == "server"


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, '{"code": "InvalidApiKey", "message": "Invalid API-key provided."}', "auth"),
        (403, "", "auth"),
        (429, '{"error": {"code": "Throttling.RateQuota", "message": "Requests rate limit exceeded"}}', "rate"),
        (429, '{"error": {"code": "Throttling.AllocationQuota", "message": "Allocated quota exceeded"}}', "rate"),
        (429, '{"error": {"code": "Throttling.BurstRate", "message": "Request rate increased too quickly"}}', "burst"),
        (429, '{"error": {"code": "insufficient_quota", "message": "You exceeded your current quota"}}', "quota"),
        # the same words for a limit that clears within a minute: DashScope's compatible mode on its
        # per-minute token limit, Gemini's on a free tier's; taken for an empty balance they
        # switched the account's keys off for an hour
        (
            429,
            '{"error": {"code": "insufficient_quota", "message": "You exceeded your current quota, please check '
            "your plan and billing details. For details, see: https://help.aliyun.com/zh/model-studio/"
            'error-code#token-limit"}}',
            "rate",
        ),
        (
            429,
            '{"error": {"message": "You exceeded your current quota, please check your plan and billing details. '
            'Please retry in 30.638054576s."}}',
            "rate",
        ),
        (
            400,
            '{"error": {"code": "data_inspection_failed", "message": "Input data may contain inappropriate content."}}',
            "content",
        ),
        (
            400,
            '{"code": "Arrearage", "message": "Access denied, please make sure your account is in good standing."}',
            "arrearage",
        ),
        (
            400,
            '{"code": "DataInspectionFailed", "message": "Input data may contain inappropriate content."}',
            "content",
        ),
        (400, '{"code": "InvalidParameter", "message": "bad"}', "request"),
        (404, '{"error": {"code": "model_not_found", "message": "The model `x` does not exist"}}', "model"),
        (400, '{"code": "InvalidParameter", "message": "Model not exist."}', "model"),
        (404, "<html>404 Not Found</html>", "request"),  # a wrong base URL is no model's fault
        (502, "<html><body>Bad Gateway</body></html>", "server"),
        (503, "", "server"),
    ],
)
def test_dashscope_and_openai_error_bodies_are_classified(status, body, kind):
    assert classify_error(status, body).kind == kind


async def test_the_official_openai_client_talks_to_the_simulator(sim):
    from openai import AsyncOpenAI

    _, url = sim
    oa = AsyncOpenAI(api_key=GOOD, base_url=url)
    models = await oa.models.list()
    assert "qwen-vl-plus" in [m.id for m in models.data]
    reply = await oa.chat.completions.create(
        model="qwen-vl-plus",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + crop_b64()}},
                    {"type": "text", "text": CONTEXT},
                ],
            }
        ],
    )
    assert '"risk_level"' in (reply.choices[0].message.content or "")
    assert reply.usage is not None and reply.usage.total_tokens > 0
    await oa.close()


def worker_clients(url: str, keys: KeyPool, tmp_path, **settings: object):
    """The worker's clients as the scheduler uses them, on the simulator and ``keys``."""
    import dataclasses

    from agents.worker_clients import WorkerClients
    from streams.settings import Settings

    built = WorkerClients.build(Settings(vlm_base_url=url, image_store=f"file://{tmp_path}", **settings))
    return dataclasses.replace(built, pool=keys, vlm=client(url))


def revoked_then_good() -> KeyPool:
    """key-1 (revoked in these tests) is tried first, then key-2."""
    configs = [ApiKeyConfig(key=SecretStr(OTHER), alias="key-1"), ApiKeyConfig(key=SecretStr(GOOD), alias="key-2")]
    return KeyPool(configs, strategy="round_robin")


async def test_scheduler_fails_over_a_revoked_key_and_disables_it(sim, tmp_path):
    from agents.llm_scheduler import assess
    from sim.records import assessment_task, detection

    simulator, url = sim
    simulator.revoked.add(OTHER)
    keys = revoked_then_good()
    task = assessment_task(detection("cam", 1), "t1", deadline_in_ms=10_000)
    clients = worker_clients(url, keys, tmp_path)
    result = await assess(task, clients)
    await clients.close()
    assert result.status == "ok" and result.key_alias == "key-2" and result.attempts == 2
    assert keys.by_alias["key-1"].state(time.time()) == DISABLED


async def test_a_revoked_key_costs_no_retry_but_server_failures_are_bounded(sim, tmp_path):
    import dataclasses

    import agents.llm_scheduler as scheduler
    from sim.records import assessment_task, detection

    simulator, url = sim
    simulator.revoked.add(OTHER)
    keys = revoked_then_good()
    # no retries at all: the revoked key is a key fault, so the task still reaches the good key
    clients = worker_clients(url, keys, tmp_path, vlm_backoff_base_s=0.1)
    ok = await scheduler.assess(
        assessment_task(detection("cam", 3), "t3", deadline_in_ms=10_000), clients, max_retries=0
    )
    assert ok.status == "ok" and ok.attempts == 2
    # a server that fails every call: 1 try + 1 retry, then a failed result naming the last error
    simulator.cfg.fail_rate = 1.0
    many = KeyPool([ApiKeyConfig(key=SecretStr(GOOD), alias=f"key-{i}") for i in range(5)], strategy="round_robin")
    failed = await scheduler.assess(
        assessment_task(detection("cam", 4), "t4", deadline_in_ms=20_000),
        dataclasses.replace(clients, pool=many),
        max_retries=1,
    )
    await clients.close()
    assert failed.status == "failed" and failed.attempts == 2 and "50" in (failed.error or "")


async def test_all_keys_disabled_means_an_expired_result_at_the_deadline(sim, tmp_path):
    from agents.llm_scheduler import assess
    from sim.records import assessment_task, detection

    _, url = sim
    keys = KeyPool([ApiKeyConfig(key=SecretStr(GOOD), alias="key-1")])
    keys.disable("key-1", "test")
    task = assessment_task(detection("cam", 2), "t2", deadline_in_ms=300)
    clients = worker_clients(url, keys, tmp_path)
    started = time.monotonic()
    result = await assess(task, clients)
    await clients.close()
    assert result.status == "expired" and time.monotonic() - started < 2
    await asyncio.sleep(0)


async def test_verify_keys_reports_each_alias_and_never_a_key(sim, monkeypatch, capsys):
    import ops.verify_keys as vk
    from streams.settings import Settings

    simulator, url = sim
    simulator.revoked.add(OTHER)
    settings = Settings(vlm_base_url=url, vlm_keys=f"{GOOD},{OTHER},wrong-key-9999")
    monkeypatch.setattr(vk, "get_settings", lambda: settings)
    rows = await vk.verify(5.0)
    assert [(alias, outcome, status) for alias, _, outcome, status, _ in rows] == [
        ("key-1", "ok", 200),
        ("key-2", "auth", 401),
        ("key-3", "auth", 401),
    ]


async def test_verify_keys_checks_every_model_and_says_which_keys_share_a_quota(sim, monkeypatch, capsys):
    import json

    import ops.verify_keys as vk
    from streams.settings import Settings

    _, url = sim
    keys = [
        {"key": GOOD, "alias": "a-1", "account": "acct-a"},
        {"key": OTHER, "alias": "a-2", "account": "acct-a"},
        {"key": "solo-key-3333", "alias": "solo"},
    ]
    settings = Settings(
        vlm_base_url=url,
        vlm_keys=json.dumps(keys),
        vlm_models="qwen-vl-max,no-such-model",
        vlm_quotas='[{"account": "acct-a", "model": "qwen-vl-max", "rpm": 120}]',
    )
    monkeypatch.setattr(vk, "get_settings", lambda: settings)
    with pytest.raises(SystemExit) as done:  # main runs its own event loop: off this test's
        await asyncio.to_thread(vk.main, ["--json"])
    assert done.value.code == 1  # the unknown model is unusable
    out = json.loads(capsys.readouterr().out)
    outcomes = {(k["alias"], k["model"]): k["outcome"] for k in out["keys"]}
    assert outcomes[("a-1", "qwen-vl-max")] == "ok" and outcomes[("a-1", "no-such-model")] == "model"
    assert outcomes[("solo", "qwen-vl-max")] == "auth"  # the simulator knows only its two keys
    groups = {(g["account"], g["model"]): g for g in out["quotas"]}
    assert groups[("acct-a", "qwen-vl-max")]["keys"] == ["a-1", "a-2"] and groups[("acct-a", "qwen-vl-max")]["shared"]
    assert groups[("acct-a", "qwen-vl-max")]["limits"] == {"account": {"rpm": 120}}
    assert groups[("solo", "qwen-vl-max")]["shared"] is False and groups[("solo", "qwen-vl-max")]["limits"] is None
    assert GOOD not in json.dumps(out) and OTHER not in json.dumps(out)


def test_retry_after_reads_seconds_and_http_dates_and_refuses_the_endless():
    from agents.vlm_client import RETRY_AFTER_MAX_S, _retry_after

    now = 1_445_412_000.0  # Wed, 21 Oct 2015 07:20:00 GMT
    assert _retry_after({"Retry-After": "7"}, now) == 7.0
    assert _retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now) == 480.0
    assert _retry_after({"Retry-After": "Wed, 21 Oct 2015 07:10:00 GMT"}, now) == 0.0  # already past
    assert _retry_after({"Retry-After": "-3"}, now) == 0.0
    assert _retry_after({"Retry-After": "inf"}, now) is None  # would cool a shared quota for ever
    assert _retry_after({"Retry-After": "nan"}, now) is None
    assert _retry_after({"Retry-After": "1e9"}, now) == RETRY_AFTER_MAX_S
    assert _retry_after({"Retry-After": "soon"}, now) is None
    assert _retry_after({}, now) is None and _retry_after(None, now) is None


def test_the_simulator_gives_an_unlisted_key_an_account_of_its_own():
    sim = SimVlm(SimConfig(accounts={"sk-listed-0001": "acct-a"}))
    assert sim.account("sk-listed-0001") == "acct-a"
    a, b = sim.account("sk-a-0001"), sim.account("sk-b-0001")  # same last 4 characters
    assert a != b and a == sim.account("sk-a-0001")
    assert "0001" not in a and "sk-" not in a  # no part of the key in the usage report


def test_usage_without_completion_tokens_is_derived_from_the_total_or_unknown_never_zero():
    """A usage with prompt_tokens only was booked as 0 output tokens: the budget undercounted."""
    from agents.vlm_client import _usage

    assert _usage({"usage": {"prompt_tokens": 900, "completion_tokens": 40}}) == (900, 40)
    assert _usage({"usage": {"prompt_tokens": 900, "total_tokens": 960}}) == (900, 60)
    assert _usage({"usage": {"prompt_tokens": 900}}) is None  # unknown: the scheduler books its estimate
    assert _usage({"usage": {"prompt_tokens": 900, "completion_tokens": -1}}) is None
