"""The detection producer: cameras -> detector -> tracker -> traffic groups -> detection-results.

``python -m models.producer --cameras cameras.yaml --detector {motion,yolo,replay}``

One grabber per camera keeps the newest frame; every ``1/fps`` seconds a camera's newest frame
is analysed on a thread pool (OpenCV and torch release the GIL), so grabbing, inference and
producing overlap. Records go out through an idempotent aiokafka producer (acks=all, linger
10 ms, 32 KB batches, lz4). When Kafka is slow the producer drops *frames* (counted), never
records already queued.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, start_http_server
from redis import RedisError

from models.calibration import off_frame
from models.cameras import CameraConfig, load_cameras
from models.crops import crop_group
from models.detectors import MAX_SIDE, Detector, DetectorKind, make_detector
from models.ground_view import GroundView, Seen, cut_at_edge
from models.grouping import cluster, conflict_groups
from models.sources import Frame, Grabber, OnDemandGrabber, open_source
from models.ssm import RoadUser
from models.tracking import Tracker
from streams import metrics
from streams.child_metrics import ChildrenCollector
from streams.images import ImageStore, make_ref, open_store
from streams.records import MAX_MESSAGE_BYTES, Conflict, DetectedObject, DetectionResult, ImageRef, to_bytes
from streams.settings import Settings, get_settings
from streams.topic_names import TopicNames

logger = logging.getLogger("roadwatch.producer")

#: The most objects a frame reports (about 65 KB of record; grouping 300 took 137 ms on one core).
MAX_OBJECTS = 300
#: At shutdown, how long the camera readers get to end, all together.
GRABBERS_STOP_S = 3.0


def new_run_id() -> str:
    """A producer run's id: the start time, so runs sort, and a random tail, so they never collide."""
    return f"{int(time.time()):x}{secrets.token_hex(2)}"


class CameraPipeline:
    """Everything per camera: its grabber, its tracker, its sequence numbers."""

    def __init__(self, cfg: CameraConfig, run: str = "") -> None:
        self.cfg = cfg
        #: This producer process's run: a restart counts frames from 0 again under a new run.
        self.run = run or new_run_id()
        source = open_source(cfg.url)
        self.grabber: Grabber | OnDemandGrabber = (
            OnDemandGrabber(cfg.id, source) if source.on_demand else Grabber(cfg.id, source)
        )
        self.tracker = Tracker()
        self.frame_seq = 0
        #: whether the calibration's points were checked against the first frame's size
        self.frame_checked = False
        #: calibrated cameras only: speeds and conflicts in metres and seconds
        self.ground = (
            GroundView(cfg.calibration.fitted(), cfg.calibration.anchor, frame_interval_s=1.0 / cfg.fps)
            if cfg.calibration is not None
            else None
        )


def on_frame(
    box: tuple[float, float, float, float], shift: tuple[float, float], w: int, h: int
) -> tuple[float, float, float, float]:
    """``box`` of the steady view moved by the frame's ``shift`` (Detector.frame_shift), inside the frame."""
    if shift == (0.0, 0.0):
        return box
    dx, dy = shift
    return (
        min(w - 1.0, max(0.0, box[0] + dx)),
        min(h - 1.0, max(0.0, box[1] + dy)),
        min(w - 1.0, max(0.0, box[2] + dx)),
        min(h - 1.0, max(0.0, box[3] + dy)),
    )


