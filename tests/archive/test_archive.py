"""The archive: hourly files on disk, exactly-once from Kafka across a crash between write and commit, retention."""

from __future__ import annotations

import time

import msgspec
import numpy as np
import pytest
from confluent_kafka import Producer

from stream.archive.archiver import Archiver
from stream.archive.files import HOUR_MS, ArchiveError, ArchiveFiles, hour_dir
from stream.codec import make_codec
from stream.config import load_settings
from stream.kafka import producer_config
from stream.runtime.runner import StageRunner

START = 1_767_225_600_000  # 2026-01-01T00:00Z


def example(i: int, event_time: int, member: str = "m1") -> dict:
    """A small valid LabeledExample."""
    return {
        "example_id": f"imp-{i}", "member_id": member, "item_id": f"j{i % 7}", "label": float(i % 2), "weight": 1.0,
        "offset": 0.0, "event_time": event_time, "label_time": event_time, "interaction_types": [],
        "scores": {"global": 0.1}, "model_versions": {"global": 1},
        "global_features": {"indices": np.array([0, 3], "<i4").tobytes(), "values": np.array([1, 0.5], "<f4").tobytes()},
        "coordinates": {}, "index_version": 1,
    }


def test_files_are_hourly_whole_and_expire_by_retention(tmp_path):
    files = ArchiveFiles(str(tmp_path / "archive"))
    assert files.hours() == [] and files.archived_through(START, 0) == -1
    for h in range(4):
        files.write(START + h * HOUR_MS, 0, 10 * h, 10 * h + 1, [example(10 * h, START + h * HOUR_MS + 5),
                                                                   example(10 * h + 1, START + h * HOUR_MS + 6)])
    files.write(START, 1, 0, 0, [example(99, START + 1)])
    (tmp_path / "archive" / hour_dir(START) / ".part-00001-x.avro.tmp").write_bytes(b"half a file")
    assert files.hours() == [START + h * HOUR_MS for h in range(4)]
    assert [(f.partition, f.first_offset) for f in files.files(START)] == [(0, 0), (1, 0)]
    assert files.archived_through(START + HOUR_MS, 0) == 11
    inside = list(files.examples_between(START + 6, START + 2 * HOUR_MS))
    assert [e["example_id"] for e in inside] == ["imp-1", "imp-10", "imp-11"]
    [first, second] = files.files(START)
    assert files.event_times(first) == (START + 5, START + 6) and files.event_times(second) == (START + 1, START + 1)
    assert files.expire(START + 3 * HOUR_MS, retention_hours=2) == [START]
    assert files.hours() == [START + h * HOUR_MS for h in range(1, 4)]
    assert files.expire(START + 3 * HOUR_MS, retention_hours=0) == []


def test_a_file_without_its_event_times_in_the_header_is_read_through_for_them(tmp_path):
    from stream.codec.container import write_container

    files = ArchiveFiles(str(tmp_path / "archive"))
    (tmp_path / "archive" / hour_dir(START)).mkdir(parents=True)
    write_container(tmp_path / "archive" / hour_dir(START) / "part-00000-00000000000000000000-00000000000000000001.avro",
                    "LabeledExample", [example(0, START + 9), example(1, START + 4)])  # as versions before wrote them
    [file] = files.files(START)
    assert files.event_times(file) == (START + 4, START + 9)


def test_the_refit_scans_the_archive_in_batches_of_whole_blocks_and_a_corrupt_file_is_named(tmp_path):
    files = ArchiveFiles(str(tmp_path / "archive"))
    for p in range(3):
        files.write(START, p, 0, 99, [example(100 * p + i, START + i) for i in range(100)])
    batches = list(files.scanned(files.files(START), rows=150))
    assert [len(b) for b in batches] == [200, 100]  # a file's examples are one block: batches end at whole blocks
    ids = [i for b in batches for i in b.example_ids(np.arange(len(b)))]
    assert ids == [f"imp-{100 * p + i}" for p in range(3) for i in range(100)]
    assert batches[0].margin.tolist() == [0.0] * 200  # the global coordinate's own score is not an offset
    lengths, columns, values, malformed = batches[1].global_features(np.array([0, 99]))
    assert lengths.tolist() == [2, 2] and columns.tolist() == [0, 3, 0, 3] and values.tolist() == [1, 0.5, 1, 0.5]
    assert not malformed.any()
    [_, broken, _] = files.files(START)
    raw = bytearray(open(broken.path, "rb").read())
    raw[-40:-16] = b"\x7f" * 24  # inside the block's deflated records, before its sync marker
    open(broken.path, "wb").write(bytes(raw))
    with pytest.raises(ArchiveError, match=r"part-00001-.*\.avro: "):
        list(files.scanned(files.files(START), rows=150))


