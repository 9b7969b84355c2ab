"""A simulated OpenAI-compatible VLM endpoint that answers like DashScope's Qwen-VL.

``python -m sim.vlm --port 8089 [--keys k1,k2] [--rpm 60] [--latency-ms 400 --p95-ms 900]
[--fail-rate 0.02] [--timeout-rate 0.0] [--garbage-rate 0.0]``

* ``POST /v1/chat/completions`` with ``Authorization: Bearer KEY``: checks the key (401
  ``InvalidApiKey`` for unknown or revoked keys), enforces per-key requests per minute over a
  sliding 60 s window (429 ``Throttling.RateQuota`` with ``Retry-After``), an optional per-key
  quota (429 ``Throttling.AllocationQuota``), injects 500/503 and hangs at the configured
  rates, waits a lognormal latency with the given median and p95, and answers a JSON risk
  assessment derived deterministically from the request (same request, same answer), echoing
  the prompt's ``Ref`` so that tests can check the join.
* ``GET /v1/models``: the model list, as the ``openai`` client expects.
* ``GET /admin/stats``: per-key counters (keys shown by their last 4 characters).
* ``POST /admin/revoke`` / ``/admin/restore`` ``{"key": "..."}``: revoke a key at run time.
* ``POST /admin/config``: change rates at run time (``fail_rate``, ``latency_ms``...);
  ``{"throttle_s": 30}`` answers every key 429 with a Retry-After for the next 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import random
import re
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from streams.settings import parse_keys

logger = logging.getLogger("roadwatch.sim.vlm")

REF = re.compile(r"Ref ([0-9a-f]{6,40})")
GAP = re.compile(r"gap ([0-9.]+) pedestrian heights")
KIND = re.compile(r"group kind (\w+)")
Z95 = 1.6449


@dataclass
class SimConfig:
    """What the simulated endpoint does; all of it can change at run time."""

    keys: set[str] = field(default_factory=set)  # empty: any key is valid
    rpm: int = 0  # 0: unlimited
    quota: int = 0  # calls per key before AllocationQuota (0: none)
    quota_reset_s: float = 60.0
    latency_ms: float = 300.0
    p95_ms: float = 800.0
    fail_rate: float = 0.0
    timeout_rate: float = 0.0
    garbage_rate: float = 0.0
    hang_s: float = 120.0
    seed: int = 7
    #: For this many seconds from when it is set, every key is answered 429 with a Retry-After.
    throttle_s: float = 0.0


def tail(key: str) -> str:
    """The alias the simulator uses for a key: its last 4 characters."""
    return "…" + key[-4:]


class SimVlm:
    """State of the simulated endpoint."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.revoked: set[str] = set()
        self.windows: dict[str, deque[float]] = defaultdict(deque)
        self.quota_used: dict[str, int] = defaultdict(int)
        self.quota_since: dict[str, float] = {}
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

    async def chat(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        alias = tail(key) if key else "none"
        counters = self.stats[alias]
        counters["requests"] += 1
        if not key or (self.cfg.keys and key not in self.cfg.keys) or key in self.revoked:
            counters["401"] += 1
            return self.error(401, "InvalidApiKey", "Invalid API-key provided.")
        now = time.monotonic()
        if self.throttle_until > now:
            counters["429_throttled"] += 1
            return self.error(
                429,
                "Throttling.RateQuota",
                "Requests rate limit exceeded, please try again later.",
                {"Retry-After": f"{math.ceil(self.throttle_until - now)}"},
            )
        if self.cfg.quota:
            since = self.quota_since.setdefault(key, now)
            if now - since >= self.cfg.quota_reset_s:
                self.quota_since[key], self.quota_used[key] = now, 0
            if self.quota_used[key] >= self.cfg.quota:
                counters["429_quota"] += 1
                reset = self.quota_since[key] + self.cfg.quota_reset_s - now
                return self.error(
                    429,
                    "Throttling.AllocationQuota",
                    "Allocated quota exceeded, please increase your quota limit.",
                    {"Retry-After": f"{max(1, math.ceil(reset))}"},
                )
            self.quota_used[key] += 1
        if self.cfg.rpm:
            window = self.windows[key]
            while window and window[0] <= now - 60.0:
                window.popleft()
            if len(window) >= self.cfg.rpm:
                counters["429"] += 1
                retry = window[0] + 60.0 - now
                return self.error(
                    429,
                    "Throttling.RateQuota",
                    "Requests rate limit exceeded, please try again later.",
                    {"Retry-After": f"{max(1, math.ceil(retry))}"},
                )
            window.append(now)
        try:
            body = await request.json()
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            counters["400"] += 1
            return self.error(400, "InvalidParameter", "Request body is not a chat completion request.")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            roll = self.rng.random()
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
            text = " ".join(_texts(messages))
            if roll < self.cfg.timeout_rate + self.cfg.fail_rate + self.cfg.garbage_rate:
                counters["garbage"] += 1
                content = "I am not sure what to say about this picture."
            else:
                content = assess_text(text, _image_digest(messages))
            counters["200"] += 1
            return web.json_response(
                {
                    "id": f"chatcmpl-sim-{time.time_ns()}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "qwen-vl-plus"),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                    ],
                    "usage": {
                        "prompt_tokens": 400 + len(text) // 4,
                        "completion_tokens": len(content) // 4,
                        "total_tokens": 400 + len(text) // 4 + len(content) // 4,
                    },
                }
            )
        finally:
            self.in_flight -= 1

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "sim"}
                    for m in ("qwen-vl-plus", "qwen-vl-max")
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
            if not hasattr(self.cfg, name) or name == "keys":
                raise web.HTTPBadRequest(text=f"unknown setting {name}")
            setattr(self.cfg, name, type(getattr(self.cfg, name))(value))
            if name == "throttle_s":
                self.throttle_until = time.monotonic() + float(value)
        return web.json_response({k: v for k, v in vars(self.cfg).items() if k != "keys"})

    def app(self) -> web.Application:
        application = web.Application(client_max_size=8 * 1024 * 1024)
        application.router.add_post("/v1/chat/completions", self.chat)
        application.router.add_post("/compatible-mode/v1/chat/completions", self.chat)
        application.router.add_get("/v1/models", self.models)
        application.router.add_get("/admin/stats", self.admin_stats)
        application.router.add_post("/admin/revoke", self.admin_revoke)
        application.router.add_post("/admin/restore", self.admin_revoke)
        application.router.add_post("/admin/config", self.admin_config)
        return application


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
    parser.add_argument("--rpm", type=int, default=0)
    parser.add_argument("--quota", type=int, default=0)
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
    cfg = SimConfig(
        keys=keys,
        rpm=args.rpm,
        quota=args.quota,
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
