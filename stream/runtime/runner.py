"""The one consume loop of glmix-stream: every stage runs on a :class:`StageRunner` (DESIGN §5).

Per step: close released stores and restore paused partitions for one slice; consume a
batch; keep the messages of ready partitions; find records deleted before they were read
(:mod:`stream.runtime.retention`); hand them to the stage's batch function with
a fresh :class:`~stream.runtime.checkpoint.Checkpoint`; commit it. Kafka clients are
created on the first step, so building a stage touches no broker.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Message, Producer

from stream.config import ConfigError, Settings
from stream.gc_pause import cyclic_gc_paused
from stream.kafka.clients import (
    consumer_config,
    max_poll_interval_s,
    prepare_topics,
    producer_config,
    producer_wait_seconds,
)
from stream.kafka.dead_letter import DeadLetters
from stream.kafka.messages import without_errors
from stream.metrics.kafka_statistics import KafkaStatistics, statistics_settings
from stream.runtime.assignment import Assignment
from stream.runtime.checkpoint import Checkpoint
from stream.runtime.retention import RetentionWatch, resets_to_end
from stream.runtime.stage import Stage, StageClients
from stream.runtime.stats import StageStats

log = logging.getLogger(__name__)

_RESTORE_SLICE_MAX_S = 1.0


def restore_slice_seconds(settings: Settings) -> float:
    """How long one restore slice may run between two polls of the group consumer.

    A member that does not poll within ``max.poll.interval.ms`` is evicted. A slice of a
    tenth of it leaves the rest for the batch that follows the slice, for a slow broker
    and for a stalled disk; capped at 1 s so ready partitions keep their latency while
    others restore.
    """
    return min(max_poll_interval_s(settings.kafka) / 10, _RESTORE_SLICE_MAX_S)


def take_batch(consumer: Consumer, max_messages: int, wait_s: float, natural: bool) -> list[Message]:
    """The next batch: up to ``max_messages``, waiting at most ``wait_s``.

    Natural batching takes what the consumer has fetched already and, when that is
    nothing, waits only for the first record, so no record waits for a batch to fill;
    fixed batching waits until ``max_messages`` arrived or ``wait_s`` passed.
    """
    if not natural:
        return consumer.consume(max_messages, timeout=wait_s)
    messages = consumer.consume(max_messages, timeout=0)
    if messages:
        return messages
    first = consumer.poll(wait_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, timeout=0)] if max_messages > 1 else [first]


class StageRunner:
    """Runs one stage: its clients, assignment, loop and checkpoints."""

    def __init__(
        self, stage: Stage, settings: Settings, bootstrap_servers: str = "", statistics: KafkaStatistics | None = None
    ) -> None:
        self.stage = stage
        self.settings = settings
        self.retention = RetentionWatch(stage.group_id, stage.stats, stop=settings.kafka.input_loss == "stop")
        self.assignment = Assignment(
            stage,
            Path(settings.state_dir),
            restore_slice_seconds(settings),
            self.retention,
            producer_wait_seconds(settings.kafka),
            settings.state_write_ahead_log,
        )
        self._bootstrap = bootstrap_servers
        self._statistics = statistics
        self._clients: StageClients | None = None
        self._committed: dict[tuple[str, int], int] = {}
        self._delivery_errors: list[str] = []
        self._producer_wait_s = producer_wait_seconds(settings.kafka)

    @property
    def clients(self) -> StageClients:
        """The stage's Kafka clients, created (and the stage opened) on first use."""
        if self._clients is None:
            self._clients = self._connect()
        return self._clients

    def _connect(self) -> StageClients:
        stage, settings = self.stage, self.settings
        config = consumer_config(
            settings.kafka,
            stage.group_id,
            self._bootstrap,
            **statistics_settings(self._statistics, stage.name),
            **stage.consumer_settings(),
        )
        if "cooperative" in str(config.get("partition.assignment.strategy", "")):
            # Assignment assigns and revokes whole assignments (the eager protocol) in its callbacks.
            raise ConfigError(
                "kafka.consumer.partition.assignment.strategy", "cooperative rebalancing is not supported"
            )
        self.retention.to_end = resets_to_end(config)
        prepare_topics(settings, self._bootstrap)  # a consumer may not see a topic created after it subscribed
        producer = Producer(producer_config(settings.kafka, self._bootstrap, on_delivery=self._delivery_report))
        consumer = Consumer(config)
        clients = StageClients(
            producer,
            consumer,
            DeadLetters(settings.topics.dead_letter, stage.name),
            self._bootstrap,
            self.assignment.stores,
        )
        stage.open(clients)
        consumer.subscribe(
            stage.subscription(), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        return clients

    def _on_assign(self, consumer: Consumer, partitions: list) -> None:
        for tp in partitions:  # another member may have committed further while we did not own it
            self._committed.pop((tp.topic, tp.partition), None)
        self.assignment.on_assign(consumer, partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list) -> None:
        self.assignment.on_revoke(consumer, partitions)

    def _delivery_report(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(f"{message.topic()}[{message.partition()}]: {error}")

    def _checkpoint(self, producer: Producer) -> Checkpoint:
        return Checkpoint(producer, self.stage.group_id, self._committed, self._delivery_errors, self._producer_wait_s)

    def step(self) -> int:
        """One pass of the loop: restore a slice, then consume, process and checkpoint a batch. Returns messages taken."""
        clients = self.clients
        self.assignment.advance(clients.consumer)
        max_messages, timeout_s = self.stage.batch_limits()
        messages = take_batch(clients.consumer, max_messages, timeout_s, self.settings.batching == "natural")
        ready = self.assignment.ready_messages(without_errors(messages, self.stage.group_id))
        self.retention.check(clients.consumer, ready)
        started = time.monotonic()
        checkpoint = self._checkpoint(clients.producer)
        with cyclic_gc_paused():  # a batch builds many short-lived acyclic objects; reference counting frees them
            self.stage.process(ready, checkpoint)
            if not ready and checkpoint.empty:
                return len(messages)
            accepted = checkpoint.empty or checkpoint.commit(clients.consumer)
        stats = self.stage.stats
        if not accepted:
            stats.refused_commits += 1
        elapsed = time.monotonic() - started
        stats.batches += 1
        stats.dead_lettered = clients.dead_letters.total
        stats.busy_seconds += elapsed
        stats.batch_seconds.observe(elapsed)
        return len(messages)

    @property
    def stats(self) -> StageStats:
        """The stage's counters."""
        return self.stage.stats

    @property
    def assigned_partitions(self) -> list[int]:
        """Partitions this stage owns now (ready or restoring)."""
        return self.assignment.partitions

    @property
    def ready_partitions(self) -> list[int]:
        """Partitions restored and consumed now (the rest of :attr:`assigned_partitions` are still restoring)."""
        return sorted(self.assignment.ready)

    def state_size_bytes(self) -> int:
        """Size of the local state of every ready partition (RocksDB's estimate)."""
        return self.assignment.size_bytes()

    def abandon(self) -> None:
        """After a failed batch: leave the group, release the stores and the stage, and commit nothing more.

        The failed batch was not committed, so the next owner replays it; a last checkpoint
        now (the archive's buffers, say) could commit input the failed batch never made
        durable. What fails here (a store that cannot write its memtables on a full disk) is
        logged, not raised: the batch's own error is the one to report.
        """
        releases = [("closing its stores", self.assignment.close), ("closing the stage", self.stage.close)]
        if self._clients is not None:
            releases.insert(0, ("leaving the group", self._clients.consumer.close))
        for what, release in releases:
            try:
                release()
            except Exception as exc:  # noqa: BLE001 - the first failure is the one raised; these are only logged
                log.warning("%s: %s after the failed batch failed too: %s", self.stage.group_id, what, exc)

    def close(self) -> None:
        """Checkpoint what the stage still holds, leave the group (revoking every partition), close stores and stage."""
        try:
            if self._clients is not None:
                checkpoint = self._checkpoint(self._clients.producer)
                self.stage.finish(checkpoint)
                if not checkpoint.empty:
                    checkpoint.commit(self._clients.consumer)
                self._clients.producer.flush(10)
                self._clients.consumer.close()
        finally:
            self.assignment.close()
            self.stage.close()
