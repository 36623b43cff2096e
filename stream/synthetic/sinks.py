"""Where a synthetic world goes: a Kafka cluster, or Avro container files on disk.

The ground truth (true coefficients) is written separately as JSON, for evaluation.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import fastavro
from confluent_kafka import Producer

from stream.codec import RecordCodec, load_schema, make_codec
from stream.config import Settings
from stream.kafka.exceptions import KafkaClientError
from stream.kafka.producing import produce_bounded
from stream.synthetic.events import IMPRESSION, INTERACTION, SyntheticEvent
from stream.synthetic.world import GroundTruth, World

_SCHEMAS = {IMPRESSION: "Impression", INTERACTION: "Interaction"}


def event_topics_and_codecs(settings: Settings) -> tuple[dict[str, str], dict[str, RecordCodec]]:
    """The configured topic and value codec of each synthetic event kind."""
    topics = {IMPRESSION: settings.topics.impressions, INTERACTION: settings.topics.interactions}
    codecs = {
        kind: make_codec(_SCHEMAS[kind], topic, settings.kafka.schema_registry_url, settings.kafka.schema_registry)
        for kind, topic in topics.items()
    }
    return topics, codecs


def encode_event(event: SyntheticEvent, codecs: dict[str, RecordCodec]) -> bytes:
    """The value bytes a producer would send for ``event`` (malformed ones included)."""
    if event.raw is not None:
        return event.raw
    assert event.record is not None
    value = codecs[event.kind].encode(event.record)
    return value[: len(value) // 2] if event.truncated else value


def item_feature_records(world: World, version: int = 1) -> list[dict]:
    """Every job of ``world`` as an ``ItemFeatures`` record (what an item catalog service would publish)."""
    return [
        {
            "item_id": job.entity_id,
            "version": version,
            "features": {
                bag: [{"name": n, "term": t, "value": v} for n, t, v in items] for bag, items in job.bags.items()
            },
        }
        for job in world.jobs
    ]


def produce_items(world: World, producer: Producer, settings: Settings) -> int:
    """Publish ``world``'s jobs to the compacted items topic, keyed by item id; returns how many."""
    topic = settings.topics.items
    codec = make_codec("ItemFeatures", topic, settings.kafka.schema_registry_url, settings.kafka.schema_registry)
    records = item_feature_records(world)
    for record in records:
        produce_bounded(producer, topic, record["item_id"].encode(), codec.encode(record), stall_timeout_s=30)
    if producer.flush(30):
        raise KafkaClientError(f"items not delivered to {topic} within 30 s")
    return len(records)


def produce_to_kafka(
    events: Iterable[SyntheticEvent],
    producer: Producer,
    topics: dict[str, str],
    codecs: dict[str, RecordCodec],
    flush_timeout_s: float = 30.0,
) -> Counter:
    """Produce ``events`` keyed by member id; returns counts per kind (and ``malformed``)."""
    counts: Counter = Counter()
    errors: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            errors.append(str(err))

    for event in events:
        produce_bounded(
            producer,
            topics[event.kind],
            event.key.encode(),
            encode_event(event, codecs),
            stall_timeout_s=flush_timeout_s,
            timestamp=event.arrival_ms,
            on_delivery=on_delivery,
        )
        counts[event.kind] += 1
        counts["malformed"] += event.malformed
    remaining = producer.flush(flush_timeout_s)
    if remaining or errors:
        raise KafkaClientError(f"{remaining} messages not delivered; first errors: {errors[:3]}")
    return counts


def write_avro_files(events: Iterable[SyntheticEvent], directory: str | Path) -> Counter:
    """Write valid events to ``impressions.avro`` and ``interactions.avro`` (container files).

    Values that are not Avro at all (random bytes, truncated) cannot live in a typed
    container file; they are counted as ``skipped_malformed``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    by_kind: dict[str, list[dict]] = {IMPRESSION: [], INTERACTION: []}
    counts: Counter = Counter()
    for event in events:
        if event.raw is not None or event.truncated or event.record is None:
            counts["skipped_malformed"] += 1
            continue
        by_kind[event.kind].append(event.record)
        counts[event.kind] += 1
        counts["malformed"] += event.malformed
    for kind, schema_name in _SCHEMAS.items():
        with open(directory / f"{kind}s.avro", "wb") as out:
            fastavro.writer(out, load_schema(schema_name).parsed, by_kind[kind], codec="deflate")
    return counts


def write_ground_truth(truth: GroundTruth, path: str | Path) -> None:
    """Save the true coefficients as JSON (a readable, pickle-free format)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(truth.to_json(), indent=1))
