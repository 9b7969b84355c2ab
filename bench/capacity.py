"""Capacity benchmark: a step load of synthetic detections against one worker and against two.

``python -m bench.capacity [--levels 50,100,200,500,1000,2000 --workers 1,2 --level-s 30]``

What the worker costs per detection, and how many cameras it holds, without the detector on the
same two cores: a plain aiokafka producer in this process writes realistic detection records
(5-15 objects, 1-3 pedestrian-vehicle groups whose pairs change every few frames, crops by
reference to the image store) for N cameras at 2 fps, and the real topology (one or two Faust
workers on the shipped defaults: RocksDB tables, web auth, Redis, the simulated VLM at 400 ms
median) processes them. Each level runs on fresh workers and topics:

* offered and processed detections/s (the workers' committed offsets), and the backlog at the end of
  each agent's topic (detections, tasks, results), the largest in seconds of its input;
* worker CPU milliseconds per detection, from ``/proc/<pid>/stat`` (user + system time of the
  worker processes over the measured window divided by the detections they committed in it), so
  the figure holds on a noisy machine;
* tasks/s and VLM calls/s, e2e (frame capture to the aggregator's join) and overhead (e2e minus
  the VLM call) p50/p95/p99 for the tasks whose frames were captured in the window;
* worker RSS at the end.

The VLM rate is held near the mission's (``--calls-per-s``, default 70/s) at every level by the
per-camera budget: ``min(60, calls_per_s * 60 / N)`` calls a minute a camera (the shipped default
is 30; at 100 cameras this run allows 42, so the policy offers its ~50 calls/s). Levels stop after
the first saturated one (processed < 95% of offered, or a backlog at the end above 5 s of input).

``--soak-minutes M`` instead runs one worker at ``--soak-cameras`` for M minutes and samples RSS,
the Faust data dir and CPU per detection every minute (``soak`` in the JSON).

``--profile-level N`` also samples the one worker at N cameras with py-spy for the measured window
and writes a flame graph beside the report (``capacity_flame.svg``); ``--cprofile DIR`` runs every
worker under cProfile, ``--heapwatch DIR`` under :mod:`bench.heapwatch` (where the heap grows).

``--before-after N`` (default 50, a level one worker holds) runs one worker at N cameras once
more on the settings of before #13 (Faust's fetch of 1 byte; camera state, alerts and spend written
to their tables on every change; one result aggregated at a time), in the same run:
``before_after_13`` in the JSON, with the records each run produced by topic (``messages_sent``,
also in every level).

Writes ``bench/results/capacity.json`` (kept keys of other modes are preserved) and
``capacity.png`` (e2e p95 and lag per level).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bench.pipeline import RESULTS, log, pct
from ops.http import get_json, get_text
from ops.kafka import KafkaCluster, free_port, port_open
from ops.procs import Proc, cpu_s, spawn, wait_until
from ops.stack import redis_command
from ops.verify import end_offsets, read_all
from sim import vlm
from sim.records import crop_b64
from streams.images import FileImageStore
from streams.records import SCHEMA_VERSION, DetectionResult, decode

os.environ.setdefault("ROADWATCH_WEB_TOKEN", secrets.token_urlsafe(16))

PARTITIONS = 8
FPS = 2.0
FRAME_W, FRAME_H = 1280, 720


# --- the synthetic cameras --------------------------------------------------------------------
@dataclass
class Pair:
    """A pedestrian next to a vehicle: one pedestrian_vehicle group while it lives."""

    ped: int
    veh: int
    born: int


@dataclass
class SyntheticCamera:
    """One camera's frames: ``groups`` pairs renewed every ``every`` frames (staggered), so each
    renewal is a (pedestrian, vehicle) pair the policy has not assessed: about
    ``groups * fps / every`` tasks a second; the other objects are lone vehicles far apart."""

    camera_id: str
    rng: random.Random
    every: int
    crops: list[dict[str, Any]]
    objects: int = 0
    pairs: list[Pair] = field(default_factory=list)
    loners: list[int] = field(default_factory=list)
    seq: int = 0
    next_track: int = 1

    def __post_init__(self) -> None:
        groups = self.rng.randint(1, 3)
        self.objects = max(2 * groups, self.rng.randint(5, 15))
        self.pairs = [self._pair(-(k * self.every) // groups) for k in range(groups)]
        self.loners = [self._track() for _ in range(self.objects - 2 * groups)]

    def _track(self) -> int:
        self.next_track += 1
        return self.next_track

    def _pair(self, born: int) -> Pair:
        return Pair(self._track(), self._track(), born)

    def frame(self, now_ms: float) -> dict[str, Any]:
        """The next frame as the producer's JSON (a dict; the caller serialises it)."""
        seq = self.seq
        self.seq += 1
        objects: list[dict[str, Any]] = []
        groups: list[dict[str, Any]] = []
        crops: dict[str, Any] = {}
        for k, pair in enumerate(self.pairs):
            if seq - pair.born >= self.every:
                self.pairs[k] = pair = self._pair(seq)
            age = seq - pair.born
            x = 40.0 + k * 420.0 + age * 6.0
            y = 420.0
            ped = [x, y, x + 24.0, y + 60.0]
            vx = ped[2] + 30.0  # half a pedestrian height away: well within reach
            veh = [vx, y - 10.0, vx + 140.0, y + 60.0]
            members = [len(objects), len(objects) + 1]
            objects.append({"track_id": pair.ped, "cls": "person", "conf": 0.8, "bbox": ped, "speed": 12.0})
            objects.append({"track_id": pair.veh, "cls": "car", "conf": 0.9, "bbox": veh, "speed": 60.0})
            group_id = f"g{pair.ped}-{pair.veh}"
            box = [ped[0], veh[1], veh[2], ped[3]]
            groups.append(
                {
                    "group_id": group_id,
                    "kind": "pedestrian_vehicle",
                    "members": members,
                    "track_ids": [pair.ped, pair.veh],
                    "bbox": box,
                    "min_gap": 0.5,
                    "interest": 0.9,
                }
            )
            crops[group_id] = {**self.crops[(pair.ped + k) % len(self.crops)], "region": box}
        if seq % 30 == 0 and self.loners:  # lone vehicles leave and new ones come
            self.loners[self.rng.randrange(len(self.loners))] = self._track()
        for i, track in enumerate(self.loners):
            x = (60.0 + i * 110.0 + seq * 8.0) % (FRAME_W - 100)
            row = 40.0 + (i % 2) * 120.0
            objects.append(
                {"track_id": track, "cls": "car", "conf": 0.7, "bbox": [x, row, x + 90.0, row + 50.0], "speed": 80.0}
            )
        return {
            "camera_id": self.camera_id,
            "frame_seq": seq,
            "captured_at": now_ms,
            "frame_w": FRAME_W,
            "frame_h": FRAME_H,
            "model": "bench/synthetic",
            "objects": objects,
            "groups": groups,
            "crops": crops,
            "produced_at": now_ms,
            "run": "bench",
            "v": SCHEMA_VERSION,
        }


