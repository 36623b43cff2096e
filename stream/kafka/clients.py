"""Builds librdkafka configurations from :class:`Settings` and creates topics where possible.

librdkafka settings are merged in a fixed order on a fresh dict — our defaults, then the
user's ``kafka.client`` map, then the per-kind map (``kafka.producer`` ...), then the few
settings this module must enforce — so user settings (SASL, SSL, tuning) pass through
unchanged and the caller's mappings are never mutated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from stream.config import CoordinateSettings, KafkaSettings, Settings, TopicSettings
from stream.kafka.exceptions import BrokerUnavailableError

log = logging.getLogger(__name__)
_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")

_PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
    "batch.num.messages": 10000,
}
_CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
    "fetch.min.bytes": 1,
    # Freshness is accuracy (DESIGN §8): a broker holding an empty fetch for librdkafka's
    # default 500 ms was the largest term of click-to-coefficients latency (bench/pipeline.py).
    "fetch.wait.max.ms": 50,
}
_MAX_POLL_INTERVAL_MS_DEFAULT = 300_000  # librdkafka's default
# Offsets are committed by the pipeline after its state is safe (DESIGN §5), never on a timer.
_CONSUMER_ENFORCED: dict[str, Any] = {"enable.auto.commit": False, "enable.auto.offset.store": False}


def _merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def _base(kafka: KafkaSettings, bootstrap_servers: str) -> dict[str, Any]:
    servers = bootstrap_servers or kafka.bootstrap_servers
    if not servers:
        raise BrokerUnavailableError(
            "kafka.bootstrap_servers is empty: start the embedded broker (glmix broker) "
            "or point GLMIX_KAFKA__BOOTSTRAP_SERVERS at a cluster"
        )
    # librdkafka's own log lines go through logging, at their levels, instead of straight to stderr.
    return {"bootstrap.servers": servers, "logger": _LIBRDKAFKA_LOG}


def producer_config(kafka: KafkaSettings, bootstrap_servers: str = "", **enforced: Any) -> dict[str, Any]:
    """librdkafka producer settings: defaults < kafka.client < kafka.producer < ``enforced``."""
    return _merge(_PRODUCER_DEFAULTS, _base(kafka, bootstrap_servers), kafka.client, kafka.producer, enforced)


def consumer_config(
    kafka: KafkaSettings, group_id: str, bootstrap_servers: str = "", **enforced: Any
) -> dict[str, Any]:
    """librdkafka consumer settings with manual offset commits enforced."""
    return _merge(
        _CONSUMER_DEFAULTS,
        _base(kafka, bootstrap_servers),
        {"group.id": group_id},
        kafka.client,
        kafka.consumer,
        _CONSUMER_ENFORCED,
        enforced,
    )


def max_poll_interval_s(kafka: KafkaSettings) -> float:
    """The group consumer's ``max.poll.interval.ms`` in seconds: every wait inside a stage's loop is a share of it.

    A member that does not poll within it is evicted and its batch replayed elsewhere.
    """
    merged = _merge(_CONSUMER_DEFAULTS, kafka.client, kafka.consumer)
    return int(merged.get("max.poll.interval.ms", _MAX_POLL_INTERVAL_MS_DEFAULT)) / 1000


def producer_wait_seconds(kafka: KafkaSettings) -> float:
    """How long a stage may wait on the broker between two polls: half the poll interval.

    For a producer that delivers nothing (a full queue, a flush), a first model read back,
    or a blocking read that reads nothing (outbox recovery, a restore). A batch's produce
    and flushes run between two polls of the group consumer; waiting past
    ``max.poll.interval.ms`` would get the member evicted and the batch replayed into the
    same stalled broker. Half leaves the other half for the batch itself.
    """
    return max_poll_interval_s(kafka) / 2


def admin_config(kafka: KafkaSettings, bootstrap_servers: str = "") -> dict[str, Any]:
    """librdkafka admin-client settings."""
    return _merge(_base(kafka, bootstrap_servers), kafka.client, kafka.admin)


def all_topics(topics: TopicSettings, coordinates: Mapping[str, CoordinateSettings]) -> dict[str, bool]:
    """Every topic the pipeline uses, mapped to whether it should be compacted."""
    names = {
        topics.impressions: False,
        topics.interactions: False,
        topics.dead_letter: False,
        topics.model_global: True,
        topics.score_requests: False,
        topics.score_results: False,
        topics.items: True,
    }
    names.update({topics.examples(name, c.entity_field): False for name, c in coordinates.items()})
    names.update({topics.coefficients(name): True for name in coordinates})
    return names


def ensure_topics(
    admin: AdminClient, topics: TopicSettings, compacted: Mapping[str, bool], timeout_s: float = 10.0
) -> list[str]:
    """Try to create ``compacted``'s topics; return those that now exist or were created.

    Never fails the caller: the librdkafka mock cluster has no CreateTopics (its topics
    auto-create with 4 partitions), and a locked-down cluster may refuse it. Either way we
    log a warning and go on, and the first produce creates or finds the topic.
    """
    new_topics = [
        NewTopic(
            name,
            num_partitions=topics.partitions,
            replication_factor=topics.replication_factor,
            config={"cleanup.policy": "compact"} if is_compacted else {},
        )
        for name, is_compacted in compacted.items()
    ]
    ready: list[str] = []
    try:
        futures = admin.create_topics(new_topics, operation_timeout=timeout_s, request_timeout=timeout_s)
    except KafkaException as exc:
        log.warning("CreateTopics not available (%s); relying on auto-created topics", exc)
        return ready
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            ready.append(name)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            if getattr(error, "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                ready.append(name)
            else:
                log.warning("could not create topic %s (%s); relying on auto-creation", name, error)
        except Exception as exc:  # noqa: BLE001 - timeouts and brokers without the API: never fail the caller
            log.warning("could not create topic %s (%r); relying on auto-creation", name, exc)
    return ready


def prepare_topics(settings: Settings, bootstrap_servers: str = "", timeout_s: float = 10.0) -> None:
    """Make sure every pipeline topic exists: CreateTopics (compaction set) where the cluster has a controller, else auto-creation.

    Consumers that subscribe to a topic that does not exist yet may wait a metadata refresh
    interval before they see it, so stages make sure their topics exist before they start.
    """
    wanted = {**all_topics(settings.topics, settings.model.coordinates), settings.kafka.changelog_topic("joiner"): True}
    config = admin_config(settings.kafka, bootstrap_servers)
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {config['bootstrap.servers']} within "
            f"{timeout_s:.0f} s ({getattr(error, 'str', lambda: error)()})"
        ) from exc
    missing = {name: compacted for name, compacted in wanted.items() if name not in metadata.topics}
    if not missing:
        return
    created: set[str] = set()
    if metadata.controller_id in metadata.brokers:  # the embedded mock cluster has none: CreateTopics would time out
        created = set(ensure_topics(admin, settings.topics, missing, timeout_s))
    remaining = [name for name in missing if name not in created]
    if remaining:
        producer = Producer(producer_config(settings.kafka, bootstrap_servers))
        for name in remaining:  # a metadata request for a topic auto-creates it where the broker allows it
            producer.list_topics(name, timeout=timeout_s)
