"""deploy/: the dashboard queries only exported metrics; compose, Prometheus and Grafana files hang together."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from stream.cli import build_parser
from stream.config import load_settings
from stream.metrics.collector import METRIC_NAMES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PINNED_IMAGES = {"apache/kafka:3.9.0", "prom/prometheus:v2.54.1", "grafana/grafana:11.2.0", "glmix-stream:latest"}


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_every_metric_the_dashboard_queries_is_exported():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "glmix.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {name for expr in exprs for name in re.findall(r"\bglmix_[a-z0-9_]+", expr)}
    assert queried and queried <= METRIC_NAMES, sorted(queried - METRIC_NAMES)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "lag", "freshness", "newton", "auc", "scoring latency"):
        assert topic in titles
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_compose_services_use_known_images_valid_commands_and_valid_settings():
    compose = _compose()
    services = compose["services"]
    for name, service in services.items():
        assert service["image"] in PINNED_IMAGES, (name, service["image"])
        if service["image"] == "glmix-stream:latest":
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == DEPLOY.parent and (context / service["build"]["dockerfile"]).exists()
            command = service["command"]
            build_parser().parse_args(command)  # a command glmix knows (argparse exits on an unknown one)
            env = {k: str(v) for k, v in service["environment"].items()}
            settings = load_settings(env=env)  # every GLMIX_* variable is a real key with a valid value
            assert settings.kafka.bootstrap_servers == "kafka:9092"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
    stages = {s["command"][1] if s["command"][0] == "run" else s["command"][0] for s in services.values()
              if s["image"] == "glmix-stream:latest"}
    assert {"joiner", "updater", "archive", "refit", "serve"} <= stages


def test_prometheus_scrapes_every_metrics_endpoint_of_the_compose_file():
    compose = _compose()
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    expected = set()
    for name, service in compose["services"].items():
        if service["image"] != "glmix-stream:latest" or service.get("restart") == "no":
            continue
        env = {k: str(v) for k, v in service["environment"].items()}
        settings = load_settings(env=env)
        port = settings.serving.port if service["command"][0] == "serve" else settings.metrics.port
        expected.add(f"{name}:{port}")
    assert targets == expected


@pytest.mark.parametrize("path", sorted((DEPLOY / "grafana" / "provisioning").rglob("*.yml")))
def test_grafana_provisioning_parses_and_points_at_mounted_paths(path):
    config = yaml.safe_load(path.read_text())
    assert config["apiVersion"] == 1
    for provider in config.get("providers", []):
        assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dockerfile_installs_the_package_and_runs_glmix():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["glmix"]' in dockerfile and "pip install --no-cache-dir ." in dockerfile
    assert "glmix compile" in dockerfile  # stages start without compiling the numba kernels
    for line in dockerfile.splitlines():
        if line.startswith("COPY"):
            for source in shlex.split(line)[1:-1]:
                assert (DEPLOY.parent / source).exists(), source
    for name in re.findall(r"(GLMIX_[A-Z_]+)=", dockerfile):
        load_settings(env={name: "/tmp/x"})


def _containers(document: dict) -> list[dict]:
    spec = document["spec"]
    if document["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]["containers"]


def test_kubernetes_manifests_run_known_commands_with_valid_settings():
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "glmix.yaml").read_text()))
    config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    claims = {d["metadata"]["name"] for d in documents if d["kind"] == "PersistentVolumeClaim"}
    workloads = [d for d in documents if d["kind"] in ("StatefulSet", "Deployment", "CronJob")]
    commands = set()
    for workload in workloads:
        pod = workload["spec"]["jobTemplate"]["spec"]["template"]["spec"] if workload["kind"] == "CronJob" \
            else workload["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            assert "persistentVolumeClaim" not in volume or volume["persistentVolumeClaim"]["claimName"] in claims
        for container in _containers(workload):
            assert container["image"] == "glmix-stream:latest"
            build_parser().parse_args(container["args"])
            env = {**config, **{e["name"]: e["value"] for e in container.get("env", [])}}
            settings = load_settings(env=env)
            port = settings.serving.port if container["args"][0] == "serve" else settings.metrics.port
            annotations = (workload["spec"]["template"]["metadata"].get("annotations", {})
                           if workload["kind"] != "CronJob" else {})
            if settings.metrics.enabled and annotations:
                assert annotations["prometheus.io/port"] == str(port)
            commands.add(" ".join(container["args"][:2]))
        if workload["kind"] != "CronJob":
            labels = workload["spec"]["selector"]["matchLabels"]
            assert labels.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    assert {"run joiner", "run updater", "run archive", "refit", "serve"} <= commands
