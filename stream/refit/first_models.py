"""A first model, published once: every coordinate's entities, then the global model as version 1.

``glmix bootstrap`` and ``glmix import photon`` both start a deployment this way, and both refuse when
``model.global`` already holds a model: every state and coefficient published refers to its indexes' columns,
so a first model never replaces one. Each entity goes to the partition of its coefficients topic that its
examples land on, so an updater restores it as its state.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream.config import Settings
from stream.errors import GlmixError
from stream.model.losses import get_loss
from stream.tables.models import GlobalModel, GlobalModelTable
from stream.updaters.state_update import CoordinateMath

FIRST_VERSION = 1  # a first model's version: the global model's, its indexes', and every entity's
CRC32_PARTITIONERS = ("consistent_random", "consistent")


class FirstModelError(GlmixError):
    """A first model cannot be published: one is published already, no broker was given, or it was not delivered."""


def published_global_model(settings: Settings, client: str) -> GlobalModel | None:
    """The newest usable global model on ``model.global`` (None when nothing is published), read by ``client``."""
    from stream.codec import make_codec
    from stream.kafka.topic_reader import TopicReader

    topic = settings.topics.model_global
    codec = make_codec("GlobalModel", topic, settings.kafka.schema_registry_url, settings.kafka.schema_registry)
    existing = GlobalModelTable(settings.model)
    reader = TopicReader(
        settings.kafka,
        topic,
        codec,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=settings.kafka.group_id(client),
    )
    try:
        for batch in reader.read_to_end(stall_timeout_s=60):
            existing.apply(batch.records)
    finally:
        reader.close()
    return existing.current


def refuse_published_model(settings: Settings, client: str) -> None:
    """Raise :class:`FirstModelError` when ``model.global`` already holds a model: a first model never replaces one.

    Every state and coefficient already published refers to its feature indexes' columns,
    and readers refuse a later version whose indexes do not keep them in place.
    """
    from stream.kafka.clients import prepare_topics

    if not settings.kafka.bootstrap_servers:
        raise FirstModelError(f"glmix {client} publishes to Kafka: give --bootstrap-servers")
    prepare_topics(settings, settings.kafka.bootstrap_servers)
    existing = published_global_model(settings, client)
    if existing is not None:
        raise FirstModelError(
            f"{settings.topics.model_global} already holds global model version {existing.version}: its feature "
            "indexes are what every state and coefficient refers to, so a first model (bootstrap or import) never "
            "replaces it"
        )


def _publish_global_model(settings: Settings, record: dict[str, Any], client: str) -> None:
    """Publish ``record`` on ``model.global``, refused when a model got there meanwhile (checked again: the
    entities took time)."""
    from confluent_kafka import Producer

    from stream.codec import make_codec
    from stream.kafka.clients import producer_config

    refuse_published_model(settings, client)
    topic = settings.topics.model_global
    codec = make_codec("GlobalModel", topic, settings.kafka.schema_registry_url, settings.kafka.schema_registry)
    producer = Producer(producer_config(settings.kafka, settings.kafka.bootstrap_servers))
    producer.produce(topic, key=record["model_name"].encode(), value=codec.encode(record))
    if producer.flush(30):
        raise FirstModelError(f"could not publish the first global model to {topic} within 30 s")


def entity_partitions(entity_ids: Sequence[str], partitions: int) -> np.ndarray:
    """The partition librdkafka's default (``consistent_random``) partitioner gives each entity id's key: CRC-32 mod n."""
    return np.array([zlib.crc32(e.encode()) % partitions for e in entity_ids], dtype=np.int64)


def publish_first_models(
    settings: Settings,
    record: dict[str, Any],
    coordinates: Mapping[str, tuple[Sequence[str], np.ndarray, np.ndarray]],
    client: str,
) -> None:
    """A first model: every coordinate's entities (:func:`publish_entity_models`), then ``record`` as version 1.

    Refused before anything is written when ``model.global`` already holds a model; the
    global model goes out only once every entity was delivered. ``client`` names the
    command in errors (``import``, ``bootstrap``).
    """
    refuse_published_model(settings, client)
    publish_entity_models(settings, coordinates, record["index_version"])
    _publish_global_model(settings, record, client)


def publish_entity_models(
    settings: Settings,
    coordinates: Mapping[str, tuple[Sequence[str], np.ndarray, np.ndarray]],
    index_version: int,
) -> None:
    """Every coordinate's (entity ids, means, precision diagonals) as ``EntityModel`` version 1, placed as updaters read.

    Each entity goes to the partition of its coefficients topic that its examples land on
    (librdkafka's default partitioner), so an updater restores it as its state.
    """
    from confluent_kafka import Producer

    from stream.codec import make_codec
    from stream.kafka.clients import max_poll_interval_s, producer_config
    from stream.kafka.producing import produce_bounded
    from stream.state.changelog import entity_model_values

    config = producer_config(settings.kafka, settings.kafka.bootstrap_servers)
    partitioner = config.get("partitioner", CRC32_PARTITIONERS[0])
    if partitioner not in CRC32_PARTITIONERS:
        raise FirstModelError(
            f"kafka.producer partitioner = {partitioner!r}: entities are placed as {', '.join(CRC32_PARTITIONERS)} do"
        )
    producer = Producer(config)
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for name, (entity_ids, means, precisions) in coordinates.items():
        configured = settings.model.coordinates[name]
        math = CoordinateMath.of(configured, get_loss(settings.model.loss))
        topic = settings.topics.coefficients(name)
        partitions = _partitions(producer, settings.topics.examples(name, configured.entity_field), topic)
        states = math.layout.new_states(len(entity_ids), math.new_entity_precision)
        states["mean"] = means
        states["precision"] = math.layout.pack_precision(precisions)
        states["version"] = FIRST_VERSION
        states["index_version"] = index_version
        codec = make_codec("EntityModel", topic, settings.kafka.schema_registry_url, settings.kafka.schema_registry)
        placed = entity_partitions(entity_ids, partitions)
        for partition in np.unique(placed):
            rows = np.flatnonzero(placed == partition)
            ids = [entity_ids[int(i)] for i in rows]
            values = entity_model_values(codec, name, ids, states[rows], math.layout, int(partition))
            for entity, value in zip(ids, values):
                produce_bounded(
                    producer,
                    topic,
                    entity.encode(),
                    value,
                    partition=int(partition),
                    stall_timeout_s=max_poll_interval_s(settings.kafka),
                    on_delivery=delivered,
                )
    if producer.flush(max_poll_interval_s(settings.kafka)) or failures:
        raise FirstModelError(
            f"entity coefficients not all delivered ({len(producer)} waiting, {len(failures)} failed"
            f"{': ' + failures[0] if failures else ''}); the global model was not published"
        )


def _partitions(producer: Any, examples_topic: str, coefficients_topic: str) -> int:
    """The partition count of a coordinate's examples topic, which its coefficients topic must share."""

    counts = {
        topic: len(producer.list_topics(topic, timeout=10).topics[topic].partitions)
        for topic in (examples_topic, coefficients_topic)
    }
    if counts[examples_topic] != counts[coefficients_topic] or not counts[examples_topic]:
        raise FirstModelError(
            f"{examples_topic} has {counts[examples_topic]} partitions and {coefficients_topic} "
            f"{counts[coefficients_topic]}: an updater restores partition p of its examples from partition p"
        )
    return counts[examples_topic]
