"""Avro decode throughput: batch helpers vs per-record decoding, NTV bags vs packed features.

Reproduce: python bench/decode.py   (or: make bench)

Prints one JSON line per way of decoding the same Kafka messages (consumed once from
the embedded broker, then decoded in memory, best of ``--repeats``):

* ``decode_batch`` with the single-object codec (what glmix uses),
* a plain per-record loop over the same codec (``codec.decode(msg.value())``), keeping
  the records as a pipeline must,
* confluent-kafka's own per-record ``AvroDeserializer`` (Schema Registry framing, the
  way most Python Kafka users decode), and glmix's registry codec on the same bytes,
* and, for DESIGN §8, a LabeledExample whose features are one packed float32 vector.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.codec import decode_batch, make_codec
from stream.config import KafkaSettings
from stream.kafka import EmbeddedBroker, consumer_config, producer_config
from stream.synthetic import World, WorldSpec, labeled_impressions

REPRODUCE = "python bench/decode.py"


def consume_all(bootstrap: str, topic: str, count: int) -> list:
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    consumer = Consumer(consumer_config(kafka, group_id=f"bench-{topic}"))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    messages: list = []
    deadline = time.monotonic() + 60
    while len(messages) < count and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(10_000, timeout=0.5) if m.error() is None]
    consumer.close()
    return messages


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer(producer_config(KafkaSettings(bootstrap_servers=bootstrap)))
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, key=str(i % 997).encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(30)


def best_rate(run: Callable[[], int], repeats: int) -> float:
    best = np.inf
    count = 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = run()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    world = World(WorldSpec(seed=1, requests=max(1, args.records // 5)))
    impressions = [li.impression for li in labeled_impressions(world)][: args.records]
    features_per_record = float(np.mean([sum(len(b) for b in r["features"].values()) for r in impressions]))
    single = make_codec("Impression", "bench.impressions")
    registry_codec = make_codec("Impression", "bench.impressions.sr", registry_url="mock://bench")
    dense = make_codec("LabeledExample", "bench.examples")
    rng = np.random.default_rng(0)
    examples = [{
        "example_id": r["impression_id"], "member_id": r["member_id"], "item_id": r["item_id"], "label": 1.0,
        "event_time": r["event_time"], "label_time": r["event_time"],
        "scores": {"global": 0.1, "member": 0.2, "job": -0.3},
        "global_features": {"indices": np.arange(20, dtype="<i4").tobytes(), "values": np.ones(20, dtype="<f4").tobytes()},
        "coordinates": {c: {"entity_id": r["member_id"], "dense": rng.random(32).astype("<f4").tobytes()} for c in ("member", "job")},
    } for r in impressions]

    with EmbeddedBroker() as broker:
        topics = {
            "single_object": [single.encode(r) for r in impressions],
            "registry": [registry_codec.encode(r) for r in impressions],
            "packed": [dense.encode(e) for e in examples],
        }
        consumed = {}
        for name, values in topics.items():
            produce(broker.bootstrap_servers, f"bench.{name}", values)
            consumed[name] = consume_all(broker.bootstrap_servers, f"bench.{name}", len(values))

    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    deserializer = AvroDeserializer(registry_codec.client)  # the same registry the codec registered with
    context = SerializationContext("bench.impressions.sr", MessageField.VALUE)
    sample = deserializer(consumed["registry"][0].value(), context)
    assert sample["impression_id"] == registry_codec.decode(consumed["registry"][0].value())["impression_id"]

    ways = {
        "glmix_decode_batch_single_object": lambda: len(decode_batch(single, consumed["single_object"]).records),
        "per_record_loop_single_object": lambda: len([single.decode(m.value()) for m in consumed["single_object"]]),
        "glmix_decode_batch_registry": lambda: len(decode_batch(registry_codec, consumed["registry"]).records),
        "confluent_avro_deserializer_per_record": lambda: len([deserializer(m.value(), context) for m in consumed["registry"]]),
        "glmix_decode_batch_packed_float32_example": lambda: len(decode_batch(dense, consumed["packed"]).records),
    }
    for name, run in ways.items():
        print(json.dumps({
            "bench": "decode", "way": name, "records": len(consumed["packed" if "packed" in name else "registry" if "registry" in name or "confluent" in name else "single_object"]),
            "ntv_features_per_record": None if "packed" in name else round(features_per_record, 1),
            "records_per_s": round(best_rate(run, args.repeats)), "reproduce": REPRODUCE,
        }), flush=True)


if __name__ == "__main__":
    main()
