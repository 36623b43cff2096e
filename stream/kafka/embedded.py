"""The embedded broker: librdkafka's mock cluster, shipped inside the confluent-kafka wheel.

It speaks the real Kafka wire protocol on a loopback port, so any client in any process
can use it. Its limits (DESIGN §6): no CreateTopics (topics auto-create with 4
partitions), no compaction, ~5 MiB kept per partition, transactions unlike Kafka's.
The cluster lives as long as the client that owns it.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Producer
from typing_extensions import Self

from stream.kafka.exceptions import BrokerUnavailableError

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """A running librdkafka mock cluster; use as a context manager or call :meth:`close`."""

    def __init__(self, num_brokers: int = 1, timeout_s: float = 10.0) -> None:
        self._owner: Producer | None = Producer(
            {"test.mock.num.brokers": num_brokers, "log_level": 3, "client.id": "glmix-embedded-broker"}
        )
        metadata = self._owner.list_topics(timeout=timeout_s)
        if not metadata.brokers:
            raise BrokerUnavailableError("the librdkafka mock cluster reported no brokers")
        self.bootstrap_servers = ",".join(f"{b.host}:{b.port}" for b in metadata.brokers.values())
        log.info("embedded Kafka (librdkafka mock cluster) listening on %s", self.bootstrap_servers)

    def serve_until(self, stop: threading.Event) -> None:
        """Keep the cluster alive until ``stop`` is set (SIGINT/SIGTERM in ``glmix broker``)."""
        while not stop.wait(0.5):
            if self._owner is not None:
                self._owner.poll(0)

    def close(self) -> None:
        """Shut the cluster down; clients still connected see their connection closed."""
        if self._owner is not None:
            self._owner.flush(1.0)
            self._owner = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
