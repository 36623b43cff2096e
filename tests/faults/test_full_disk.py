"""A full disk under real ``glmix`` processes: the stage stops in one line, and a restart after space is freed
ends as one uninterrupted run.

The state directory (every stage's RocksDB stores), and separately the archive's path,
live on a tmpfs of a few MB that the test fills with a file of its own while the
process works; the next input then finds no room. The process must stop by itself with
one ``glmix: stage ... failed`` line naming the filesystem's path and what it was
writing, exit non-zero and print no traceback. The filler is deleted, the process
started again on the same directories, and the output compared with an uninterrupted
run's: every example once on each topic and in the archive, every entity's
coefficients equal. Mounting needs root (CI runs as root). A default run fills an 8 MB
filesystem once; ``--run-slow`` fills a 96 MB one four times with ten times the input.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.archive.archiver import Archiver
from stream.codec import make_codec
from stream.config import load_settings
from stream.kafka import producer_config
from stream.model.export import initial_global_model_record
from stream.runtime.runner import StageRunner
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.synthetic.examples import joined_examples
from stream.tables.models import GlobalModelTable
from tests.faults.harness import (
    JoinerInput,
    KilledProcesses,
    OutputWatch,
    SmallFilesystem,
    archived_examples,
    check_pipeline,
    pipeline_overrides,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.kafka

# The slow run's state outgrows 8 MB by itself (a store's write-ahead log grows until RocksDB flushes its 64 MB
# memtable): its filesystem is larger, and filled the same way.
FILLS = [pytest.param(1, 300, 8 << 20, id="1-fill"),
         pytest.param(4, 3_000, 96 << 20, id="4-fills", marks=pytest.mark.slow)]


@pytest.fixture
def small_filesystem(kafka_broker, tmp_path, size_bytes) -> Iterator[SmallFilesystem]:
    """A tmpfs of ``size_bytes`` under the test's directory."""
    if kafka_broker.kind == "mock":
        pytest.skip("process-level fault tests run on a broker process, not on the mock in this test process")
    if os.geteuid() != 0:
        pytest.skip("filling a real small filesystem needs a tmpfs mounted, which needs root (CI runs as root)")
    filesystem = SmallFilesystem(tmp_path / "small", size_bytes)
    try:
        yield filesystem
    finally:
        filesystem.close()


def _disk_full_lines(text: str, path: Path) -> list[str]:
    """The processes' one-line stage failures that name a full filesystem under ``path``."""
    return [line for line in text.splitlines()
            if re.match(r"glmix: stage \S+ failed: no space left on the filesystem of ", line) and str(path) in line]


def _stopped_in_one_line(processes: KilledProcesses, log_from: int, path: Path) -> str:
    """Wait for the processes to stop on their own; check each said why in one line; return those lines."""
    ended = processes.wait_for_exits(timeout_s=90)
    text = processes.log.read_text()[log_from:]
    lines = _disk_full_lines(text, path)
    print("\n" + "\n".join(lines))
    assert ended and all(code == 1 for code in ended.values()), f"exit codes {ended}:\n{text[-3000:]}"
    assert lines and "Traceback" not in text, text[-3000:]
    assert all(" while writing " in line for line in lines)
    return text


@pytest.mark.parametrize(("fills", "requests", "size_bytes"), FILLS)
def test_a_full_state_directory_stops_the_stage_in_one_line_and_a_restart_loses_nothing(
        kafka_bootstrap, tmp_path, unique_name, small_filesystem, fills, requests):
    archive = tmp_path / "archive"  # on the ordinary disk: here only the state directory fills

    def overrides(state_dir: Path) -> dict[str, str]:
        return pipeline_overrides(unique_name, state_dir, archive)

    settings = load_settings(overrides={**overrides(small_filesystem.path / "state-0"),
                                        "kafka.bootstrap_servers": kafka_bootstrap})
    events = JoinerInput.publish(settings, seed=24, requests=requests, chunks=fills + 1, members=50, jobs=30)
    started = time.monotonic()
    pipeline = KilledProcesses(kafka_bootstrap, overrides, tmp_path / "run-all.log", small_filesystem.path, count=1,
                               stage="all")
    outputs = OutputWatch(kafka_bootstrap, settings.topics.examples_by_member)
    events.produce(0)
    for fill in range(fills):
        outputs.mark()
        pipeline.start_missing()
        outputs.wait_for_growth(timeout_s=60)  # it is at work
        log_from = len(pipeline.log.read_text())
        small_filesystem.fill(leave_bytes=0)
        events.produce(fill + 1)  # input arrives with no room for its state
        _stopped_in_one_line(pipeline, log_from, small_filesystem.path)
        small_filesystem.free()
    outputs.close()
    pipeline.start_missing()
    try:
        check = check_pipeline(kafka_bootstrap, settings, events, tmp_path, unique_name, archive,
                               lambda: f"glmix run all, {fills} full disk(s), {time.monotonic() - started:.0f} s")
        alive = pipeline.all_alive()
    finally:
        pipeline.stop()
    assert alive, pipeline.log.read_text()[-3000:]
    assert check.exact, str(check)


