"""Producing that a full local queue cannot break: the one way every glmix-stream process hands a record to librdkafka.

``Producer.produce`` raises ``BufferError`` when librdkafka's local queue
(``queue.buffering.max.messages`` / ``queue.buffering.max.kbytes``) is full. That is
back-pressure, not a failure: serving the producer (delivery reports, sends) makes room.
A burst of dead letters once filled the joiner's queue and killed it; every produce goes
through :func:`produce_bounded`, which waits for room while the queue drains and gives
up, naming what it was producing, only when nothing drained for ``stall_timeout_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Producer

from stream.kafka.exceptions import KafkaClientError

_SERVE_S = 0.05


class ProducerStalledError(KafkaClientError):
    """The producer's local queue stayed full (nothing was delivered) for longer than allowed."""


def produce_bounded(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    *,
    stall_timeout_s: float,
    partition: int | None = None,
    headers: list[tuple[str, str | bytes | None]] | None = None,
    timestamp: int = 0,
    on_delivery: Callable[..., None] | None = None,
) -> None:
    """Hand one record to ``producer``; a full local queue is served until it has room, for at most ``stall_timeout_s``.

    Raises :class:`ProducerStalledError` naming ``topic`` when the queue did not drain by
    one record in that time (a broker that is down, or a stalled network).
    """
    extra: dict[str, Any] = {}
    if partition is not None:
        extra["partition"] = partition
    if headers:
        extra["headers"] = headers
    if timestamp:
        extra["timestamp"] = timestamp
    if on_delivery is not None:
        extra["on_delivery"] = on_delivery
    deadline = None
    while True:
        try:
            producer.produce(topic, key=key, value=value, **extra)
            return
        except BufferError:
            now = time.monotonic()
            if deadline is None:
                deadline = now + stall_timeout_s
            elif now >= deadline:
                raise ProducerStalledError(
                    f"could not produce to {topic}: the producer's local queue stayed full for "
                    f"{stall_timeout_s:g} s ({len(producer)} records waiting, nothing delivered); is the broker up?"
                ) from None
            producer.poll(_SERVE_S)


def produce_many(
    producer: Producer,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes | None]],
    *,
    stall_timeout_s: float,
    partition: int | None = None,
) -> None:
    """Hand ``items`` (key, value) to ``producer`` in order, to ``partition`` or the partitioner's choice.

    The hot path of a batch's changelog and output records: one positional ``produce``
    call per record, nothing built per record. A full queue is waited out by
    :func:`produce_bounded` for the record it refused, with the same bound and error.
    """
    produce = producer.produce
    target = -1 if partition is None else partition  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner picks
    for key, value in items:
        try:
            produce(topic, value, key, target)
        except BufferError:
            produce_bounded(producer, topic, key, value, stall_timeout_s=stall_timeout_s, partition=partition)
