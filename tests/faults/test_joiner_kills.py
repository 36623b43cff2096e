"""Real ``glmix run joiner`` processes SIGKILLed at random points: every example reaches each topic exactly once.

The reference is one uninterrupted joiner (the same code, in this process) over the same
input into topics of its own. The killed joiner keeps one state directory across its
restarts. A default run kills it a few times; ``--run-slow`` kills it 20 times.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.codec import make_codec
from stream.config import Settings, load_settings
from stream.consumers.joiner import Joiner
from stream.kafka import producer_config
from stream.model.export import initial_global_model_record
from stream.synthetic import World, WorldSpec, event_stream, labeled_impressions
from stream.synthetic.sinks import event_topics_and_codecs, produce_to_kafka
from stream.runtime.runner import StageRunner
from tests.helpers import read_topic, wait_for

pytestmark = pytest.mark.kafka

WINDOW_MS = 20_000


def _overrides(prefix: str, state_dir: Path) -> dict[str, str]:
    return {
        "state_dir": str(state_dir), "kafka.group_prefix": prefix, "metrics.enabled": "false",
        "topics.impressions": f"imp-{prefix}", "topics.interactions": f"int-{prefix}",
        "topics.examples_by_member": f"exm-{prefix}", "topics.examples_by_job": f"exj-{prefix}",
        "topics.model_global": f"global-{prefix}", "topics.coefficients_prefix": f"coef-{prefix}-",
        "topics.dead_letter": f"dlq-{prefix}", "joiner.attribution_window_ms": str(WINDOW_MS),
        "joiner.allowed_lateness_ms": "1000", "joiner.idle_input_ms": "500", "joiner.batch_size": "300",
        "joiner.emitted_retention_ms": str(3_600_000),
        # a killed member's partitions move after this, not after librdkafka's default 45 s
        "kafka.consumer.session.timeout.ms": "6000", "kafka.consumer.heartbeat.interval.ms": "500",
    }


def _counts(bootstrap: str, settings: Settings) -> dict[str, Counter]:
    codec = make_codec("LabeledExample", "any")
    return {topic: Counter(codec.decode(m.value())["example_id"] for m in read_topic(bootstrap, topic, timeout_s=20))
            for topic in (settings.topics.examples_by_member, settings.topics.examples_by_job)}


def _reference(bootstrap: str, inputs: dict[str, str], state_dir: Path, prefix: str, records: int) -> dict[str, Counter]:
    """What one uninterrupted joiner emits over the same input topics (its own group, state and outputs)."""
    settings = load_settings(overrides={**_overrides(prefix, state_dir), **inputs})
    joiner = StageRunner(Joiner(settings), settings, bootstrap)
    try:
        read = lambda: joiner.stats.join.impressions + joiner.stats.join.interactions + joiner.stats.dead_lettered  # noqa: E731
        deadline = time.monotonic() + 120
        while read() < records:
            assert time.monotonic() < deadline, f"the reference joiner read {read()} of {records} records"
            joiner.step()
        emitted, quiet_since = joiner.stats.examples, time.monotonic()
        while time.monotonic() - quiet_since < 3:  # then the inputs go idle and the last windows close
            joiner.step()
            if joiner.stats.examples != emitted:
                emitted, quiet_since = joiner.stats.examples, time.monotonic()
    finally:
        joiner.close()
    return _counts(bootstrap, settings)


class _OutputWatch:
    """The high watermarks of an output topic, polled to kill a joiner right as its records arrive."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watch-{topic}"})
        self._topic = topic
        self._marked = 0

    def _total(self) -> int:
        metadata = self._consumer.list_topics(self._topic, timeout=5).topics.get(self._topic)
        partitions = sorted(metadata.partitions) if metadata is not None and metadata.partitions else []
        return sum(self._consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=5, cached=False)[1]
                   for p in partitions)

    def mark(self) -> None:
        self._marked = self._total()

    def wait_for_growth(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._total() <= self._marked and time.monotonic() < deadline:
            pass

    def close(self) -> None:
        self._consumer.close()


def _run_joiner(bootstrap: str, overrides: dict[str, str], log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "stream", "run", "joiner", "--bootstrap-servers", bootstrap]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    return subprocess.Popen(args, stdout=log.open("a"), stderr=subprocess.STDOUT)


@pytest.mark.parametrize(("kills", "requests"), [pytest.param(4, 2_000, id="4-kills"),
                                                 pytest.param(20, 8_000, id="20-kills", marks=pytest.mark.slow)])
def test_a_joiner_killed_at_random_emits_every_example_exactly_once(kafka_broker, kafka_bootstrap, tmp_path, unique_name,
                                                                  kills, requests):
    if kafka_broker.kind == "mock":
        pytest.skip("process-level fault tests run on a broker process, not on the mock in this test process")
    settings = load_settings(overrides={**_overrides(unique_name, tmp_path / "state"),
                                        "kafka.bootstrap_servers": kafka_bootstrap})
    world = World(WorldSpec(seed=21, members=60, jobs=40, requests=requests, attribution_window_ms=WINDOW_MS,
                            mean_request_gap_ms=200, malformed_rate=0.02))
    labeled = labeled_impressions(world)
    producer = Producer(producer_config(settings.kafka))
    record = initial_global_model_record([li.impression for li in labeled], settings.model)
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    events = list(event_stream(world, labeled))
    bounds = [len(events) * i // (kills + 1) for i in range(kills + 2)]
    chunks = [events[a:b] for a, b in zip(bounds, bounds[1:])]  # each run finds fresh input to work on
    topics, codecs = event_topics_and_codecs(settings)

    started = time.monotonic()
    rng = random.Random(unique_name)
    log = tmp_path / "joiner.log"
    overrides = _overrides(unique_name, tmp_path / "state")
    outputs = _OutputWatch(kafka_bootstrap, settings.topics.examples_by_member)
    for run in range(kills):
        produce_to_kafka(chunks[run], producer, topics, codecs)
        producer.flush(30)
        outputs.mark()
        before = log.read_text().count("assigned partitions") if log.exists() else 0
        process = _run_joiner(kafka_bootstrap, overrides, log)
        wait_for(lambda: log.read_text().count("assigned partitions") > before or process.poll() is not None,
                 timeout_s=60, what="the joiner to be assigned its partitions")
        if run % 2:  # the moment its first records reach an examples topic: during a flush, before the state is safe
            outputs.wait_for_growth(timeout_s=10)
        else:  # anywhere in its batches: before, during or after a state write or a flush
            time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    outputs.close()
    produce_to_kafka(chunks[-1], producer, topics, codecs)
    producer.flush(30)
    final = _run_joiner(kafka_bootstrap, overrides, log)
    reference = _reference(kafka_bootstrap, {"topics.impressions": settings.topics.impressions,
                                             "topics.interactions": settings.topics.interactions,
                                             "topics.model_global": settings.topics.model_global},
                           tmp_path / "reference", f"{unique_name}-ref", len(events))
    assert min(sum(c.values()) for c in reference.values()) > 0.9 * len(labeled)
    try:
        deadline = time.monotonic() + 120
        while True:
            got = _counts(kafka_bootstrap, settings)
            if all(sum(got[t].values()) >= sum(reference[r].values())
                   for t, r in zip(got, reference)) or time.monotonic() > deadline:
                break
            time.sleep(2)
        time.sleep(3)  # anything still in flight would show up as a duplicate
        got = _counts(kafka_bootstrap, settings)
    finally:
        final.send_signal(signal.SIGTERM)
        final.wait(30)
    seconds = time.monotonic() - started
    for (topic, counts), expected in zip(got.items(), reference.values()):
        twice = sum(1 for n in counts.values() if n > 1)
        lost = len(set(expected) - set(counts))
        extra = len(set(counts) - set(expected))
        print(f"\n{topic}: {kills} kills, 1 process, {len(expected)} examples expected; lost {lost}, twice {twice}, "
              f"unexpected {extra}; {seconds:.0f} s")
        assert lost == 0 and twice == 0 and extra == 0
    recovered = log.read_text().count("outgoing records")
    print(f"outboxes a kill left behind and recovery completed: {recovered}")


@pytest.mark.parametrize(("kills", "requests"), [pytest.param(4, 2_000, id="4-kills"),
                                                 pytest.param(20, 8_000, id="20-kills", marks=pytest.mark.slow)])
def test_joiners_on_separate_machines_killed_at_random_emit_every_example_exactly_once(
        kafka_broker, kafka_bootstrap, tmp_path, unique_name, kills, requests):
    """Three joiner processes in one group, each with its own state directory (as on separate machines).

    One is SIGKILLed at a random moment and restarted after each chunk of input, sometimes
    with its state directory deleted, so partitions keep moving to processes that lack
    their pending impressions: those come from the changelog. No process may end on its own.
    """
    if kafka_broker.kind == "mock":
        pytest.skip("process-level fault tests run on a broker process, not on the mock in this test process")
    processes = 3
    settings = load_settings(overrides={**_overrides(unique_name, tmp_path / "state-0"),
                                        "kafka.bootstrap_servers": kafka_bootstrap})
    world = World(WorldSpec(seed=22, members=60, jobs=40, requests=requests, attribution_window_ms=WINDOW_MS,
                            mean_request_gap_ms=200, malformed_rate=0.02))
    labeled = labeled_impressions(world)
    producer = Producer(producer_config(settings.kafka))
    record = initial_global_model_record([li.impression for li in labeled], settings.model)
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    events = list(event_stream(world, labeled))
    bounds = [len(events) * i // (kills + 1) for i in range(kills + 2)]
    chunks = [events[a:b] for a, b in zip(bounds, bounds[1:])]
    topics, codecs = event_topics_and_codecs(settings)

    started = time.monotonic()
    rng = random.Random(unique_name)
    log = tmp_path / "joiners.log"
    running: dict[int, subprocess.Popen] = {}
    wipes = 0
    for chunk in chunks[:-1]:
        produce_to_kafka(chunk, producer, topics, codecs)
        producer.flush(30)
        for slot in range(processes):
            if slot not in running:
                running[slot] = _run_joiner(kafka_bootstrap, _overrides(unique_name, tmp_path / f"state-{slot}"), log)
        time.sleep(rng.uniform(2.0, 6.0))
        victim = rng.randrange(processes)
        assert running[victim].poll() is None, f"joiner {victim} ended on its own:\n{log.read_text()[-3000:]}"
        running.pop(victim).send_signal(signal.SIGKILL)
        if rng.random() < 0.4:  # restarted as if on a new machine
            shutil.rmtree(tmp_path / f"state-{victim}", ignore_errors=True)
            wipes += 1
    produce_to_kafka(chunks[-1], producer, topics, codecs)
    producer.flush(30)
    for slot in range(processes):
        if slot not in running:
            running[slot] = _run_joiner(kafka_bootstrap, _overrides(unique_name, tmp_path / f"state-{slot}"), log)
    reference = _reference(kafka_bootstrap, {"topics.impressions": settings.topics.impressions,
                                             "topics.interactions": settings.topics.interactions,
                                             "topics.model_global": settings.topics.model_global},
                           tmp_path / "reference", f"{unique_name}-ref", len(events))
    try:
        deadline = time.monotonic() + 120
        while True:
            got = _counts(kafka_bootstrap, settings)
            if all(sum(got[t].values()) >= sum(reference[r].values())
                   for t, r in zip(got, reference)) or time.monotonic() > deadline:
                break
            time.sleep(2)
        time.sleep(3)  # anything still in flight would show up as a duplicate
        got = _counts(kafka_bootstrap, settings)
        alive = {slot: p.poll() is None for slot, p in running.items()}
    finally:
        for process in running.values():
            process.send_signal(signal.SIGTERM)
        for process in running.values():
            process.wait(30)
    text = log.read_text()
    assert all(alive.values()) and "Traceback" not in text, text[-3000:]
    seconds = time.monotonic() - started
    for (topic, counts), expected in zip(got.items(), reference.values()):
        twice = sum(1 for n in counts.values() if n > 1)
        lost = len(set(expected) - set(counts))
        extra = len(set(counts) - set(expected))
        print(f"\n{topic}: {kills} kills, {wipes} state wipes, {processes} processes, {len(expected)} examples expected; "
              f"lost {lost}, twice {twice}, unexpected {extra}; {seconds:.0f} s")
        assert lost == 0 and twice == 0 and extra == 0
    print(f"changelog restores: {text.count('changelog records read')}; outboxes completed: "
          f"{text.count('had not reached their topic')}; commits refused by rebalances: "
          f"{text.count('refused by a rebalance')}")
