"""The benchmark report: ``bench/results/REPORT.md`` and its plots, from the JSON the benchmarks wrote.

``python -m bench.report`` (the last step of ``make bench``)

Plots (PNG, beside the report):

* ``latency_cdf.png``: capture-to-result latency and roadwatch's own overhead (e2e minus the
  VLM call), as cumulative distributions, from the pipeline benchmark;
* ``throughput.png``: VLM calls the keys accepted per second over time for 1, 2 and 4 scheduler
  workers against the keys' aggregate capacity (the revoked key's share removed after the
  revocation), and the pipeline's detections and results over time;
* ``key_states.png``: how many keys were AVAILABLE, IN_USE, COOLING and DISABLED over the
  2-worker key-pool run.

Missing inputs are named in the report instead of silently skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.pipeline import RESULTS, log

STATE_COLOURS = {"AVAILABLE": "#2f9e44", "IN_USE": "#1971c2", "COOLING": "#f08c00", "DISABLED": "#c92a2a"}


def load(folder: Path, name: str) -> Any:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def plot_latency(series: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("e2e_ms", "capture -> result (e2e)"), ("overhead_ms", "roadwatch overhead (e2e - VLM call)")):
        values = series.get(key) or []
        if values:
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, ys, where="post", label=f"{label}, n={len(values)}")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("share of results")
    ax.set_title("Pipeline latency (cumulative)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def rates(samples: list[dict[str, Any]], window_s: float = 10.0) -> tuple[list[float], list[float]]:
    """Accepted calls per second over the last ``window_s`` at each sample (a slow sample would
    otherwise show as a spike)."""
    ts, rs = [], []
    start = 0
    for b in samples:
        while start < len(samples) and b["t"] - samples[start]["t"] > window_s:
            start += 1
        a = samples[max(0, start - 1)]
        if b["t"] - a["t"] >= window_s / 2:
            ts.append(b["t"])
            rs.append((b["accepted"] - a["accepted"]) / (b["t"] - a["t"]))
    return ts, rs


def plot_throughput(kp_series: dict[str, Any], kp: dict[str, Any], pipe_series: dict[str, Any], out: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7))
    keys, rpm = kp["scenario"]["keys"], kp["scenario"]["rpm_per_key"]
    revoked_at = None
    for name in sorted(kp_series):
        ts, rs = rates(kp_series[name]["samples"])
        top.plot(ts, rs, label=name.replace("_", " "), linewidth=1.2)
        revoked_at = kp_series[name]["revoked_at_s"]
    if revoked_at is not None:
        end = max((s["t"] for v in kp_series.values() for s in v["samples"]), default=revoked_at)
        top.plot(
            [0, revoked_at, revoked_at, end],
            [keys * rpm / 60] * 2 + [(keys - 1) * rpm / 60] * 2,
            "k--",
            linewidth=1,
            label="capacity (key-4 revoked)",
        )
    top.set_ylabel("accepted VLM calls / s")
    top.set_xlabel("seconds")
    top.set_title("Key pool: calls the keys accepted, 10 keys x 60 rpm, 10% transient failures")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    progress = pipe_series.get("progress") or []
    if progress:
        ts = [p["t"] for p in progress]
        bottom.plot(ts, [p["detections"] for p in progress], label="detections produced")
        bottom.plot(ts, [p["results"] for p in progress], label="risk results")
        bottom.set_ylabel("messages (cumulative)")
        bottom.set_xlabel("seconds")
        bottom.set_title("Pipeline benchmark: detections and results over time")
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_key_states(series: dict[str, Any], out: Path, title: str) -> None:
    samples = series["samples"]
    ts = [s["t"] for s in samples]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    stacks = [[s["states"].get(state, 0) for s in samples] for state in STATE_COLOURS]
    ax.stackplot(ts, stacks, labels=list(STATE_COLOURS), colors=list(STATE_COLOURS.values()), alpha=0.85)
    ax.axvline(series["revoked_at_s"], color="k", linestyle="--", linewidth=1)
    ax.text(series["revoked_at_s"], 10.2, " key-4 revoked", fontsize=8)
    ax.set_ylim(0, 11)
    ax.set_ylabel("keys")
    ax.set_xlabel("seconds")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def detection_quality(det: dict[str, Any]) -> list[str]:
    """The harder scenes: the motion path against the plain MOG2 loop, per rate and per scenario."""
    keys = ["recall", "precision", "pedestrian_recall", "vehicle_recall"]
    rows = [
        [f"{who}, {rate.removeprefix('fps_')} fps", *[det[part][rate][k] for k in keys]]
        for rate in det["harder"]
        for who, part in (("**roadwatch**", "harder"), ("plain MOG2 loop", "baseline"))
    ]
    out = [
        f"Harder labelled scenes (`sim/scenarios.py` HARDER), {det['scoring']['seconds_scored']:.0f} s scored "
        f"a scenario and rate, IoU >= {det['scoring']['iou']}; class recall needs the class right:",
        "",
        table(rows, ["detector, rate", *keys]),
        "",
    ]
    per = []
    for name, scen in det["scenarios"].items():
        for rate in ("fps_2", "fps_10"):
            rw, base = scen[rate]["roadwatch"], scen[rate]["baseline"]
            per.append(
                [
                    f"{name}, {rate.removeprefix('fps_')} fps",
                    rw["recall"],
                    base["recall"],
                    round(rw["recall"] - base["recall"], 3),
                    rw["precision"],
                    rw["pedestrian_recall"],
                ]
            )
    out += [
        table(per, ["scenario", "recall", "baseline recall", "lead", "precision", "pedestrian recall"]),
        "",
    ]
    return out


def economy_row(label: str, e: dict[str, Any], *, bold: bool = False) -> list[Any]:
    b = "**" if bold else ""
    return [
        label,
        e["vlm_calls"],
        e["naive_calls"],
        f"{b}{e['reduction']}x{b}",
        f"{e['risk_events_assessed']}/{e['risk_events']} ({b}{e['recall']:.2%}{b})",
        e["first_task_delay_ms_p95"],
    ]


def table(rows: list[list[Any]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(folder: Path) -> str:
    pipe, kp = load(folder, "pipeline.json"), load(folder, "key_pool.json")
    det, eco, gpu = load(folder, "detection.json"), load(folder, "economy.json"), load(folder, "gpu_batch.json")
    cap, ssm = load(folder, "capacity.json"), load(folder, "ssm.json")
    out = ["# roadwatch benchmark report", ""]
    out.append("Written by `make bench` (`python -m bench.report`) from the JSON beside this file; every ratio")
    out.append("compares figures measured in the same run on the same machine.")
    out.append("")
    missing = [n for n, v in (("pipeline", pipe), ("key_pool", kp), ("detection", det), ("economy", eco)) if v is None]
    if missing:
        out += [f"**Not measured in this run:** {', '.join(missing)}.", ""]
    if pipe:
        sc = pipe["scenario"]
        out += ["## Pipeline", ""]
        out.append(
            f"{sc['cameras']} simulated cameras x {sc['fps']} fps for {sc['duration_s']:.0f} s through a real "
            f"Kafka broker, one Faust worker, the motion detector and the simulated VLM "
            f"(median {sc['vlm_latency_median_ms']:.0f} ms)."
        )
        out.append("")
        out.append(
            table(
                [
                    [
                        f"{pipe['detections_per_s']}",
                        f"{pipe['tasks_per_s']}",
                        f"{pipe['results']}/{pipe['tasks']}",
                        f"{pipe['e2e_ms']['p50']} / {pipe['e2e_ms']['p95']} / {pipe['e2e_ms']['p99']}",
                        f"{pipe['overhead_ms']['p50']} / {pipe['overhead_ms']['p95']} / {pipe['overhead_ms']['p99']}",
                    ]
                ],
                ["detections/s", "tasks/s", "results/tasks", "e2e ms p50/p95/p99", "overhead ms p50/p95/p99"],
            )
        )
        out.append("")
        out.append(
            f"Forwarding 1 KB messages: one Faust agent {pipe['faust_msgs_per_s']:,} msg/s vs a bare aiokafka "
            f"loop {pipe['raw_aiokafka_msgs_per_s']:,} msg/s (**{pipe['faust_vs_raw']}x**)."
        )
        if "faust_cpu_ms_per_msg" in pipe:
            out[-1] += (
                f" CPU a message: {pipe['faust_cpu_ms_per_msg']} ms for the Faust agent, "
                f"{pipe['raw_aiokafka_cpu_ms_per_msg']} ms for the loop."
            )
        out += ["", "![latency CDF](latency_cdf.png)", ""]
    if kp:
        out += ["## Key pool and scheduler", ""]
        sc = kp["scenario"]
        out.append(
            f"{sc['keys']} keys x {sc['rpm_per_key']} rpm on the simulated VLM, "
            f"{sc['transient_failure_rate']:.0%} transient failures, {sc['revoked']}, "
            f"{sc['offered_tasks_per_s']} tasks/s offered for {sc['duration_s']:.0f} s, "
            f"{sc.get('max_retries', 2)} retries per task."
        )
        out.append("")
        rows = []
        for name in ("workers_1", "workers_2", "workers_4", "baseline_sequential", "baseline_round_robin"):
            r = kp.get(name)
            if r:
                rows.append(
                    [
                        name.replace("_", " "),
                        r["efficiency"],
                        r["self_inflicted_429"],
                        f"{r['success_rate']:.3%}",
                        r["queue_wait_ms_p95"],
                        r["calls"],
                    ]
                )
        out.append(
            table(rows, ["configuration", "efficiency", "self-inflicted 429", "tasks ok", "queue wait p95 ms", "calls"])
        )
        out += ["", "![throughput](throughput.png)", "", "![key states](key_states.png)", ""]
        quota_rows = []
        for name, r in kp.items():
            if not isinstance(r, dict) or "self_inflicted_429_rate" not in r:
                continue
            quota_rows.append(
                [
                    name.replace("_", " "),
                    r["efficiency"],
                    r["self_inflicted_429_rate"],
                    r["accepted_calls"],
                    ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items())),
                    ", ".join(f"{k} {v}" for k, v in sorted(r["results_by_model"].items())),
                    r.get("cost_error", "-"),
                    r.get("budget_overrun_calls", "-"),
                ]
            )
        if quota_rows:
            out += ["### Quotas per account and model (`bench/quotas.py`)", ""]
            out.append(
                "A simulated provider that counts every key of an account against one quota per model, per "
                "second and on growth, as Model Studio documents; efficiency = accepted calls / the quotas' "
                "calls in the measured window."
            )
            out.append("")
            out.append(
                table(
                    quota_rows,
                    [
                        "scenario",
                        "efficiency",
                        "429s / accepted",
                        "accepted calls",
                        "results",
                        "answered by",
                        "cost error",
                        "budget overrun calls",
                    ],
                )
            )
            out.append("")
    if det:
        out += ["## Detection", ""]
        if "harder" in det:
            out += detection_quality(det)
        rows = [
            [b, det[b]["fps"], det[b]["bare_fps"], det[b]["ratio"], det[b]["node_fps"]]
            for b in ("motion", "yolo", "yolo_onnx")
            if b in det
        ]
        out.append(table(rows, ["backend", "pipeline fps", "bare fps", "ratio", "node fps"]))
        cpn = det.get("cameras_per_node", {})
        out.append("")
        motion = det.get("motion", {})
        if "node_fps_one_process_two_threads" in motion:
            out.append(
                f"Node fps: motion as `--processes 2 --workers 1` runs it (median of {motion['node_fps_runs']}), "
                f"against {motion['node_fps_one_process_two_threads']} for one process with two analysis threads "
                f"(median of {motion['node_fps_one_process_two_threads_runs']}); YOLO in one process with two threads."
            )
            if "node_fps_opencv_every_core" in motion:
                out.append(
                    f"Each process has its share of the cores for OpenCV (`--cv-threads`); with OpenCV's default of "
                    f"every core in each, {motion['node_fps_opencv_every_core']} "
                    f"(median of {motion['node_fps_opencv_every_core_runs']}): "
                    f"x{motion['opencv_core_share_vs_every_core']} for the share (the median of each round's ratio)."
                )
            if "node_cpu_ms_per_frame" in motion:
                out.append(
                    f"CPU a frame in the node's processes: {motion['node_cpu_ms_per_frame']} ms with the share "
                    f"(median of {motion['node_cpu_ms_per_frame_runs']}), "
                    f"{motion['node_cpu_ms_per_frame_opencv_every_core']} ms with every core "
                    f"(x{motion['opencv_every_core_vs_core_share_cpu']}, the median of each round's ratio); "
                    "by CPU a node whose cores are all its own "
                    f"holds {cpn.get('motion_by_cpu')} cameras."
                )
            out.append("")
        out.append(
            f"Cameras one node ({det['machine']['cpus']} CPUs) holds at 2 analysis fps: motion "
            f"**{cpn.get('motion')}**, yolo11n ONNX on CPU **{cpn.get('yolo_onnx')}**, "
            f"yolo11n torch on CPU {cpn.get('yolo')}."
        )
        out.append("")
    if eco:
        out += ["## VLM economy", ""]
        out.append(
            table(
                [
                    economy_row("labelled, ground-truth boxes (the budget)", eco, bold=True),
                    economy_row("labelled, motion detector", eco["motion_detector"]),
                    economy_row("demo (crowded crossing), ground truth", eco["demo_scenario"]),
                ],
                [
                    "scenario",
                    "VLM calls",
                    "per-frame-per-group calls",
                    "reduction",
                    "risk events assessed",
                    "first task p95 ms",
                ],
            )
        )
        out.append("")
    if cap:
        out += ["## Capacity", ""]
        out.append(
            "Synthetic detections at N cameras x 2 fps from a plain producer into the real topology "
            f"(`bench/capacity.py`); one worker holds {cap.get('max_cameras_one_worker')} cameras with e2e p95 "
            "under 2 s and a backlog that does not grow through the level, on this machine (measured at "
            f"{cap.get('one_worker', {}).get('measured', {}).get('commit', 'an earlier commit')})."
        )
        out.append("")
        rows = [
            [
                lv["cameras"],
                lv["workers"],
                f"{lv['offered_detections_per_s']} / {lv['processed_detections_per_s']}",
                lv["vlm_calls_per_s"],
                lv["worker_cpu_ms_per_detection"],
                lv["lag_end_s"],
                f"{lv['e2e_ms']['p50']} / {lv['e2e_ms']['p95']} / {lv['e2e_ms']['p99']}",
                lv["ok_rate"],
                "saturated" if lv["saturated"] else "held" if lv["e2e_ms"]["p95"] < 2000 else "slow",
            ]
            for key in ("one_worker", "two_workers")
            for lv in cap.get(key, {}).get("levels", [])
        ]
        head = [
            "cameras",
            "workers",
            "det/s offered / processed",
            "VLM calls/s",
            "CPU ms/det",
            "lag s",
            "e2e ms",
            "ok",
            "level",
        ]
        out.append(table(rows, head))
        flame = "Where a worker's time goes: [flame graph](capacity_flame.svg)."
        out += ["", "![capacity](capacity.png)", "", flame, ""]
        pair = cap.get("before_after_13")
        if pair:
            b, a = pair["before"], pair["after"]
            out.append(
                f"Before/after #13 at {pair['cameras']} cameras, one worker, same run: CPU ms/det "
                f"{b['worker_cpu_ms_per_detection']} -> {a['worker_cpu_ms_per_detection']} "
                f"(x{pair['cpu_per_detection_ratio']}), e2e p95 {b['e2e_ms']['p95']} -> {a['e2e_ms']['p95']} ms."
            )
            out.append("")
        soak = cap.get("soak")
        if soak and soak.get("after_5_min"):
            late = soak["after_5_min"]
            out.append(
                f"Soak, {soak['cameras']} cameras for {soak['minutes']} minutes: RSS {soak['rss_mb_start']} -> "
                f"{soak['rss_mb_end']} MiB, data dir {soak['data_dir_mb_start']} -> {soak['data_dir_mb_end']} MiB; "
                f"after minute 5: RSS {late['rss_growth']:+.1%}, data dir {late['data_dir_growth']:+.1%}, "
                f"CPU per detection x{late['cpu_per_detection_ratio']}; backlog at the end "
                f"{late['lag_messages_end']} detections."
            )
            out.append("")
    if ssm:
        out += ssm_section(ssm)
    if gpu:
        out += ["## GPU batching", ""]
        rows = [
            [k.removeprefix("batch_"), v["model_fps"], v["speedup"], v["cameras"]["fps"], v["cameras"]["mean_batch"]]
            for k, v in gpu["results"].items()
        ]
        out.append(f"{gpu.get('gpu', gpu['device'])}, {gpu['model']} at {gpu['imgsz']} px:")
        out.append("")
        out.append(table(rows, ["batch", "model fps", "speedup", "fps from camera threads", "mean batch formed"]))
        out.append("")
    return "\n".join(out) + "\n"


def ssm_section(ssm: dict[str, Any]) -> list[str]:
    """Conflict measures against SUMO and on the DLR intersection (bench/ssm.py, bench/dlr_urban.py)."""
    out = ["## Conflict measures (TTC, PET) against SUMO and a real intersection", ""]
    sumo = ssm.get("sumo")
    if sumo:
        out.append(
            f"SUMO {'/'.join(sumo['scenarios'])} replayed at {sumo['fps']} fps through `models/ssm.py` "
            "(`bench/ssm.py`): "
            f"of SUMO's conflicts with TTC <= {sumo['ttc_threshold_s']} s, roadwatch finds {sumo['recall']} "
            f"(via a camera {sumo['via_camera']['recall']}); of the pairs it flags, SUMO logs {sumo['precision']} "
            f"(via a camera {sumo['via_camera']['precision']}); TTC error on SUMO's following conflicts p50 "
            f"{sumo['ttc_abs_err_s_p50']} s."
        )
        kinds = sumo.get("by_type")
        if kinds:
            out[-1] += (
                " By SUMO's conflict type: "
                + "; ".join(f"{name} {v['found']} of {v['sumo']} ({v['recall']})" for name, v in kinds.items())
                + "."
            )
        sampling = sumo.get("sampling")
        if sampling:
            out[-1] += (
                f" The engine flags a TTC that reaches the threshold before the next frame; counting only a TTC at "
                f"or below it, it finds {sumo.get('recall_without_lookahead')}. SUMO's own TTC, seen only at the "
                f"frames, finds {sampling['recall_ceiling']} of its conflicts, looking a frame ahead "
                f"{sampling['recall_ceiling_looking_ahead']} (`sumo.sampling`: the most an engine measuring at "
                f"{sumo['fps']} fps can)."
            )
        out.append("")
        rows = []
        for name, r in sumo["scenarios"].items():
            reasons = ", ".join(f"{k} {v}" for k, v in r["false_positive_reasons"].items())
            rows.append(
                [
                    name,
                    f"{r['found']}/{r['sumo_conflicts_ttc_le_threshold']}",
                    f"{r['flagged_pairs_sumo_logs']}/{r['flagged_pairs']}",
                    f"{r['following']['found_with_finite_ttc']}/{r['following']['sumo_conflicts_ttc_lt_3s']}",
                    r["following"]["ttc_abs_err_s_p50"],
                    f"{r['pet']['found']}/{r['pet']['sumo_pet_le_threshold']}",
                    r["pet"]["pet_abs_err_s_p50"],
                    reasons,
                ]
            )
        head = [
            "scenario",
            "TTC<=1.5 found",
            "flagged SUMO logs",
            "following seen",
            "following TTC err p50 s",
            "PET<=2 found",
            "PET err p50 s",
            "flagged, not logged: why",
        ]
        out += [table(rows, head), ""]
        ceiling = sumo.get("ceiling")
        if ceiling:
            told = "; ".join(
                f"{name.replace('_', ' ')}: recall {v['recall']}, precision {v['precision']}"
                for name, v in ceiling.items()
            )
            out += [
                "The same comparison with the engine told what a camera cannot know (`sumo.ceiling`: exact "
                f"state from the FCD, each vehicle's own future route, its braking as SUMO extrapolates it): {told}.",
                "",
            ]
    dlr = ssm.get("dlr_urban")
    if dlr:
        per = ", ".join(f"{k} {v}" for k, v in dlr["conflicts_per_hour"].items())
        lvl = ", ".join(f"{k} {v}" for k, v in dlr["conflicts_per_hour_by_level"].items())
        calls = dlr["vlm_calls_per_hour"]
        out.append(
            f"DLR Urban Traffic ({dlr['minutes']} min, {dlr['road_users']} road users, `bench/dlr_urban.py`): "
            "conflicts "
            f"per hour {per} (by level: {lvl}); engine {dlr['pairs_per_s']} pairs/s, {dlr['engine_ms_per_frame']} ms a "
            f"frame; VLM calls per hour {calls['without_measured_trigger']} without the measured trigger, "
            f"{calls['with_measured_trigger']} with it (the camera's budget caps both)."
        )
        out.append("")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    folder: Path = args.folder
    pipe_series = load(folder, "pipeline_series.json")
    kp, kp_series = load(folder, "key_pool.json"), load(folder, "key_pool_series.json")
    if pipe_series:
        plot_latency(pipe_series, folder / "latency_cdf.png")
    if kp and kp_series:
        plot_throughput(kp_series, kp, pipe_series or {}, folder / "throughput.png")
        name = "workers_2" if "workers_2" in kp_series else next(iter(kp_series))
        plot_key_states(kp_series[name], folder / "key_states.png", f"Key states over the {name.replace('_', ' ')} run")
    (folder / "REPORT.md").write_text(render(folder))
    log(f"wrote {folder / 'REPORT.md'} and its plots")


if __name__ == "__main__":
    main()
