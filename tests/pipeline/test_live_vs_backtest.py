"""Live against replay: a ratings-like world at 500 events/s through ``glmix run all`` and ``glmix refit --every``
processes learns as well as ``glmix backtest`` of the same events says it should.

The world is ``ratings_like`` (1,000 members, 1,500 items, sessions of ~9 ratings) at 500 events/s: a request
every 3 ms, 100 members in a session at once (one member's ratings ~300 ms apart while the stream's are 3 ms
apart, as on a site many people use at once), a rating 20 ms after its impression, a 300 ms attribution window, and
event times on the wall clock, so the joiner's windows close as they would live. No ``glmix bootstrap``: the
joiner's warm-up makes version 1 of the global model and the refit service must publish a fitted one. The per-event backtest (every example applied before the next event is scored)
is the ceiling; live, an update reaches the joiner one loop later (bench/freshness.py).

Consumers fetch with ``fetch.wait.max.ms`` = 5: Kafka answers a fetch as soon as a record is there, but the broker
process of the tests (Tansu) holds it for up to that wait, which would add its 50 ms default to each of the loop's
three hops.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.archive.files import ArchiveFiles
from stream.event_log import EventLog
from stream.backtest.replay import Backtest, BacktestOptions
from stream.config import load_settings
from stream.kafka import producer_config
from stream.model.export import fitted_global_model_record
from stream.model.metrics import auc
from stream.synthetic import World, event_stream, labeled_impressions, ratings_like
from stream.synthetic.sinks import event_topics_and_codecs, produce_to_kafka, write_avro_files
from stream.tables.models import GlobalModel
from tests.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.alone]  # on a starved machine the live loop lags its replay

WINDOW_MS = 300
REFIT_EVERY_S = 6
REFIT_STARTUP_MS = 2000
HISTORY_SHARE = 0.2


def _overrides(name: str, state_dir: Path) -> dict[str, str]:
    topics = {f"topics.{t}": f"{t}-{name}" for t in ("impressions", "interactions", "model_global", "dead_letter")}
    return {
        **topics,
        "topics.examples_prefix": f"examples-{name}-",
        "topics.examples_by_member": f"examples-{name}-member",
        "topics.examples_by_job": f"examples-{name}-job",
        "topics.coefficients_prefix": f"coefficients-{name}-",
        "kafka.group_prefix": f"glmix-{name}",
        "state_dir": str(state_dir / "state"),
        "archive.path": str(state_dir / "archive"),
        "archive.roll_interval_ms": "1000",
        "joiner.attribution_window_ms": str(WINDOW_MS),
        # the world's events reach Kafka 50 ms (mean, exponential) after they happen, so a click can come before its
        # impression: the joiner holds it until the watermark is this far past it (with 0, 8% of clicks were orphans)
        "joiner.allowed_lateness_ms": "250",
        "joiner.early_positives": "true",
        "joiner.bootstrap_impressions": "1000",
        "joiner.idle_input_ms": "1000",
        "refit.min_examples": "2500",  # a holdout of ~250 at least: on the 70 of a 6 s window the gate decides on noise
        "kafka.consumer.fetch.wait.max.ms": "5",
        "metrics.port": "0",
    }


def _glmix(bootstrap: str, args: list[str], overrides: dict[str, str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "stream", *args, "--bootstrap-servers", bootstrap]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    return subprocess.Popen(command, stdout=log.open("a"), stderr=subprocess.STDOUT)


def _produce_paced(events: list, producer: Producer, topics: dict, codecs: dict) -> None:
    """Each event when its arrival time comes on the wall clock, in small bursts."""
    i = 0
    while i < len(events):
        now_ms = time.time() * 1000
        due = i
        while due < len(events) and events[due].arrival_ms <= now_ms:
            due += 1
        if due > i:
            produce_to_kafka(events[i:due], producer, topics, codecs)
            i = due
        time.sleep(0.002)


def _full_and_global_only(examples: list[dict]) -> tuple[float, float]:
    labels = np.array([e["label"] > 0 for e in examples])
    return (auc(labels, np.array([sum(e["scores"].values()) for e in examples])),
            auc(labels, np.array([e["scores"]["global"] for e in examples])))


def test_a_ratings_like_world_live_at_500_events_per_s_learns_as_its_per_event_backtest_says(
        kafka_broker, kafka_bootstrap, tmp_path, unique_name):
    if kafka_broker.kind == "mock":
        pytest.skip("process-level tests run on a broker process, not on the mock in this test process")
    start_ms = int(time.time() * 1000) + 15_000  # after the processes are up
    spec = dataclasses.replace(ratings_like(seed=21, requests=12_000), mean_request_gap_ms=3, concurrent_sessions=100,
                               mean_click_delay_ms=20, attribution_window_ms=WINDOW_MS, start_time_ms=start_ms)
    world = World(spec)
    labeled = labeled_impressions(world)
    events = list(event_stream(world, labeled))
    write_avro_files(events, tmp_path / "log")
    overrides = _overrides(unique_name, tmp_path)
    settings = load_settings(overrides={**overrides, "kafka.bootstrap_servers": kafka_bootstrap})
    topics, codecs = event_topics_and_codecs(settings)

    log = tmp_path / "glmix.log"
    pipeline = _glmix(kafka_bootstrap, ["run", "all"], overrides, log)
    refits = None
    try:
        # started a start-up (~2 s) before the stream, the service refits at its start (nothing to fit yet) and
        # then every 6 s, as the replay does from its first event
        wait_for(lambda: time.time() * 1000 >= start_ms - REFIT_STARTUP_MS or pipeline.poll() is not None,
                 timeout_s=30, what="the stream's start")
        refits = _glmix(kafka_bootstrap, ["refit", "--every", f"{REFIT_EVERY_S}s"], overrides, tmp_path / "refit.log")
        wait_for(lambda: time.time() * 1000 >= start_ms, timeout_s=30, what="the stream's start")
        _produce_paced(events, Producer(producer_config(settings.kafka)), topics, codecs)
        archive = ArchiveFiles(settings.archive_path)
        wait_for(lambda: len(list(archive.examples_between(0, 2**62))) >= len(labeled)
                 or pipeline.poll() is not None, timeout_s=60, interval_s=1.0, what="the archive to hold the stream")
        assert pipeline.poll() is None and (refits is None or refits.poll() is None), log.read_text()[-3000:]
    finally:
        running = [p for p in (pipeline, refits) if p is not None]
        for process in running:
            process.terminate()
        for process in running:
            process.wait(60)
    published = [json.loads(line) for line in (tmp_path / "refit.log").read_text().splitlines()
                 if line.startswith("{")]
    live = sorted(ArchiveFiles(settings.archive_path).examples_between(0, 2**62), key=lambda e: e["event_time"])

    replay_log = EventLog.from_paths([tmp_path / "log" / "impressions.avro", tmp_path / "log" / "interactions.avro"])
    backtest = Backtest(settings, BacktestOptions(latency_ms=0, refit_every_ms=REFIT_EVERY_S * 1000)).run(
        replay_log.events)
    cut_ms = labeled[int(HISTORY_SHARE * len(labeled))].impression["event_time"]
    live_full, live_global = _full_and_global_only([e for e in live if e["event_time"] >= cut_ms])
    replay_full, replay_global = _full_and_global_only([e for e in backtest.examples if e["event_time"] >= cut_ms])

    history = labeled[: int(HISTORY_SHARE * len(labeled))]
    plain = GlobalModel.from_record(fitted_global_model_record(
        [li.impression for li in history], np.array([float(li.clicked) for li in history]), settings.model),
        settings.model)
    refitted = [e for e in live if e["model_versions"].get("global", 0) >= 2]  # joined after the first refit
    by_id = {li.impression["impression_id"]: li.impression for li in labeled}
    plain_margins = plain.global_index.sparse_rows([by_id[e["example_id"]]["features"] for e in refitted]) @ plain.coefficients
    plain_auc = auc(np.array([e["label"] > 0 for e in refitted]), plain_margins)
    _, refitted_global = _full_and_global_only(refitted)
    print(f"\nlive at 500 events/s: full {live_full:.4f} global-only {live_global:.4f}; per-event backtest: full "
          f"{replay_full:.4f} global-only {replay_global:.4f}; after the first refit ({len(refitted)} examples) "
          f"global-only {refitted_global:.4f} vs a plain logistic regression on the first 20% {plain_auc:.4f}; "
          f"{len(published)} refits answered, {sum(r['status'] == 'published' for r in published)} published")
    assert len(live) == len(backtest.examples)
    assert live_full >= replay_full - 0.01
    assert refitted, "no example was scored by a refitted global model"
    assert refitted_global >= plain_auc
