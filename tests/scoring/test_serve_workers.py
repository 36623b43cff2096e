"""``glmix serve --workers 2``: real processes on one port, their metrics summed, stopped together."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from stream.codec import make_codec
from stream.config import load_settings
from stream.kafka import producer_config
from stream.kafka.clients import prepare_topics
from stream.model.export import initial_global_model_record
from stream.synthetic import World, WorldSpec, labeled_impressions

from ..helpers import wait_for

REQUESTS = 40


def _get(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # a new connection each time
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def served(kafka_broker, kafka_bootstrap, unique_name, tmp_path) -> Iterator[tuple[subprocess.Popen, str, list[dict]]]:
    """A ``glmix serve --workers 2`` process with a global model to serve, its URL, and requests' impressions."""
    if kafka_broker.kind == "mock":
        pytest.skip("process-level test: it runs once, on the broker-process tier (the mock adds nothing here)")
    sets = {"topics.model_global": f"global-{unique_name}", "topics.coefficients_prefix": f"coef-{unique_name}-",
            "topics.items": f"items-{unique_name}", "kafka.group_prefix": f"serve-{unique_name}",
            "serving.host": "127.0.0.1", "serving.port": "0", "state_dir": str(tmp_path)}
    settings = load_settings(overrides={"kafka.bootstrap_servers": kafka_bootstrap, **sets})
    prepare_topics(settings, kafka_bootstrap)
    impressions = [li.impression for li in labeled_impressions(World(WorldSpec(seed=5, members=8, jobs=8, requests=10)))]
    producer = Producer(producer_config(settings.kafka))
    producer.produce(settings.topics.model_global, key=b"glmix", value=make_codec(
        "GlobalModel", settings.topics.model_global).encode(initial_global_model_record(impressions, settings.model)))
    producer.flush(10)
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    process = subprocess.Popen([sys.executable, "-m", "stream", "serve", "--workers", "2",
                                "--bootstrap-servers", kafka_bootstrap, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = process.stdout.readline()
        match = re.search(r"2 workers on http://127\.0\.0\.1:(\d+)", first)
        assert match, first
        url = f"http://127.0.0.1:{match.group(1)}"
        streak = []  # both workers ready: connections land on either, so wait for a run of 200s
        wait_for(lambda: streak.append(_get(f"{url}/readyz")[0]) or streak[-20:] == [200] * 20, timeout_s=60,
                 interval_s=0.05, what="both workers ready")
        yield process, url, impressions
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        process.stdout.close()


def _score_body(impressions: list[dict]) -> bytes:
    return json.dumps({"member_id": impressions[0]["member_id"],
                       "candidates": [{"item_id": i["item_id"], "features": i["features"]} for i in impressions[:5]]}).encode()


def _worker_requests(url: str) -> tuple[float, dict[int, float]]:
    """The summed ``glmix_scoring_requests_total{status="200"}`` and each worker's own count, from one scrape."""
    status, page = _get(f"{url}/metrics")
    text = page.decode()
    assert status == 200
    total = re.search(r'^glmix_scoring_requests_total\{status="200"\} (\S+)$', text, re.M)
    assert total, text
    per_worker = {int(pid): float(v) for pid, v in
                  re.findall(r'^glmix_scoring_worker_requests\{pid="(\d+)"\} (\S+)$', text, re.M)}
    return float(total.group(1)), per_worker


def test_two_workers_share_the_port_and_report_summed_metrics_then_stop_on_sigterm(served):
    process, url, impressions = served
    workers = _children(process.pid)
    assert len(workers) == 2
    sent = 0

    def both_served() -> bool:  # a worker starting late (a loaded machine) binds the port after the first answers
        nonlocal sent
        statuses = [_get(f"{url}/v1/score", _score_body(impressions))[0] for _ in range(REQUESTS)]
        assert statuses == [200] * REQUESTS
        sent += REQUESTS
        return len(_worker_requests(url)[1]) == 2

    wait_for(both_served, timeout_s=30, interval_s=0.2, what="requests to reach both workers")
    total, per_worker = _worker_requests(url)
    assert total == sent
    assert set(per_worker) == set(workers) and all(v > 0 for v in per_worker.values()), per_worker
    assert sum(per_worker.values()) == sent

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert not any(_alive(pid) for pid in workers)


def test_a_worker_that_dies_stops_the_service_with_an_error(served):
    process, url, _ = served
    victim, other = _children(process.pid)
    os.kill(victim, signal.SIGKILL)
    assert process.wait(30) == 1
    assert not _alive(other)
    assert "exited with status -9; stopping the others" in process.stdout.read()
    assert _get(f"{url}/healthz")[0] == 0  # the service is gone, not serving on one worker
