"""The compose stack, run for real without Docker: every glmix service of deploy/docker-compose.yml as a local
process (its command and environment) against the broker process, scraped by Prometheus with the shipped
configuration; every PromQL expression of the Grafana dashboard and of the alert rules must return data.

Docker images cannot be built here, so a service's container becomes a process: its named volume becomes
a directory (the Dockerfile's ``/var/lib/glmix`` paths), its hostname in prometheus.yml becomes
127.0.0.1 and its port a free one. The synthetic feeder runs with fewer requests than in compose,
and the attribution window is a minute instead of 15, so examples close within the test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import msgspec
import pytest
import yaml

from stream.config import TopicSettings
from stream.kafka.broker_process import free_port

pytestmark = pytest.mark.kafka

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_FEEDER_REQUESTS = "1500"
_COMPARISON = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*[0-9.e+-]+\s*$")


def _get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _wait(check, timeout_s: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


@dataclasses.dataclass
class _Service:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int | None


def _services(compose: dict, root: Path, bootstrap: str, unique: str) -> list[_Service]:
    """Each glmix service of the compose file as a local process: command, environment, volume directory, port."""
    topics = {f"GLMIX_TOPICS__{f.name.upper()}": f"{getattr(TopicSettings(), f.name)}-{unique}"
              for f in msgspec.structs.fields(TopicSettings) if isinstance(getattr(TopicSettings(), f.name), str)}
    services = []
    for name, service in compose["services"].items():
        if service["image"] != "glmix-stream:latest":
            continue
        volume = next((v.split(":")[0] for v in service.get("volumes", []) if v.endswith(":/var/lib/glmix")), name)
        home = root / volume
        env = {k: str(v) for k, v in service["environment"].items()}
        env.update(topics)
        env.update({"GLMIX_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "GLMIX_KAFKA__GROUP_PREFIX": unique,
                    "GLMIX_STATE_DIR": str(home / "state"), "GLMIX_ARCHIVE__PATH": str(home / "archive"),
                    "GLMIX_REFIT__OUTPUT_DIR": str(home / "models"), "GLMIX_METRICS__KAFKA_STATISTICS_INTERVAL_MS": "1000",
                    "GLMIX_JOINER__ATTRIBUTION_WINDOW_MS": "60000", "GLMIX_JOINER__ALLOWED_LATENESS_MS": "5000"})
        command = [str(home / "truth.json") if arg == "/var/lib/glmix/truth.json" else arg for arg in service["command"]]
        if command[:2] == ["produce", "synthetic"]:
            command[command.index("--requests") + 1] = _FEEDER_REQUESTS
        port = None
        if service.get("restart") != "no":
            port = free_port()
            env["GLMIX_SERVING__PORT" if command[0] == "serve" else "GLMIX_METRICS__PORT"] = str(port)
        services.append(_Service(name, command, env, port))
    return services


def _start(service: _Service, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream", *service.command], env={**os.environ, **service.env},
                            stdout=log.open("a"), stderr=subprocess.STDOUT)


def _prometheus_config(ports: dict[str, int], directory: Path) -> Path:
    """The shipped prometheus.yml with each compose hostname replaced by 127.0.0.1 and its free port."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{ports[t.split(':')[0]]}" for t in static["targets"]]
    (directory / "alerts.yml").write_text((DEPLOY / "prometheus" / "alerts.yml").read_text())
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _query(prometheus: str, expr: str) -> list:
    status, body = _get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status == 200, (expr, body[:500])
    return json.loads(body)["data"]["result"]


def _expressions() -> dict[str, str]:
    """Every dashboard query, and each side of every alert rule's comparisons (a healthy run fires none)."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "glmix.json").read_text())
    exprs = {f"dashboard: {p['title']} [{t['refId']}]": t["expr"] for p in dashboard["panels"] for t in p["targets"]}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        for n, part in enumerate(rule["expr"].split(" and ")):
            exprs[f"alert {rule['alert']} [{n}]"] = _COMPARISON.sub("", part)
    wanted = sum(len(p["targets"]) for p in dashboard["panels"]) + sum(len(r["expr"].split(" and ")) for r in rules)
    assert len(exprs) == wanted  # no name shadowed another
    return exprs


def test_the_compose_services_come_up_and_prometheus_answers_every_dashboard_and_alert_query(
        kafka_broker, kafka_bootstrap, prometheus_server, tmp_path, unique_name):
    if kafka_broker.kind == "mock":
        pytest.skip("the compose services run as processes against a broker process, not the mock in this process")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = _services(compose, tmp_path, kafka_bootstrap, unique_name)
    feeder = next(s for s in services if s.port is None)
    servers = [s for s in services if s.port is not None]
    log = tmp_path / "services.log"
    processes = [_start(s, log) for s in servers]
    prometheus = None
    try:
        subprocess.run([sys.executable, "-m", "stream", *feeder.command], env={**os.environ, **feeder.env}, check=True,
                       stdout=log.open("a"), stderr=subprocess.STDOUT, timeout=120)
        for service in servers:  # each comes up and serves what it claims
            path = "/readyz" if service.command[0] == "serve" else "/metrics"
            _wait(lambda s=service, p=path: _get(f"http://127.0.0.1:{s.port}{p}")[0] == 200, 90,
                  f"{service.name} to answer {path}", log)
        scorer = next(s for s in servers if s.command[0] == "serve")
        request = json.dumps({"member_id": "m000001", "candidates": [
            {"item_id": f"j{i:06d}", "features": {"job_title": [{"name": "title", "term": "nurse"}]}} for i in range(5)],
            "top_k": 3}).encode()
        for _ in range(20):
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{scorer.port}/v1/score", data=request,
                                                          headers={"Content-Type": "application/json"}), timeout=5)

        web = free_port()
        config = _prometheus_config({s.name: s.port for s in servers}, tmp_path)
        prometheus = subprocess.Popen([prometheus_server, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{web}"], stdout=(tmp_path / "prometheus.log").open("w"),
                                      stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{web}"
        subprocess.run([sys.executable, "-m", "stream", *feeder.command, "--seed", "8"], env={**os.environ, **feeder.env},
                       check=True, stdout=log.open("a"), stderr=subprocess.STDOUT, timeout=120)  # counters move
        _wait(lambda: len(_query(url, "count_over_time(up[5m]) >= 2")) == len(servers)
              and len(_query(url, "up == 1")) == len(servers) and _query(url, "glmix_progressive_examples > 0"), 120,
              "two scrapes of every service, and joined examples", tmp_path / "prometheus.log")
        empty = {name: expr for name, expr in _expressions().items() if not _query(url, expr)}
        assert all(p.poll() is None for p in processes), log.read_text()[-3000:]
    finally:
        for process in [*processes, *([prometheus] if prometheus else [])]:
            process.send_signal(signal.SIGTERM)
        for process in [*processes, *([prometheus] if prometheus else [])]:
            process.wait(30)
    assert not empty, empty
