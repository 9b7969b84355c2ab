"""A simulated OpenAI-compatible VLM endpoint that answers and limits like DashScope's Qwen-VL.

``python -m sim.vlm --port 8089 [--keys k1,k2] [--accounts '{"acct-a": ["k1", "k2"]}']
[--rpm 60 | --limits '{"qwen-vl-max": {"rpm": 120, "tpm": 100000}}'] [--latency-ms 400 --p95-ms 900]
[--fail-rate 0.02] [--timeout-rate 0.0] [--garbage-rate 0.0]``

* ``POST /v1/chat/completions`` with ``Authorization: Bearer KEY``: checks the key (401
  ``InvalidApiKey`` for unknown or revoked keys) and the model (400 for an unknown one), then
  limits as Model Studio documents it, per *account and model* (every key of an account adds up;
  a key not listed in ``--accounts`` is its own account):

  - requests per minute over a sliding 60 s window, and per second as a token bucket of one
    second's calls (RPS = RPM/60): 429 ``Throttling.RateQuota`` "Requests rate limit exceeded";
  - tokens per minute (and per second, TPS = TPM/60), counting the call's input and output:
    429 ``Throttling.AllocationQuota`` "Allocated quota exceeded";
  - growth: more calls in the last second than twice those of the second before plus one (and
    over a floor of 40% of the per-second rate, at least 3): 429 ``Throttling.BurstRate``
    "Request rate increased too quickly" (Model Studio documents the limit, not its threshold,
    which it "adjusts dynamically": this is the simulator's choice);
  - with the ``X-DashScope-Queue-Enable: true`` header, a call the per-second or growth limit
    would refuse waits its turn (up to ``queue_timeout_s``) instead.

  It injects 500/503 and hangs at the configured rates, waits a lognormal latency with the
  given median and p95, and answers a JSON risk assessment derived deterministically from the
  request (same request, same answer), echoing the prompt's ``Ref`` so that tests can check the
  join. ``usage`` counts image tokens by area as Qwen-VL does (28x28 px a token, 4..1280 per
  image, plus 2) and text tokens by words and punctuation.
* ``GET /v1/models``: the model list, as the ``openai`` client expects.
* ``GET /admin/stats``: per-key counters (keys shown by their last 4 characters).
* ``GET /admin/usage``: the ground truth per account and model: accepted calls, tokens, refusals
  by kind, and (``?calls=1``) every accepted call's time and tokens, for benchmarks to compare
  against.
* ``POST /admin/revoke`` / ``/admin/restore`` ``{"key": "..."}``: revoke a key at run time.
* ``POST /admin/config``: change rates at run time (``fail_rate``, ``latency_ms``...);
  ``{"throttle_s": 30}`` answers every key 429 with a Retry-After for the next 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import sys
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from streams.errors import BadImage
from streams.images import header_size
from streams.settings import parse_keys

logger = logging.getLogger("roadwatch.sim.vlm")

REF = re.compile(r"Ref ([0-9a-f]{6,40})")
WORDS = re.compile(r"\w+|[^\w\s]")
QUEUE_HEADER = "X-DashScope-Queue-Enable"
DEFAULT_MODELS = ("qwen-vl-plus", "qwen-vl-max")
GAP = re.compile(r"gap ([0-9.]+) pedestrian heights")
KIND = re.compile(r"group kind (\w+)")
Z95 = 1.6449


@dataclass
class SimConfig:
    """What the simulated endpoint does; all of it can change at run time."""

    keys: set[str] = field(default_factory=set)  # empty: any key is valid
    #: key -> account; a key not listed is its own account.
    accounts: dict[str, str] = field(default_factory=dict)
    #: model -> its limits for each account: rpm, tpm, rps, tps (absent: from ``rpm``, or none).
    limits: dict[str, dict[str, float]] = field(default_factory=dict)
    rpm: int = 0  # every model's requests per minute per account unless ``limits`` says (0: unlimited)
    burst_factor: float = 2.0  # 0: no growth limit
    queue_timeout_s: float = 10.0
    latency_ms: float = 300.0
    p95_ms: float = 800.0
    fail_rate: float = 0.0
    timeout_rate: float = 0.0
    garbage_rate: float = 0.0
    hang_s: float = 120.0
    seed: int = 7
    #: For this many seconds from when it is set, every key is answered 429 with a Retry-After.
    throttle_s: float = 0.0


#: Accepted calls a quota's log keeps (``/admin/usage?calls=1``), so a long run's memory stays flat.
LOG_KEPT = 100_000


def tail(key: str) -> str:
    """The alias the simulator uses for a key: its last 4 characters."""
    return "…" + key[-4:]


@dataclass
class Quota:
    """One (account, model) as the provider counts it."""

    calls: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    bucket: float = -1.0  # the per-second bucket's level (-1: full, set on first use)
    bucket_at: float = 0.0
    usage: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: the accepted calls (time, prompt tokens, completion tokens), the latest LOG_KEPT
    log: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=LOG_KEPT))


def smart_resize(
    width: int, height: int, factor: int = 28, min_px: int = 4 * 28 * 28, max_px: int = 1280 * 28 * 28
) -> tuple[int, int]:
    """Qwen-VL's resize before patching (from its published preprocessing)."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_px:
        beta = math.sqrt(height * width / max_px)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_px:
        beta = math.sqrt(min_px / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return w, h


def count_tokens(messages: list[Any], content: str) -> tuple[int, int]:
    """(prompt, completion) tokens of a call as the provider bills them."""
    prompt = 0
    for message in messages:
        prompt += 3
        body = message.get("content") if isinstance(message, dict) else None
        parts = body if isinstance(body, list) else [{"type": "text", "text": body or ""}]
        for part in parts:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "image_url":
                url = str(part.get("image_url", {}).get("url", ""))
                try:
                    width, height = header_size(base64.b64decode(url.split(",", 1)[-1][:65536] + "=="))
                except (ValueError, BadImage):
                    width, height = 28, 28
                w, h = smart_resize(max(1, width), max(1, height))
                prompt += (w // 28) * (h // 28) + 2
            else:
                prompt += len(WORDS.findall(str(part.get("text", ""))))
    return prompt, len(WORDS.findall(content))


class SimVlm:
    """State of the simulated endpoint."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.revoked: set[str] = set()
        self.quotas: dict[tuple[str, str], Quota] = defaultdict(Quota)
        self.stats: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.rng = random.Random(cfg.seed)
        self.in_flight = 0
        self.max_in_flight = 0
        self.throttle_until = 0.0

    def latency_s(self) -> float:
        median = max(1.0, self.cfg.latency_ms)
        sigma = max(0.0, math.log(max(self.cfg.p95_ms, median) / median) / Z95)
        return median * math.exp(self.rng.gauss(0, sigma)) / 1000.0

    def error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
        body = {"error": {"code": code, "message": message, "type": code}, "request_id": f"sim-{time.time_ns()}"}
        return web.json_response(body, status=status, headers=headers)

    def account(self, key: str) -> str:
        """The account a key belongs to: as configured, else one of its own (named by a digest of
        the whole key: two keys ending alike are two accounts, as the key pool counts them)."""
        return self.cfg.accounts.get(key) or "acct-" + hashlib.sha256(key.encode()).hexdigest()[:8]

    def limits(self, model: str) -> dict[str, float]:
        limits = dict(self.cfg.limits.get(model, {}))
        if "rpm" not in limits and self.cfg.rpm:
            limits["rpm"] = self.cfg.rpm
        return limits

    def admit(self, q: Quota, limits: dict[str, float], now: float, tokens: int) -> tuple[str, str, float] | None:
        """None when the call fits the quota now; else the refusal (code, kind, seconds to wait)."""
        while q.calls and q.calls[0] <= now - 60.0:
            q.calls.popleft()
        while q.tokens and q.tokens[0][0] <= now - 60.0:
            q.tokens.popleft()
        rpm, tpm = limits.get("rpm"), limits.get("tpm")
        rps = limits.get("rps") or (rpm / 60.0 if rpm else None)
        tps = limits.get("tps") or (tpm / 60.0 if tpm else None)
        if rpm and len(q.calls) >= rpm:
            return "rate", "Throttling.RateQuota", q.calls[0] + 60.0 - now
        used = sum(n for _, n in q.tokens)
        if tpm and used + tokens > tpm:
            freed, wait = 0, 60.0
            for t, n in q.tokens:
                freed += n
                if used - freed + tokens <= tpm:
                    wait = t + 60.0 - now
                    break
            return "tokens", "Throttling.AllocationQuota", wait
        if rps:
            capacity = max(1.0, rps)
            level = capacity if q.bucket < 0 else min(capacity, q.bucket + (now - q.bucket_at) * rps)
            q.bucket, q.bucket_at = level, now
            if level < 1.0:
                return "rate", "Throttling.RateQuota", (1.0 - level) / rps
        if tps:
            last = sum(n for t, n in q.tokens if t > now - 1.0)
            if last and last + tokens > tps:
                return "tokens", "Throttling.AllocationQuota", 1.0
        if rps and self.cfg.burst_factor:
            last1 = sum(1 for t in q.calls if t > now - 1.0)
            prev1 = sum(1 for t in q.calls if now - 2.0 < t <= now - 1.0)
            floor = max(3, math.ceil(rps * 0.4))
            if last1 >= max(floor, self.cfg.burst_factor * prev1 + 1):
                return "burst", "Throttling.BurstRate", 1.0
        q.calls.append(now)
        q.tokens.append((now, tokens))
        if rps:
            q.bucket -= 1.0
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        alias = tail(key) if key else "none"
        counters = self.stats[alias]
        counters["requests"] += 1
        if not key or (self.cfg.keys and key not in self.cfg.keys) or key in self.revoked:
            counters["401"] += 1
            return self.error(401, "InvalidApiKey", "Invalid API-key provided.")
        try:
            body = await request.json()
            messages = body["messages"]
            model = str(body.get("model", "qwen-vl-plus"))
            if not isinstance(messages, list):
                raise TypeError("messages")
        except (ValueError, KeyError, TypeError):
            counters["400"] += 1
            return self.error(400, "InvalidParameter", "Request body is not a chat completion request.")
        if model not in self.cfg.limits and model not in DEFAULT_MODELS:
            counters["400"] += 1
            return self.error(400, "InvalidParameter", "Model not exist.")
        now = time.monotonic()
        if self.throttle_until > now:
            counters["429_throttled"] += 1
            return self.error(
                429,
                "Throttling.RateQuota",
                "Requests rate limit exceeded, please try again later.",
                {"Retry-After": f"{math.ceil(self.throttle_until - now)}"},
            )
        roll = self.rng.random()
        text = " ".join(_texts(messages))
        if roll < self.cfg.timeout_rate + self.cfg.fail_rate + self.cfg.garbage_rate and roll >= (
            self.cfg.timeout_rate + self.cfg.fail_rate
        ):
            content = "I am not sure what to say about this picture."
        else:
            content = assess_text(text, _image_digest(messages))
        prompt_tokens, completion_tokens = count_tokens(messages, content)
        account = self.account(key)
        quota = self.quotas[(account, model)]
        limits = self.limits(model)
        queued_until = now + self.cfg.queue_timeout_s if request.headers.get(QUEUE_HEADER) == "true" else now
        while (refusal := self.admit(quota, limits, time.monotonic(), prompt_tokens + completion_tokens)) is not None:
            kind, code, wait = refusal
            if time.monotonic() + min(wait, 0.02) < queued_until:
                await asyncio.sleep(min(max(wait, 0.005), 0.05))
                continue
            counters["429" if kind != "burst" else "429_burst"] += 1
            if kind == "tokens":
                counters["429_tokens"] += 1
            quota.usage[f"429_{kind}"] += 1
            message = {
                "rate": "Requests rate limit exceeded, please try again later.",
                "tokens": "Allocated quota exceeded, please increase your quota limit.",
                "burst": "Request rate increased too quickly, please slow down.",
            }[kind]
            return self.error(429, code, message, {"Retry-After": f"{max(1, math.ceil(wait))}"})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if roll < self.cfg.timeout_rate:
                counters["hang"] += 1
                await asyncio.sleep(self.cfg.hang_s)
                return self.error(504, "RequestTimeOut", "Request timed out.")
            await asyncio.sleep(self.latency_s())
            if roll < self.cfg.timeout_rate + self.cfg.fail_rate:
                status = 500 if self.rng.random() < 0.5 else 503
                counters[str(status)] += 1
                return self.error(
                    status,
                    "InternalError" if status == 500 else "ServiceUnavailable",
                    "An internal error has occurred, please try again later.",
                )
            if roll < self.cfg.timeout_rate + self.cfg.fail_rate + self.cfg.garbage_rate:
                counters["garbage"] += 1
            counters["200"] += 1
            quota.usage["calls"] += 1
            quota.usage["prompt_tokens"] += prompt_tokens
            quota.usage["completion_tokens"] += completion_tokens
            quota.log.append((round(time.time(), 3), prompt_tokens, completion_tokens))
            return web.json_response(
                {
                    "id": f"chatcmpl-sim-{time.time_ns()}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
            )
        finally:
            self.in_flight -= 1

    async def admin_usage(self, request: web.Request) -> web.Response:
        with_calls = request.query.get("calls") == "1"
        return web.json_response(
            {
                "quotas": [
                    {
                        "account": account,
                        "model": model,
                        **dict(q.usage),
                        **({"log": list(q.log)} if with_calls else {}),
                    }
                    for (account, model), q in sorted(self.quotas.items())
                ]
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "sim"}
                    for m in sorted({*DEFAULT_MODELS, *self.cfg.limits})
                ],
            }
        )

    async def admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": self.stats, "in_flight": self.in_flight, "max_in_flight": self.max_in_flight})

    async def admin_revoke(self, request: web.Request) -> web.Response:
        key = (await request.json())["key"]
        if request.path.endswith("restore"):
            self.revoked.discard(key)
        else:
            self.revoked.add(key)
        return web.json_response({"revoked": sorted(tail(k) for k in self.revoked)})

    async def admin_config(self, request: web.Request) -> web.Response:
        for name, value in (await request.json()).items():
            if not hasattr(self.cfg, name) or name in ("keys", "accounts", "limits"):
                raise web.HTTPBadRequest(text=f"unknown setting {name}")
            setattr(self.cfg, name, type(getattr(self.cfg, name))(value))
            if name == "throttle_s":
                self.throttle_until = time.monotonic() + float(value)
        return web.json_response({k: v for k, v in vars(self.cfg).items() if k not in ("keys", "accounts")})

    def app(self) -> web.Application:
        application = web.Application(client_max_size=8 * 1024 * 1024)
        application.router.add_post("/v1/chat/completions", self.chat)
        application.router.add_post("/compatible-mode/v1/chat/completions", self.chat)
        application.router.add_get("/v1/models", self.models)
        application.router.add_get("/admin/stats", self.admin_stats)
        application.router.add_get("/admin/usage", self.admin_usage)
        application.router.add_post("/admin/revoke", self.admin_revoke)
        application.router.add_post("/admin/restore", self.admin_revoke)
        application.router.add_post("/admin/config", self.admin_config)
        return application

    @contextlib.asynccontextmanager
    async def serving(self, host: str = "127.0.0.1") -> AsyncIterator[str]:
        """Serve in this event loop on a free port (tests, in-process benchmarks); yields the base URL."""
        runner = web.AppRunner(self.app())
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield f"http://{host}:{port}/v1"
        finally:
            await runner.cleanup()


def _texts(messages: list[Any]) -> list[str]:
    out: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return out


def _image_digest(messages: list[Any]) -> str:
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    url = str(part.get("image_url", {}).get("url", ""))
                    return hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()
    return "0" * 40


def assess_text(text: str, image_digest: str) -> str:
    """A deterministic assessment: closer pedestrian-vehicle gaps mean higher risk."""
    kind = (KIND.search(text) or [None, "single"])[1]
    gap_m = GAP.search(text)
    jitter = int(image_digest[:4], 16) / 65535.0 * 0.1
    if kind == "pedestrian_vehicle" and gap_m:
        gap = float(gap_m.group(1))
        score = max(0.3, min(0.99, 0.95 - 0.35 * gap)) + jitter - 0.05
    elif kind == "vehicle_cluster":
        score = 0.2 + jitter
    else:
        score = 0.05 + jitter
    score = round(max(0.0, min(1.0, score)), 3)
    level = (
        "none"
        if score < 0.15
        else "low"
        if score < 0.4
        else "medium"
        if score < 0.65
        else "high"
        if score < 0.85
        else "critical"
    )
    ref = REF.search(text)
    summary = {
        "none": "No road users in conflict.",
        "low": "Road users keep a safe distance.",
        "medium": "A pedestrian is near moving traffic.",
        "high": "A pedestrian is close to a moving vehicle.",
        "critical": "Imminent conflict between a pedestrian and a vehicle.",
    }[level]
    answer = {"risk_level": level, "risk_score": score, "summary": f"{summary} (ref {ref.group(1) if ref else '-'})"}
    return "```json\n" + json.dumps(answer) + "\n```"


def command(port: int, keys: list[str], **options: float | int | str) -> list[str]:
    """The command line that starts this endpoint: ``options`` are its flags (``latency_ms=60``
    becomes ``--latency-ms 60``), so tests, benchmarks and the stack start it one way."""
    cmd = [sys.executable, "-m", "sim.vlm", "--port", str(port), "--keys", ",".join(keys)]
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    return cmd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.vlm", description="Simulated OpenAI-compatible VLM.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--keys", default="", help="valid keys, comma-separated (empty: any)")
    parser.add_argument("--keys-file", type=Path, default=None, help="valid keys from a file (as ROADWATCH_VLM_KEYS)")
    parser.add_argument("--rpm", type=int, default=0, help="every model's requests per minute per account")
    parser.add_argument("--accounts", default="", help='JSON: {"account": ["key", ...]}; other keys: own account')
    parser.add_argument("--limits", default="", help='JSON: {"model": {"rpm": .., "tpm": .., "rps": .., "tps": ..}}')
    parser.add_argument("--burst-factor", type=float, default=2.0)
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--p95-ms", type=float, default=800.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--timeout-rate", type=float, default=0.0)
    parser.add_argument("--garbage-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    keys = {k for k in args.keys.split(",") if k}
    if args.keys_file is not None:
        keys |= {k.key.get_secret_value() for k in parse_keys(args.keys_file.read_text())}
    accounts = {key: account for account, members in json.loads(args.accounts or "{}").items() for key in members}
    cfg = SimConfig(
        keys=keys,
        accounts=accounts,
        limits={m: {k: float(v) for k, v in lim.items()} for m, lim in json.loads(args.limits or "{}").items()},
        burst_factor=args.burst_factor,
        rpm=args.rpm,
        latency_ms=args.latency_ms,
        p95_ms=args.p95_ms,
        fail_rate=args.fail_rate,
        timeout_rate=args.timeout_rate,
        garbage_rate=args.garbage_rate,
        seed=args.seed,
    )
    logger.info(
        "simulated VLM on http://%s:%d/v1 (%d keys, rpm %s)",
        args.host,
        args.port,
        len(cfg.keys),
        cfg.rpm or "unlimited",
    )
    web.run_app(SimVlm(cfg).app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
