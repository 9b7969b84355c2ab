"""GPU batch benchmark: YOLO frames per second at batch 1 vs 8/16/32 frames from many cameras.

``python -m bench.gpu_batch --device cuda:0`` (on a GPU machine; ``--device cpu`` for a dry run)

Two measurements per batch size, on 640x360 frames of simulated cameras, yolo11n from its model
yaml (random weights: the same compute as trained weights), FP16 on CUDA:

* ``model_fps``: ``YoloDetector.detect_batch`` on ready batches (the GPU's ceiling);
* ``cameras_fps``: as the producer runs it: one thread per camera calling ``detect``, the
  :class:`models.detectors.FrameBatcher` gathering up to ``batch`` frames (waiting at most
  ``--max-wait-ms``) into one model call; with the mean batch size it actually formed.

``speedup`` is each batch size's fps over batch 1's, measured in the same run.
Writes ``bench/results/gpu_batch.json`` (or ``--out``). Needs the yolo extra.
"""

from __future__ import annotations

import argparse
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.pipeline import RESULTS, log, save
from models.detectors import YoloDetector
from sim.scene import Scene


def frames_for(cameras: int) -> list[np.ndarray]:
    return [Scene(seed=100 + i, vehicle_rate=0.5, pedestrian_rate=0.2).render(30.0)[0] for i in range(cameras)]


def model_fps(det: YoloDetector, frames: list[np.ndarray], batch: int, seconds: float) -> float:
    chunk = [frames[i % len(frames)] for i in range(batch)]
    det.detect_batch(chunk)  # warm-up for this shape
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        det.detect_batch(chunk)
        done += batch
    return round(done / (time.perf_counter() - started), 1)


def cameras_fps(
    model: str, device: str, imgsz: int, frames: list[np.ndarray], batch: int, wait_ms: float, seconds: float
) -> dict[str, Any]:
    det = YoloDetector(model, device=device, imgsz=imgsz, max_batch=batch, max_wait_ms=wait_ms)
    det.detect_batch(frames[: min(batch, len(frames))])
    counts = [0] * len(frames)
    stop = time.perf_counter() + seconds

    def camera(i: int) -> None:
        while time.perf_counter() < stop:
            det.detect(f"cam-{i}", frames[i], counts[i])
            counts[i] += 1

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(len(frames))]
    started = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - started
    sizes = det.batcher.batch_sizes if det.batcher else [1]
    det.close()
    return {"fps": round(sum(counts) / elapsed, 1), "mean_batch": round(sum(sizes) / max(1, len(sizes)), 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_batch", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--model", default="yolo11n.yaml")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batches", default="1,8,16,32")
    parser.add_argument("--cameras", type=int, default=32, help="camera threads for cameras_fps")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_batch.json")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "device": args.device,
        "model": args.model,
        "imgsz": args.imgsz,
        "host": platform.node(),
        "seconds_per_measurement": args.seconds,
    }
    try:
        import torch

        if args.device.startswith("cuda"):
            report["gpu"] = torch.cuda.get_device_name(int(args.device.split(":")[1] if ":" in args.device else 0))
        report["torch"] = torch.__version__
    except Exception as exc:  # report, do not hide, a broken torch
        report["torch_error"] = str(exc)
    frames = frames_for(args.cameras)
    det = YoloDetector(args.model, device=args.device, imgsz=args.imgsz)
    rows: dict[str, Any] = {}
    for batch in (int(b) for b in args.batches.split(",")):
        rows[f"batch_{batch}"] = {
            "model_fps": model_fps(det, frames, batch, args.seconds),
            "cameras": cameras_fps(args.model, args.device, args.imgsz, frames, batch, args.max_wait_ms, args.seconds),
        }
        log(f"  batch {batch}: {rows[f'batch_{batch}']}")
    base = rows[next(iter(rows))]["model_fps"] or 1.0
    for row in rows.values():
        row["speedup"] = round(row["model_fps"] / base, 2)
    report["results"] = rows
    save(args.out, report)


if __name__ == "__main__":
    main()