def analyse(
    cam: CameraPipeline, frame: Frame, detector: Detector, store: ImageStore, settings: Settings
) -> DetectionResult:
    """Detect, track, group and crop one frame (runs on the thread pool)."""
    started = time.perf_counter()
    found = detector.detect(cam.cfg.id, frame.image, frame.seq, at=frame.captured_at)
    metrics.detector_seconds.labels(backend=detector.name).observe(time.perf_counter() - started)
    if len(found) > MAX_OBJECTS:
        # a storm of blobs (a light switched on, a shaken camera): the most confident, then largest,
        # so grouping (quadratic) stays bounded and the record far under the consumers' size limit
        metrics.objects_dropped_total.labels(camera_id=cam.cfg.id).inc(len(found) - MAX_OBJECTS)
        found = sorted(found, key=lambda d: (-d.conf, -(d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1])))[:MAX_OBJECTS]
    if cam.ground is not None and not cam.frame_checked:
        cam.frame_checked = True
        h, w = frame.image.shape[:2]
        outside = off_frame(cam.ground.calibration, w, h)
        if outside:
            # a calibration of another resolution: every position, speed and TTC would be wrong
            logger.error(
                "camera %s: calibration points %s lie outside its %dx%d frame (clicked on another resolution?): "
                "no ground positions, speeds or conflicts for it until the calibration is fixed",
                cam.cfg.id,
                outside,
                w,
                h,
            )
            cam.ground = None
    t = frame.motion_time
    found = cam.tracker.split_merged(found, t)
    tracks = cam.tracker.update(found, t)
    # tracks and ground positions are of the steady view; the boxes go out on the frame itself
    # (the crops are cut from it, the dashboard draws on them)
    shift = detector.frame_shift(cam.cfg.id)
    h, w = frame.image.shape[:2]
    on_ground: dict[int, RoadUser] = {}
    conflicts: list[Conflict] | None = None
    if cam.ground is not None:
        anchor = cam.ground.anchor
        seen = [
            Seen(tr.track_id, det.cls, det.bbox, cut_at_edge(det.bbox, w, h, anchor, shift))
            for det, tr in zip(found, tracks, strict=True)
        ]
        on_ground, conflicts = cam.ground.observe(t, seen)
    objects = []
    for det, tr in zip(found, tracks, strict=True):
        user = on_ground.get(tr.track_id)
        objects.append(
            DetectedObject(
                track_id=tr.track_id,
                cls=det.cls,
                conf=det.conf,
                bbox=[round(v, 1) for v in on_frame(det.bbox, shift, w, h)],
                speed=round(tr.speed, 1),
                ground=[round(user.x, 2), round(user.y, 2)] if user else None,
                velocity=[round(user.vx, 2), round(user.vy, 2)] if user else None,
            )
        )
    groups = cluster(objects)
    if conflicts:
        groups += conflict_groups(objects, groups, conflicts)
    crops: dict[str, ImageRef] = {}
    for group in groups:
        if group.interest >= settings.min_group_score:
            jpeg, w, h, region = crop_group(frame.image, group.bbox)
            try:
                crops[group.group_id] = make_ref(jpeg, w, h, store, settings.inline_image_limit, region)
            except (OSError, RedisError) as exc:
                # the image store away: the detection (and its measured conflicts) still goes out,
                # the group without its crop (its task, if any, fails as one without an image)
                metrics.crops_unstored_total.labels(camera_id=cam.cfg.id).inc()
                logger.warning("camera %s: crop not stored (%s)", cam.cfg.id, type(exc).__name__)
    h_img, w_img = frame.image.shape[:2]
    seq = cam.frame_seq
    cam.frame_seq += 1
    return DetectionResult(
        camera_id=cam.cfg.id,
        frame_seq=seq,
        captured_at=round(frame.captured_at * 1000.0, 1),
        frame_w=w_img,
        frame_h=h_img,
        model=detector.name,
        objects=objects,
        groups=groups,
        crops=crops,
        produced_at=round(time.time() * 1000.0, 1),
        run=cam.run,
        conflicts=conflicts,
    )


