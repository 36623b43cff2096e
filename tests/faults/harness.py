"""What the process-level fault tests share: settings of joiner and pipeline runs, reference runs, output counts,
and a small filesystem to fill."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.archive.files import ArchiveFiles
from stream.codec import make_codec
from stream.config import Settings, load_settings
from stream.consumers.joiner import Joiner
from stream.kafka import producer_config
from stream.model.export import initial_global_model_record
from stream.runtime.runner import StageRunner
from stream.synthetic import World, WorldSpec, event_stream, labeled_impressions
from stream.synthetic.sinks import event_topics_and_codecs, produce_to_kafka
from stream.updaters.updater import CoordinateUpdater
from tests.helpers import read_topic, wait_for

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

    def produce(self, chunk: int, slices: int = 1, pause_s: float = 0.0) -> None:
        """Produce one chunk of events to the input topics and wait for it; in ``slices`` parts ``pause_s`` apart."""
        records = self.chunks[chunk]
        bounds = [len(records) * i // slices for i in range(slices + 1)]
        for n, (a, b) in enumerate(zip(bounds, bounds[1:])):
            if n:
                time.sleep(pause_s)
            produce_to_kafka(records[a:b], self.producer, *event_topics_and_codecs(self.settings))
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
    """Per topic: examples lost, emitted twice and unexpected, printed after ``what``; the topics that are not exact,
    each with its counts."""
    wrong = []
    for topic, want in expected.items():
        counts = got.get(topic, Counter())
        lost, extra = len(set(want) - set(counts)), len(set(counts) - set(want))
        twice = sum(1 for n in counts.values() if n > 1)
        line = f"{topic}: {what}, {len(want)} examples expected; lost {lost}, twice {twice}, unexpected {extra}"
        print(f"\n{line}")
        if lost or twice or extra:
            wrong.append(line)
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

    def wait_for_quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Return once the topic has not grown for ``quiet_s`` (or the time is up)."""
        deadline = time.monotonic() + timeout_s
        size, since = self._total(), time.monotonic()
        while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
            time.sleep(0.2)
            if (now := self._total()) != size:
                size, since = now, time.monotonic()

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


