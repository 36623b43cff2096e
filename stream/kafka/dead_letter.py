"""The dead-letter topic: bad records keep their original key and bytes, plus why and where from."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Protocol

log = logging.getLogger(__name__)


class DeadLetterSink(Protocol):
    """Where a batch's dead letters go: the batch's :class:`~stream.runtime.checkpoint.Checkpoint`."""

    def dead_letter(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, str | bytes | None]]
    ) -> None:
        """Take one dead-letter record; it is produced in the checkpoint's order."""


class DeadLetters:
    """Builds the dead-letter records of a stage and counts them by source topic.

    Headers: ``source.topic``, ``source.partition``, ``source.offset``, ``error`` and
    ``stage``. Records go into the batch's checkpoint, which produces them first and
    flushes them before the input offsets are committed, however many a batch has.
    """

    def __init__(self, topic: str, stage: str) -> None:
        self.topic = topic
        self.stage = stage
        self.counts: Counter[str] = Counter()

    def send(self, sink: DeadLetterSink, message, reason: str) -> None:
        """Dead-letter a consumed Kafka ``message`` for ``reason``."""
        self.send_raw(
            sink, message.key(), message.value(), message.topic() or "", message.partition(), message.offset(), reason
        )

    def send_raw(
        self,
        sink: DeadLetterSink,
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
        sink.dead_letter(self.topic, key, value, headers)
        self.counts[source_topic or "unknown"] += 1
        log.debug("dead-lettered %s[%d]@%d: %s", source_topic, source_partition, source_offset, reason)

    @property
    def total(self) -> int:
        """Records dead-lettered so far."""
        return sum(self.counts.values())
