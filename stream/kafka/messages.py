"""What every consume loop does with a batch: drop error events, and know the offsets to commit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream.codec.avro import KafkaMessage
from stream.kafka.exceptions import KafkaClientError

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


def source_of(message: KafkaMessage) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed record; the client types them optional, a consumed record has all three."""
    return message.topic() or "", message.partition() or 0, message.offset() or 0


def last_offsets(messages: Sequence[Message]) -> dict[tuple[str, int], int]:
    """The highest offset seen per (topic, partition)."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        topic, partition, offset = source_of(m)
        key = (topic, partition)
        if offset > last.get(key, -1):
            last[key] = offset
    return last


def fetched_end(consumer: Consumer, tp: TopicPartition, listed: int) -> int | None:
    """The end offset of an assigned partition, or None until a fetch response for it arrived.

    Kafka answers ListOffsets(latest) with the true end, but some Kafka-compatible brokers
    do not: Tansu 0.6 answers with the base offset of the partition's last record batch
    (389 for 485 records written in 5 batches), which made restores stop short of the
    last batches. The high watermark carried by fetch responses is right on both, so a
    reader takes the larger of the two, and trusts neither alone before it has fetched.
    """
    _, fetched = consumer.get_watermark_offsets(tp, cached=True)
    return None if fetched < 0 else max(listed, fetched)


def commit_positions(last: dict[tuple[str, int], int]) -> list[TopicPartition]:
    """Positions to commit after processing up to ``last`` (Kafka commits the next offset to read)."""
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]


# The group moved on while the batch was processed: the partitions may belong to someone else now.
_REBALANCE_CODES = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._NO_OFFSET,
    }
)


class CommitTimeoutError(KafkaClientError):
    """The group coordinator did not answer an offset commit within the time allowed (a stalled or absent broker)."""


def _commit_within(consumer: Consumer, offsets: list[TopicPartition], timeout_s: float, who: str) -> None:
    """``consumer.commit(offsets)``, synchronously, waiting at most ``timeout_s``.

    librdkafka's synchronous commit has no timeout of its own: measured on the broker
    process stopped with SIGSTOP, it waited as long as the broker stayed stopped (70 s,
    and over 190 s until the test gave up), through the OffsetCommit request's own 60 s
    timeout, because the request is queued again for the coordinator. So the commit runs
    on a helper thread (librdkafka releases the GIL while it waits) and the caller gives
    up after ``timeout_s``; a commit that completes later only commits what this batch
    processed, which its replay makes harmless.
    """
    outcome: list[BaseException | None] = []

    def commit() -> None:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(exc)

    helper = threading.Thread(target=commit, name=f"{who}-commit", daemon=True)
    helper.start()
    helper.join(timeout_s)
    if not outcome:
        raise CommitTimeoutError(
            f"{who}: the group coordinator did not answer the commit of "
            f"{sorted(f'{tp.topic}[{tp.partition}]@{tp.offset}' for tp in offsets)} within {timeout_s:.0f} s "
            "(is the broker up?); the batch's state was not written and is replayed from the last commit"
        )
    if outcome[0] is not None:
        raise outcome[0]


def commit_processed(consumer: Consumer, last: dict[tuple[str, int], int], who: str, timeout_s: float) -> bool:
    """Commit the positions after ``last``; False when a rebalance refused the commit (a normal event, logged).

    A refused commit only means the next owner starts from the previous commit: every
    stage's replay of already-processed input is a no-op (offset stamps, processed
    offsets, archive file ranges), so nothing is lost and nothing applies twice. A
    coordinator that does not answer within ``timeout_s`` raises
    :class:`CommitTimeoutError`; any other commit failure :class:`KafkaClientError`.
    """
    if not last:
        return True
    try:
        _commit_within(consumer, commit_positions(last), timeout_s, who)
        return True
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() in _REBALANCE_CODES:
            log.warning(
                "%s: commit of %s refused by a rebalance (%s); the next owner replays from the last commit",
                who,
                sorted(f"{t}[{p}]@{o + 1}" for (t, p), o in last.items()),
                error.name(),
            )
            return False
        raise KafkaClientError(f"{who}: committing offsets failed: {error}") from exc