def stored_crops(folder: Path) -> list[dict[str, Any]]:
    """A few real JPEG crops of different sizes in the image store, as the producer's references."""
    jpeg = base64.b64decode(crop_b64())
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError("the sample crop does not decode")
    store = FileImageStore(folder, ttl_s=24 * 3600)
    refs = []
    for scale in (0.75, 1.0, 1.5, 2.0):
        resized = cv2.resize(image, None, fx=scale, fy=scale)
        ok, buf = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        body = buf.tobytes()
        refs.append({"uri": store.put(body), "width": resized.shape[1], "height": resized.shape[0], "size": len(body)})
    return refs


class Loader:
    """Writes N cameras x fps detection records from a thread of its own (a plain aiokafka producer)."""

    def __init__(self, bootstrap: str, topic: str, cameras: list[SyntheticCamera], fps: float) -> None:
        self.bootstrap, self.topic, self.cameras, self.fps = bootstrap, topic, cameras, fps
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True, name="loader")

    def start(self) -> Loader:
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=10, max_batch_size=262144, acks=1)
        await producer.start()
        started = time.monotonic()
        rate = len(self.cameras) * self.fps
        turn = 0
        try:
            while not self.stop.is_set():
                due = int((time.monotonic() - started) * rate) - self.sent
                now_ms = time.time() * 1000.0
                for _ in range(due):
                    cam = self.cameras[turn % len(self.cameras)]
                    turn += 1
                    body = json.dumps(cam.frame(now_ms), separators=(",", ":")).encode()
                    await producer.send(self.topic, key=cam.camera_id.encode(), value=body)
                    self.sent += 1
                await asyncio.sleep(0.05)
            await producer.flush()
        finally:
            await producer.stop()


# --- measuring the workers ---------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    return 0.0


def dir_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return round(total / 2**20, 1)


