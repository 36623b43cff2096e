"""Synthetic events produced through the kafka_bootstrap fixture decode to what was produced."""

from __future__ import annotations

import time
from collections import Counter

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.codec import decode_batch, make_codec
from stream.config import KafkaSettings
from stream.kafka import consumer_config, producer_config
from stream.synthetic import IMPRESSION, INTERACTION, World, WorldSpec, event_stream
from stream.synthetic.sinks import produce_to_kafka


def test_produced_synthetic_events_decode_to_the_same_records(kafka_bootstrap, unique_name):
    spec = WorldSpec(seed=4, members=30, jobs=20, requests=150, malformed_rate=0.05)
    events = list(event_stream(World(spec)))
    topics = {IMPRESSION: f"imp-{unique_name}", INTERACTION: f"int-{unique_name}"}
    codecs = {IMPRESSION: make_codec("Impression", topics[IMPRESSION]), INTERACTION: make_codec("Interaction", topics[INTERACTION])}
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    counts = produce_to_kafka(events, Producer(producer_config(kafka)), topics, codecs)
    assert counts[IMPRESSION] + counts[INTERACTION] == len(events)

    consumer = Consumer(consumer_config(kafka, group_id=unique_name))
    assignment = []
    for topic in topics.values():
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        assignment += [TopicPartition(topic, p, 0) for p in partitions]
    consumer.assign(assignment)
    decoded: dict[str, list] = {IMPRESSION: [], INTERACTION: []}
    failures = 0
    kind_of = {v: k for k, v in topics.items()}
    deadline = time.monotonic() + 30
    while sum(map(len, decoded.values())) + failures < len(events) and time.monotonic() < deadline:
        for topic, batch in _by_topic(consumer.consume(1000, timeout=0.5)).items():
            result = decode_batch(codecs[kind_of[topic]], batch)
            decoded[kind_of[topic]] += result.records
            failures += len(result.failures)
    consumer.close()

    undecodable = [e for e in events if e.raw is not None or e.truncated]
    assert failures == len(undecodable) > 0
    for kind in topics:
        expected = Counter(repr(e.record) for e in events if e.kind == kind and e.record is not None and not e.truncated)
        assert Counter(repr(r) for r in decoded[kind]) == expected


def _by_topic(messages):
    grouped: dict[str, list] = {}
    for message in messages:
        grouped.setdefault(message.topic(), []).append(message)
    return grouped
