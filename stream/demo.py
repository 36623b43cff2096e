"""The embedded round trip behind ``glmix demo``: broker, synthetic world, produce, consume, decode.

It exercises every foundation part over the real wire protocol with no external
service: the librdkafka mock cluster, the synthetic world with its noise, single-object
Avro encoding, batched consume and decode, and the dead-letter classification of bad
values. Later stages (joiner, updaters, scorer) plug into the same flow.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.codec import decode_batch
from stream.codec.validation import impression_problem, interaction_problem
from stream.config import Settings
from stream.kafka import consumer_config, producer_config
from stream.synthetic import IMPRESSION, INTERACTION, World, WorldSpec, event_stream
from stream.synthetic.sinks import event_topics_and_codecs, produce_to_kafka


@dataclass(frozen=True)
class RoundTripReport:
    """What the demo produced and what came back decoded."""

    produced: dict[str, int]
    decoded: dict[str, int]
    undecodable: int
    invalid: int
    produce_s: float
    consume_decode_s: float

    def as_dict(self) -> dict:
        """A JSON-ready summary."""
        consumed = sum(self.decoded.values()) + self.undecodable
        return {
            "produced": self.produced,
            "decoded": self.decoded,
            "undecodable": self.undecodable,
            "invalid_after_decode": self.invalid,
            "produce_s": round(self.produce_s, 3),
            "consume_decode_s": round(self.consume_decode_s, 3),
            "consume_decode_records_per_s": round(consumed / self.consume_decode_s) if self.consume_decode_s else None,
        }


def run_round_trip(settings: Settings, bootstrap_servers: str, spec: WorldSpec, timeout_s: float = 60.0) -> RoundTripReport:
    """Produce the world of ``spec`` to Kafka and read every record back, decoding in batches."""
    topics, codecs = event_topics_and_codecs(settings)

    started = time.monotonic()
    producer = Producer(producer_config(settings.kafka, bootstrap_servers))
    produced = produce_to_kafka(event_stream(World(spec)), producer, topics, codecs)
    produce_s = time.monotonic() - started

    expected = produced[IMPRESSION] + produced[INTERACTION]
    consumer = Consumer(consumer_config(settings.kafka, group_id=f"glmix-demo-{time.time_ns()}", bootstrap_servers=bootstrap_servers))
    try:
        partitions = []
        for topic in topics.values():
            metadata = consumer.list_topics(topic, timeout=10)
            partitions += [TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions]
        consumer.assign(partitions)
        decoded: Counter = Counter()
        undecodable = invalid = 0
        problem = {IMPRESSION: impression_problem, INTERACTION: interaction_problem}
        started = time.monotonic()
        kind_of = {v: k for k, v in topics.items()}
        while decoded.total() + undecodable < expected and time.monotonic() - started < timeout_s:
            messages = consumer.consume(num_messages=10_000, timeout=0.5)
            by_topic: dict[str, list] = {}
            for message in messages:
                by_topic.setdefault(message.topic(), []).append(message)
            for topic, batch in by_topic.items():
                result = decode_batch(codecs[kind_of[topic]], batch)
                decoded[kind_of[topic]] += len(result.records)
                undecodable += len(result.failures)
                invalid += sum(problem[kind_of[topic]](r) is not None for r in result.records)
        consume_s = time.monotonic() - started
    finally:
        consumer.close()
    return RoundTripReport(
        produced=dict(produced), decoded=dict(decoded), undecodable=undecodable, invalid=invalid,
        produce_s=produce_s, consume_decode_s=consume_s,
    )
