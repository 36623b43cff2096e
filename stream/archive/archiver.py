"""The archive stage: labeled examples from Kafka to hourly Avro files, exactly once.

``glmix run archive`` consumes the examples keyed by member (every example appears there
once) and buffers them per (event hour, input partition). When ``roll_records`` examples
are buffered or the oldest has waited ``roll_interval_ms`` — and before a rebalance takes
when the process stops — every buffer becomes one whole file, then the runtime's
Checkpoint commits the consumer offsets, then old hours are expired. A crash after some
files were written but before the commit replays those offsets; records at or below a
file's last offset for the same hour and partition are skipped, so no example is
archived twice or lost. Partitions taken away by a rebalance drop their buffers (no
file I/O inside the callback): their next owner reads them again from the last commit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import Message

from stream.archive.files import ArchiveFiles, hour_of
from stream.codec import make_codec
from stream.codec.avro import decode_batch
from stream.config import Settings
from stream.kafka.messages import source_of
from stream.metrics.families import MetricFamilies
from stream.runtime.checkpoint import Checkpoint
from stream.runtime.stage import Stage, StageClients
from stream.runtime.stats import StageStats

log = logging.getLogger(__name__)

STAGE = "archive"


@dataclass
class ArchiveStats(StageStats):
    """Counters of one archiver since it started (exported as metrics by the process)."""

    archived: int = 0
    skipped_replays: int = 0
    files_written: int = 0
    hours_expired: int = 0
    newest_event_time_ms: int = 0

    def consumed(self) -> int:
        """Examples consumed (archived or skipped as replays)."""
        return self.archived + self.skipped_replays

    def replayed(self) -> int:
        """Examples already in an archive file."""
        return self.skipped_replays

    def add_samples(self, stage: str, families: MetricFamilies) -> None:
        """Stage samples, plus files written."""
        super().add_samples(stage, families)
        families.counter("glmix_archive_files", [], self.files_written)


@dataclass
class _Buffer:
    first_offset: int
    last_offset: int = -1
    records: list = field(default_factory=list)


class Archiver(Stage):
    """Writes the examples topic to :class:`ArchiveFiles`, committing offsets only after files are whole."""

    name = STAGE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.archive
        self.topic = settings.topics.examples_by_member
        self.group_id = settings.kafka.group_id(STAGE)
        self.files = ArchiveFiles(settings.archive_path)
        self.stats: ArchiveStats = ArchiveStats()
        self._codec = make_codec(
            "LabeledExample", self.topic, settings.kafka.schema_registry_url, settings.kafka.schema_registry
        )
        self._buffers: dict[tuple[int, int], _Buffer] = {}
        self._archived_through: dict[tuple[int, int], int] = {}
        self._consumed: list[Message] = []
        self._buffered = 0
        self._oldest_buffered = 0.0

    def subscription(self) -> list[str]:
        """The examples keyed by member (every example appears there once)."""
        return [self.topic]

    def batch_limits(self) -> tuple[int, float]:
        """``archive.batch_size`` examples or ``archive.batch_time_ms``."""
        return self.settings.batch_size, self.settings.batch_time_ms / 1000

    def open(self, clients: StageClients) -> None:
        """Keep the clients (the dead-letter sink)."""
        super().open(clients)

    def revoked(self, partitions: list[int]) -> None:
        """Drop what was not archived of ``partitions``: their next owner reads it again from the last commit."""
        gone = set(partitions)
        for key in [k for k in self._buffers if k[1] in gone]:
            self._buffered -= len(self._buffers.pop(key).records)
        self._consumed = [m for m in self._consumed if m.partition() not in gone]
        self._archived_through = {k: v for k, v in self._archived_through.items() if k[1] not in gone}

    def _through(self, hour_ms: int, partition: int) -> int:
        key = (hour_ms, partition)
        if key not in self._archived_through:
            self._archived_through[key] = self.files.archived_through(hour_ms, partition)
        return self._archived_through[key]

    def process(self, messages: list[Message], checkpoint: Checkpoint) -> None:
        """Buffer one batch; when a roll is due, write the files and hand the consumed offsets to the checkpoint."""
        if messages:
            decoded = decode_batch(self._codec, messages)
            for message, error in decoded.failures:
                self.clients.dead_letters.send(checkpoint, message, error.reason)
            for record, message in zip(decoded.records, decoded.messages):
                _, partition, offset = source_of(message)
                self._add(record, partition, offset)
            self._consumed.extend(messages)
        due = self._buffered >= self.settings.roll_records or (
            self._consumed and time.monotonic() - self._oldest_buffered >= self.settings.roll_interval_ms / 1000
        )
        if due:
            self._roll(checkpoint)

    def finish(self, checkpoint: Checkpoint) -> None:
        """On a clean stop: archive what is buffered."""
        self._roll(checkpoint)

    def _add(self, record: dict, partition: int, offset: int) -> None:
        hour = hour_of(record["event_time"])
        if offset <= self._through(hour, partition):
            self.stats.skipped_replays += 1
            return
        if not self._consumed and not self._buffered:
            self._oldest_buffered = time.monotonic()
        buffer = self._buffers.setdefault((hour, partition), _Buffer(first_offset=offset))
        buffer.records.append(record)
        buffer.last_offset = offset
        self._buffered += 1
        self.stats.newest_event_time_ms = max(self.stats.newest_event_time_ms, record["event_time"])

    def _roll(self, checkpoint: Checkpoint) -> None:
        """Write every buffer as one file, let the checkpoint commit what was consumed, then expire old hours."""
        for (hour, partition), buffer in sorted(self._buffers.items()):
            self.files.write(hour, partition, buffer.first_offset, buffer.last_offset, buffer.records)
            self._archived_through[(hour, partition)] = buffer.last_offset
            self.stats.files_written += 1
            self.stats.archived += len(buffer.records)
        self._buffers.clear()
        self._buffered = 0
        checkpoint.consumed(self._consumed)
        self._consumed = []
        if self.stats.newest_event_time_ms:
            expired = self.files.expire(hour_of(self.stats.newest_event_time_ms), self.settings.retention_hours)
            self.stats.hours_expired += len(expired)
            for key in [k for k in self._archived_through if k[0] in expired]:
                del self._archived_through[key]