class Producer:
    """Runs every camera's loop and the Kafka producer."""

    def __init__(
        self,
        cameras: list[CameraConfig],
        detector: Detector,
        settings: Settings,
        *,
        max_pending: int = 200,
        workers: int = 2,
    ) -> None:
        run = new_run_id()
        self.cams = [CameraPipeline(c, run) for c in cameras]
        self.detector = detector
        self.settings = settings
        self.topic = TopicNames(settings.topic_prefix).detection_results
        self.store = open_store(settings.image_store, redis_url=settings.redis_url, ttl_s=settings.image_ttl_s)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detect")
        self.max_pending = max_pending
        self.pending = 0
        self.sent = 0
        self.stopping = asyncio.Event()
        self.kafka = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=10,
            max_batch_size=32768,
            compression_type="lz4",
            request_timeout_ms=30000,
        )

    def _sent(self, fut: asyncio.Future[Any]) -> None:
        self.pending -= 1
        if fut.cancelled() or fut.exception() is not None:
            logger.warning("send failed: %s", fut.exception() if not fut.cancelled() else "cancelled")
        else:
            self.sent += 1

    async def _send(self, camera_id: str, result: DetectionResult) -> None:
        """One record to Kafka; one that cannot go (too large, a broker error) is counted and dropped,
        never the end of the camera's loop, which ended the whole producer."""
        value = to_bytes(result)
        if len(value) > MAX_MESSAGE_BYTES:  # every consumer would send it to the dead letters
            metrics.frames_dropped_total.labels(camera_id=camera_id, reason="too_large").inc()
            logger.warning("camera %s: record of %d bytes over %d, dropped", camera_id, len(value), MAX_MESSAGE_BYTES)
            return
        self.pending += 1
        try:
            fut = await self.kafka.send(self.topic, key=camera_id.encode(), value=value)
        except Exception as exc:
            self.pending -= 1
            metrics.frames_dropped_total.labels(camera_id=camera_id, reason="send_failed").inc()
            logger.warning("camera %s: record not sent: %s", camera_id, exc)
            return
        fut.add_done_callback(self._sent)

    async def run_camera(self, cam: CameraPipeline) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / cam.cfg.fps
        next_at = time.monotonic()
        while not self.stopping.is_set():
            next_at += interval
            frame = cam.grabber.latest()
            if frame is not None:
                if self.pending >= self.max_pending:
                    metrics.frames_dropped_total.labels(camera_id=cam.cfg.id, reason="kafka_slow").inc()
                else:
                    try:
                        result = await loop.run_in_executor(
                            self.pool, analyse, cam, frame, self.detector, self.store, self.settings
                        )
                    except Exception:
                        logger.exception("camera %s: analysis failed", cam.cfg.id)
                    else:
                        metrics.frames_total.labels(camera_id=cam.cfg.id).inc()
                        await self._send(cam.cfg.id, result)
            delay = next_at - time.monotonic()
            if delay < -interval:  # fell behind: skip, never queue up
                next_at = time.monotonic()
                metrics.frames_dropped_total.labels(camera_id=cam.cfg.id, reason="behind").inc()
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=max(0.0, delay))
            except TimeoutError:
                pass

    def _wait_for_grabbers(self) -> None:
        """Each camera's reader ends (and releases its stream) within one deadline for all; one stuck in
        a network read is left behind (a daemon thread) rather than hold up the records still to send."""
        deadline = time.monotonic() + GRABBERS_STOP_S
        stuck = [c.cfg.id for c in self.cams if not c.grabber.wait(deadline - time.monotonic())]
        if stuck:
            logger.warning("camera readers still in a read at shutdown: %s", ", ".join(stuck))

    async def run(self, duration_s: float | None = None) -> None:
        await self.kafka.start()
        for cam in self.cams:
            cam.grabber.start()
        logger.info(
            "producing %d cameras with %s to %s", len(self.cams), self.detector.name, self.settings.bootstrap_servers
        )
        tasks = [asyncio.ensure_future(self.run_camera(c)) for c in self.cams]
        try:
            if duration_s is not None:
                try:
                    await asyncio.wait_for(self.stopping.wait(), timeout=duration_s)
                except TimeoutError:
                    self.stopping.set()
            await asyncio.gather(*tasks)
        finally:
            self.stopping.set()
            for cam in self.cams:
                cam.grabber.stop()
            await asyncio.to_thread(self._wait_for_grabbers)
            await self.kafka.flush()
            await self.kafka.stop()
            self.pool.shutdown(wait=False, cancel_futures=True)
            logger.info("producer stopped after %d records", self.sent)


