"""Partition assignment with restores in the loop, never in a rebalance callback (DESIGN §5, STYLE trap 1).

librdkafka runs rebalance callbacks inside ``consume()``. A restore there would stop the
member from polling for as long as the restore takes; past ``max.poll.interval.ms`` the
member is evicted, its partitions move, the next owner restores again, and the group can
livelock. So the callbacks only bookkeep: ``on_assign`` assigns and *pauses* the new
partitions, ``on_revoke`` forgets them. The loop then opens each new partition's store,
restores it in slices between polls, and resumes it when it is current. Stores of
revoked partitions are closed by the loop too, right after the callback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, Message, TopicPartition

from stream.errors import GlmixError
from stream.kafka.messages import source_of
from stream.runtime.retention import RetentionWatch
from stream.runtime.stage import Stage
from stream.state.exceptions import StoreOwnedError
from stream.state.partition_store import PartitionStore, open_or_wipe, store_path

log = logging.getLogger(__name__)


@dataclass
class _Restoring:
    topic_partitions: list[TopicPartition]
    store: PartitionStore | None = None
    progress: Iterator[int] | None = None
    committed: dict[str, int] | None = None
    records: int = 0
    started: float = field(default_factory=time.monotonic)
    resume_at: dict[str, int] = field(default_factory=dict)


class Assignment:
    """The partitions a stage owns: restoring (paused) or ready, their stores, and where each goes on.

    A partition's group offsets are read before it resumes; ``retention`` is told them, to
    find records deleted before they were read.
    """

    def __init__(
        self,
        stage: Stage,
        state_dir: str | Path,
        restore_slice_s: float,
        retention: RetentionWatch,
        broker_wait_s: float,
        write_ahead_log: bool = True,
    ) -> None:
        """``broker_wait_s``: the longest wait for the group's committed offsets (a share of the poll interval)."""
        self.stage = stage
        self._retention = retention
        self.stores: dict[int, PartitionStore] = {}
        self.ready: set[int] = set()
        self.restoring: dict[int, _Restoring] = {}
        self.assignments = 0
        self.revocations = 0
        self._state_dir = state_dir
        self._slice_s = restore_slice_s
        self._write_ahead_log = write_ahead_log
        self._broker_wait_s = broker_wait_s
        self._to_close: list[PartitionStore] = []

    # ------------------------------------------------------------------ callbacks (bookkeeping only)

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Assign and pause the new partitions; the loop restores and resumes them."""
        self.assignments += 1
        consumer.assign(partitions)
        consumer.pause(partitions)
        by_number: dict[int, list[TopicPartition]] = {}
        for tp in partitions:
            by_number.setdefault(tp.partition, []).append(TopicPartition(tp.topic, tp.partition))
        for number, tps in by_number.items():
            self.restoring[number] = _Restoring(tps)
        log.info(
            "%s: assigned partitions %s (paused until restored)",
            self.stage.group_id,
            [(tp.topic, tp.partition) for tp in partitions],
        )

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Forget the partitions taken away (or lost); their stores close in the loop."""
        numbers = sorted({tp.partition for tp in partitions})
        self.revocations += 1
        self.stage.revoked(numbers)
        self._retention.forget(numbers)
        for number in numbers:
            self.ready.discard(number)
            restoring = self.restoring.pop(number, None)
            if restoring is not None and restoring.store is not None:
                self._to_close.append(restoring.store)
            store = self.stores.pop(number, None)
            if store is not None:
                self._to_close.append(store)
        log.info("%s: released partitions %s", self.stage.group_id, numbers)

    # ------------------------------------------------------------------ the loop's part

    def advance(self, consumer: Consumer) -> None:
        """Close released stores, then restore paused partitions for at most one slice; resume the ones done."""
        while self._to_close:
            self._to_close.pop().close()
        if not self.restoring:
            return
        deadline = time.monotonic() + self._slice_s
        for number in sorted(self.restoring):
            if time.monotonic() >= deadline:
                break
            if self._restore_some(consumer, number, deadline):
                self._resume(consumer, number)

    def _restore_some(self, consumer: Consumer, number: int, deadline: float) -> bool:
        restoring = self.restoring[number]
        owner = self.stage.state_owner()
        if owner is not None and restoring.store is None:
            path = store_path(self._state_dir, owner, restoring.topic_partitions[0].topic, number)
            try:
                restoring.store, _ = open_or_wipe(path, self._write_ahead_log)
            except StoreOwnedError:  # its previous owner in this machine has not closed it yet: next step
                log.info("%s: store of partition %d still open elsewhere; retrying", self.stage.group_id, number)
                return False
        if restoring.committed is None:  # once the store is ours: its previous owner here has made its last commit
            committed = consumer.committed(restoring.topic_partitions, timeout=self._broker_wait_s)
            restoring.committed = {tp.topic: tp.offset for tp in committed}
        if restoring.store is None:
            return True
        if restoring.progress is None:
            restoring.progress = self.stage.restore(number, restoring.store, restoring.committed)
        for records in restoring.progress:
            restoring.records = records
            if time.monotonic() >= deadline:
                return False
        return True

    def _resume(self, consumer: Consumer, number: int) -> None:
        restoring = self.restoring.pop(number)
        if restoring.store is not None:
            self.stores[number] = restoring.store
        self.stage.restored(number)
        for topic, offset in (restoring.committed or {}).items():
            self._retention.expect(topic, number, offset)
        for topic, offset in restoring.resume_at.items():  # records fetched before the pause took effect
            consumer.seek(TopicPartition(topic, number, offset))
        consumer.resume(restoring.topic_partitions)
        self.ready.add(number)
        if restoring.records:
            seconds = time.monotonic() - restoring.started
            log.info(
                "%s: partition %d restored: %d changelog records in %.2f s (%.0f records/s)",
                self.stage.group_id,
                number,
                restoring.records,
                seconds,
                restoring.records / max(seconds, 1e-9),
            )

    def ready_messages(self, messages: list[Message]) -> list[Message]:
        """The messages of ready partitions; a record of a paused one is fetched again after its resume."""
        kept = []
        for m in messages:
            topic, number, offset = source_of(m)
            if number in self.ready:
                kept.append(m)
                continue
            restoring = self.restoring.get(number)
            if restoring is not None:
                restoring.resume_at[topic] = min(restoring.resume_at.get(topic, offset), offset)
        return kept

    @property
    def partitions(self) -> list[int]:
        """Every partition number owned now, ready or restoring."""
        return sorted(self.ready | set(self.restoring))

    def size_bytes(self) -> int:
        """RocksDB's estimate of the live size of every ready store."""
        return sum(store.size_bytes() for store in list(self.stores.values()))

    def close(self) -> None:
        """Close every store, also when one fails to (a full disk); then raise the first failure."""
        failure: GlmixError | None = None
        for store in [
            *self.stores.values(),
            *self._to_close,
            *(r.store for r in self.restoring.values() if r.store is not None),
        ]:
            try:
                store.close()
            except GlmixError as exc:
                failure = failure or exc
        self.stores.clear()
        self.restoring.clear()
        self._to_close.clear()
        self.ready.clear()
        if failure is not None:
            raise failure
