"""Records deleted before a stage read them: found per partition, counted and logged, for every stage (issue 27).

A consumer that falls behind a topic's retention (an outage, an overload) asks the broker
for an offset it has deleted. The fetch fails with OFFSET_OUT_OF_RANGE, librdkafka moves
the position by ``auto.offset.reset`` and logs one warning; the records in between are
never delivered. :class:`RetentionWatch` sees it in the stage runtime: each record
delivered is compared with the offset its partition was expected to go on
at (the group's committed offset when the partition was assigned, then the offset after
the record delivered before it).

A gap alone proves nothing: a transaction leaves one offset per commit or abort marker, a
``read_committed`` consumer is not given aborted records, and compaction removes records
from the middle of a log. None of them moves a partition's log start offset, and deleting
records (retention by time or size, DeleteRecords) does nothing else, so the rule
compares with it (:func:`skipped_range`): no tolerance to tune, and compacted topics
never trigger it. The log start comes from the fetch response that delivered the record
(librdkafka keeps it as the partition's cached low watermark), so judging a gap costs no
request; a broker that reports none (Fetch before v5, Kafka before 1.0) is never judged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from stream.kafka.exceptions import InputLostError
from stream.kafka.messages import source_of
from stream.runtime.stats import StageStats

log = logging.getLogger(__name__)

_TO_END = frozenset({"latest", "largest", "end"})


def resets_to_end(consumer_settings: Mapping[str, Any]) -> bool:
    """Whether ``auto.offset.reset`` (librdkafka's names and aliases) moves a lost position to the partition's end."""
    return str(consumer_settings.get("auto.offset.reset", "")).lower() in _TO_END


def skipped_range(expected: int, delivered: int, log_start: int, to_end: bool) -> tuple[int, int] | None:
    """The offsets ``[first, end)`` a partition skipped unread, or None.

    ``expected`` is the offset it should have gone on at, ``delivered`` the offset it went
    on at, ``log_start`` the partition's log start offset (negative: unknown). Only a
    position below the log start was lost: its records were deleted, and ``auto.offset.reset``
    moved it on. To the log start (``earliest``), what lies between the log start and the
    delivered record was removed by compaction or is transaction markers, so the skip ends at
    the log start; to the end (``latest``), the records still there were passed over too, so
    it ends at the delivered record.
    """
    if log_start <= expected or delivered <= expected:
        return None
    return expected, delivered if to_end else min(delivered, log_start)


def forward_jumps(
    messages: Sequence[Message], next_offsets: dict[tuple[str, int], int]
) -> list[tuple[tuple[str, int], int, int]]:
    """Each place a partition's delivered offsets pass the offset expected next: (partition, expected, delivered).

    ``next_offsets`` (by topic and partition) is advanced past every message; a partition
    without an entry starts being followed at its first message.
    """
    jumps = []
    for m in messages:
        topic, partition, offset = source_of(m)
        key = (topic, partition)
        expected = next_offsets.get(key, offset)
        if offset > expected:
            jumps.append((key, expected, offset))
        next_offsets[key] = offset + 1
    return jumps


@dataclass(frozen=True)
class Skip:
    """Offsets ``[first, end)`` of one partition that a stage will never process."""

    topic: str
    partition: int
    first: int
    end: int

    @property
    def records(self) -> int:
        """How many offsets were skipped (a transaction marker among them counts as one)."""
        return self.end - self.first


class RetentionWatch:
    """The next expected offset of every ready partition of one stage, and the skips its batches reveal.

    Skips are counted in the stage's :class:`StageStats` (``skipped_records`` and
    ``offset_resets`` by topic and partition, exported as
    ``glmix_input_records_skipped_total`` and ``glmix_consumer_offset_resets_total``)
    and each is logged once at ERROR. ``to_end`` says where ``auto.offset.reset`` moves a
    lost position (:func:`resets_to_end`); the runtime sets it from the consumer's
    configuration when it creates the consumer.
    """

    def __init__(self, who: str, stats: StageStats, to_end: bool = False, stop: bool = False) -> None:
        """``stop``: raise :class:`InputLostError` on a skip (``kafka.input_loss = "stop"``) instead of going on."""
        self._who = who
        self._stats = stats
        self.to_end = to_end
        self._stop = stop
        self._next: dict[tuple[str, int], int] = {}

    def expect(self, topic: str, partition: int, committed: int) -> None:
        """A partition is about to be read from the group's ``committed`` offset (negative: none, nothing expected)."""
        key = (topic, partition)
        self._stats.skipped_records.setdefault(key, 0)  # exported as 0 from now: a later skip is an increase
        self._stats.offset_resets.setdefault(key, 0)
        if committed >= 0:
            self._next[key] = committed
        else:
            self._next.pop(key, None)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions taken away: the next owner expects its own offsets. Bookkeeping only (runs in a callback)."""
        numbers = set(partitions)
        for key in [k for k in self._next if k[1] in numbers]:
            del self._next[key]

    def check(self, consumer: Consumer, messages: Sequence[Message]) -> list[Skip]:
        """The skips a batch of ready partitions' messages reveals (counted and logged); then expect what follows it.

        Every forward jump is judged, between batches and inside one: librdkafka may hand
        over the records fetched before a reset and those after it in one batch.
        """
        skips = []
        for (topic, partition), expected, delivered in forward_jumps(messages, self._next):
            log_start, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            skipped = skipped_range(expected, delivered, log_start, self.to_end)
            if skipped is not None:
                skips.append(self._count(Skip(topic, partition, *skipped), log_start, delivered))
        if skips and self._stop:
            first = skips[0]
            raise InputLostError(
                f"{self._who}: {first.records} records of {first.topic}[{first.partition}] (offsets {first.first} to "
                f"{first.end - 1}) were deleted before they were read and kafka.input_loss is stop: raise the topic's "
                'retention, or set kafka.input_loss = "skip" to go on from what is left'
            )
        return skips

    def _count(self, skip: Skip, log_start: int, delivered: int) -> Skip:
        key = (skip.topic, skip.partition)
        self._stats.skipped_records[key] = self._stats.skipped_records.get(key, 0) + skip.records
        self._stats.offset_resets[key] = self._stats.offset_resets.get(key, 0) + 1
        log.error(
            "%s: %d records of %s[%d] (offsets %d to %d) were deleted before they were read and will never be "
            "processed: the consumer fell behind the topic's retention (the log now starts at %d) and "
            "auto.offset.reset moved it on (it went on at %d). Raise the topic's retention.ms (or retention.bytes), "
            "or add consumers to the group so it keeps up",
            self._who,
            skip.records,
            skip.topic,
            skip.partition,
            skip.first,
            skip.end - 1,
            log_start,
            delivered,
        )
        return skip
