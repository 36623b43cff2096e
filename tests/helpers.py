"""Small test helpers: bounded waiting instead of bare sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float = 30.0, interval_s: float = 0.1, what: str = "condition") -> T:
    """Call ``check`` until it returns something truthy or ``timeout_s`` passes (then fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def read_topic(bootstrap_servers: str, topic: str, timeout_s: float = 30.0) -> list:
    """Every message of ``topic`` now (all partitions, from the beginning), raw.

    A partition's end comes from fetch responses as well as ListOffsets: Tansu answers the
    latter with the base offset of the last batch (see stream.kafka.messages.fetched_end).
    """
    from confluent_kafka import Consumer, TopicPartition

    from stream.kafka.messages import fetched_end

    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"read-{topic}", "enable.auto.commit": False,
                         "enable.partition.eof": False})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = sorted(metadata.partitions)
        listed = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        positions = dict.fromkeys(partitions, 0)
        ends: dict[int, int | None] = dict.fromkeys(partitions)
        messages: list = []
        deadline = time.monotonic() + timeout_s
        while any(end is None or positions[p] < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout_s}s (at {positions} of {ends})")
            for m in consumer.consume(10_000, timeout=0.2):
                if m.error() is None:
                    messages.append(m)
                    positions[m.partition()] = m.offset() + 1
            for p in partitions:
                if ends[p] is None:
                    ends[p] = fetched_end(consumer, TopicPartition(topic, p), listed[p])
        return messages
    finally:
        consumer.close()
