"""The Checkpoint: one micro-batch's effects made durable in one order, for every stage (DESIGN §5).

1. dead letters, then changelog records (a store's batch of changes, then its commit
   marker), flushed;
2. output records (examples, coefficients, responses), flushed;
3. the input offsets, committed (a commit a rebalance refuses is a normal event);
4. the local state writes, each with the processed offsets it covers.

A crash between any two steps loses nothing and applies nothing twice, because each
stage makes a replay of its last batch a no-op: the updaters by per-entity offset stamps
(their output is their changelog), the joiner by its changelog and outbox (a restore
applies what step 1 logged, then produces the outbox records step 2 did not deliver),
the archive by file offset ranges. Dead letters go first because a state the changelog
made durable no longer holds the records it rejected (an orphan interaction); a replay may
dead-letter a record twice, never lose one. Offsets only go forward: a checkpoint that
would commit an offset below one already committed in this assignment is a bug, and raises.

Every wait is bounded by ``wait_s`` (half of ``max.poll.interval.ms``, see
:func:`stream.kafka.clients.producer_wait_seconds`) and fails naming what it waited for:
a produce into a full local queue waits while the queue drains (a burst of records never
fails a batch; a queue that drains nothing for that long does), each flush waits for
the records still undelivered, and the offset commit waits for the group coordinator
(librdkafka's own synchronous commit would wait as long as a stalled broker stays
stalled). A broker stopped for less than that costs only the wait.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from stream.errors import GlmixError
from stream.kafka.messages import commit_processed, last_offsets, source_of
from stream.kafka.producing import ProducerStalledError, produce_bounded, produce_many
from stream.state.partition_store import PartitionStore
from stream.state.store_changelog import CHANGELOG

log = logging.getLogger(__name__)


class CheckpointError(GlmixError):
    """A checkpoint could not be made durable (an undelivered record, or offsets that would go backwards)."""


@dataclass
class LoggedBatch:
    """A store's batch of changes in its changelog: the marker's offset is known once the log is flushed."""

    topic: str
    partition: int
    records: Sequence[tuple[bytes, bytes | None]]
    marker_offset: int = -1

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        """Delivery report of the commit marker (the batch's last record)."""
        if error is None:
            self.marker_offset = source_of(message)[2]


@dataclass
class _StoreWrite:
    store: PartitionStore
    puts: Sequence[tuple[bytes, bytes]]
    deletes: Sequence[bytes]
    offsets: Mapping[str, int]
    logged: LoggedBatch | None


@dataclass
class _Output:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[tuple[str, str | bytes | None]] | None = None


@dataclass
class _Outputs:
    """Output records to one topic (and partition, or the partitioner's choice), in produce order."""

    topic: str
    items: Sequence[tuple[bytes | None, bytes | None]]
    partition: int | None = None


@dataclass
class Checkpoint:
    """What one micro-batch consumed, logs, produces and writes; :meth:`commit` makes it durable in order."""

    producer: Producer
    who: str
    committed: dict[tuple[str, int], int]
    delivery_errors: list[str]
    wait_s: float
    _consumed: dict[tuple[str, int], int] = field(default_factory=dict)
    _logged: list[LoggedBatch] = field(default_factory=list)
    _dead_letters: list[_Output] = field(default_factory=list)
    _outputs: list[_Outputs] = field(default_factory=list)
    _writes: list[_StoreWrite] = field(default_factory=list)

    def consumed(self, messages: Sequence[Message]) -> None:
        """Input whose effects this checkpoint holds: its offsets are committed by :meth:`commit`."""
        self.consumed_through(last_offsets(messages))

    def consumed_through(self, last: Mapping[tuple[str, int], int]) -> None:
        """Like :meth:`consumed`, given the batch's highest offset per (topic, partition)."""
        for key, offset in last.items():
            self._consumed[key] = max(self._consumed.get(key, -1), offset)

    def log(self, topic: str, partition: int, records: Sequence[tuple[bytes, bytes | None]]) -> LoggedBatch:
        """A store's changelog records for this batch (ending with its commit marker), produced first."""
        batch = LoggedBatch(topic, partition, records)
        self._logged.append(batch)
        return batch

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """An output record, produced after the changelog is safe and before the input offsets are committed."""
        self._outputs.append(_Outputs(topic, [(key, value)], partition))

    def produce_many(
        self, topic: str, items: Sequence[tuple[bytes | None, bytes | None]], partition: int | None = None
    ) -> None:
        """Output records (key, value) to one topic, in order: :meth:`produce` for a batch of them."""
        if items:
            self._outputs.append(_Outputs(topic, items, partition))

    def dead_letter(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, str | bytes | None]]
    ) -> None:
        """A record this batch rejected (see :class:`stream.kafka.dead_letter.DeadLetters`), produced before anything else."""
        self._dead_letters.append(_Output(topic, key, value, headers=headers))

    def write(
        self,
        store: PartitionStore,
        puts: Sequence[tuple[bytes, bytes]],
        deletes: Sequence[bytes] = (),
        offsets: Mapping[str, int] | None = None,
        logged: LoggedBatch | None = None,
    ) -> None:
        """A local state write (one WriteBatch), made last; ``logged`` records the changelog position it matches."""
        self._writes.append(_StoreWrite(store, puts, deletes, dict(offsets or {}), logged))

    @property
    def empty(self) -> bool:
        """Nothing consumed, logged, produced or written."""
        return not (self._consumed or self._logged or self._dead_letters or self._outputs or self._writes)

    def commit(self, consumer) -> bool:
        """Dead letters and log -> flush -> produce -> flush -> commit offsets -> write state.

        False if a rebalance refused the commit.
        """
        self._check_forward()
        for record in self._dead_letters:
            self._produce(record)
        for batch in self._logged:
            marker_key, marker_value = batch.records[-1]
            self._produce_many(batch.topic, batch.records[:-1], batch.partition)
            self._produce(_Output(batch.topic, marker_key, marker_value, batch.partition), on_delivery=batch.delivered)
        if self._logged:
            self._flush("dead-letter and changelog")
            missing = [b for b in self._logged if b.marker_offset < 0]
            if missing:
                raise CheckpointError(
                    f"{self.who}: changelog commit marker of {missing[0].topic}[{missing[0].partition}] "
                    "was not delivered"
                )
        for outputs in self._outputs:
            self._produce_many(outputs.topic, outputs.items, outputs.partition)
        self._flush("dead-letter and output" if self._dead_letters and not self._logged else "output")
        accepted = commit_processed(consumer, self._consumed, self.who, self.wait_s)
        if accepted:
            self.committed.update(self._consumed)
        for w in self._writes:
            offsets = dict(w.offsets)
            if w.logged is not None:
                offsets[CHANGELOG] = w.logged.marker_offset
            w.store.commit(w.puts, w.deletes, offsets)
        return accepted

    def _produce(self, record: _Output, on_delivery=None) -> None:
        try:
            produce_bounded(
                self.producer,
                record.topic,
                record.key,
                record.value,
                stall_timeout_s=self.wait_s,
                partition=record.partition,
                headers=record.headers,
                on_delivery=on_delivery,
            )
        except ProducerStalledError as exc:
            raise CheckpointError(f"{self.who}: {exc}; nothing of this batch was committed") from exc

    def _produce_many(
        self, topic: str, items: Sequence[tuple[bytes | None, bytes | None]], partition: int | None
    ) -> None:
        try:
            produce_many(self.producer, topic, items, stall_timeout_s=self.wait_s, partition=partition)
        except ProducerStalledError as exc:
            raise CheckpointError(f"{self.who}: {exc}; nothing of this batch was committed") from exc

    def _flush(self, what: str) -> None:
        remaining = self.producer.flush(self.wait_s)
        if remaining:
            raise CheckpointError(
                f"{self.who}: {remaining} {what} record(s) were still undelivered after a {self.wait_s:.0f} s flush "
                "(is the broker up?); nothing of this batch was committed"
            )
        if self.delivery_errors:
            errors, self.delivery_errors[:] = list(self.delivery_errors), []
            raise CheckpointError(
                f"{self.who}: {len(errors)} {what} record(s) were not delivered, first: {errors[0]}; "
                "nothing of this batch was committed"
            )

    def _check_forward(self) -> None:
        backwards = {key: offset for key, offset in self._consumed.items() if offset < self.committed.get(key, -1)}
        if backwards:
            raise CheckpointError(
                f"{self.who}: offsets would go backwards: "
                + ", ".join(f"{t}[{p}] {o} < {self.committed[(t, p)]}" for (t, p), o in backwards.items())
            )