def _archive_overrides(prefix: str, state_dir: Path, archive: Path, topic: str) -> dict[str, str]:
    return {"state_dir": str(state_dir), "kafka.group_prefix": prefix, "metrics.enabled": "false",
            "topics.examples_by_member": topic, "topics.dead_letter": f"dlq-{prefix}", "archive.path": str(archive),
            "archive.roll_records": "200", "archive.roll_interval_ms": "500"}


def _reference_archive(bootstrap: str, prefix: str, work: Path, topic: str, records: int) -> Counter:
    """What one uninterrupted archiver (this process, its own group) writes of ``topic``."""
    settings = load_settings(overrides={**_archive_overrides(prefix, work / "state", work / "archive", topic),
                                        "kafka.bootstrap_servers": bootstrap})
    runner = StageRunner(Archiver(settings), settings, bootstrap)
    try:
        deadline = time.monotonic() + 60
        while runner.stats.consumed() < records:
            assert time.monotonic() < deadline, f"the reference archived {runner.stats.consumed()} of {records}"
            runner.step()
    finally:
        runner.close()
    return archived_examples(work / "archive")


@pytest.mark.parametrize(("fills", "requests", "size_bytes"), FILLS)
def test_a_full_archive_path_stops_the_archive_in_one_line_and_a_restart_archives_every_example_once(
        kafka_bootstrap, tmp_path, unique_name, small_filesystem, fills, requests):
    topic = f"exm-{unique_name}"
    archive = small_filesystem.path / "archive"
    overrides = _archive_overrides(unique_name, tmp_path / "state", archive, topic)
    settings = load_settings(overrides={**overrides, "kafka.bootstrap_servers": kafka_bootstrap})
    world = World(WorldSpec(seed=25, members=60, jobs=40, requests=requests))
    labeled = labeled_impressions(world)
    table = GlobalModelTable(settings.model)
    table.apply([initial_global_model_record([li.impression for li in labeled], settings.model)])
    examples = joined_examples(labeled, table.current, settings.model)
    codec = make_codec("LabeledExample", topic)
    producer = Producer(producer_config(settings.kafka))

    def produce(rows) -> None:
        for i in rows:
            producer.produce(topic, key=examples[i]["member_id"].encode(), value=codec.encode(examples[i]))
        producer.flush(30)

    chunks = np.array_split(np.arange(len(examples)), fills + 1)
    started = time.monotonic()
    archiver = KilledProcesses(kafka_bootstrap, lambda _: overrides, tmp_path / "archive.log", tmp_path, count=1,
                               stage="archive")
    produce(chunks[0])
    for fill in range(fills):
        archiver.start_missing()
        done = sum(len(c) for c in chunks[:fill + 1])
        wait_for(lambda: sum(archived_examples(archive).values()) >= done, timeout_s=60, interval_s=0.5,  # noqa: B023
                 what=f"the archiver to archive {done} examples")
        log_from = len(archiver.log.read_text())
        small_filesystem.fill(leave_bytes=0)
        produce(chunks[fill + 1])  # the next file finds no room
        _stopped_in_one_line(archiver, log_from, small_filesystem.path)
        leftovers = [p for p in archive.rglob("*") if p.name.endswith(".tmp")]
        assert not leftovers, f"partial files left on the full disk: {leftovers}"
        small_filesystem.free()
    archiver.start_missing()
    try:
        expected = _reference_archive(kafka_bootstrap, f"{unique_name}-ref", tmp_path / "reference", topic,
                                      len(examples))
        wait_for(lambda: sum(archived_examples(archive).values()) >= len(examples), timeout_s=60, interval_s=0.5,
                 what=f"{len(examples)} examples in the archive")
        time.sleep(2)  # a duplicate still on its way would show
        got = archived_examples(archive)
        alive = archiver.all_alive()
    finally:
        archiver.stop()
    lost, twice = len(set(expected) - set(got)), sum(1 for n in got.values() if n > 1)
    print(f"archive: {fills} full disk(s), {len(expected)} examples expected; lost {lost}, twice {twice}, "
          f"unexpected {len(set(got) - set(expected))}; {time.monotonic() - started:.0f} s")
    assert alive, archiver.log.read_text()[-3000:]
    assert len(expected) == len(examples) and got == expected
