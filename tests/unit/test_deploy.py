"""Deployment files: the Grafana dashboard and the alert rules query only metrics the code exports;
promtool, docker-compose and the Kubernetes schemas accept what deploy/ ships."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\b(roadwatch_[a-z0-9_]+)")
# CI installs these tools (.ci/system-deps.sh); elsewhere a missing one skips its check
IN_CI = bool(os.environ.get("CI"))


def exported_names() -> set[str]:
    """Every sample name /metrics can show: families expanded by type, as Prometheus sees them."""
    import streams.lag  # noqa: F401 - registers Faust's own metrics
    from streams.metrics import REGISTRY

    names: set[str] = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count"]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def names_in(text: str) -> set[str]:
    return set(METRIC.findall(text))


def test_every_grafana_panel_queries_metrics_the_code_exports():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "roadwatch.json").read_text())
    exported = exported_names()
    used: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, f"panel {panel['title']!r} has no query"
        for expr in exprs:
            for name in names_in(expr):
                used.setdefault(name, set()).add(panel["title"])
    unknown = {name: titles for name, titles in used.items() if name not in exported}
    assert not unknown, f"panels query metrics nobody exports: {unknown}"
    assert len(used) >= 15


def test_alert_rules_use_exported_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exported = exported_names()
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "RoadwatchPipelineStalled",
        "RoadwatchConsumerLagGrowing",
        "RoadwatchAllKeysCooling",
        "RoadwatchVlmSuccessBelow99",
        "RoadwatchCameraOffline",
        "RoadwatchDlqGrowing",
    } <= set(alerts)
    for alert, expr in alerts.items():
        assert names_in(expr) <= exported, f"{alert} queries {names_in(expr) - exported}"


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name  # console scripts of the venv's packages
    path = str(beside) if beside.is_file() else shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (.ci/system-deps.sh installs it)")
        pytest.skip(f"{name} not installed")
    return path


def run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules_and_the_config(tmp_path: Path):
    promtool = tool("promtool")
    rules = run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")])
    assert rules.returncode == 0, rules.stdout + rules.stderr
    # the config names its token file and rules relative to itself: check a copy with both beside it
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(DEPLOY / "prometheus" / name, tmp_path / name)
    (tmp_path / "web-token").write_text("check-only\n")
    config = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert config.returncode == 0, config.stdout + config.stderr
    # the k8s scrape jobs (the workers' /metrics want the token: no annotation-driven scrape)
    docs = yaml.safe_load_all((DEPLOY / "k8s" / "60-prometheus-scrape.yaml").read_text())
    configmap = next(doc for doc in docs if doc["kind"] == "ConfigMap")
    jobs = yaml.safe_load(configmap["data"]["scrape-configs.yml"])
    token = tmp_path / "k8s-token"
    token.write_text("check-only\n")
    for job in jobs:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    k8s = tmp_path / "k8s.yml"
    k8s.write_text(yaml.safe_dump({"rule_files": ["alerts.yml"], "scrape_configs": jobs}))
    config = run([promtool, "check", "config", str(k8s)])
    assert config.returncode == 0, config.stdout + config.stderr
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    wanted = {m for g in rules["groups"] for r in g["rules"] for m in re.findall(r'job="([^"]+)"', r["expr"])}
    assert wanted <= {job["job_name"] for job in jobs}, wanted
    workers = next(
        doc
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / "30-workers.yaml").read_text())
        if doc["kind"] == "StatefulSet"
    )
    # an annotation-driven scrape would go without the token: 401
    assert "prometheus.io/scrape" not in workers["spec"]["template"]["metadata"].get("annotations", {})


def test_docker_compose_file_is_valid(tmp_path: Path):
    compose = tool("docker-compose")
    env = dict(os.environ, ROADWATCH_WEB_TOKEN="check-only")
    secrets = DEPLOY / "secrets" / "vlm-keys"
    created = not secrets.exists()
    if created:
        shutil.copy(DEPLOY / "secrets" / "vlm-keys.example", secrets)
    try:
        out = subprocess.run(
            [compose, "-f", str(DEPLOY / "compose.yaml"), "--profile", "cpu", "--profile", "gpu", "config"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    finally:
        if created:
            secrets.unlink()
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "redis", "prometheus", "grafana", "kafka-ui", "sim-vlm"} <= set(services)
    assert {"worker-1", "worker-2", "producer", "producer-cpu"} <= set(services)
    assert services["producer"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


DEAD_WORKERS_TEST = """
rule_files: [alerts.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    # the producer runs on; every worker is down: no roadwatch_* series of theirs at all
    input_series:
      - series: 'up{job="roadwatch-worker",instance="worker-1:6066"}'
        values: '0x30'
      - series: 'up{job="roadwatch-worker",instance="worker-2:6066"}'
        values: '0x30'
      - series: 'up{job="roadwatch-producer",instance="producer:9108"}'
        values: '1x30'
    alert_rule_test:
      - eval_time: 30m
        alertname: RoadwatchWorkerDown
        exp_alerts:
          - exp_labels: {severity: critical, job: roadwatch-worker, instance: "worker-1:6066"}
            exp_annotations:
              summary: "Worker worker-1:6066 cannot be scraped: down, or its /metrics refuses the token."
          - exp_labels: {severity: critical, job: roadwatch-worker, instance: "worker-2:6066"}
            exp_annotations:
              summary: "Worker worker-2:6066 cannot be scraped: down, or its /metrics refuses the token."
      - eval_time: 30m
        alertname: RoadwatchNoWorkerUp
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: "No worker is up (or none is scraped); nothing between the producer and the browser runs."
      - {eval_time: 30m, alertname: RoadwatchProducerDown, exp_alerts: []}
  - interval: 1m
    # compose lists producer and producer-cpu; one runs (its profile): no alert. Then none runs.
    input_series:
      - series: 'up{job="roadwatch-producer",instance="producer:9108"}'
        values: '0x30'
      - series: 'up{job="roadwatch-producer",instance="producer-cpu:9108"}'
        values: '1x10 0x20'
    alert_rule_test:
      - {eval_time: 10m, alertname: RoadwatchProducerDown, exp_alerts: []}
      - eval_time: 30m
        alertname: RoadwatchProducerDown
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: "No producer is up (or none is scraped); no camera's frames are analysed."
  - interval: 1m
    # one worker of two up: not "no worker", but the other one is down
    input_series:
      - series: 'up{job="roadwatch-worker",instance="worker-1:6066"}'
        values: '1x30'
      - series: 'up{job="roadwatch-worker",instance="worker-2:6066"}'
        values: '0x30'
    alert_rule_test:
      - {eval_time: 30m, alertname: RoadwatchNoWorkerUp, exp_alerts: []}
"""


def test_dead_workers_raise_alerts_though_they_report_nothing(tmp_path: Path):
    """The rules on roadwatch_* series go quiet when every worker is dead (no series to compare)."""
    promtool = tool("promtool")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "dead.yml").write_text(DEAD_WORKERS_TEST)
    out = run([promtool, "test", "rules", "dead.yml"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_kubernetes_manifests_match_the_kubernetes_schemas():
    validator = tool("kubernetes-validate")
    manifests = sorted((DEPLOY / "k8s").glob("*.yaml"))
    assert len(manifests) >= 5
    out = run([validator, "--strict", "--kubernetes-version", "1.30", *map(str, manifests)])
    assert out.returncode == 0, out.stdout + out.stderr
    kinds = {doc["kind"] for m in manifests for doc in yaml.safe_load_all(m.read_text()) if doc}
    assert {"StatefulSet", "Deployment", "Secret", "ConfigMap", "Service"} <= kinds
