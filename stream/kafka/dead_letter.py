"""The dead-letter topic: bad records keep their original key and bytes, plus why and where from."""

from __future__ import annotations

import logging
from collections import Counter

from confluent_kafka import Producer

log = logging.getLogger(__name__)


class DeadLetters:
    """Sends records a stage cannot use to the dead-letter topic and counts them by stage.

    Headers: ``source.topic``, ``source.partition``, ``source.offset``, ``error`` and
    ``stage``. Uses the stage's producer, so a flush before the offset commit covers them.
    """

    def __init__(self, producer: Producer, topic: str, stage: str) -> None:
        self._producer = producer
        self.topic = topic
        self.stage = stage
        self.counts: Counter[str] = Counter()

    def send(self, message, reason: str) -> None:
        """Dead-letter a consumed Kafka ``message`` for ``reason``."""
        self.send_raw(
            message.key(), message.value(), message.topic() or "", message.partition(), message.offset(), reason
        )

    def send_raw(
        self,
        key: bytes | None,
        value: bytes | None,
        source_topic: str,
        source_partition: int,
        source_offset: int,
        reason: str,
    ) -> None:
        """Dead-letter bytes that were consumed earlier (e.g. an interaction held for its impression)."""
        headers: list[tuple[str, str | bytes | None]] = [
            ("source.topic", source_topic.encode()),
            ("source.partition", str(source_partition).encode()),
            ("source.offset", str(source_offset).encode()),
            ("error", reason.encode("utf-8", "replace")),
            ("stage", self.stage.encode()),
        ]
        self._producer.produce(self.topic, key=key, value=value, headers=headers)
        self.counts[source_topic or "unknown"] += 1
        log.debug("dead-lettered %s[%d]@%d: %s", source_topic, source_partition, source_offset, reason)

    @property
    def total(self) -> int:
        """Records dead-lettered so far."""
        return sum(self.counts.values())