@pytest.mark.kafka
def test_every_example_is_archived_once_even_when_the_commit_is_lost(kafka_bootstrap, tmp_path, unique_name):
    settings = load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "kafka.group_prefix": unique_name,
        "kafka.consumer.session.timeout.ms": "3000", "kafka.consumer.heartbeat.interval.ms": "500",
        "topics.examples_by_member": f"exm-{unique_name}", "topics.partitions": "2",
        "state_dir": str(tmp_path), "archive.roll_records": "40", "archive.retention_hours": "0",
    })
    topic = settings.topics.examples_by_member
    codec = make_codec("LabeledExample", topic)
    producer = Producer(producer_config(settings.kafka))
    sent = [example(i, START + (i * 97_000) % (3 * HOUR_MS), member=f"m{i % 5}") for i in range(150)]
    for record in sent:
        producer.produce(topic, key=record["member_id"].encode(), value=codec.encode(record))
    producer.produce(topic, key=b"m0", value=b"not avro")
    producer.flush()

    def run_until_consumed(archiver: StageRunner, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while archiver.stats.archived + archiver.stats.skipped_replays + archiver.stage._buffered < len(sent):
            assert time.monotonic() < deadline, f"archiver saw {archiver.stats} of {len(sent)} examples"
            archiver.step()
        archiver.close()

    first = StageRunner(Archiver(settings), settings)
    run_until_consumed(first)
    files = ArchiveFiles(settings.archive_path)
    archived = [e for h in files.hours() for f in files.files(h) for e in files.read(f)]
    assert sorted(e["example_id"] for e in archived) == sorted(r["example_id"] for r in sent)
    assert all(f.hour_ms <= e["event_time"] < f.hour_ms + HOUR_MS for h in files.hours() for f in files.files(h)
               for e in files.read(f))
    assert first.stats.dead_lettered == 1 and first.stats.files_written > 3

    # A crash after the files were written but before the commit: a group with no commits reads from offset 0.
    second_settings = msgspec.structs.replace(settings, kafka=msgspec.structs.replace(settings.kafka, group_prefix=f"{unique_name}-2"))
    second = StageRunner(Archiver(second_settings), second_settings)
    run_until_consumed(second)
    again = [e for h in files.hours() for f in files.files(h) for e in files.read(f)]
    assert len(again) == len(sent)
    assert second.stats.skipped_replays == len(sent) and second.stats.archived == 0


def test_an_archive_file_that_finds_the_disk_full_is_not_left_half_written(tmp_path):
    """The partial dot-file is deleted (it holds the space a retry needs) and the error names the file."""
    import os

    from stream.archive.files import ArchiveFiles
    from stream.errors import DiskFullError
    from tests.faults.harness import SmallFilesystem

    if os.geteuid() != 0:
        pytest.skip("filling a real small filesystem needs a tmpfs mounted, which needs root (CI runs as root)")
    filesystem = SmallFilesystem(tmp_path / "small", 1 << 20)
    try:
        files = ArchiveFiles(str(filesystem.path / "archive"))
        filesystem.fill(leave_bytes=64 << 10)
        with pytest.raises(DiskFullError, match=r"while writing the archive file part-00003-0+7-0+9\.avro "
                                                r"\(partition 3, offsets 7-9\)"):
            files.write(START, 3, 7, 9, [example(i, START + i) for i in range(20_000)])
        assert [p.name for p in (filesystem.path / "archive").rglob("*") if p.is_file()] == []
        assert files.files(START) == []
    finally:
        filesystem.close()