#: Flags a supervisor sets per child (or, ``--processes``, must not pass on: a child would supervise).
_PER_CHILD = ("--device", "--metrics-port", "--metrics-host", "--camera-ids", "--processes", "--cv-threads")


def cv_threads(processes: int, cpus: int | None = None) -> int:
    """OpenCV threads for each of ``processes`` sharing the machine: its share of the cores.

    OpenCV's pool takes every core in each process, so two processes on two cores ran four
    threads whose parallel sections wait on one another (``opencv_core_share_vs_every_core`` in
    ``bench/results/detection.json``: the node's frames a second with the share against without).
    """
    # OpenCV's count, as its own default takes it: the CPUs this process may use (affinity, a
    # container's quota), not the host's
    return max(1, (cpus or cv2.getNumberOfCPUs() or 1) // max(1, processes))


def child_args(argv: list[str]) -> list[str]:
    """``argv`` without the flags each child gets its own value of (the parser takes no
    abbreviations, so these spellings are the only ones)."""
    cleaned: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _PER_CHILD:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in _PER_CHILD)):
            cleaned.append(arg)
    return cleaned


def supervise(
    argv: list[str],
    devices: list[str],
    cameras: list[CameraConfig],
    metrics_port: int,
    cv_threads_each: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> None:
    """One producer process per device (or per CPU share: ``--processes``), each with every n-th
    camera: inference on several GPUs never shares a CUDA context, and the motion path's Python
    half (tracking, grouping, records) never waits on another process's GIL (see
    ``motion.node_fps`` against ``node_fps_one_process_two_threads`` in
    ``bench/results/detection.json``). Each child gets ``cv_threads_each`` OpenCV threads (0:
    OpenCV's default, every core), by default its share of the cores (:func:`cv_threads`).
    With ``metrics_port``, this process serves every child's metrics there (each sample labelled
    ``process``: :class:`streams.child_metrics.ChildrenCollector`), the children on loopback
    ports after it."""
    cleaned = child_args(argv)
    share_of_cores = cv_threads(len(devices)) if cv_threads_each is None else cv_threads_each
    commands: list[list[str]] = []
    for i, device in enumerate(devices):
        share = [c.id for c in cameras[i :: len(devices)]]
        if not share:
            continue
        cmd = [sys.executable, "-m", "models.producer", *cleaned, "--device", device, "--camera-ids", ",".join(share)]
        cmd += ["--cv-threads", str(share_of_cores)]
        if metrics_port:
            cmd += ["--metrics-port", str(metrics_port + 1 + i), "--metrics-host", "127.0.0.1"]
        logger.info(
            "process %d of %d, device %s: %d cameras (%s)", i + 1, len(devices), device, len(share), ", ".join(share)
        )
        commands.append(cmd)
    if metrics_port:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ChildrenCollector([metrics_port + 1 + i for i in range(len(commands))]))
        start_http_server(metrics_port, addr=metrics_host, registry=registry)
    codes = run_children(commands)
    if any(codes):
        raise SystemExit(f"producer processes exited with {codes}")


