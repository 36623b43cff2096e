"""What the process-level fault tests share: settings of a joiner run, reference runs, and output counts."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.codec import make_codec
from stream.config import Settings, load_settings
from stream.consumers.joiner import Joiner
from stream.kafka import producer_config
from stream.model.export import initial_global_model_record
from stream.runtime.runner import StageRunner
from stream.synthetic import World, WorldSpec, event_stream, labeled_impressions
from stream.synthetic.sinks import event_topics_and_codecs, produce_to_kafka
from tests.helpers import read_topic

WINDOW_MS = 20_000


def joiner_overrides(prefix: str, state_dir: Path) -> dict[str, str]:
    """Settings of a joiner run whose topics and group are named after ``prefix``."""
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


@dataclass
class JoinerInput:
    """A synthetic event stream split into chunks (one per run between kills), with its global model published."""

    settings: Settings
    producer: Producer
    chunks: list[list]
    events: int
    impressions: int

    @classmethod
    def publish(cls, settings: Settings, seed: int, requests: int, chunks: int, members: int = 60,
                jobs: int = 40) -> JoinerInput:
        """Publish a global model indexed from the stream's impressions; split its events into ``chunks``."""
        world = World(WorldSpec(seed=seed, members=members, jobs=jobs, requests=requests,
                                attribution_window_ms=WINDOW_MS, mean_request_gap_ms=200, malformed_rate=0.02))
        labeled = labeled_impressions(world)
        producer = Producer(producer_config(settings.kafka))
        record = initial_global_model_record([li.impression for li in labeled], settings.model)
        producer.produce(settings.topics.model_global, key=b"glmix",
                         value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
        events = list(event_stream(world, labeled))
        bounds = [len(events) * i // chunks for i in range(chunks + 1)]
        return cls(settings, producer, [events[a:b] for a, b in zip(bounds, bounds[1:])], len(events), len(labeled))

    def produce(self, chunk: int) -> None:
        """Produce one chunk of events to the input topics and wait for it."""
        produce_to_kafka(self.chunks[chunk], self.producer, *event_topics_and_codecs(self.settings))
        self.producer.flush(30)

    def reference(self, bootstrap: str, state_dir: Path, prefix: str) -> dict[str, Counter]:
        """Example ids (and counts) one uninterrupted joiner emits over this input, keyed by the run's topics."""
        topics = self.settings.topics
        counts = reference_examples(bootstrap, {"topics.impressions": topics.impressions,
                                                "topics.interactions": topics.interactions,
                                                "topics.model_global": topics.model_global},
                                    state_dir, prefix, self.events)
        assert min(sum(c.values()) for c in counts.values()) > 0.9 * self.impressions  # malformed ones are not
        return dict(zip((topics.examples_by_member, topics.examples_by_job), counts.values()))


def wait_for_examples(bootstrap: str, settings: Settings, expected: dict[str, Counter],
                      timeout_s: float = 120.0) -> dict[str, Counter]:
    """The run's example counts once they reach the expected totals (or the time is up), and 3 s more."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = example_counts(bootstrap, settings)
        if all(sum(got[t].values()) >= sum(expected[t].values()) for t in expected):
            break
        time.sleep(2)
    time.sleep(3)  # anything still in flight would show up as a duplicate
    return example_counts(bootstrap, settings)


def exactly_once(got: dict[str, Counter], expected: dict[str, Counter], what: str) -> list[str]:
    """Per topic: examples lost, emitted twice and unexpected, printed after ``what``; the topics that are not exact."""
    wrong = []
    for topic, want in expected.items():
        counts = got.get(topic, Counter())
        lost, extra = len(set(want) - set(counts)), len(set(counts) - set(want))
        twice = sum(1 for n in counts.values() if n > 1)
        print(f"\n{topic}: {what}, {len(want)} examples expected; lost {lost}, twice {twice}, unexpected {extra}")
        if lost or twice or extra:
            wrong.append(topic)
    return wrong


def example_counts(bootstrap: str, settings: Settings) -> dict[str, Counter]:
    """Example ids (with counts) in each examples topic of a run."""
    codec = make_codec("LabeledExample", "any")
    return {topic: Counter(codec.decode(m.value())["example_id"] for m in read_topic(bootstrap, topic, timeout_s=20))
            for topic in (settings.topics.examples_by_member, settings.topics.examples_by_job)}


def reference_examples(bootstrap: str, inputs: dict[str, str], state_dir: Path, prefix: str, records: int) -> dict[str, Counter]:
    """What one uninterrupted joiner emits over the same input topics (its own group, state and outputs)."""
    settings = load_settings(overrides={**joiner_overrides(prefix, state_dir), **inputs})
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
    return example_counts(bootstrap, settings)


class OutputWatch:
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
        """Remember the topic's size now."""
        self._marked = self._total()

    def wait_for_growth(self, timeout_s: float) -> None:
        """Return as soon as the topic grew past the mark (or the time is up)."""
        deadline = time.monotonic() + timeout_s
        while self._total() <= self._marked and time.monotonic() < deadline:
            pass

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


def start_glmix_run(bootstrap: str, overrides: dict[str, str], log: Path, stage: str = "joiner") -> subprocess.Popen:
    """A ``glmix run STAGE`` process, its output appended to ``log``."""
    args = [sys.executable, "-m", "stream", "run", stage, "--bootstrap-servers", bootstrap]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    return subprocess.Popen(args, stdout=log.open("a"), stderr=subprocess.STDOUT)




class KilledProcesses:
    """Processes of one ``glmix run STAGE`` command, each on its own state directory; one killed at a time."""

    def __init__(self, bootstrap: str, overrides, log: Path, state_root: Path, count: int, stage: str = "joiner") -> None:
        self._bootstrap, self._overrides, self.log = bootstrap, overrides, log
        self._root, self._count, self._stage = state_root, count, stage
        self.running: dict[int, subprocess.Popen] = {}
        self.wipes = 0

    def start_missing(self) -> None:
        """Start every process that is not running."""
        for slot in range(self._count):
            if slot not in self.running:
                self.running[slot] = start_glmix_run(self._bootstrap, self._overrides(self._root / f"state-{slot}"),
                                                     self.log, self._stage)

    def kill(self, slot: int, wipe: bool) -> None:
        """SIGKILL one process (which must still be running), optionally deleting its state directory."""
        process = self.running.pop(slot)
        assert process.poll() is None, f"process {slot} ended on its own:\n{self.log.read_text()[-3000:]}"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        if wipe:  # restarted as if on a new machine
            shutil.rmtree(self._root / f"state-{slot}", ignore_errors=True)
            self.wipes += 1

    def churn(self, events: JoinerInput, rng: random.Random, pause_s: tuple[float, float], wipe_share: float) -> None:
        """Per chunk of ``events`` but the last: produce it, start whoever is down, wait, kill one at random
        (deleting its state with probability ``wipe_share``). Then the last chunk, with every process up."""
        for chunk in range(len(events.chunks) - 1):
            events.produce(chunk)
            self.start_missing()
            time.sleep(rng.uniform(*pause_s))
            self.kill(rng.randrange(self._count), wipe=rng.random() < wipe_share)
        events.produce(len(events.chunks) - 1)
        self.start_missing()

    def all_alive(self) -> bool:
        """Whether no process ended on its own and none logged a traceback."""
        return all(p.poll() is None for p in self.running.values()) and "Traceback" not in self.log.read_text()

    def stop(self) -> None:
        """SIGTERM every process and wait for it."""
        for process in self.running.values():
            process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            process.wait(30)
