"""Pipeline benchmark: N simulated cameras x F fps for D seconds through the whole topology.

``python -m bench.pipeline [--cameras 4 --fps 2 --duration 60 --vlm-latency-ms 400]``

Starts a real Kafka broker, Redis, the simulated VLM (with the given latency), one Faust worker
and the detection producer (motion detector on synthetic video), runs the scenario, drains the
pipeline and writes ``bench/results/pipeline.json``:

* throughput per stage (detections, tasks, VLM calls per second);
* ``e2e_ms``: frame capture to the aggregator's result; ``overhead_ms``: e2e minus the VLM
  call's own duration, i.e. what roadwatch adds (detection, Kafka hops, queueing, aggregation);
* ``faust_msgs_per_s`` vs ``raw_aiokafka_msgs_per_s``: forwarding ~1 KB messages with a
  one-agent Faust app and with a bare aiokafka consume->produce loop, on the same broker in the
  same run, so the ratio holds on a noisy machine; ``faust_cpu_ms_per_msg`` and
  ``raw_aiokafka_cpu_ms_per_msg``: each one's CPU time a message (the floor under any one-agent
  Faust stage's cost per event).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from models.producer import command as producer_command
from ops.http import get_json
from ops.kafka import KafkaCluster, free_port, port_open
from ops.procs import Proc, cpu_s, spawn, wait_until
from ops.verify import end_offsets, read_all
from sim import vlm

# the workers this benchmark starts require a web token (as in production); ops.http sends it
os.environ.setdefault("ROADWATCH_WEB_TOKEN", secrets.token_urlsafe(16))

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def save(path: Path, report: dict[str, Any], series: Any = None) -> None:
    """Write a benchmark's JSON (and its time series beside it, for the report's plots), say so,
    and print it (the figures end every run's output)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    if series is not None:
        path.with_name(path.stem + "_series.json").write_text(json.dumps(series) + "\n")
    log(f"wrote {path}" + (" (time series beside it)" if series is not None else ""))
    print(json.dumps(report, indent=2))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


# --- Faust vs raw aiokafka forwarding ---------------------------------------------------------
async def fill(bootstrap: str, topic: str, n: int, size: int = 1000) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=65536)
    await producer.start()
    body = json.dumps({"pad": "x" * (size - 20)}).encode()
    try:
        for i in range(n):
            await producer.send(topic, key=f"k{i % 64}".encode(), value=body)
        await producer.flush()
    finally:
        await producer.stop()


async def raw_forward(bootstrap: str, src: str, dst: str, n: int) -> tuple[float, float]:
    """A bare consume->produce loop; messages per second and CPU milliseconds a message (this process)."""
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{time.time_ns()}",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    done, started, cpu_started = 0, 0.0, 0.0
    try:
        while done < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for records in batch.values():
                if not started:
                    started, cpu_started = time.perf_counter(), time.process_time()
                for record in records:
                    await producer.send(dst, key=record.key, value=record.value)
                    done += 1
        await producer.flush()
        return n / (time.perf_counter() - started), (time.process_time() - cpu_started) * 1000 / n
    finally:
        await consumer.stop()
        await producer.stop()


def faust_forward(bootstrap: str, src: str, dst: str, n: int, workdir: Path) -> tuple[float, float]:
    """The one-agent Faust forwarder; messages per second from its first to its n-th output, and its
    process's CPU milliseconds a message over the same span."""
    env = dict(
        os.environ,
        BENCH_KAFKA=f"kafka://{bootstrap}",
        BENCH_SRC=src,
        BENCH_DST=dst,
        BENCH_APP=f"bench-fwd-{time.time_ns()}",
    )
    proc = spawn(
        "faust_forward",
        [
            sys.executable,
            "-m",
            "bench.faust_forward",
            "--datadir",
            str(workdir / "fwd"),
            "worker",
            "-l",
            "warn",
            "--without-web",
        ],
        env,
        workdir,
    )
    try:
        first = last = 0.0
        cpu_first = cpu_last = 0.0
        counted = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if not proc.running():
                raise RuntimeError("the Faust forwarder exited: " + proc.tail(2000))
            count = asyncio.run(end_offsets(bootstrap, (dst,)))[dst]
            now = time.perf_counter()
            if count and not first:
                first, cpu_first, counted = now, cpu_s(proc.pid), count
                if counted > n // 2:
                    raise RuntimeError(f"{counted} of {n} forwarded before the first look: too few to time")
            elif count >= n:
                last, cpu_last = now, cpu_s(proc.pid)
                break
            time.sleep(0.2)
        if not last:
            raise TimeoutError("the Faust forwarder did not finish")
        timed = count - counted  # the messages forwarded between the two looks, both figures over the same
        return timed / max(1e-6, last - first), (cpu_last - cpu_first) * 1000 / max(1, timed)
    finally:
        proc.stop()


def forwarding(bootstrap: str, n: int, workdir: Path) -> dict[str, float]:
    log(f"forwarding {n} x 1 KB messages: raw aiokafka loop vs one Faust agent")
    asyncio.run(fill(bootstrap, "bench-src", n))
    raw, raw_cpu = asyncio.run(raw_forward(bootstrap, "bench-src", "bench-raw-dst", n))
    fst, fst_cpu = faust_forward(bootstrap, "bench-src", "bench-faust-dst", n, workdir)
    return {
        "faust_msgs_per_s": round(fst),
        "raw_aiokafka_msgs_per_s": round(raw),
        "faust_vs_raw": round(fst / raw, 3),
        "faust_cpu_ms_per_msg": round(fst_cpu, 3),
        "raw_aiokafka_cpu_ms_per_msg": round(raw_cpu, 3),
    }


