"""Shared fixtures: the Kafka broker chosen per DESIGN §6, and the --run-slow switch."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import settings as hypothesis_settings

hypothesis_settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True)
hypothesis_settings.load_profile("ci")

log = logging.getLogger(__name__)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow suite: run with --run-slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@dataclass(frozen=True)
class KafkaBroker:
    """The broker the tests talk to and what kind it is (``external``, ``container`` or ``mock``)."""

    bootstrap_servers: str
    kind: str


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # no engine, no socket, no permission: all mean "no Docker here"
        return False


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """KAFKA_BOOTSTRAP_SERVERS if set, else an apache/kafka container if Docker answers, else the mock cluster."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield KafkaBroker(external, "external")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.9.0") as container:
            yield KafkaBroker(container.get_bootstrap_server(), "container")
        return
    from stream.kafka import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield KafkaBroker(broker.bootstrap_servers, "mock")


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """Bootstrap address of the session's broker."""
    return kafka_broker.bootstrap_servers


@pytest.fixture(autouse=True)
def _skip_real_kafka_on_mock(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("real_kafka") is None:
        return
    broker: KafkaBroker = request.getfixturevalue("kafka_broker")
    if broker.kind == "mock":
        pytest.skip("needs compaction, retention or transactions, which the librdkafka mock cluster lacks")


@pytest.fixture
def unique_name() -> str:
    """A fresh suffix for topic and group names, so tests never share Kafka state."""
    return uuid.uuid4().hex[:10]