async def _committed(bootstrap: str, group: str, topics: tuple[str, ...]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    out = dict.fromkeys(topics, 0)
    for tp, meta in offsets.items():
        if tp.topic in out and meta.offset >= 0:
            out[tp.topic] += meta.offset
    return out


def committed(bootstrap: str, group: str, topics: tuple[str, ...]) -> dict[str, int]:
    """The group's committed offsets summed over each topic's partitions."""
    return asyncio.run(_committed(bootstrap, group, topics))


@dataclass
class Snapshot:
    at: float
    cpu: float
    ends: dict[str, int]
    done: dict[str, int]
    vlm_calls: int


@dataclass
class Deployment:
    """One level's workers, topics and consumer group."""

    cluster: KafkaCluster
    env: dict[str, str]
    prefix: str
    app_id: str
    vlm_port: int
    data: Path
    workers: list[Proc] = field(default_factory=list)

    @property
    def topics(self) -> tuple[str, str, str]:
        return (
            self.prefix + "detection-results",
            self.prefix + "assessment-tasks",
            self.prefix + "risk-assessment-results",
        )

    def snapshot(self) -> Snapshot:
        det, tasks, results = self.topics
        stats = get_json(f"http://127.0.0.1:{self.vlm_port}/admin/stats")
        return Snapshot(
            at=time.time(),
            cpu=sum(cpu_s(w.pid) for w in self.workers),
            ends=asyncio.run(end_offsets(self.cluster.bootstrap, self.topics)),
            done=committed(self.cluster.bootstrap, self.app_id, (det, tasks, results)),
            vlm_calls=sum(int(v.get("requests", 0)) for v in stats["keys"].values()),
        )


def profiler(pid: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """py-spy sampling the worker for the measured window: a flame graph of where its time goes."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise RuntimeError(f"--profile-level needs py-spy ({spy}): pip install py-spy")
    out = args.out.with_name(args.out.stem + "_flame.svg")
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(int(args.level_s)), "--rate", "97"]
    return subprocess.Popen([*cmd, "--format", "flamegraph", "--output", str(out), "--threads"])


#: ``--cprofile DIR``: each worker runs under cProfile, its profile written there when it stops
CPROFILE: Path | None = None
#: ``--heapwatch DIR``: each worker's heap growth by allocation site, rewritten there every minute
HEAPWATCH: Path | None = None


def python_for(tag: str, i: int) -> list[str]:
    """The worker's interpreter command: under :mod:`bench.heapwatch` with ``--heapwatch`` (objects by
    type, or allocation sites with ``HEAPWATCH_TRACEMALLOC``), else under cProfile with ``--cprofile``
    (CPU attribution by function; wall clock, so calls that wait on the other core read high)."""
    if HEAPWATCH is not None:
        # live objects by type, at full load (HEAPWATCH_TRACEMALLOC=N: allocation sites, N frames, slow)
        frames = os.environ.get("HEAPWATCH_TRACEMALLOC")
        traced = ["-X", f"tracemalloc={frames}"] if frames else []
        return [sys.executable, *traced, "-m", "bench.heapwatch", str(HEAPWATCH / f"{tag}-worker-{i}.txt")]
    if CPROFILE is None:
        return [sys.executable]
    return [sys.executable, "-m", "cProfile", "-o", str(CPROFILE / f"{tag}-worker-{i}.prof")]


def worker_samples(port: int) -> Iterator[Sample]:
    """The samples of a worker's /metrics, as prometheus_client parses its own exposition."""
    for family in text_string_to_metric_families(get_text(f"http://127.0.0.1:{port}/metrics")):
        yield from family.samples


def messages_sent(dep: Deployment) -> dict[str, int]:
    """Records the workers produced over the level, by topic (deployment prefixes stripped; table
    changelogs end in ``-changelog``), from Faust's counters in /metrics."""
    sent: dict[str, int] = {}
    for w in dep.workers:
        for sample in worker_samples(w.port):
            if sample.name == "roadwatch_faust_topic_messages_sent_total":
                topic = sample.labels["topic"].removeprefix("topic.")
                name = topic.removeprefix(f"{dep.app_id}-").removeprefix(dep.prefix)
                sent[name] = sent.get(name, 0) + int(sample.value)
    return dict(sorted(sent.items()))


def ready_or_exited(proc: Proc) -> bool:
    return b"Worker ready" in proc.log.read_bytes() or not proc.running()


def start_deployment(
    n_workers: int, cluster: KafkaCluster, base_env: dict[str, str], workdir: Path, vlm_port: int, tag: str
) -> Deployment:
    prefix, app_id = f"{tag}-", f"rw-{tag}"
    env = {**base_env, "ROADWATCH_TOPIC_PREFIX": prefix, "ROADWATCH_APP_ID": app_id}
    dep = Deployment(cluster, env, prefix, app_id, vlm_port, workdir / tag)
    dep.data.mkdir(parents=True)
    for i in range(n_workers):
        port = free_port()
        worker_env = {**env, "ROADWATCH_WEB_PORT": str(port), "ROADWATCH_DATA_DIR": str(dep.data / f"w{i}")}
        proc = spawn(
            f"{tag}-worker-{i}",
            [*python_for(tag, i), "-m", "streams", "worker", "-l", "info"],
            worker_env,
            workdir,
            port,
        )
        dep.workers.append(proc)
    for proc in dep.workers:
        wait_until(lambda p=proc: ready_or_exited(p), 180, "worker ready")  # type: ignore[misc]
        if not proc.running():
            raise RuntimeError(f"worker exited:\n{proc.tail()}")
    wait_until(
        lambda: all(get_json(f"http://127.0.0.1:{w.port}/health")["partitions"] > 0 for w in dep.workers),
        120,
        "every worker owning partitions",
    )
    return dep


#: The results a level reads from each worker's /results/ view (the view's maximum limit).
RESULTS_READ = 10_000
#: Lag that grows by more than this share of the offered rate a second (and beyond its noise) is unbounded.
LAG_GROWTH_SHARE = 0.02
#: Seconds between the lag samples a level takes.
LAG_SAMPLE_S = 5.0


def lag_growth(samples: list[tuple[float, int]]) -> tuple[float, float] | None:
    """How many messages a second the detections' backlog grew by through ``samples`` (time,
    backlog), and that slope's standard error (least squares). One backlog at the end cannot tell
    a worker holding a steady few seconds behind from one falling further behind every second; a
    backlog read between commits (each second) jitters by a second of input, so a slope counts only
    beyond twice its error (:func:`growing`)."""
    n = len(samples)
    if n < 3:
        return None
    t = [a for a, _ in samples]
    y = [float(b) for _, b in samples]
    mt, my = sum(t) / n, sum(y) / n
    stt = sum((a - mt) ** 2 for a in t)
    if not stt:
        return None
    slope = sum((a - mt) * (b - my) for a, b in zip(t, y, strict=True)) / stt
    residuals = [b - (my + slope * (a - mt)) for a, b in zip(t, y, strict=True)]
    return slope, (sum(r * r for r in residuals) / (n - 2) / stt) ** 0.5


def growing(growth: tuple[float, float] | None, offered_per_s: float) -> bool:
    """A backlog growing by more than LAG_GROWTH_SHARE of the offered rate, and by more than its noise."""
    return growth is not None and growth[0] > max(LAG_GROWTH_SHARE * offered_per_s, 2 * growth[1])


def latencies(dep: Deployment, window: tuple[float, float]) -> dict[str, Any]:
    """e2e and overhead of the tasks whose frames were captured in ``window`` (epoch s)."""
    view: dict[str, Any] = {}
    for w in dep.workers:
        listed = get_json(f"http://127.0.0.1:{w.port}/results/?limit={RESULTS_READ}")
        if listed["count"] >= listed["limit"]:
            # the view lists at most its limit: the rest would read as never aggregated
            raise RuntimeError(f"worker {w.port} holds {listed['limit']}+ results: more than a level can read")
        view.update(listed["results"])
    results = [json.loads(v) for v in asyncio.run(read_all(dep.cluster.bootstrap, dep.topics[2]))]
    lo, hi = window[0] * 1000.0, window[1] * 1000.0
    chosen = [r for r in results if lo <= r["captured_at"] < hi]
    e2e = [view[r["task_id"]]["at"] * 1000.0 - r["captured_at"] for r in chosen if r["task_id"] in view]
    overhead = [
        view[r["task_id"]]["at"] * 1000.0 - r["captured_at"] - r["latency_ms"]
        for r in chosen
        if r["task_id"] in view and r["status"] == "ok"
    ]
    statuses: dict[str, int] = {}
    for r in chosen:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "results": len(chosen),
        "statuses": statuses,
        "ok_rate": round(statuses.get("ok", 0) / len(chosen), 4) if chosen else None,
        "not_aggregated": sum(1 for r in chosen if r["task_id"] not in view),
        "e2e_ms": {"p50": pct(e2e, 0.5), "p95": pct(e2e, 0.95), "p99": pct(e2e, 0.99)},
        "overhead_ms": {"p50": pct(overhead, 0.5), "p95": pct(overhead, 0.95), "p99": pct(overhead, 0.99)},
    }