# --- the pipeline scenario --------------------------------------------------------------------
def scenario(args: argparse.Namespace, cluster: KafkaCluster, workdir: Path) -> dict[str, Any]:
    cams = workdir / "cameras.yaml"
    cams.write_text(
        "cameras:\n"
        + "".join(
            f"  - {{id: bench-{i}, url: 'sim://scene?seed={100 + i}&vehicles=0.6&pedestrians=0.35', fps: {args.fps}}}\n"
            for i in range(args.cameras)
        )
    )
    vlm_port, web_port = free_port(), free_port()
    keys = [f"bench-key-{i:02d}-{os.urandom(4).hex()}" for i in range(10)]
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        ROADWATCH_KAFKA_URL=cluster.url,
        ROADWATCH_APP_ID="bench",
        ROADWATCH_WEB_PORT=str(web_port),
        ROADWATCH_DATA_DIR=str(workdir / "faust"),
        ROADWATCH_VLM_BASE_URL=f"http://127.0.0.1:{vlm_port}/v1",
        ROADWATCH_VLM_KEYS=",".join(keys),
        ROADWATCH_IMAGE_STORE=f"file://{workdir / 'images'}",
        ROADWATCH_REDIS_URL="redis://127.0.0.1:1/0",
    )
    procs: list[Proc] = []
    try:
        procs.append(
            spawn(
                "vlm",
                vlm.command(vlm_port, keys, latency_ms=args.vlm_latency_ms, p95_ms=args.vlm_latency_ms * 2),
                env,
                workdir,
            )
        )
        wait_until(lambda: port_open(vlm_port), 30, "sim VLM")
        worker = spawn("worker", [sys.executable, "-m", "streams", "worker", "-l", "info"], env, workdir)
        procs.append(worker)
        wait_until(lambda: b"Worker ready" in worker.log.read_bytes(), 120, "worker ready")
        log(
            f"scenario: {args.cameras} cameras x {args.fps} fps for {args.duration:.0f}s, "
            f"VLM median {args.vlm_latency_ms} ms"
        )
        producer = spawn(
            "producer",
            producer_command(cams, duration=args.duration),
            env,
            workdir,
        )
        procs.append(producer)
        t0 = time.monotonic()
        progress: list[dict[str, float]] = []
        while producer.running():
            time.sleep(5)
            offsets = asyncio.run(end_offsets(cluster.bootstrap, ("detection-results", "risk-assessment-results")))
            progress.append(
                {
                    "t": round(time.monotonic() - t0, 1),
                    "detections": offsets["detection-results"],
                    "results": offsets["risk-assessment-results"],
                }
            )
            log(
                f"  {time.monotonic() - t0:5.0f}s  detections {offsets['detection-results']:6d}  "
                f"results {offsets['risk-assessment-results']:6d}"
            )
        tasks = [json.loads(v) for v in asyncio.run(read_all(cluster.bootstrap, "assessment-tasks"))]
        wait_until(
            lambda: len(get_json(f"http://127.0.0.1:{web_port}/results/")["results"]) >= len(tasks),
            120,
            "all tasks aggregated",
        )
        view = get_json(f"http://127.0.0.1:{web_port}/results/")["results"]
        results = {
            r["task_id"]: r
            for r in (json.loads(v) for v in asyncio.run(read_all(cluster.bootstrap, "risk-assessment-results")))
        }
        detections = asyncio.run(end_offsets(cluster.bootstrap, ("detection-results",)))["detection-results"]
        stats = get_json(f"http://127.0.0.1:{vlm_port}/admin/stats")
        calls = sum(v.get("requests", 0) for v in stats["keys"].values())
    finally:
        for proc in reversed(procs):
            proc.stop()
    e2e = [view[t]["at"] * 1000 - r["captured_at"] for t, r in results.items() if t in view]
    overhead = [
        view[t]["at"] * 1000 - r["captured_at"] - r["latency_ms"]
        for t, r in results.items()
        if t in view and r["status"] == "ok"
    ]
    statuses: dict[str, int] = {}
    for r in results.values():
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "scenario": {
            "cameras": args.cameras,
            "fps": args.fps,
            "duration_s": args.duration,
            "vlm_latency_median_ms": args.vlm_latency_ms,
            "detector": "motion/mog2",
            "workers": 1,
            "partitions": 8,
        },
        "detections": detections,
        "tasks": len(tasks),
        "results": len(results),
        "statuses": statuses,
        "detections_per_s": round(detections / args.duration, 2),
        "tasks_per_s": round(len(tasks) / args.duration, 2),
        "vlm_calls_per_s": round(calls / args.duration, 2),
        "e2e_ms": {
            "p50": pct(e2e, 0.5),
            "p95": pct(e2e, 0.95),
            "p99": pct(e2e, 0.99),
            "mean": round(statistics.fmean(e2e), 1) if e2e else None,
        },
        "overhead_ms": {"p50": pct(overhead, 0.5), "p95": pct(overhead, 0.95), "p99": pct(overhead, 0.99)},
        "series": {
            "e2e_ms": sorted(round(v, 1) for v in e2e),
            "overhead_ms": sorted(round(v, 1) for v in overhead),
            "progress": progress,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--vlm-latency-ms", type=float, default=400.0)
    parser.add_argument("--forward-messages", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="roadwatch-bench-") as tmp:
        workdir = Path(tmp)
        cluster = KafkaCluster(workdir / "kafka", size=1).start()
        try:
            report = scenario(args, cluster, workdir)
            report.update(forwarding(cluster.bootstrap, args.forward_messages, workdir))
        finally:
            cluster.stop()
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    save(args.out, report, series=report.pop("series"))


if __name__ == "__main__":
    main()