def run_children(commands: list[list[str]], poll_s: float = 0.5) -> list[int]:
    """Run the children until all have exited; their exit codes.

    A child that fails stops the others: a producer half of whose cameras are dark must not look
    healthy to whatever restarts it. SIGINT and SIGTERM are passed on (handlers set before the
    first child starts, so a stop during start-up reaches the children started so far).
    """
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for cmd in commands:
            children.append(subprocess.Popen(cmd))  # noqa: S603 - our own module, our own arguments
        while True:
            codes = [child.poll() for child in children]  # every child polled: any() would stop at the first
            if all(code is not None for code in codes):
                break
            failed = [code for code in codes if code not in (None, 0)]
            if failed:
                logger.error("a producer process exited with %s: stopping the others", failed[0])
                forward(signal.SIGTERM, None)
                for child in children:
                    try:
                        child.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        child.kill()
                break
            time.sleep(poll_s)
        return [child.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def command(cameras: Path | str, detector: DetectorKind = "motion", **options: float | int | str) -> list[str]:
    """The command line of a producer process: ``options`` are its flags (``metrics_port=9100``
    becomes ``--metrics-port 9100``), so the stack, tests and benchmarks start it one way."""
    cmd = [sys.executable, "-m", "models.producer", "--cameras", str(cameras), "--detector", detector]
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    return cmd


def main(argv: list[str] | None = None) -> None:
    # no abbreviations: a supervisor strips its per-child flags by their full spelling
    parser = argparse.ArgumentParser(
        prog="python -m models.producer", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--cameras", type=Path, default=Path("deploy/cameras.sim.yaml"))
    parser.add_argument("--detector", choices=["motion", "yolo", "replay"], default="motion")
    parser.add_argument("--model", default="", help="yolo: weights file (.pt/.onnx) or model yaml")
    parser.add_argument(
        "--device",
        default="cpu",
        help="yolo: cpu, cuda:N, or several (cuda:0,cuda:1): one producer process per device, cameras split among them",
    )
    parser.add_argument("--camera-ids", default="", help=argparse.SUPPRESS)  # a supervised child's share
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument(
        "--motion-max-side",
        type=int,
        default=MAX_SIDE,
        help="motion: frames are halved until their long side is at most this (0: analysed whole)",
    )
    parser.add_argument("--replay", type=Path, default=None, help="replay: JSON-lines detections")
    parser.add_argument("--max-batch", type=int, default=1, help="yolo: frames of several cameras per model call")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="yolo: longest wait to fill a batch")
    parser.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on this port (0: off)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="bind address of /metrics")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--workers", type=int, default=2, help="analysis threads")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="producer processes on the one --device, cameras split among them (CPU: one per core, --workers 1)",
    )
    parser.add_argument(
        "--cv-threads",
        type=int,
        default=None,
        help="OpenCV threads of each process (0: OpenCV's default, every core; default: with --processes or "
        "several devices each process's share of the cores). torch's and ONNX Runtime's pools are their own",
    )
    parser.add_argument("-l", "--loglevel", default="info")
    args = parser.parse_args(argv)
    if args.cv_threads is not None and args.cv_threads < 0:
        parser.error("--cv-threads must be 0 (every core) or more")
    devices = [d for d in args.device.split(",") if d]
    if args.processes < 1:
        parser.error("--processes must be 1 or more")
    if args.processes > 1:
        if len(devices) > 1:
            parser.error("--processes splits the cameras on one --device; several devices get a process each")
        devices = devices * args.processes
    if args.camera_ids and len(devices) > 1:
        parser.error("a supervised child runs on one device")
    logging.basicConfig(level=args.loglevel.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    kind: DetectorKind = args.detector
    cameras = load_cameras(args.cameras)
    if len(devices) > 1:
        supervise(
            argv if argv is not None else sys.argv[1:],
            devices,
            cameras,
            args.metrics_port,
            args.cv_threads,
            args.metrics_host,
        )
        return
    if args.camera_ids:
        share = set(args.camera_ids.split(","))
        cameras = [c for c in cameras if c.id in share]
    detector = make_detector(
        kind,
        model=args.model,
        device=args.device,
        imgsz=args.imgsz,
        replay=args.replay,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_side=args.motion_max_side,
    )
    if args.cv_threads is not None:  # after the detector: importing ultralytics sets OpenCV's threads itself
        cv2.setNumThreads(args.cv_threads if args.cv_threads > 0 else -1)  # below 0: OpenCV's default
    logger.info("OpenCV threads: %d", cv2.getNumThreads())
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.REGISTRY)

    async def runner() -> None:
        # a batching detector needs as many analysis threads as frames it may gather
        producer = Producer(cameras, detector, settings, workers=max(args.workers, args.max_batch))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, producer.stopping.set)
        await producer.run(args.duration)

    asyncio.run(runner())


if __name__ == "__main__":
    main()
