"""Kafka client configuration, topic creation and the embedded (mock-cluster) broker."""

from stream.kafka.clients import (
    admin_config,
    all_topics,
    consumer_config,
    ensure_topics,
    prepare_topics,
    producer_config,
)
from stream.kafka.embedded import EmbeddedBroker
from stream.kafka.exceptions import BrokerUnavailableError, KafkaClientError

__all__ = [
    "BrokerUnavailableError",
    "EmbeddedBroker",
    "KafkaClientError",
    "admin_config",
    "all_topics",
    "consumer_config",
    "ensure_topics",
    "prepare_topics",
    "producer_config",
]
