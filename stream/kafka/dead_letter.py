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

    def send(self, message, reason: str, *, key: bytes | None = None, value: bytes | None = None) -> None:
        """Dead-letter ``message`` (a Kafka message, or None with ``key``/``value`` given) for ``reason``."""
        source_topic = message.topic() if message is not None else ""
        headers = [
            ("source.topic", (source_topic or "").encode()),
            ("source.partition", str(message.partition() if message is not None else -1).encode()),
            ("source.offset", str(message.offset() if message is not None else -1).encode()),
            ("error", reason.encode("utf-8", "replace")),
            ("stage", self.stage.encode()),
        ]
        self._producer.produce(
            self.topic,
            key=message.key() if message is not None else key,
            value=message.value() if message is not None else value,
            headers=headers,
        )
        self.counts[source_topic or "unknown"] += 1
        log.debug("dead-lettered %s[%s]@%s: %s", source_topic, headers[1][1], headers[2][1], reason)

    @property
    def total(self) -> int:
        """Records dead-lettered so far."""
        return sum(self.counts.values())