def start_glmix_run(bootstrap: str, overrides: dict[str, str], log: Path, stage: str = "joiner",
                    extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """A ``glmix run STAGE`` process (``extra``: more arguments, e.g. ``--coordinate``), its output appended to ``log``."""
    args = [sys.executable, "-m", "stream", "run", stage, *extra, "--bootstrap-servers", bootstrap]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    return subprocess.Popen(args, stdout=log.open("a"), stderr=subprocess.STDOUT)


# ---------------------------------------------------------------- glmix run all against one uninterrupted run

def pipeline_overrides(prefix: str, state_dir: Path, archive: Path, write_ahead_log: bool = True) -> dict[str, str]:
    """Settings of a ``glmix run all`` whose coefficients are exact whatever the batch boundaries (linear loss, no
    forgetting, Newton run to convergence), so a run that loses nothing and applies nothing twice ends with every
    entity's coefficients equal to an uninterrupted run's."""
    solver = {f"model.coordinates.{c}.{key}": value for c in ("member", "job")
              for key, value in (("newton_steps", "50"), ("gradient_tolerance", "1e-10"), ("batch_size", "300"))}
    return {**joiner_overrides(prefix, state_dir), "model.loss": "linear", "archive.path": str(archive),
            "archive.roll_records": "500", "archive.roll_interval_ms": "1000",
            "state_write_ahead_log": str(write_ahead_log).lower(), **solver}


def latest_coefficients(bootstrap: str, settings: Settings, coordinate: str) -> dict[str, tuple[int, np.ndarray]]:
    """The newest (version, means) of every entity on a coordinate's coefficients topic."""
    codec = make_codec("EntityModel", "any")
    latest: dict[str, tuple[int, np.ndarray]] = {}
    for message in read_topic(bootstrap, settings.topics.coefficients(coordinate), timeout_s=20):
        record = codec.decode(message.value())
        if record["version"] > latest.get(record["entity_id"], (0, None))[0]:
            latest[record["entity_id"]] = (record["version"], np.array(record["means"]))
    return latest


def differing(got: dict, expected: dict) -> list[str]:
    """Entities of ``expected`` missing from ``got`` or with other means."""
    return [e for e, (_, means) in expected.items()
            if e not in got or not np.allclose(got[e][1], means, rtol=1e-7, atol=1e-9)]


def reference_coefficients(bootstrap: str, settings: Settings, state_dir: Path, prefix: str,
                           records: dict[str, int]) -> dict[str, dict[str, tuple[int, np.ndarray]]]:
    """What one uninterrupted updater per coordinate makes of the run's examples topics (own group and outputs);
    ``records``: how many records each examples topic holds."""
    reference = load_settings(overrides={**pipeline_overrides(prefix, state_dir, state_dir / "archive"),
                                         "topics.examples_by_member": settings.topics.examples_by_member,
                                         "topics.examples_by_job": settings.topics.examples_by_job,
                                         "kafka.bootstrap_servers": bootstrap})
    updaters = {c: CoordinateUpdater(reference, c) for c in reference.model.coordinates}
    runners = {c: StageRunner(updater, reference, bootstrap) for c, updater in updaters.items()}
    try:  # stepped in turn, so that their groups form at the same time
        deadline = time.monotonic() + 120
        while behind := [c for c, r in runners.items() if r.stats.consumed() < records[updaters[c].topic]]:
            assert time.monotonic() < deadline, f"reference updaters {behind} behind {records}"
            for coordinate in behind:
                runners[coordinate].step()
    finally:
        for runner in runners.values():
            runner.close()
    return {c: latest_coefficients(bootstrap, reference, c) for c in runners}


def archived_examples(path: Path) -> Counter:
    """Example ids (with counts) in the archive under ``path``."""
    files = ArchiveFiles(str(path))
    return Counter(e["example_id"] for h in files.hours() for f in files.files(h) for e in files.read(f))


@dataclass
class PipelineCheck:
    """How a pipeline run compares with one uninterrupted run over the same input."""

    wrong_topics: list[str]  # each with its counts
    archive_lost: int
    archive_twice: int
    differing: dict[str, int]
    entities: dict[str, int]

    def __str__(self) -> str:
        return "; ".join([*self.wrong_topics, f"archive: lost {self.archive_lost}, twice {self.archive_twice}",
                          *(f"{c}: {n} of {self.entities[c]} entities differ" for c, n in self.differing.items())])

    @property
    def exact(self) -> bool:
        """Every example once on each topic and in the archive, every entity's coefficients as the reference's."""
        return (not self.wrong_topics and self.archive_lost == self.archive_twice == 0
                and all(self.entities.values()) and not any(self.differing.values()))


def check_pipeline(bootstrap: str, settings: Settings, events: JoinerInput, work: Path, prefix: str, archive: Path,
                   what: Callable[[], str]) -> PipelineCheck:
    """Wait for the run (still going) to reach what an uninterrupted joiner and updaters make of ``events``, then
    compare: examples per topic, the archive, every entity's coefficients; print the counts after ``what()``."""
    expected = events.reference(bootstrap, work / "reference-joiner", f"{prefix}-ref")
    wanted = sum(expected[settings.topics.examples_by_member].values())
    got = wait_for_examples(bootstrap, settings, expected, timeout_s=150)
    deadline = time.monotonic() + 60
    while sum((archived := archived_examples(archive)).values()) < wanted and time.monotonic() < deadline:
        time.sleep(2)
    reference = reference_coefficients(bootstrap, settings, work / "reference-updaters", f"{prefix}-refu",
                                       {t: sum(c.values()) for t, c in got.items()})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        coefficients = {c: latest_coefficients(bootstrap, settings, c) for c in reference}
        if not any(differing(coefficients[c], reference[c]) for c in reference):
            break
        time.sleep(2)
    check = PipelineCheck(exactly_once(got, expected, what()),
                          len(set(expected[settings.topics.examples_by_member]) - set(archived)),
                          sum(1 for n in archived.values() if n > 1),
                          {c: len(differing(coefficients[c], reference[c])) for c in reference},
                          {c: len(reference[c]) for c in reference})
    by_member, by_job = (set(got[t]) for t in (settings.topics.examples_by_member, settings.topics.examples_by_job))
    # The joiner's checkpoint flushes each example to both topics before it commits its input (and a restore
    # completes a logged batch's outbox): an example on one topic alone was acknowledged there and then dropped.
    print(f"examples on one examples topic only: {len(by_member ^ by_job)}")
    print(f"archive: lost {check.archive_lost}, twice {check.archive_twice}; "
          + "; ".join(f"{c}: {n} of {check.entities[c]} entities differ" for c, n in check.differing.items()))
    return check


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

    def wait_for_exits(self, timeout_s: float) -> dict[int, int]:
        """Wait until some process ended on its own (and 2 s more for the others to follow); their exit codes by slot,
        those forgotten so that :meth:`start_missing` restarts them."""
        wait_for(lambda: any(p.poll() is not None for p in self.running.values()), timeout_s=timeout_s,
                 what="a process to stop on its own")
        if len(self.running) > 1:
            time.sleep(2)
        ended = {slot: p.returncode for slot, p in self.running.items() if p.poll() is not None}
        for slot in ended:
            del self.running[slot]
        return ended

    def stop(self) -> None:
        """SIGTERM every process and wait for it."""
        for process in self.running.values():
            process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            process.wait(30)


# ---------------------------------------------------------------- the faults' own parts

class SmallFilesystem:
    """A tmpfs of ``size_bytes`` mounted at ``path`` (mounting needs root), filled on demand by a file of its own."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], check=True,
                       capture_output=True)
        self._filler = path / "filler"

    def free_bytes(self) -> int:
        """Bytes a new file may still take."""
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave_bytes: int) -> None:
        """Grow the filler file until only ``leave_bytes`` are free (or the filesystem is full)."""
        block = b"\xa5" * (1 << 16)
        with self._filler.open("ab", buffering=0) as out:
            try:
                while (room := self.free_bytes() - leave_bytes) > 0:
                    out.write(block[:room])
            except OSError:  # a process wrote the last bytes first: the filesystem is full, as wanted
                pass

    def free(self) -> None:
        """Delete the filler file: the space it held is free again."""
        self._filler.unlink(missing_ok=True)

    def close(self) -> None:
        """Unmount (lazily if something still has a file open there)."""
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
