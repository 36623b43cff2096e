"""Real ``glmix run updater`` processes SIGKILLed at random, some restarted without their state directory.

With the linear loss and no forgetting, an entity's posterior after all its events is
the same whatever the micro-batch boundaries, so a run that loses nothing and applies
nothing twice ends with every entity's coefficients equal to one uninterrupted
updater's (the same code in this process, over the same examples, into its own topic).
One process with kills; and three processes in one group, each with its own state
directory, started and killed at random (rebalances between live processes). A default
run kills a few times; ``--run-slow`` kills 20 times.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.codec import make_codec
from stream.config import load_settings
from stream.kafka import producer_config
from stream.model.export import initial_global_model_record
from stream.runtime.runner import StageRunner
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.synthetic.examples import joined_examples
from stream.tables.models import GlobalModelTable
from stream.updaters.updater import CoordinateUpdater
from tests.faults.harness import differing, latest_coefficients, start_glmix_run

pytestmark = pytest.mark.kafka


def _overrides(prefix: str, state_dir: Path, examples_topic: str) -> dict[str, str]:
    return {
        "state_dir": str(state_dir), "kafka.group_prefix": prefix, "metrics.enabled": "false", "model.loss": "linear",
        "topics.examples_by_member": examples_topic, "topics.coefficients_prefix": f"coef-{prefix}-",
        "topics.dead_letter": f"dlq-{prefix}", "model.coordinates.member.batch_size": "200",
        "model.coordinates.member.newton_steps": "50", "model.coordinates.member.gradient_tolerance": "1e-10",
        "kafka.consumer.session.timeout.ms": "6000", "kafka.consumer.heartbeat.interval.ms": "500",
    }


def _start(bootstrap: str, overrides: dict[str, str], log: Path) -> subprocess.Popen:
    return start_glmix_run(bootstrap, overrides, log, "updater", ("--coordinate", "member"))


@pytest.mark.parametrize(("processes", "kills"), [
    pytest.param(1, 3, id="1-process-3-kills"), pytest.param(3, 3, id="3-processes-3-kills"),
    pytest.param(1, 20, id="1-process-20-kills", marks=pytest.mark.slow),
    pytest.param(3, 20, id="3-processes-20-kills", marks=pytest.mark.slow),
])
def test_updaters_killed_at_random_end_with_the_uninterrupted_coefficients(kafka_broker, kafka_bootstrap, tmp_path,
                                                                           unique_name, processes, kills):
    if kafka_broker.kind == "mock":
        pytest.skip("process-level fault tests run on a broker process, not on the mock in this test process")
    examples_topic = f"exm-{unique_name}"
    base = _overrides(unique_name, tmp_path / "unused", examples_topic)
    settings = load_settings(overrides={**base, "kafka.bootstrap_servers": kafka_bootstrap})
    world = World(WorldSpec(seed=31, members=80, jobs=40, requests=1200))
    labeled = labeled_impressions(world)
    table = GlobalModelTable(settings.model)
    table.apply([initial_global_model_record([li.impression for li in labeled], settings.model)])
    examples = joined_examples(labeled, table.current, settings.model)
    codec = make_codec("LabeledExample", examples_topic)
    producer = Producer(producer_config(settings.kafka))
    chunks = np.array_split(np.arange(len(examples)), kills + 1)

    def produce(rows) -> None:
        for i in rows:
            producer.produce(examples_topic, key=examples[i]["member_id"].encode(), value=codec.encode(examples[i]))
        producer.flush(30)

    started = time.monotonic()
    rng = random.Random(unique_name)
    log = tmp_path / "updaters.log"
    running: dict[int, subprocess.Popen] = {}
    wipes = 0
    for chunk in chunks[:-1]:
        produce(chunk)
        for slot in range(processes):  # (re)start whoever is down
            if slot not in running or running[slot].poll() is not None:
                running[slot] = _start(kafka_bootstrap, _overrides(unique_name, tmp_path / f"state-{slot}",
                                                                   examples_topic), log)
        time.sleep(rng.uniform(2.0, 5.0))
        victim = rng.randrange(processes)
        assert running[victim].poll() is None, f"updater {victim} ended on its own:\n{log.read_text()[-3000:]}"
        running[victim].send_signal(signal.SIGKILL)
        running[victim].wait(10)
        if rng.random() < 0.3:  # restarted as if on a new machine
            shutil.rmtree(tmp_path / f"state-{victim}", ignore_errors=True)
            wipes += 1
    produce(chunks[-1])
    for slot in range(processes):
        if running[slot].poll() is not None:
            running[slot] = _start(kafka_bootstrap, _overrides(unique_name, tmp_path / f"state-{slot}", examples_topic),
                                   log)

    reference_settings = load_settings(overrides={**_overrides(f"{unique_name}-ref", tmp_path / "reference",
                                                               examples_topic), "kafka.bootstrap_servers": kafka_bootstrap})
    reference = StageRunner(CoordinateUpdater(reference_settings, "member"), reference_settings, kafka_bootstrap)
    try:
        deadline = time.monotonic() + 120
        while reference.stats.examples < len(examples):
            assert time.monotonic() < deadline, f"the reference absorbed {reference.stats.examples} of {len(examples)}"
            reference.step()
    finally:
        reference.close()
    expected = latest_coefficients(kafka_bootstrap, reference_settings, "member")
    assert len(expected) == len({e["member_id"] for e in examples})
    try:
        deadline = time.monotonic() + 120
        while differing(got := latest_coefficients(kafka_bootstrap, settings, "member"), expected) and time.monotonic() < deadline:
            time.sleep(2)
    finally:
        for process in running.values():
            process.send_signal(signal.SIGTERM)
        for process in running.values():
            process.wait(30)
    wrong = differing(got, expected)
    text = log.read_text()
    print(f"\n{processes} process(es), {kills} kills, {wipes} state wipes: {len(examples)} examples, "
          f"{len(wrong)} of {len(expected)} entities differ; {time.monotonic() - started:.0f} s; "
          f"{text.count('refused by a rebalance')} commits refused by rebalances")
    assert not wrong
    assert "Traceback" not in text  # no process died of anything but SIGKILL
