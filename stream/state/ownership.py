"""The partition stores a consumer-group stage owns: opened when partitions are assigned, closed when revoked.

librdkafka runs rebalance callbacks inside ``consume()`` — between micro-batches, so a
revoked partition never has a batch in flight — and cannot carry an exception out of
them. An error while preparing assigned partitions is kept and raised by
:meth:`PartitionStores.raise_pending` once ``consume()`` has returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from stream.state.partition_store import PartitionStore

log = logging.getLogger(__name__)

Prepare = Callable[[Consumer, list[TopicPartition]], None]


class PartitionStores:
    """Stores by partition number, with the rebalance callbacks that keep them in step with the assignment."""

    def __init__(self, owner: str, prepare: Prepare) -> None:
        self.owner = owner
        self.stores: dict[int, PartitionStore] = {}
        self._prepare = prepare
        self._error: Exception | None = None

    @property
    def partitions(self) -> list[int]:
        """Partitions owned now."""
        return sorted(self.stores)

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Rebalance callback: ``prepare`` opens (and restores) the stores of the new partitions."""
        try:
            self._prepare(consumer, partitions)
        except Exception as exc:  # re-raised by raise_pending() after consume() returns
            self._error = exc
        log.info("%s: assigned partitions %s", self.owner, [(tp.topic, tp.partition) for tp in partitions])

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Rebalance callback: close the stores of partitions taken away (or lost)."""
        for partition in {tp.partition for tp in partitions}:
            store = self.stores.pop(partition, None)
            if store is not None:
                store.close()
        log.info("%s: released partitions %s", self.owner, sorted({tp.partition for tp in partitions}))

    def raise_pending(self) -> None:
        """Raise the error a rebalance callback kept, if any."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def size_bytes(self) -> int:
        """RocksDB's estimate of the live size of every owned store."""
        return sum(store.size_bytes() for store in list(self.stores.values()))

    def close(self) -> None:
        """Close every store."""
        for store in self.stores.values():
            store.close()
        self.stores.clear()
