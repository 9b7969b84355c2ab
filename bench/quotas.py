"""Quota benchmark: the key pool against a provider that limits as DashScope does (per account and
model, per second, growth), through real Faust scheduler workers on a real broker.

``python -m bench.quotas [--duration 100 --warmup 40]``

The simulated provider (``sim.vlm``, 400 ms median calls) counts every key of an account against
one quota per model and refuses bursts. Scenarios, for 1 and 2 workers unless noted; each writes
its figures into ``bench/results/key_pool.json`` beside the key-pool benchmark's:

* ``one_account``: 10 keys of one account, 120 rpm (2/s) for the model, tasks offered at 2.5/s.
  ``efficiency`` = calls the provider accepted in the measured window / the quota's calls in that
  window; ``self_inflicted_429_rate`` = refusals (rate, tokens, burst) / accepted calls, whole run.
* ``baseline_per_key_pool_one_account`` (1 worker): the same keys declared as ten keys of 12 rpm
  each with no account and no smoothing: how the pool scheduled before it knew accounts.
* ``two_accounts``: 5 keys on an account of 120 rpm and 5 on one of 60 rpm, offered 3.5/s:
  ``throughput`` against the sum of both quotas.
* ``model_chain``: one account, ``qwen-vl-max`` at 60 rpm then ``qwen-vl-plus`` at 120 rpm,
  offered 3.5/s: ``throughput`` against the sum of both models' quotas, results per model.
* ``cost_and_budget``: a price table and a daily budget for the account that runs out mid-run,
  and a smaller one per camera: ``cost_error`` (roadwatch's recorded cost and tokens against the
  provider's usage, priced the same way) and ``budget_overrun_calls`` (calls the provider served
  beyond a budget: for the account from its usage log, for each camera from the results).

The measured window starts after ``warmup`` seconds (the ramp from idle and the backlog's first
minute are behind it) and ends when the offered load stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.key_pool import PARTITIONS, even_cameras, offer_tasks, ready
from bench.pipeline import RESULTS, log, pct
from ops.http import get_json
from ops.kafka import KafkaCluster, free_port, port_open
from ops.procs import Proc, spawn, wait_until
from ops.verify import read_all
from sim import vlm

# the workers this benchmark starts require a web token (as in production); ops.http sends it
os.environ.setdefault("ROADWATCH_WEB_TOKEN", os.urandom(16).hex())

#: A key on an account of its own, for a probe call that must not count against the scenario's.
PROBE_KEY = "probe-key-0000"
PRICES = {
    "qwen-vl-max": {"input_per_1k": 0.0032, "output_per_1k": 0.0096},
    "qwen-vl-plus": {"input_per_1k": 0.0015, "output_per_1k": 0.0045},
}


def cameras(hot: int) -> list[str]:
    """One camera per partition; the first offered ``hot`` times as often as the others."""
    spread = even_cameras(1)
    return [spread[0]] * (hot - 1) + spread


def usage(port: int, calls: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = get_json(f"http://127.0.0.1:{port}/admin/usage" + ("?calls=1" if calls else ""))[
        "quotas"
    ]
    return rows


def served(rows: list[dict[str, Any]]) -> int:
    return sum(int(r.get("calls", 0)) for r in rows)


def refused(rows: list[dict[str, Any]]) -> int:
    return sum(int(v) for r in rows for k, v in r.items() if k.startswith("429_"))


def priced(model: str, prompt: int, completion: int) -> float:
    p = PRICES[model]
    return prompt / 1000 * p["input_per_1k"] + completion / 1000 * p["output_per_1k"]


def run(
    name: str,
    workers: int,
    cluster: KafkaCluster,
    workdir: Path,
    args: argparse.Namespace,
    *,
    accounts: dict[str, list[int]],
    limits: dict[str, dict[str, int]],
    keys_json: list[dict[str, Any]],
    env_extra: dict[str, str],
    rate: float,
    capacity_per_s: float,
    hot_camera: int = 1,
    probe: Any = None,
    task_deadline_s: float = 600.0,
) -> dict[str, Any]:
    """One scenario: the provider, ``workers`` workers, ``rate`` tasks/s for ``args.duration`` s."""
    keys = [f"q-{name[:6]}-{workers}-{i:02d}-{os.urandom(4).hex()}" for i in range(10)]
    for spec in keys_json:
        spec["key"] = keys[spec.pop("index")]
    port = free_port()
    sim = spawn(
        f"vlm-{name}-{workers}",
        vlm.command(
            port,
            [*keys, PROBE_KEY],
            accounts=json.dumps({a: [keys[i] for i in idx] for a, idx in accounts.items()}),
            limits=json.dumps(limits),
            latency_ms=400,
            p95_ms=900,
            seed=5,
        ),
        dict(os.environ),
        workdir,
    )
    wait_until(lambda: port_open(port), 30, "sim VLM")
    if probe is not None:
        env_extra = {**env_extra, **probe(port)}
    tag = f"q{workers}-{name[:8].replace('_', '')}-{os.urandom(3).hex()}"
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        ROADWATCH_KAFKA_URL=cluster.url,
        ROADWATCH_APP_ID=tag,
        ROADWATCH_TOPIC_PREFIX=f"{tag}-",
        ROADWATCH_STORE="memory://",
        ROADWATCH_TOPIC_PARTITIONS=str(PARTITIONS),
        ROADWATCH_VLM_BASE_URL=f"http://127.0.0.1:{port}/v1",
        ROADWATCH_VLM_KEYS=json.dumps(keys_json),
        ROADWATCH_REDIS_URL="redis://127.0.0.1:1/0",
        ROADWATCH_IMAGE_STORE=f"file://{workdir / 'img'}",
        # the offered tasks are due in 600 s (bench.key_pool.offer_tasks): with the default 30 s the
        # worker's stall guard (deadline + 10 s in flight) rejoins, then exits, while tasks wait for
        # the quota; a rebalance's timeout must exceed the deadline
        ROADWATCH_TASK_DEADLINE_S="600",
        ROADWATCH_REBALANCE_TIMEOUT_S="630",
        **env_extra,
    )
    procs: list[Proc] = [sim]
    ports: list[int] = []
    try:
        for i in range(workers):
            wport = free_port()
            worker = spawn(
                f"{tag}-worker-{i}",
                [sys.executable, "-m", "streams", "worker", "-l", "info"],
                {**env, "ROADWATCH_WEB_PORT": str(wport), "ROADWATCH_DATA_DIR": str(workdir / f"{tag}-{i}")},
                workdir,
            )
            procs.append(worker)
            ports.append(wport)
            wait_until(partial(ready, worker), 120, "worker ready")
        wait_until(
            lambda: abs(sum(get_json(f"http://127.0.0.1:{p}/keys/")["share"] for p in ports) - 1) < 1e-6,
            120,
            "partitions and shares settled",
        )
        log(f"  {name}, {workers} worker(s): offering {rate}/s for {args.duration:.0f}s")
        marks: dict[str, Any] = {}
        t0 = time.monotonic()

        def warm() -> None:
            marks["at"], marks["served"] = time.monotonic(), served(usage(port))

        offered = asyncio.run(
            offer_tasks(
                cluster.bootstrap,
                f"{tag}-assessment-tasks",
                cameras(hot_camera),
                rate,
                args.duration,
                [(args.warmup, warm)],
                task_deadline_s,
            )
        )
        end, served_end = time.monotonic(), served(usage(port))
        window = end - marks["at"]

        def results_in() -> list[dict[str, Any]]:
            raw = asyncio.run(read_all(cluster.bootstrap, f"{tag}-risk-assessment-results"))
            return list({r["task_id"]: r for r in (json.loads(v) for v in raw)}.values())

        wait_until(lambda: len(results_in()) >= offered, 300, "every task has a result")
        results = results_in()
        final = usage(port, calls=True)
        keys_view = get_json(f"http://127.0.0.1:{ports[0]}/keys/")
    finally:
        for proc in procs:
            proc.stop()
    accepted_total = served(final)
    statuses: dict[str, int] = {}
    models: dict[str, int] = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        if r["status"] == "ok":
            models[r["model"]] = models.get(r["model"], 0) + 1
    out: dict[str, Any] = {
        "efficiency": round((served_end - marks["served"]) / (capacity_per_s * window), 4),
        "self_inflicted_429_rate": round(refused(final) / max(1, accepted_total), 5),
        "refusals": {
            k: sum(int(r.get(k, 0)) for r in final)
            for k in ("429_rate", "429_tokens", "429_burst")
            if any(k in r for r in final)
        },
        "accepted_calls": accepted_total,
        "tasks": offered,
        "statuses": statuses,
        "results_by_model": models,
        "queue_wait_ms_p95": pct([r["queue_ms"] for r in results if r["status"] == "ok"], 0.95),
        "window_s": round(window, 1),
        "elapsed_s": round(end - t0, 1),
        "quotas_seen_by_worker_0": [
            {k: q[k] for k in ("quota", "rpm", "rpm_share", "state", "throttled")} for q in keys_view["quotas"]
        ],
        "_results": results,
        "_usage": final,
    }
    return out


def one_account(workers: int, cluster: KafkaCluster, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    return run(
        "one_account",
        workers,
        cluster,
        workdir,
        args,
        accounts={"acct-a": list(range(10))},
        limits={"qwen-vl-plus": {"rpm": 120}},
        keys_json=[{"index": i, "alias": f"key-{i + 1}", "account": "acct-a"} for i in range(10)],
        env_extra={"ROADWATCH_VLM_QUOTAS": json.dumps([{"account": "acct-a", "model": "qwen-vl-plus", "rpm": 120}])},
        rate=2.5,
        capacity_per_s=2.0,
    )


def baseline_per_key(cluster: KafkaCluster, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    return run(
        "baseline_per_key",
        1,
        cluster,
        workdir,
        args,
        accounts={"acct-a": list(range(10))},
        limits={"qwen-vl-plus": {"rpm": 120}},
        keys_json=[{"index": i, "alias": f"key-{i + 1}", "rpm": 12} for i in range(10)],
        env_extra={"ROADWATCH_VLM_SMOOTHING": "false"},
        rate=2.5,
        capacity_per_s=2.0,
        # most of its tasks never get a call: due in 120 s, they end (expired) within the wait below
        task_deadline_s=120.0,
    )


def two_accounts(workers: int, cluster: KafkaCluster, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    return run(
        "two_accounts",
        workers,
        cluster,
        workdir,
        args,
        accounts={"acct-a": list(range(5)), "acct-b": list(range(5, 10))},
        limits={"qwen-vl-plus": {"rpm": 120}},  # for each account
        keys_json=[
            {"index": i, "alias": f"key-{i + 1}", "account": "acct-a" if i < 5 else "acct-b"} for i in range(10)
        ],
        env_extra={
            "ROADWATCH_VLM_QUOTAS": json.dumps([{"account": "acct-a", "rpm": 120}, {"account": "acct-b", "rpm": 120}])
        },
        rate=5.0,
        capacity_per_s=4.0,
    )


def model_chain(workers: int, cluster: KafkaCluster, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    limits = {"qwen-vl-max": {"rpm": 60}, "qwen-vl-plus": {"rpm": 120}}
    return run(
        "model_chain",
        workers,
        cluster,
        workdir,
        args,
        accounts={"acct-a": list(range(10))},
        limits=limits,
        keys_json=[{"index": i, "alias": f"key-{i + 1}", "account": "acct-a"} for i in range(10)],
        env_extra={
            "ROADWATCH_VLM_MODELS": "qwen-vl-max,qwen-vl-plus",
            "ROADWATCH_VLM_QUOTAS": json.dumps(
                [{"account": "acct-a", "model": m, "rpm": lim["rpm"]} for m, lim in limits.items()]
            ),
        },
        rate=3.5,
        capacity_per_s=3.0,
    )


def cost_and_budget(workers: int, cluster: KafkaCluster, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Budgets set in calls' worth of cost, measured by one probe call on an account of its own."""
    budgets: dict[str, float] = {}

    def probe(port: int) -> dict[str, str]:
        from agents.llm_scheduler import describe
        from agents.vlm_client import VlmClient
        from sim.records import assessment_task, detection
        from streams.images import resolve

        task = assessment_task(detection("cam-probe", 1), "0" * 12, deadline_in_ms=60_000)
        client = VlmClient(f"http://127.0.0.1:{port}/v1", "qwen-vl-plus", timeout_s=20, pool_size=1, max_tokens=300)

        async def call() -> Any:
            try:
                jpeg = resolve(task.image, None)  # type: ignore[arg-type]  # the crop is inline
                return await client.assess(PROBE_KEY, jpeg, describe(task))
            finally:
                await client.close()

        answer = asyncio.run(call())
        per_call = priced("qwen-vl-plus", answer.prompt_tokens or 0, answer.completion_tokens or 0)
        budgets["per_call"] = per_call
        budgets["account"] = round(per_call * args.account_budget_calls, 6)
        budgets["camera"] = round(per_call * args.camera_budget_calls, 6)
        return {
            "ROADWATCH_VLM_ACCOUNT_DAILY_BUDGET": json.dumps({"acct-a": budgets["account"]}),
            "ROADWATCH_CAMERA_DAILY_BUDGET": str(budgets["camera"]),
        }

    out = run(
        "cost_and_budget",
        workers,
        cluster,
        workdir,
        args,
        accounts={"acct-a": list(range(10))},
        limits={"qwen-vl-plus": {"rpm": 120}},
        keys_json=[{"index": i, "alias": f"key-{i + 1}", "account": "acct-a"} for i in range(10)],
        env_extra={
            "ROADWATCH_VLM_QUOTAS": json.dumps([{"account": "acct-a", "rpm": 120}]),
            "ROADWATCH_VLM_PRICES": json.dumps(PRICES),
        },
        rate=2.0,
        capacity_per_s=2.0,
        hot_camera=4,
        probe=probe,
    )
    account_budget, camera_budget = budgets["account"], budgets["camera"]
    out["_usage"] = [q for q in out["_usage"] if q["account"] == "acct-a"]
    results, truth = out["_results"], out["_usage"]
    ok = [r for r in results if r["status"] == "ok"]
    ours_cost = sum(r["cost"] for r in ok)
    ours_tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in ok)
    true_cost = sum(priced(q["model"], q["prompt_tokens"], q["completion_tokens"]) for q in truth)
    true_tokens = sum(q["prompt_tokens"] + q["completion_tokens"] for q in truth)
    # the account's calls in the order the provider served them: any beyond the budget overran it
    spent, over = 0.0, 0
    for q in truth:
        for _, prompt, completion in sorted(q["log"]):
            if spent >= account_budget - 1e-12:
                over += 1
            spent += priced(q["model"], prompt, completion)
    per_camera: dict[str, float] = {}
    camera_over = 0
    for r in sorted(ok, key=lambda r: r["completed_at"]):
        before = per_camera.get(r["camera_id"], 0.0)
        if before >= camera_budget - 1e-12 or before + r["cost"] > camera_budget + 1e-9:
            camera_over += 1
        per_camera[r["camera_id"]] = before + r["cost"]
    skipped = [r for r in results if r["status"] == "skipped"]
    out.update(
        {
            "cost_error": round(abs(ours_cost - true_cost) / true_cost, 6) if true_cost else None,
            "token_error": round(abs(ours_tokens - true_tokens) / true_tokens, 6) if true_tokens else None,
            "cost_recorded": round(ours_cost, 6),
            "cost_provider": round(true_cost, 6),
            "cost_per_call_probe": round(budgets["per_call"], 8),
            "account_budget": account_budget,
            "account_budget_used": round(true_cost / account_budget, 4),
            "camera_budget": camera_budget,
            "camera_spend": {c: round(v, 6) for c, v in sorted(per_camera.items())},
            "budget_overrun_calls": over + camera_over,
            "skipped": len(skipped),
            "skipped_reasons": sorted({r["error"] for r in skipped}),
        }
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quotas", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=100.0)
    parser.add_argument("--warmup", type=float, default=40.0)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--account-budget-calls", type=float, default=120, help="the account's budget, in calls")
    parser.add_argument("--camera-budget-calls", type=float, default=30, help="each camera's budget, in calls")
    parser.add_argument("--out", type=Path, default=RESULTS / "key_pool.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the logs here (default: a temporary dir)")
    args = parser.parse_args(argv)
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    chosen = set(filter(None, args.only.split(",")))
    workers = [int(w) for w in args.workers.split(",")]
    scenarios: list[tuple[str, Any]] = []
    for name, fn in (("one_account", one_account), ("two_accounts", two_accounts), ("model_chain", model_chain)):
        scenarios += [(f"{name}" + ("" if w == 1 else f"_workers_{w}"), partial(fn, w)) for w in workers]
    scenarios.append(("baseline_per_key_pool_one_account", baseline_per_key))
    scenarios += [
        ("cost_and_budget" + ("" if w == 1 else f"_workers_{w}"), partial(cost_and_budget, w)) for w in workers
    ]
    with tempfile.TemporaryDirectory(prefix="roadwatch-quotas-") as tmp:
        workdir = args.workdir or Path(tmp)
        cluster = KafkaCluster(workdir / "kafka", size=1).start()
        try:
            for name, fn in scenarios:
                if chosen and not any(name.startswith(c) for c in chosen):
                    continue
                result = fn(cluster, workdir, args)
                result.pop("_results")
                result.pop("_usage")
                report[name] = result
                log(f"  {name}: {json.dumps({k: v for k, v in result.items() if not k.startswith('quotas')})}")
                args.out.write_text(json.dumps(report, indent=2) + "\n")
        finally:
            cluster.stop()
    report.setdefault("quota_scenario", {})
    report["quota_scenario"] = {
        "provider": "sim.vlm limiting per account and model: RPM window, per-second bucket, growth (2x + 1)",
        "vlm_latency_median_ms": 400,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "partitions": PARTITIONS,
        "prices_per_1k_tokens": PRICES,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
