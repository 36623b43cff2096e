"""The scoring API keeps its own contract: schemathesis, every check, against a live ``glmix serve`` and its spec.

The server runs as ``glmix serve`` does in production (its own process, the models read from Kafka) and
schemathesis reads the spec from the server's own ``/openapi.json``: what a client generator would read.
Each configuration the spec depends on runs: without exploration (the default) and with it.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.codec import make_codec
from stream.config import load_settings
from stream.kafka import producer_config
from stream.kafka.broker_process import free_port
from stream.kafka.clients import prepare_topics
from stream.model.export import initial_global_model_record
from stream.synthetic import World, WorldSpec, labeled_impressions

from ..helpers import wait_for

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# 413 is how this API refuses a request over a documented limit (maxItems, the body size): a rejection, as
# schemathesis's own list (400, 422, ...) means; every other expected status is schemathesis's default.
CONFIG = """\
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"""


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return 0


@pytest.fixture(params=["without-exploration", "with-exploration"])
def served(request, kafka_broker, kafka_bootstrap, unique_name, tmp_path) -> Iterator[str]:
    """A ``glmix serve`` process with a global model and member coefficients to serve; yields its base URL."""
    if kafka_broker.kind == "mock":
        pytest.skip("process-level test: it runs once, on the broker-process tier (the mock adds nothing here)")
    port = free_port()
    sets = {"topics.model_global": f"global-{unique_name}", "topics.coefficients_prefix": f"coef-{unique_name}-",
            "topics.items": f"items-{unique_name}", "kafka.group_prefix": f"contract-{unique_name}",
            "serving.host": "127.0.0.1", "serving.port": str(port), "state_dir": str(tmp_path),
            "serving.exploration": str(request.param == "with-exploration").lower()}
    settings = load_settings(overrides={"kafka.bootstrap_servers": kafka_bootstrap, **sets})
    prepare_topics(settings, kafka_bootstrap)
    impressions = [li.impression for li in labeled_impressions(World(WorldSpec(seed=5, members=8, jobs=8, requests=10)))]
    record = initial_global_model_record(impressions, settings.model)
    record["coefficients"] = np.random.default_rng(0).normal(size=len(record["coefficients"])).tolist()
    producer = Producer(producer_config(settings.kafka))
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    producer.flush(10)
    log = tmp_path / "serve.log"
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    process = subprocess.Popen([sys.executable, "-m", "stream", "serve", "--bootstrap-servers", kafka_bootstrap, *args],
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or _status(f"{url}/readyz") == 200, timeout_s=60, interval_s=0.2,
                 what="glmix serve to be ready")
        assert process.poll() is None, log.read_text()
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_the_served_spec_and_the_server_agree_under_every_schemathesis_check(served, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    # Deterministic generation: the same cases every run (schemathesis then uses no seed and no example database).
    command = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{served}/openapi.json", "--checks", "all",
               "--max-examples", "50", "--generation-deterministic", "--workers", "1",
               "--no-color", "--report", "junit",
               "--report-dir", str(tmp_path / "report")]
    run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    print(run.stdout[-4000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
