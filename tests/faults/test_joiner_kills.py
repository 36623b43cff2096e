"""Real ``glmix run joiner`` processes SIGKILLed at random points: every example reaches each topic exactly once.

The reference is one uninterrupted joiner (the same code, in this process) over the same
input into topics of its own. The killed joiner keeps one state directory across its
restarts; then three joiners on separate state directories are killed in turn, so
partitions move to processes without their state. A default run kills a few times;
``--run-slow`` kills 20 times.
"""

from __future__ import annotations

import random
import signal
import time
from functools import partial

import pytest

from stream.config import load_settings
from tests.faults.harness import (
    JoinerInput,
    KilledProcesses,
    OutputWatch,
    exactly_once,
    joiner_overrides,
    start_glmix_run,
    wait_for_examples,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.kafka

KILLS = [pytest.param(3, 1_500, id="3-kills"), pytest.param(20, 8_000, id="20-kills", marks=pytest.mark.slow)]


@pytest.mark.parametrize(("kills", "requests"), KILLS)
def test_a_joiner_killed_at_random_emits_every_example_exactly_once(kafka_broker, kafka_bootstrap, tmp_path, unique_name,
                                                                  kills, requests):
    if kafka_broker.kind == "mock":
        pytest.skip("process-level fault tests run on a broker process, not on the mock in this test process")
    overrides = joiner_overrides(unique_name, tmp_path / "state")
    settings = load_settings(overrides={**overrides, "kafka.bootstrap_servers": kafka_bootstrap})
    events = JoinerInput.publish(settings, seed=21, requests=requests, chunks=kills + 1)

    started = time.monotonic()
    rng = random.Random(unique_name)
    log = tmp_path / "joiner.log"
    outputs = OutputWatch(kafka_bootstrap, settings.topics.examples_by_member)
    for run in range(kills):
        events.produce(run)  # each run finds fresh input to work on
        outputs.mark()
        before = log.read_text().count("assigned partitions") if log.exists() else 0
        process = start_glmix_run(kafka_bootstrap, overrides, log)
        wait_for(lambda: log.read_text().count("assigned partitions") > before or process.poll() is not None,
                 timeout_s=60, what="the joiner to be assigned its partitions")
        if run % 2:  # the moment its first records reach an examples topic: during a flush, before the state is safe
            outputs.wait_for_growth(timeout_s=10)
        else:  # anywhere in its batches: before, during or after a state write or a flush
            time.sleep(rng.uniform(0.0, 1.5))
        assert process.poll() is None, log.read_text()[-3000:]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    outputs.close()
    events.produce(kills)
    final = start_glmix_run(kafka_bootstrap, overrides, log)
    expected = events.reference(kafka_bootstrap, tmp_path / "reference", f"{unique_name}-ref")
    try:
        got = wait_for_examples(kafka_bootstrap, settings, expected)
    finally:
        final.send_signal(signal.SIGTERM)
        final.wait(30)
    wrong = exactly_once(got, expected, f"{kills} kills, 1 process, {time.monotonic() - started:.0f} s")
    print(f"outboxes a kill left behind and recovery completed: {log.read_text().count('had not reached their topic')}")
    assert not wrong


@pytest.mark.parametrize(("kills", "requests"), KILLS)
def test_joiners_on_separate_machines_killed_at_random_emit_every_example_exactly_once(
        kafka_broker, kafka_bootstrap, tmp_path, unique_name, kills, requests):
    """Three joiner processes in one group, each with its own state directory (as on separate machines).

    One is SIGKILLed at a random moment and restarted after each chunk of input, sometimes
    with its state directory deleted, so partitions keep moving to processes that lack
    their pending impressions: those come from the changelog. No process may end on its own.
    """
    if kafka_broker.kind == "mock":
        pytest.skip("process-level fault tests run on a broker process, not on the mock in this test process")
    settings = load_settings(overrides={**joiner_overrides(unique_name, tmp_path / "state-0"),
                                        "kafka.bootstrap_servers": kafka_bootstrap})
    events = JoinerInput.publish(settings, seed=22, requests=requests, chunks=kills + 1)
    started = time.monotonic()
    rng = random.Random(unique_name)
    joiners = KilledProcesses(kafka_bootstrap, partial(joiner_overrides, unique_name), tmp_path / "joiners.log",
                              tmp_path, count=3)
    joiners.churn(events, rng, pause_s=(2.0, 6.0), wipe_share=0.4)
    expected = events.reference(kafka_bootstrap, tmp_path / "reference", f"{unique_name}-ref")
    try:
        got = wait_for_examples(kafka_bootstrap, settings, expected)
        alive = joiners.all_alive()
    finally:
        joiners.stop()
    text = joiners.log.read_text()
    assert alive, text[-3000:]
    wrong = exactly_once(got, expected, f"{kills} kills, {joiners.wipes} state wipes, 3 processes, "
                                        f"{time.monotonic() - started:.0f} s")
    print(f"changelog restores: {text.count('changelog records read')}; outboxes completed: "
          f"{text.count('had not reached their topic')}; commits refused by rebalances: "
          f"{text.count('refused by a rebalance')}")
    assert not wrong