def cameras_for(n: int, every: int, crops: list[dict[str, Any]], seed: int = 7) -> list[SyntheticCamera]:
    rng = random.Random(seed)
    return [SyntheticCamera(f"cap-{i:04d}", random.Random(rng.random()), every, crops) for i in range(n)]


def budget_per_min(n: int, calls_per_s: float) -> float:
    return round(min(60.0, calls_per_s * 60.0 / n), 2)


@dataclass
class Rig:
    """What every level shares: the options, the broker, the workers' environment, the simulated
    VLM's port and the stored crops."""

    args: argparse.Namespace
    cluster: KafkaCluster
    env: dict[str, str]
    workdir: Path
    vlm_port: int
    crops: list[dict[str, Any]]

    def deploy(
        self, n: int, n_workers: int, tag: str, extra_env: dict[str, str] | None = None
    ) -> tuple[Deployment, float]:
        """Fresh workers for ``n`` cameras, with the camera budget that keeps the VLM rate."""
        per_min = budget_per_min(n, self.args.calls_per_s)
        env = {**self.env, "ROADWATCH_CAMERA_BUDGET_PER_MIN": str(per_min), "ROADWATCH_CAMERA_BUDGET_BURST": "2"}
        env.update(extra_env or {})
        tag = f"{tag}x{os.urandom(2).hex()}"
        return start_deployment(n_workers, self.cluster, env, self.workdir, self.vlm_port, tag), per_min

    def load(self, dep: Deployment, n: int) -> Loader:
        return Loader(self.cluster.bootstrap, dep.topics[0], cameras_for(n, self.args.every, self.crops), FPS).start()


