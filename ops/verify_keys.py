"""``make verify-keys``: check every configured API key against the VLM endpoint, per model.

Sends each key one minimal chat completion per model of the chain (a text-only "ping",
``max_tokens=1``: the cheapest call DashScope/OpenAI accept) and prints a table of aliases and
outcomes, never the keys. The outcome kinds are the key pool's (see ``agents/vlm_client.py``):
``ok``, ``auth`` (invalid or revoked), ``rate``/``burst`` (throttled now), ``quota``,
``arrearage``, ``server``, ``request`` (e.g. a model the key may not use).

Then it groups the keys by account and model and says which share a quota: DashScope counts
RPM/TPM per account and model, so ten keys of one account have one account's quota, and the
limits declared in ``ROADWATCH_VLM_QUOTAS`` are what the pool schedules against. Exit status 1
when a key is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

from agents.vlm_client import classify_error
from streams.settings import ApiKeyConfig, Settings, get_settings


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


async def verify(timeout_s: float) -> list[tuple[str, str, str, int, float]]:
    """(alias, model, outcome, HTTP status, ms) for every key and model of the chain."""
    settings = get_settings()
    keys = settings.api_keys()
    if not keys:
        raise SystemExit("no keys configured: set ROADWATCH_VLM_KEYS or ROADWATCH_VLM_KEYS_FILE")
    url = settings.vlm_base_url.rstrip("/") + "/chat/completions"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        checks = [(k, m) for m in settings.model_chain() for k in keys]
        rows = await asyncio.gather(*(check(session, url, m, k) for k, m in checks))
    return [(alias, m, outcome, status, ms) for (_, m), (alias, outcome, status, ms) in zip(checks, rows, strict=True)]


def quota_groups(settings: Settings) -> list[dict[str, Any]]:
    """Keys by (account, model): which share a quota, and the limits declared for it."""
    quotas = settings.quotas()
    groups = []
    for model in settings.model_chain():
        by_account: dict[tuple[str, str], list[str]] = {}
        for key in settings.api_keys():
            by_account.setdefault((key.account_name, key.workspace), []).append(key.alias)
        for (account, workspace), aliases in sorted(by_account.items()):
            declared = [
                q for q in quotas if q.account == account and q.model in (model, "*") and q.workspace in ("", workspace)
            ]
            limits = {
                (f"workspace {q.workspace}" if q.workspace else "account"): {
                    k: v for k, v in (("rpm", q.rpm), ("tpm", q.tpm), ("rps", q.rps), ("tps", q.tps)) if v is not None
                }
                # the exact model last, so it wins over the wildcard as in the pool
                for q in sorted(declared, key=lambda q: (q.workspace, q.model == model))
            }
            groups.append(
                {
                    "account": account,
                    "workspace": workspace,
                    "model": model,
                    "keys": aliases,
                    "shared": len(aliases) > 1,
                    "limits": limits or None,
                }
            )
    return groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.verify_keys", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    settings = get_settings()
    rows = asyncio.run(verify(args.timeout))
    groups = quota_groups(settings)
    usable = [o in ("ok", "rate", "burst") for _, _, o, _, _ in rows]
    if args.json:
        print(
            json.dumps(
                {
                    "keys": [
                        {"alias": a, "model": m, "outcome": o, "status": s, "latency_ms": round(ms, 1)}
                        for a, m, o, s, ms in rows
                    ],
                    "quotas": groups,
                }
            )
        )
    else:
        print(f"{'alias':16s} {'model':20s} {'outcome':12s} {'HTTP':>4s} {'latency':>10s}")
        for alias, model, outcome, status, ms in rows:
            print(f"{alias:16s} {model:20s} {outcome:12s} {status:>4d} {ms:8.0f} ms")
        print(f"{sum(usable)}/{len(rows)} key and model pairs usable against {settings.vlm_base_url}")
        print()
        print("Quotas (DashScope counts RPM/TPM per account and model, over every key of the account):")
        for g in groups:
            where = g["account"] + (f" / workspace {g['workspace']}" if g["workspace"] else "")
            share = f"{len(g['keys'])} keys share one quota" if g["shared"] else "1 key"
            limits = json.dumps(g["limits"]) if g["limits"] else "no limits declared (ROADWATCH_VLM_QUOTAS)"
            print(f"  {where:28s} {g['model']:20s} {share:24s} {limits}  [{', '.join(g['keys'])}]")
    sys.exit(0 if all(usable) else 1)


if __name__ == "__main__":
    main()
