"""``make verify-keys``: check every configured API key against the VLM endpoint.

Sends each key one minimal chat completion (a text-only "ping", ``max_tokens=1``: the cheapest
call DashScope/OpenAI accept) and prints a table of aliases and outcomes, never the keys. The
outcome kinds are the key pool's (see ``agents/vlm_client.py``): ``ok``, ``auth`` (invalid or
revoked), ``rate`` (throttled now), ``quota``, ``arrearage``, ``server``. Exit status 1 when a key
is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp

from agents.vlm_client import classify_error
from streams.settings import ApiKeyConfig, get_settings


async def check(session: aiohttp.ClientSession, url: str, model: str, key: ApiKeyConfig) -> tuple[str, str, int, float]:
    body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    headers = {"Authorization": f"Bearer {key.key.get_secret_value()}"}
    started = time.perf_counter()
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            text = await resp.text(errors="replace")
            ms = (time.perf_counter() - started) * 1000
            if resp.status == 200:
                return key.alias, "ok", 200, ms
            error = classify_error(resp.status, text, resp.headers)
            return key.alias, error.kind, resp.status, ms
    except (aiohttp.ClientError, TimeoutError) as exc:
        return key.alias, f"server ({type(exc).__name__})", 0, (time.perf_counter() - started) * 1000


async def verify(timeout_s: float) -> list[tuple[str, str, int, float]]:
    settings = get_settings()
    keys = settings.api_keys()
    if not keys:
        raise SystemExit("no keys configured: set ROADWATCH_VLM_KEYS or ROADWATCH_VLM_KEYS_FILE")
    url = settings.vlm_base_url.rstrip("/") + "/chat/completions"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        return await asyncio.gather(*(check(session, url, settings.vlm_model, k) for k in keys))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.verify_keys", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = asyncio.run(verify(args.timeout))
    if args.json:
        print(json.dumps([{"alias": a, "outcome": o, "status": s, "latency_ms": round(ms, 1)} for a, o, s, ms in rows]))
    else:
        print(f"{'alias':16s} {'outcome':12s} {'HTTP':>4s} {'latency':>10s}")
        for alias, outcome, status, ms in rows:
            print(f"{alias:16s} {outcome:12s} {status:>4d} {ms:8.0f} ms")
        usable = sum(1 for _, o, _, _ in rows if o in ("ok", "rate"))
        print(f"{usable}/{len(rows)} keys usable against {get_settings().vlm_base_url}")
    sys.exit(0 if all(o in ("ok", "rate") for _, o, _, _ in rows) else 1)


if __name__ == "__main__":
    main()
