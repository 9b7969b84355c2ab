"""Detection benchmark: quality on the harder scenes, frames per second per backend, cameras per node.

``python -m bench.detection [--frames 150] [--quality-seconds 60]``

Quality (:mod:`bench.detection_quality`): recall and precision by class of the motion path on
the harder labelled scenes at 2, 5 and 10 fps, against the plain MOG2 loop in the same run
(``harder``, ``baseline``, ``scenarios``). Speed:

Per backend, in one run on the same pre-rendered 640x360 frames of four simulated cameras:

* ``bare_fps``: the backend alone (``YOLO.predict`` in a loop; for motion, the detector's own
  ``detect``: light correction, shake measurement, MOG2, contours);
* ``fps``: the producer's full analysis of a frame (:func:`models.producer.analyse`: detector,
  tracker, traffic groups, JPEG crops, claim-check refs);
* ``ratio`` = fps / bare_fps: what roadwatch's own work costs on top of the model;
* for motion, ``plain_mog2_fps``: MOG2 alone on the same frames (the detector before issue 16),
  and ``detector_vs_plain_mog2``: what light correction, shake measurement and the median
  start cost on top of it, in the same run (the machine's speed varies from run to run).

``motion_by_resolution``: one camera's analysis (as ``fps``) of the same street at 640x360,
1280x720 and 1920x1080, frames halved to the detector's ``MAX_SIDE`` (the default) beside
analysed whole, in the same run.

``cameras_per_node``: frames per second one node analyses over four cameras at once, divided by
2 analysis fps per camera, rounded down. For motion, as ``python -m models.producer --processes 2``
runs it with ``--workers 1`` (``node_fps``: two processes, each with half the cameras, one
analysis thread each), beside one process with two analysis threads
(``node_fps_one_process_two_threads``) and the two processes with OpenCV's every-core default
(``node_fps_opencv_every_core``): five rounds, each started by another of the three, the medians
reported and every run kept (``*_runs``), the ratios the median of each round's; the processes'
CPU a frame beside (``node_cpu_ms_per_frame``), and ``motion_by_cpu``: the cameras a node whose
cores were all its own would hold at that CPU. YOLO in one process with two analysis threads. Frame
decoding is not included (a real camera's H.264 decode adds a few ms per frame). The producer's
figures are a steady state: each camera's first frames (``WARM_FRAMES``, the motion background's
warm-up; for YOLO two frames, and two before its ``bare_fps``) run before the clock starts.

Backends: ``motion`` (OpenCV MOG2), ``yolo`` (yolo11n from its model yaml, random weights,
torch on CPU) and ``yolo_onnx`` (the same exported to ONNX, onnxruntime on CPU). Random
weights find nothing, so the tracker and grouping work is that of an empty street: the tax on
the motion backend, which does find every moving object, is the realistic one.
Writes ``bench/results/detection.json``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import queue
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.detection_quality import measure as measure_quality
from bench.pipeline import RESULTS, log, save
from models.cameras import CameraConfig
from models.detectors import MAX_SIDE, WARM_UP_S, Detector, MotionDetector, YoloDetector, halvings
from models.producer import CameraPipeline, analyse, cv_threads
from models.sources import Frame
from sim.scenarios import scenario
from sim.scene import Scene
from sim.source import scene_from_url
from streams.images import open_store
from streams.settings import Settings

IMGSZ = 640


def render(cams: dict[str, str], frames: int) -> dict[str, list[np.ndarray]]:
    out = {}
    for cam_id, url in cams.items():
        scene: Scene = scene_from_url(url)
        out[cam_id] = [scene.render(30 + i / 2)[0] for i in range(frames)]
    return out


def rate(n: int, fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return round(n / (time.perf_counter() - started), 2)


#: Frames per camera analysed before the clock starts: the motion background's warm-up (a
#: median of the first WARM_UP_S, paid once per camera, not per frame) and two frames more.
WARM_FRAMES = int(WARM_UP_S * 2) + 2


def _cameras(frames: dict[str, list[np.ndarray]]) -> dict[str, CameraPipeline]:
    return {c: CameraPipeline(CameraConfig(id=c, url="sim://scene", fps=2)) for c in frames}


def _analyse_all(
    cams: dict[str, CameraPipeline],
    frames: dict[str, list[np.ndarray]],
    indices: range,
    detector: Detector,
    settings: Settings,
    store: Any,
) -> None:
    """Frame by frame, each camera in turn (as the producer: one frame per camera at a time)."""
    for i in indices:
        for cam_id in cams:
            analyse(cams[cam_id], Frame(frames[cam_id][i], 30 + i / 2, i), detector, store, settings)


def _check_frames(n: int, warm_frames: int) -> None:
    """Ten timed frames a camera at the least, after the warm-up."""
    if n < warm_frames + 10:
        raise ValueError(f"speed needs at least {warm_frames + 10} frames a camera, got {n}")


def steady_rate(
    frames: dict[str, list[np.ndarray]],
    warm: Callable[[range], None],
    timed: Callable[[range], None],
    warm_frames: int = WARM_FRAMES,
) -> float:
    """Frames per second of ``timed`` over the frames after the first ``warm_frames``, which
    ``warm`` is given untimed: a camera runs for hours, so its start (the background's first
    median, the source opened) is no part of what a node holds."""
    n = len(next(iter(frames.values())))
    _check_frames(n, warm_frames)
    warm(range(warm_frames))
    return rate((n - warm_frames) * len(frames), lambda: timed(range(warm_frames, n)))


def pipeline_fps(
    detector: Detector,
    frames: dict[str, list[np.ndarray]],
    settings: Settings,
    store: Any,
    warm_frames: int = WARM_FRAMES,
) -> float:
    cams = _cameras(frames)

    def run(r: range) -> None:
        _analyse_all(cams, frames, r, detector, settings, store)

    return steady_rate(frames, run, run, warm_frames)


def node_fps(
    make: Callable[[], Detector],
    frames: dict[str, list[np.ndarray]],
    settings: Settings,
    store: Any,
    threads: int = 2,
    warm_frames: int = WARM_FRAMES,
) -> float:
    """Two analysis threads, each owning half the cameras (as the producer: one frame per camera at a time)."""
    detector = make()
    cams = _cameras(frames)
    ids = list(frames)
    shares = [{c: cams[c] for c in ids[i::threads]} for i in range(threads)]

    def run(r: range) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda share: _analyse_all(share, frames, r, detector, settings, store), shares))

    return steady_rate(frames, run, run, warm_frames)


def _node_share(cams: dict[str, str], n_frames: int, barrier: Any, done: Any, opencv_threads: int) -> None:
    """One producer process's share of the cameras: render them, warm up, wait for the others, time.
    ``opencv_threads`` as the producer's ``--cv-threads`` (0: OpenCV's default, every core)."""
    if opencv_threads:
        cv2.setNumThreads(opencv_threads)
    settings = Settings()
    frames = render(cams, n_frames)
    with tempfile.TemporaryDirectory(prefix="roadwatch-detbench-") as tmp:
        store = open_store(f"file://{tmp}/img", redis_url=settings.redis_url, ttl_s=60)
        detector, pipes = MotionDetector(), _cameras(frames)
        _analyse_all(pipes, frames, range(WARM_FRAMES), detector, settings, store)
        barrier.wait(timeout=SHARE_TIMEOUT_S)
        started, cpu = time.perf_counter(), time.process_time()
        _analyse_all(pipes, frames, range(WARM_FRAMES, n_frames), detector, settings, store)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        done.put(((n_frames - WARM_FRAMES) * len(frames), wall, cpu))


#: The longest a process of the node measurement may take to get ready, or to finish its frames.
SHARE_TIMEOUT_S = 300.0


def node_fps_processes(
    cams: dict[str, str], n_frames: int, processes: int = 2, share_cores: bool = True
) -> tuple[float, float]:
    """The motion path as ``python -m models.producer --processes 2 --workers 1`` runs it: a
    process per core, each with every n-th camera and its share of the cores for OpenCV (or,
    ``share_cores=False``, OpenCV's default of every core in each); frames a second of them all
    until the last one finishes, and the CPU milliseconds a frame of them all (each process's own
    CPU time: what the machine's other tenants take from the wall clock is not in it). A
    process that fails stops the measurement with its exit code."""
    _check_frames(n_frames, WARM_FRAMES)
    ctx = multiprocessing.get_context("spawn")  # OpenCV's thread pool does not survive a fork
    ids = list(cams)
    shares = [{c: cams[c] for c in ids[i::processes]} for i in range(processes) if ids[i::processes]]
    barrier, done = ctx.Barrier(len(shares)), ctx.Queue()
    opencv_threads = cv_threads(processes) if share_cores else 0
    procs = [ctx.Process(target=_node_share, args=(s, n_frames, barrier, done, opencv_threads)) for s in shares]
    for proc in procs:
        proc.start()
    results: list[tuple[int, float, float]] = []
    deadline = time.monotonic() + 2 * SHARE_TIMEOUT_S
    try:
        while len(results) < len(procs):
            try:
                results.append(done.get(timeout=1.0))
                continue
            except queue.Empty:
                pass
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                barrier.abort()
                raise RuntimeError(f"a process of the node measurement failed (exit codes {failed}) or hung")
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    frames_done = sum(n for n, _, _ in results)
    return (
        round(frames_done / max(wall for _, wall, _ in results), 2),
        round(1000.0 * sum(cpu for _, _, cpu in results) / frames_done, 3),
    )


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median of ``a[i] / b[i]``: runs of two arms taken in the same round, compared round by round."""
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)


def bench_motion(
    frames: dict[str, list[np.ndarray]], settings: Settings, store: Any, cams: dict[str, str], runs: int = 5
) -> dict[str, Any]:
    detector = MotionDetector()
    models = {c: cv2.createBackgroundSubtractorMOG2(history=60, varThreshold=16, detectShadows=False) for c in frames}

    def bare(r: range) -> None:
        for i in r:
            for cam_id, images in frames.items():
                detector.detect(cam_id, images[i], i, at=30 + i / 2)

    def mog2(r: range) -> None:  # the plain background subtraction the detector was before issue 16
        for i in r:
            for cam_id, images in frames.items():
                models[cam_id].apply(images[i])

    bare_fps = steady_rate(frames, bare, bare)
    mog2_fps = steady_rate(frames, mog2, mog2)
    fps = pipeline_fps(MotionDetector(), frames, settings, store)
    n_frames = len(next(iter(frames.values())))
    arms: dict[str, Callable[[], tuple[float, float]]] = {
        "processes": lambda: node_fps_processes(cams, n_frames),
        "every_core": lambda: node_fps_processes(cams, n_frames, share_cores=False),
        "threads": lambda: (node_fps(MotionDetector, frames, settings, store), math.nan),
    }
    taken: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    for r in range(runs):
        # in rounds, each starting with another arm: the machine's drift falls on all alike, and
        # the ratios are of runs taken side by side
        names = list(arms)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            taken[name].append(arms[name]())
    node_runs, all_cores_runs, thread_runs = ([fps for fps, _ in taken[name]] for name in arms)
    node_cpu, all_cores_cpu = ([cpu for _, cpu in taken[name]] for name in ("processes", "every_core"))
    return {
        "fps": fps,
        "bare_fps": bare_fps,
        "ratio": round(fps / bare_fps, 3),
        "node_fps": statistics.median(node_runs),
        "node_fps_runs": node_runs,
        "node_fps_one_process_two_threads": statistics.median(thread_runs),
        "node_fps_one_process_two_threads_runs": thread_runs,
        # ratios: the median of each round's (runs in the same round were taken side by side)
        "processes_vs_threads": paired_ratio(node_runs, thread_runs),
        # the same processes with OpenCV's default pool (every core in each process)
        "node_fps_opencv_every_core": statistics.median(all_cores_runs),
        "node_fps_opencv_every_core_runs": all_cores_runs,
        "opencv_core_share_vs_every_core": paired_ratio(node_runs, all_cores_runs),
        # CPU a frame in the node's processes: what the machine's other tenants take from the wall clock is not in it
        "node_cpu_ms_per_frame": statistics.median(node_cpu),
        "node_cpu_ms_per_frame_runs": node_cpu,
        "node_cpu_ms_per_frame_opencv_every_core": statistics.median(all_cores_cpu),
        "node_cpu_ms_per_frame_opencv_every_core_runs": all_cores_cpu,
        "opencv_every_core_vs_core_share_cpu": paired_ratio(all_cores_cpu, node_cpu),
        "plain_mog2_fps": mog2_fps,
        "detector_vs_plain_mog2": round(bare_fps / mog2_fps, 3),
    }


#: The same street at three camera resolutions (road users drawn to the frame's size).
RESOLUTIONS = [(640, 360), (1280, 720), (1920, 1080)]


def street_url(width: int, height: int) -> str:
    """One street seen by a camera of ``width`` x ``height`` px: road users drawn to its size."""
    size = f"width={width}&height={height}&scale={width / 640:g}"
    return f"sim://scene?seed=21&vehicles=0.4&pedestrians=0.15&{size}&follow=1"


def bench_resolutions(n_frames: int, settings: Settings, store: Any, runs: int = 3) -> dict[str, Any]:
    """The producer's analysis of one camera at each of RESOLUTIONS, frames halved to the
    detector's ``MAX_SIDE`` (the default) and analysed whole, in the same run: frames a second,
    (medians of ``runs``) and ``halved_vs_whole``, the median of each round's ratio."""
    out: dict[str, Any] = {"max_side": MAX_SIDE}
    for w, h in RESOLUTIONS:
        frames = render({"cam": street_url(w, h)}, n_frames)
        halved, whole = [], []
        for _ in range(runs):  # side by side, in rounds: the machine's drift falls on both
            halved.append(pipeline_fps(MotionDetector(), frames, settings, store))
            whole.append(pipeline_fps(MotionDetector(max_side=0), frames, settings, store))
        out[f"{w}x{h}"] = {
            "halvings": halvings((h, w), MAX_SIDE),
            "fps": statistics.median(halved),
            "whole_fps": statistics.median(whole),
            "halved_vs_whole": paired_ratio(halved, whole),
        }
    return out


def bench_yolo(model: str, frames: dict[str, list[np.ndarray]], settings: Settings, store: Any) -> dict[str, Any]:
    detector = YoloDetector(model, imgsz=IMGSZ)
    images = [im for v in frames.values() for im in v]
    detector.detect_batch(images[:2])  # warm-up: graph build, allocations
    yolo = detector.model

    def bare() -> None:  # the same arguments: a changed device or precision makes ultralytics rebuild
        for image in images:
            yolo.predict(image, device=detector.device, imgsz=IMGSZ, conf=detector.conf, verbose=False)

    bare_fps = rate(len(images), bare)
    fps = pipeline_fps(detector, frames, settings, store, warm_frames=2)  # no background to learn
    node = node_fps(lambda: YoloDetector(model, imgsz=IMGSZ), frames, settings, store, warm_frames=2)
    return {"fps": fps, "bare_fps": bare_fps, "ratio": round(fps / bare_fps, 3), "node_fps": node, "imgsz": IMGSZ}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150, help="frames per camera for motion")
    parser.add_argument("--resolution-frames", type=int, default=60, help="frames per resolution")
    parser.add_argument("--yolo-frames", type=int, default=20, help="frames per camera for yolo")
    parser.add_argument("--quality-seconds", type=float, default=60.0, help="scene seconds scored per scenario")
    parser.add_argument("--out", type=Path, default=RESULTS / "detection.json")
    args = parser.parse_args(argv)
    settings = Settings()
    cams = scenario("demo")
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "frame": "640x360 BGR, 4 simulated cameras",
    }
    log(f"detection quality: {args.quality_seconds:.0f} s a scenario at 2, 5 and 10 fps")
    report.update(measure_quality(args.quality_seconds))
    with tempfile.TemporaryDirectory(prefix="roadwatch-detbench-") as tmp:
        store = open_store(f"file://{tmp}/img", redis_url=settings.redis_url, ttl_s=60)
        log(f"detection: rendering {args.frames} frames x {len(cams)} cameras")
        frames = render(cams, args.frames)
        report["motion"] = bench_motion(frames, settings, store, cams)
        log(f"  motion: {report['motion']}")
        report["motion_by_resolution"] = bench_resolutions(args.resolution_frames, settings, store)
        log(f"  motion by resolution: {report['motion_by_resolution']}")
        small = {c: v[: args.yolo_frames] for c, v in frames.items()}
        try:
            report["yolo"] = bench_yolo("yolo11n.yaml", small, settings, store)
            log(f"  yolo: {report['yolo']}")
            exported = YoloDetector("yolo11n.yaml", imgsz=IMGSZ).model.export(
                format="onnx", imgsz=IMGSZ, dynamic=True, simplify=True, project=tmp
            )
            onnx = Path(tmp) / "yolo11n.onnx"
            Path(exported).replace(onnx)
            report["yolo_onnx"] = bench_yolo(str(onnx), small, settings, store)
            log(f"  yolo_onnx: {report['yolo_onnx']}")
        except Exception as exc:  # the yolo extra missing: say so in the results, keep the motion figures
            log(f"  yolo skipped: {exc}")
            report["yolo_error"] = str(exc)
        report["cameras_per_node"] = {
            "motion": int(report["motion"]["node_fps"] // 2),
            # were the node's cores all its own: its cores' milliseconds over a frame's CPU at 2 fps
            "motion_by_cpu": int(cv2.getNumberOfCPUs() * 1000.0 / report["motion"]["node_cpu_ms_per_frame"] // 2),
            "yolo_onnx": int(report["yolo_onnx"]["node_fps"] // 2) if "yolo_onnx" in report else None,
            "yolo": int(report["yolo"]["node_fps"] // 2) if "yolo" in report else None,
            "analysis_fps_per_camera": 2,
        }
    save(args.out, report)


if __name__ == "__main__":
    main()
