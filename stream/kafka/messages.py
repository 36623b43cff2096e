"""What every consume loop does with a batch: drop error events, and know the offsets to commit."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confluent_kafka import KafkaError, Message, TopicPartition

log = logging.getLogger(__name__)


def without_errors(messages: Sequence[Message], who: str) -> list[Message]:
    """The messages that carry records; error events are logged (end-of-partition ones silently dropped)."""
    good = []
    for message in messages:
        error = message.error()
        if error is None:
            good.append(message)
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("%s: consume error: %s", who, error)
    return good


def last_offsets(messages: Sequence[Message]) -> dict[tuple[str, int], int]:
    """The highest offset seen per (topic, partition)."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        last[key] = max(last.get(key, -1), m.offset())
    return last


def commit_positions(last: dict[tuple[str, int], int]) -> list[TopicPartition]:
    """Positions to commit after processing up to ``last`` (Kafka commits the next offset to read)."""
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]
