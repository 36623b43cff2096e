"""``glmix bootstrap``: the first feature indexes and a fitted global model, from a team's history.

A deployment that has history starts from it instead of from the joiner's warm-up
(DESIGN §1): the history's impressions give every coordinate's first index (most
frequent features first, up to capacity), the live join rule labels them (one
partition, in event-time order, every window closed at the end), and the global
coordinate is fitted on the labels as the refit fits it. The record is version 1 of
``model.global``; an existing model is never replaced, since every state and coefficient
already published is tied to its columns.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stream.codec.schemas import load_schema
from stream.config import Settings
from stream.consumers.join_state import IMPRESSIONS, INTERACTIONS
from stream.consumers.labeling import IMPRESSION, ExampleJoin, JoinInput, interaction_types
from stream.errors import GlmixError
from stream.model.export import fitted_global_model_record, initial_global_model_record
from stream.scoring.tables import GlobalModelTable
from stream.state.partition_store import open_or_wipe

_CHUNK = 20_000


class BootstrapError(GlmixError):
    """No first model can be built or published: say why."""


def labels_of_history(settings: Settings, events: Sequence[JoinInput]) -> dict[str, float]:
    """Each impression's label under the live join rule, by impression id (impressions whose window never closed: none)."""
    impressions = [e.record for e in events if e.kind == IMPRESSION]
    table = GlobalModelTable(settings.model)
    table.apply([initial_global_model_record(impressions[:1], settings.model)])  # any index: only labels are kept
    join = ExampleJoin(settings, interaction_types(load_schema("Interaction").plain))
    labels: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="glmix-bootstrap-") as workdir:
        store, _ = open_or_wipe(Path(workdir) / "join")
        try:
            for start in range(0, len(events), _CHUNK):
                _label(join, store, events[start : start + _CHUNK], table, labels, frozenset())
            _label(join, store, [], table, labels, frozenset({IMPRESSIONS, INTERACTIONS}))
        finally:
            store.close()
    return labels


def _label(
    join: ExampleJoin, store, events, table: GlobalModelTable, labels: dict[str, float], idle: frozenset[str]
) -> None:
    batch = join.join(store, events, table.current, idle)
    for example in join.labeled(batch.result.emissions, None, {}):
        labels[example["example_id"]] = example["label"]
    batch.write({})


def bootstrap_record(settings: Settings, events: Sequence[JoinInput]) -> dict[str, Any]:
    """Version 1 of the global model: indexes from every impression of ``events``, coefficients fitted on their labels."""
    impressions = [e.record for e in events if e.kind == IMPRESSION]
    if not impressions:
        raise BootstrapError("the history holds no impressions")
    labels = labels_of_history(settings, events)
    labeled = [imp for imp in impressions if imp["impression_id"] in labels]
    if not labeled:
        return initial_global_model_record(impressions, settings.model)
    return fitted_global_model_record(
        labeled, np.array([labels[i["impression_id"]] for i in labeled]), settings.model, index_from=impressions
    )


def publish_first_model(settings: Settings, record: dict[str, Any]) -> None:
    """Publish ``record`` as the first model on ``model.global``; refuse when the topic already has one."""
    from confluent_kafka import Producer

    from stream.codec import make_codec
    from stream.kafka.clients import prepare_topics, producer_config
    from stream.kafka.topic_reader import TopicReader

    if not settings.kafka.bootstrap_servers:
        raise BootstrapError(
            "glmix bootstrap publishes to Kafka: give --bootstrap-servers (or --output FILE --no-publish)"
        )
    topic = settings.topics.model_global
    codec = make_codec("GlobalModel", topic, settings.kafka.schema_registry_url, settings.kafka.schema_registry)
    prepare_topics(settings, settings.kafka.bootstrap_servers)
    existing = GlobalModelTable(settings.model)
    reader = TopicReader(
        settings.kafka,
        topic,
        codec,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=settings.kafka.group_id("bootstrap"),
    )
    try:
        for batch in reader.read_to_end(timeout_s=60):
            existing.apply(batch.records)
    finally:
        reader.close()
    if existing.current is not None:
        raise BootstrapError(
            f"{topic} already holds global model version {existing.current.version}: its feature "
            "indexes are what every state and coefficient refers to, so a bootstrap never replaces it"
        )
    producer = Producer(producer_config(settings.kafka, settings.kafka.bootstrap_servers))
    producer.produce(topic, key=record["model_name"].encode(), value=codec.encode(record))
    if producer.flush(30):
        raise BootstrapError(f"could not publish the first global model to {topic} within 30 s")