def run_level(rig: Rig, n: int, n_workers: int, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    args, cluster = rig.args, rig.cluster
    dep, per_min = rig.deploy(n, n_workers, f"cap{n}w{n_workers}", extra_env)
    try:
        loader = rig.load(dep, n)
        time.sleep(args.warmup_s)
        s0 = dep.snapshot()
        spy = profiler(dep.workers[0].pid, args) if n == args.profile_level and n_workers == 1 else None
        backlog: list[tuple[float, int]] = []
        det_topic = dep.topics[0]
        while time.time() < s0.at + args.level_s:
            time.sleep(min(LAG_SAMPLE_S, max(0.0, s0.at + args.level_s - time.time())))
            ends = asyncio.run(end_offsets(cluster.bootstrap, (det_topic,)))
            done = committed(cluster.bootstrap, dep.app_id, (det_topic,))
            backlog.append((time.time(), ends[det_topic] - done[det_topic]))
        s1 = dep.snapshot()
        rss = [rss_mb(w.pid) for w in dep.workers]
        crashed = [w for w in dep.workers if not w.running()]
        if crashed:
            raise RuntimeError(f"worker exited during the level:\n{crashed[0].tail()}")
        sent = messages_sent(dep)
        if spy is not None:
            spy.wait(timeout=60)
        loader.finish()
        det, tasks_topic, results_topic = dep.topics
        # each agent's backlog at the end, in seconds of its input: the detections', the tasks' and
        # the results' (an aggregator behind is as saturated as a task generator behind)
        lags = {t: s1.ends[t] - s1.done[t] for t in dep.topics}
        span_in = s1.at - s0.at
        rates = {t: max(1e-9, (s1.ends[t] - s0.ends[t]) / span_in) for t in dep.topics}
        lag_s = max(lags[t] / rates[t] for t in dep.topics)
        # let the backlog finish (at most a task deadline and a bit) before reading the latencies
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            done = committed(cluster.bootstrap, dep.app_id, dep.topics)
            ends = asyncio.run(end_offsets(cluster.bootstrap, dep.topics))
            if all(done[t] >= ends[t] for t in dep.topics):
                break
            time.sleep(2)
        time.sleep(3)  # results written by the last tasks reach the aggregator
        lat = latencies(dep, (s0.at, s1.at))
    finally:
        for w in dep.workers:
            w.stop()
    span = s1.at - s0.at
    processed = s1.done[det] - s0.done[det]
    offered = s1.ends[det] - s0.ends[det]
    cpu_ms = (s1.cpu - s0.cpu) * 1000.0 / processed if processed else None
    growth = lag_growth(backlog)
    level = {
        "cameras": n,
        "workers": n_workers,
        "camera_budget_per_min": per_min,
        "offered_detections_per_s": round(offered / span, 1),
        "processed_detections_per_s": round(processed / span, 1),
        "lag_end_messages": {"detections": lags[det], "tasks": lags[tasks_topic], "results": lags[results_topic]},
        "lag_end_s": round(lag_s, 2),
        # the detections' backlog through the window: growing is saturated, whatever it ends at
        # (lag_growth_per_s: messages a second, and the slope's standard error)
        "lag_samples": [[round(t - s0.at, 1), b] for t, b in backlog],
        "lag_growth_per_s": [round(growth[0], 2), round(growth[1], 2)] if growth is not None else None,
        "worker_cpu_ms_per_detection": round(cpu_ms, 3) if cpu_ms is not None else None,
        "worker_cpu_share": round((s1.cpu - s0.cpu) / span, 3),
        "tasks_per_s": round((s1.ends[tasks_topic] - s0.ends[tasks_topic]) / span, 2),
        # CPU per detection depends on it: a level whose budget caps tasks has fewer per detection
        "tasks_per_detection": (
            round((s1.ends[tasks_topic] - s0.ends[tasks_topic]) / processed, 3) if processed else None
        ),
        "vlm_calls_per_s": round((s1.vlm_calls - s0.vlm_calls) / span, 2),
        "results_per_s": round((s1.ends[results_topic] - s0.ends[results_topic]) / span, 2),
        "worker_rss_mb": rss,
        # over the whole level (warm-up included): where the records a detection and a task cost go
        "messages_sent": sent,
        **lat,
    }
    behind = growing(growth, offered / span)
    level["saturated"] = bool(processed < 0.95 * offered or level["lag_end_s"] > 5.0 or behind)
    return level


def step_load(rig: Rig, workers: int) -> list[dict[str, Any]]:
    args = rig.args
    levels = []
    for n in (int(x) for x in args.levels.split(",")):
        log(f"{workers} worker(s), {n} cameras x {FPS:g} fps: {args.warmup_s:g}s warm-up, {args.level_s:g}s measured")
        level = run_level(rig, n, workers)
        log("  " + json.dumps(level))
        levels.append(level)
        if level["saturated"]:
            break
    return levels


#: The settings as they were before #13's changes: Faust's fetch (1500 ms, 1 byte), camera state,
#: alerts and spend written to their tables on every change, results aggregated one at a time.
#: (The code's own changes, the record decode and the Redis relay, stay in both.)
BEFORE_13 = {
    "ROADWATCH_FETCH_WAIT_MS": "1500",
    "ROADWATCH_FETCH_MIN_BYTES": "1",
    "ROADWATCH_STATE_WRITE_S": "0",
    "ROADWATCH_SPEND_WRITE_S": "0",
    "ROADWATCH_AGGREGATE_CONCURRENCY": "1",
}


def before_after(rig: Rig, after: dict[str, Any]) -> dict[str, Any]:
    """The same level on the settings of before #13, in the same run: what the change is worth."""
    n = after["cameras"]
    log(f"1 worker, {n} cameras on the settings before #13 ({BEFORE_13})")
    before = run_level(rig, n, 1, BEFORE_13)
    log("  " + json.dumps(before))
    keys = [
        "worker_cpu_ms_per_detection",
        "worker_cpu_share",
        "processed_detections_per_s",
        "tasks_per_s",
        "lag_end_s",
        "e2e_ms",
        "overhead_ms",
        "messages_sent",
        "saturated",
    ]
    return {
        "cameras": n,
        "settings_before": BEFORE_13,
        "before": {k: before[k] for k in keys},
        "after": {k: after[k] for k in keys},
        "cpu_per_detection_ratio": round(
            after["worker_cpu_ms_per_detection"] / before["worker_cpu_ms_per_detection"], 3
        ),
    }


def held(level: dict[str, Any]) -> bool:
    """Bounded lag (not growing through the window, a few seconds at its end) and e2e p95 under 2 s."""
    p95 = level["e2e_ms"]["p95"]
    return not level["saturated"] and p95 == p95 and p95 < 2000.0


def summary(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest level held, and the CPU per detection there: a level whose e2e p95 is past 2 s
    is behind already, its worker reading more records a fetch (cheaper each) than a held one."""
    ok = [lv for lv in levels if held(lv)]
    return {
        "max_cameras": max((lv["cameras"] for lv in ok), default=0),
        "worker_cpu_ms_per_detection": ok[-1]["worker_cpu_ms_per_detection"] if ok else None,
        "tasks_per_detection": ok[-1].get("tasks_per_detection") if ok else None,
        "at_cameras": ok[-1]["cameras"] if ok else None,
    }


def soak(rig: Rig) -> dict[str, Any]:
    args = rig.args
    n = args.soak_cameras
    dep, _ = rig.deploy(n, 1, f"soak{n}")
    worker = dep.workers[0]
    samples: list[dict[str, Any]] = []
    try:
        loader = rig.load(dep, n)
        time.sleep(args.warmup_s)
        prev = dep.snapshot()
        alerts_seen = worker_memory(worker.port)["alerts"]
        for minute in range(1, int(args.soak_minutes) + 1):
            time.sleep(60)
            now = dep.snapshot()
            gauges = worker_memory(worker.port)
            alerts = gauges.pop("alerts")
            rate = None if alerts is None or alerts_seen is None else (alerts - alerts_seen) / (now.at - prev.at)
            det = dep.topics[0]
            processed = now.done[det] - prev.done[det]
            samples.append(
                {
                    "minute": minute,
                    "rss_mb": rss_mb(worker.pid),
                    "data_dir_mb": dir_mb(dep.data),
                    "cpu_ms_per_detection": round((now.cpu - prev.cpu) * 1000.0 / processed, 3) if processed else None,
                    "lag_messages": now.ends[det] - now.done[det],
                    # what the worker's own gauges say the growth is: RocksDB's shared budget filling,
                    # and the free C heap it has handed back so far (ROADWATCH_HEAP_TRIM_S)
                    **gauges,
                    "alerts_per_s": None if rate is None else round(rate, 2),
                }
            )
            alerts_seen = alerts
            log(f"  soak {json.dumps(samples[-1])}")
            prev = now
        loader.finish()
    finally:
        worker.stop()
    first, last = samples[0], samples[-1]
    minutes = max(1, last["minute"] - first["minute"])
    return {
        "cameras": n,
        "minutes": last["minute"],
        "rss_mb_start": first["rss_mb"],
        "rss_mb_end": last["rss_mb"],
        "rss_mb_per_min": round((last["rss_mb"] - first["rss_mb"]) / minutes, 2),
        "data_dir_mb_start": first["data_dir_mb"],
        "data_dir_mb_end": last["data_dir_mb"],
        "data_dir_mb_per_min": round((last["data_dir_mb"] - first["data_dir_mb"]) / minutes, 2),
        "cpu_ms_per_detection_start": first["cpu_ms_per_detection"],
        "cpu_ms_per_detection_end": last["cpu_ms_per_detection"],
        # the test: after the first 5 minutes, growth over the rest, and CPU against its start
        "after_5_min": settled(samples),
        # and after the worker's RocksDB budget has filled (it takes ~9 minutes at 100 cameras)
        "after_10_min": settled(samples, 10),
        "samples": samples,
    }


def worker_memory(port: int) -> dict[str, float | None]:
    """The worker's RocksDB budget in use and the C heap it has trimmed, in MiB (as RSS), and the
    alerts it has raised (what the alerts table's writes scale with), from its /metrics."""
    wanted = {"roadwatch_rocksdb_memory_bytes": "rocksdb_mb", "roadwatch_heap_trimmed_bytes_total": "heap_trimmed_mb"}
    found: dict[str, float | None] = dict.fromkeys([*wanted.values(), "alerts"])
    try:
        samples = [s for s in worker_samples(port) if s.name in wanted or s.name == "roadwatch_alerts_total"]
    except (OSError, http.client.HTTPException, ValueError):
        return found  # a worker too busy to answer this minute: the sample says so with nulls
    for sample in samples:
        if sample.name == "roadwatch_alerts_total":
            found["alerts"] = (found["alerts"] or 0) + sample.value
        else:
            found[wanted[sample.name]] = round(sample.value / 2**20, 1)
    return found


def settled(samples: list[dict[str, Any]], after: int = 5) -> dict[str, Any] | None:
    """RSS and data-dir growth from minute ``after`` to the end (fractions), and CPU per detection at
    the end against that minute's (a ratio); None for a soak no longer than ``after`` minutes."""
    start = next((s for s in samples if s["minute"] == after), None)
    last = samples[-1]
    if start is None or last["minute"] <= after:
        return None
    # medians over 5 minutes, not one-minute samples (they swing by a third on this machine)
    cpu_start = _median([s["cpu_ms_per_detection"] for s in samples if after <= s["minute"] < after + 5])
    cpu_end = _median([s["cpu_ms_per_detection"] for s in samples[-5:]])
    return {
        "minutes": last["minute"] - after,
        "rss_growth": round(last["rss_mb"] / start["rss_mb"] - 1.0, 4),
        "data_dir_growth": round(last["data_dir_mb"] / start["data_dir_mb"] - 1.0, 4),
        "cpu_per_detection_ratio": round(cpu_end / cpu_start, 3) if cpu_start and cpu_end else None,
        "lag_messages_end": last["lag_messages"],
    }


def _median(values: list[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return known[len(known) // 2] if known else None


def provenance(args: argparse.Namespace) -> dict[str, Any]:
    """Which code and options a block of figures came from (blocks are rerun apart)."""
    try:
        here = Path(__file__).parent
        git = ["git", "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(git, capture_output=True, text=True, check=True, cwd=here).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "level_s": args.level_s,
        "warmup_s": args.warmup_s,
        "soak_minutes": args.soak_minutes or None,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("one_worker", "1 worker"), ("two_workers", "2 workers")):
        levels = report.get(key, {}).get("levels", [])
        if not levels:
            continue
        cams = [lv["cameras"] for lv in levels]
        a.plot(cams, [lv["e2e_ms"]["p95"] for lv in levels], marker="o", label=label)
        b.plot(cams, [lv["lag_end_s"] for lv in levels], marker="o", label=label)
    a.axhline(2000, color="grey", linestyle="--", linewidth=0.8)
    a.set(xscale="log", yscale="log", xlabel="cameras at 2 fps", ylabel="e2e p95 (ms)", title="latency")
    b.set(xscale="log", xlabel="cameras at 2 fps", ylabel="lag at the end (s of input)", title="consumer lag")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="50,100,200,500,1000,2000")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--level-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--every", type=int, default=6, help="frames a (pedestrian, vehicle) pair lives")
    parser.add_argument("--calls-per-s", type=float, default=70.0, help="the VLM rate the camera budget allows")
    parser.add_argument("--vlm-latency-ms", type=float, default=400.0)
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="run the soak instead of the step load")
    parser.add_argument("--soak-cameras", type=int, default=100)
    parser.add_argument("--soak-key", default="soak", help="the JSON key the soak is written under")
    parser.add_argument("--profile-level", type=int, default=0, help="py-spy one worker at this many cameras")
    parser.add_argument("--before-after", type=int, default=50, help="cameras of the before/after-#13 pair (0: none)")
    parser.add_argument("--cprofile", type=Path, help="run the workers under cProfile, profiles written here")
    parser.add_argument(
        "--heapwatch", type=Path, help="run the workers under bench.heapwatch, heap growth written here"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "capacity.json")
    args = parser.parse_args(argv)
    global CPROFILE, HEAPWATCH
    CPROFILE = args.cprofile
    HEAPWATCH = args.heapwatch
    if HEAPWATCH is not None and CPROFILE is not None:
        parser.error("--heapwatch and --cprofile each wrap the worker: pick one")
    if HEAPWATCH is not None:
        HEAPWATCH.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="roadwatch-capacity-") as tmp:
        workdir = Path(tmp)
        crops = stored_crops(workdir / "images")
        probe = cameras_for(1, args.every, crops)[0].frame(time.time() * 1000.0)
        decode(DetectionResult, json.dumps(probe).encode())  # the loader's records are what workers accept
        cluster = KafkaCluster(workdir / "kafka", size=1).start()
        redis_port, vlm_port = free_port(), free_port()
        keys = [f"cap-key-{i:02d}-{os.urandom(4).hex()}" for i in range(10)]
        procs = [
            spawn("redis", redis_command(redis_port, workdir), dict(os.environ), workdir, redis_port),
            spawn(
                "vlm",
                vlm.command(vlm_port, keys, latency_ms=args.vlm_latency_ms, p95_ms=args.vlm_latency_ms * 2),
                dict(os.environ),
                workdir,
                vlm_port,
            ),
        ]
        env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            ROADWATCH_KAFKA_URL=cluster.url,
            ROADWATCH_VLM_BASE_URL=f"http://127.0.0.1:{vlm_port}/v1",
            ROADWATCH_VLM_KEYS=",".join(keys),
            ROADWATCH_IMAGE_STORE=f"file://{workdir / 'images'}",
            ROADWATCH_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            ROADWATCH_TOPIC_PARTITIONS=str(PARTITIONS),
        )
        try:
            wait_until(lambda: port_open(redis_port) and port_open(vlm_port), 30, "redis and the simulated VLM")
            rig = Rig(args, cluster, env, workdir, vlm_port, crops)
            if args.soak_minutes:
                report[args.soak_key] = {**soak(rig), "measured": provenance(args)}
            else:
                for w in (int(x) for x in args.workers.split(",")):
                    levels = step_load(rig, w)
                    key = "one_worker" if w == 1 else "two_workers" if w == 2 else f"workers_{w}"
                    report[key] = {"levels": levels, **summary(levels), "measured": provenance(args)}
                    args.out.write_text(json.dumps(report, indent=2) + "\n")
                    pair = next((lv for lv in levels if lv["cameras"] == args.before_after), None)
                    if w == 1 and pair is not None:
                        report["before_after_13"] = {**before_after(rig, pair), "measured": provenance(args)}
                        args.out.write_text(json.dumps(report, indent=2) + "\n")
        finally:
            for proc in reversed(procs):
                proc.stop()
            cluster.stop()
    one = report.get("one_worker", {})
    report["max_cameras_one_worker"] = one.get("max_cameras")
    report["worker_cpu_ms_per_detection"] = one.get("worker_cpu_ms_per_detection")
    seed = next((lv for lv in one.get("levels", []) if lv["cameras"] == 100), None)
    if seed is not None:
        report["seed_target"] = {
            "cameras": 100,
            "camera_budget_per_min": seed["camera_budget_per_min"],
            "vlm_calls_per_s": seed["vlm_calls_per_s"],
            "ok_rate": seed["ok_rate"],
            "e2e_ms": seed["e2e_ms"],
            "held": held(seed),
            "met": held(seed) and seed["vlm_calls_per_s"] >= 50 and (seed["ok_rate"] or 0) >= 0.99,
        }
    if not args.soak_minutes:  # a soak run leaves the step load's scenario as it was
        report["scenario"] = {
            "fps": FPS,
            "partitions": PARTITIONS,
            "level_s": args.level_s,
            "warmup_s": args.warmup_s,
            "pair_lifetime_frames": args.every,
            "vlm_calls_per_s_allowed": args.calls_per_s,
            "vlm_latency_median_ms": args.vlm_latency_ms,
            "store": "rocksdb (the default)",
            "machine": {"cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")},
        }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    log(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
