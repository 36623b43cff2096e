"""A partition store's changelog topic: its committed batches, replayable on any machine (DESIGN §5).

A stage whose state is not rebuilt from its own output (the joiner's pending impressions,
emitted-impression memory, held interactions and watermark) logs every batch of store
changes to partition p of a compacted topic before anything else of the batch leaves
the process: one record per changed key (a None value deletes it), then a **commit
marker**. Only what precedes a marker counts. A writer that dies halfway through a batch
leaves *trailing* records after the last marker; a restore ignores them, and the next
writer overwrites each of their keys with its committed value (or a tombstone) in its
first batch, so compaction can never let an uncommitted value win. The marker's own key
compacts to the newest marker, which is the only one a restore needs. The result is a
per-partition transaction log that works on any broker, the mock cluster included,
without Kafka transactions.

The store remembers the offset of the last marker it applied (its ``changelog``
processed offset), so a restore on the machine that wrote most of the log replays only
what other owners wrote since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream.config import KafkaSettings
from stream.kafka.clients import consumer_config
from stream.kafka.exceptions import KafkaClientError
from stream.kafka.messages import fetched_end, source_of
from stream.state.partition_store import NO_OFFSET, PartitionStore, offset_items

log = logging.getLogger(__name__)

COMMIT_MARKER = b"\x00changelog:commit"
CHANGELOG = "changelog"  # the store's processed-offset source for its changelog position
_APPLY_EVERY = 20_000  # changes per WriteBatch while restoring
_STALL_S = 60.0


def batch_records(
    puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes], offsets: Mapping[str, int]
) -> list[tuple[bytes, bytes | None]]:
    """The changelog records of one committed batch, in the order a store applies them, commit marker last."""
    return [*((key, None) for key in deletes), *puts, *offset_items(offsets), (COMMIT_MARKER, b"")]


@dataclass
class ChangelogReplay:
    """What a restore found: records read, committed batches applied, and the trailing keys to overwrite."""

    records_read: int = 0
    batches_applied: int = 0
    trailing_keys: list[bytes] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def records_per_s(self) -> float:
        """Restore speed."""
        return self.records_read / self.seconds if self.seconds > 0 else 0.0


def replay(
    store: PartitionStore,
    kafka: KafkaSettings,
    topic: str,
    partition: int,
    bootstrap_servers: str,
    client_id: str,
    result: ChangelogReplay,
    max_records_per_s: int = 0,
) -> Iterator[int]:
    """Bring ``store`` up to the last commit marker of changelog partition ``partition``; yields records read so far.

    A generator, so the stage runtime can restore in slices between polls of its group
    consumer (never inside a rebalance callback). ``result`` is filled in as it goes.
    """
    started = time.monotonic()
    start = store.processed_offset(CHANGELOG) + 1 if store.processed_offset(CHANGELOG) != NO_OFFSET else 0
    config = consumer_config(kafka, group_id=f"{client_id}-unused", bootstrap_servers=bootstrap_servers)
    config["client.id"] = client_id
    consumer = Consumer(config)
    try:
        tp = TopicPartition(topic, partition)
        try:
            low, listed = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        except KafkaException as exc:
            raise KafkaClientError(f"cannot read the end of changelog {topic}[{partition}]: {exc}") from exc
        position = max(start, low)
        consumer.assign([TopicPartition(topic, partition, position)])
        committed: list[tuple[bytes, bytes | None]] = []
        uncommitted: list[tuple[bytes, bytes | None]] = []
        last_marker = NO_OFFSET
        progressed = time.monotonic()
        end: int | None = None
        while end is None or position < end:
            messages = consumer.consume(10_000, timeout=0.2)
            if end is None:  # the end is trusted only with a fetch response (see stream.kafka.messages)
                end = fetched_end(consumer, tp, listed)
            if messages:
                progressed = time.monotonic()
            elif time.monotonic() - progressed > _STALL_S:
                raise KafkaClientError(
                    f"changelog {topic}[{partition}] stopped at offset {position} of {end} "
                    f"for {_STALL_S:.0f} s while restoring"
                )
            for message in messages:
                if message.error() is not None:
                    continue
                _, _, offset = source_of(message)
                key = message.key() or b""
                position = offset + 1
                result.records_read += 1
                if key == COMMIT_MARKER:
                    committed.extend(uncommitted)
                    uncommitted = []
                    result.batches_applied += 1
                    if len(committed) >= _APPLY_EVERY:
                        store.apply(committed, {CHANGELOG: offset})
                        committed = []
                    last_marker = offset
                else:
                    uncommitted.append((key, message.value()))
            if committed and result.batches_applied:
                store.apply(committed, {CHANGELOG: last_marker})
                committed = []
            if result.records_read:
                yield result.records_read
            for _ in throttle(started, result.records_read, max_records_per_s):
                yield result.records_read
        result.trailing_keys = [key for key, _ in uncommitted]
    finally:
        consumer.close()
        result.seconds = time.monotonic() - started


def throttle(started: float, records: int, max_records_per_s: int) -> Iterator[None]:
    """Sleep while a restore that began at ``started`` is ahead of ``max_records_per_s`` (0: unlimited).

    Sleeps in short naps and yields after each, so the stage runtime keeps polling.
    """
    if max_records_per_s <= 0:
        return
    while (ahead := records / max_records_per_s - (time.monotonic() - started)) > 0:
        time.sleep(min(ahead, 0.1))
        yield
