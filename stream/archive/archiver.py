"""The archive stage: labeled examples from Kafka to hourly Avro files, exactly once.

``glmix run archive`` consumes the examples keyed by member (every example appears there
once) and buffers them per (event hour, input partition). When ``roll_records`` examples
are buffered or the oldest has waited ``roll_interval_ms`` — and before a rebalance takes
partitions away — every buffer becomes one whole file, then the consumer offsets are
committed, then old hours are expired. A crash after some files were written but before
the commit replays those offsets; records at or below a file's last offset for the same
hour and partition are skipped, so no example is archived twice or lost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.archive.files import ArchiveFiles, hour_of
from stream.codec import make_codec
from stream.codec.avro import decode_batch
from stream.config import Settings
from stream.kafka.clients import consumer_config, prepare_topics, producer_config
from stream.kafka.dead_letter import DeadLetters
from stream.kafka.messages import commit_processed, last_offsets, without_errors
from stream.metrics.kafka_statistics import KafkaStatistics, statistics_settings
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


@dataclass
class _Buffer:
    first_offset: int
    last_offset: int = -1
    records: list = field(default_factory=list)


class Archiver:
    """Writes the examples topic to :class:`ArchiveFiles`, committing offsets only after files are whole."""

    def __init__(self, settings: Settings, bootstrap_servers: str = "", statistics: KafkaStatistics | None = None) -> None:
        self.settings = settings.archive
        self.topic = settings.topics.examples_by_member
        self.group_id = settings.kafka.group_id(STAGE)
        self.files = ArchiveFiles(settings.archive_path)
        self.stats = ArchiveStats()
        self._codec = make_codec("LabeledExample", self.topic, settings.kafka.schema_registry_url,
                                 settings.kafka.schema_registry)
        self._producer = Producer(producer_config(settings.kafka, bootstrap_servers))
        self._dead_letters = DeadLetters(self._producer, settings.topics.dead_letter, STAGE)
        prepare_topics(settings, bootstrap_servers)
        self._consumer = Consumer(consumer_config(settings.kafka, self.group_id, bootstrap_servers,
                                                  **statistics_settings(statistics, STAGE)))
        self._buffers: dict[tuple[int, int], _Buffer] = {}
        self._archived_through: dict[tuple[int, int], int] = {}
        self._consumed: list = []
        self._buffered = 0
        self._oldest_buffered = 0.0
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._archived_through.clear()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.roll()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions already belong to someone else: drop what was not archived; they replay it."""
        self._buffers.clear()
        self._consumed.clear()
        self._buffered = 0

    def _through(self, hour_ms: int, partition: int) -> int:
        key = (hour_ms, partition)
        if key not in self._archived_through:
            self._archived_through[key] = self.files.archived_through(hour_ms, partition)
        return self._archived_through[key]

    def step(self) -> int:
        """Consume one batch into the buffers; roll them into files when due. Returns the messages taken."""
        messages = self._consumer.consume(self.settings.batch_size, timeout=self.settings.batch_time_ms / 1000)
        if messages:
            usable = without_errors(messages, self.group_id)
            decoded = decode_batch(self._codec, usable)
            for message, error in decoded.failures:
                self._dead_letters.send(message, error.reason)
            for record, message in zip(decoded.records, decoded.messages):
                self._add(record, message.partition(), message.offset())
            self._consumed.extend(usable)
            self.stats.batches += 1
            self.stats.dead_lettered = self._dead_letters.total
        due = self._buffered >= self.settings.roll_records or (
            self._consumed and time.monotonic() - self._oldest_buffered >= self.settings.roll_interval_ms / 1000)
        if due:
            self.roll()
        return len(messages)

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

    def roll(self) -> None:
        """Write every buffer as one file, then commit what was consumed, then expire old hours."""
        for (hour, partition), buffer in sorted(self._buffers.items()):
            self.files.write(hour, partition, buffer.first_offset, buffer.last_offset, buffer.records)
            self._archived_through[(hour, partition)] = buffer.last_offset
            self.stats.files_written += 1
            self.stats.archived += len(buffer.records)
        self._buffers.clear()
        self._buffered = 0
        if self._consumed:
            self._producer.flush()
            if not commit_processed(self._consumer, last_offsets(self._consumed), "archive"):
                self.stats.refused_commits += 1
            self._consumed.clear()
        if self.stats.newest_event_time_ms:
            expired = self.files.expire(hour_of(self.stats.newest_event_time_ms), self.settings.retention_hours)
            self.stats.hours_expired += len(expired)
            for key in [k for k in self._archived_through if k[0] in expired]:
                del self._archived_through[key]

    def close(self) -> None:
        """Archive what is buffered, commit, leave the group and release the clients."""
        self.roll()
        self._producer.flush(10)
        self._consumer.close()
