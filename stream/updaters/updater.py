"""The updater of one random-effect coordinate: a stage over its examples topic (run by the stage runtime).

Each micro-batch (at most ``batch_size`` examples or ``batch_time_ms``) is read into arrays
at once (one compiled scan, :class:`~stream.updaters.examples.ExampleReader`), split by input
partition, grouped by entity, read from the partition's store with one multi-get, updated by
one call of the compiled Newton solver (:func:`~stream.updaters.entity_updates.update_entities`),
and handed to the runtime's Checkpoint, which publishes, commits and writes in DESIGN §5's
order: produce coefficients -> flush -> commit input offsets -> write the batch (states + offset).

A crash between any two steps loses nothing: before the commit, the batch is replayed
and every entity's offset stamp turns the replay into a no-op for the events it already
absorbed; after the commit but before the write, the store is behind the committed
offset, so the partition is restored from the coefficients topic (which was flushed),
its changelog, when it is next assigned: in the loop, with the partition paused.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Message

from stream.codec import make_codec
from stream.config import ConfigError, Settings
from stream.kafka.clients import producer_wait_seconds
from stream.kafka.messages import last_offsets
from stream.kafka.topic_reader import TopicReader
from stream.metrics.families import MetricFamilies
from stream.metrics.histogram import FRESHNESS_SECONDS_BUCKETS, NEWTON_ITERATIONS_BUCKETS, CumulativeHistogram
from stream.model.losses import get_loss
from stream.runtime.checkpoint import Checkpoint
from stream.runtime.stage import Stage, StageClients
from stream.runtime.stats import StageStats
from stream.state.changelog import entity_model_values, states_from_records
from stream.state.exceptions import StateLayoutError
from stream.state.partition_store import NO_OFFSET, PartitionStore
from stream.state.store_changelog import throttle
from stream.updaters.entity_updates import entity_key, update_entities
from stream.updaters.examples import CoordinateExamples, EntityBatch, ExampleReader, valid_entity_batches
from stream.updaters.state_update import CoordinateMath

log = logging.getLogger(__name__)

_FRESHNESS_SAMPLES = 100_000


@dataclass
class UpdaterStats(StageStats):
    """Counters of one updater since it started (exported as metrics by the process)."""

    examples: int = 0
    entity_updates: int = 0
    failed_updates: int = 0
    replayed_events: int = 0
    widened_entities: int = 0
    reset_entities: int = 0
    restored_entities: int = 0
    freshness_ms: deque = field(default_factory=lambda: deque(maxlen=_FRESHNESS_SAMPLES))
    freshness_seconds: CumulativeHistogram = field(
        default_factory=lambda: CumulativeHistogram(FRESHNESS_SECONDS_BUCKETS)
    )
    newton_iterations: CumulativeHistogram = field(
        default_factory=lambda: CumulativeHistogram(NEWTON_ITERATIONS_BUCKETS)
    )
    unconverged_updates: int = 0
    coordinate: str = ""

    def consumed(self) -> int:
        """Examples consumed (dead-lettered ones included)."""
        return self.examples + self.dead_lettered

    def replayed(self) -> int:
        """Events an entity had already absorbed."""
        return self.replayed_events

    def add_samples(self, stage: str, families: MetricFamilies) -> None:
        """Stage samples, plus the coordinate's updates, failures, restores and freshness."""
        super().add_samples(stage, families)
        c = [self.coordinate]
        families.counter("glmix_entity_updates", c, self.entity_updates)
        families.counter("glmix_newton_failures", c, self.failed_updates)
        families.counter("glmix_newton_unconverged", c, self.unconverged_updates)
        families.counter("glmix_restored_entities", c, self.restored_entities)
        families.counter("glmix_widened_entities", c, self.widened_entities)
        families.counter("glmix_entity_resets", c, self.reset_entities)
        families.histogram("glmix_freshness_seconds", c, self.freshness_seconds)
        families.histogram("glmix_newton_iterations", c, self.newton_iterations)


class CoordinateUpdater(Stage):
    """Keeps one coordinate's per-entity models up to date from its examples topic."""

    def __init__(self, settings: Settings, coordinate: str) -> None:
        if coordinate not in settings.model.coordinates:
            raise ConfigError(
                "model.coordinates",
                f"no coordinate {coordinate!r} (configured: {', '.join(settings.model.coordinates)})",
            )
        self.settings = settings
        self.coordinate = coordinate
        self.coordinate_settings = settings.model.coordinates[coordinate]
        self.math = CoordinateMath.of(self.coordinate_settings, get_loss(settings.model.loss))
        self.math.warm_up()
        self.topic = settings.topics.examples(coordinate, self.coordinate_settings.entity_field)
        self.coefficients_topic = settings.topics.coefficients(coordinate)
        self.name = f"updater-{coordinate}"
        self.group_id = settings.kafka.group_id(self.name)
        self.stats: UpdaterStats = UpdaterStats(coordinate=coordinate)
        registry = settings.kafka.schema_registry_url
        self._examples_codec = make_codec("LabeledExample", self.topic, registry, settings.kafka.schema_registry)
        self._model_codec = make_codec("EntityModel", self.coefficients_topic, registry, settings.kafka.schema_registry)
        self._reader = ExampleReader(self._examples_codec, coordinate, self.math.layout.dim)

    def subscription(self) -> list[str]:
        """The coordinate's examples topic."""
        return [self.topic]

    def batch_limits(self) -> tuple[int, float]:
        """``batch_size`` examples or ``batch_time_ms``."""
        return self.coordinate_settings.batch_size, self.coordinate_settings.batch_time_ms / 1000

    def open(self, clients: StageClients) -> None:
        """Keep the clients (the dead-letter sink, the bootstrap address for restores)."""
        super().open(clients)

    def state_owner(self) -> str:
        """Partition stores live under ``<state_dir>/updater-<coordinate>``."""
        return self.name

    # ------------------------------------------------------------------ restore

    def restore(self, partition: int, store: PartitionStore, committed: Mapping[str, int]) -> Iterator[int]:
        """Restore ``store`` from the coefficients topic when it is missing, unreadable or behind the committed offset."""
        done = max(committed.get(self.topic, -1), 0) - 1
        if store.processed_offset() != NO_OFFSET and store.processed_offset() >= done:
            return
        try:
            yield from self._restore(partition, store, done)
        except StateLayoutError as exc:  # unreadable local values: start over from the changelog alone
            log.warning("%s: partition %d store unreadable (%s); rebuilding it", self.group_id, partition, exc)
            store.wipe()
            yield from self._restore(partition, store, done)

    def _restore(self, partition: int, store: PartitionStore, done_offset: int) -> Iterator[int]:
        """Bring ``store`` up to date from changelog partition ``partition``; newer local states win."""
        started = time.monotonic()
        reader = TopicReader(
            self.settings.kafka,
            self.coefficients_topic,
            self._model_codec,
            [partition],
            self.clients.bootstrap_servers,
            client_id=f"{self.group_id}-restore",
        )
        latest: dict[str, dict[str, Any]] = {}
        read = 0
        try:
            for batch in reader.read_to_end(stall_timeout_s=producer_wait_seconds(self.settings.kafka)):
                for record in batch.records:
                    read += 1
                    if record["coordinate"] != self.coordinate or record["source_partition"] != partition:
                        continue
                    held = latest.get(record["entity_id"])
                    if held is None or record["version"] > held["version"]:
                        latest[record["entity_id"]] = record
                yield read
                for _ in throttle(started, read, self.settings.restore_max_records_per_s):
                    yield read
        finally:
            reader.close()
        records = list(latest.values())
        keys = [entity_key(r["entity_id"]) for r in records]
        local, found = self.math.layout.decode(store.get_many(keys), self.math.new_entity_precision)
        restored = states_from_records(records, self.math.layout, self.math.new_entity_precision)
        newer = ~found | (restored["version"] > local["version"])
        values = self.math.layout.encode(restored[newer])
        store.commit(
            zip([k for k, n in zip(keys, newer) if n], values),
            offsets={"input": max(done_offset, store.processed_offset())},
        )
        elapsed = time.monotonic() - started
        self.stats.restored_entities += int(newer.sum())
        self.stats.restored_records += read
        self.stats.restore_seconds += elapsed
        log.info(
            "%s: restored %d entities of partition %d from %s (%d records read, %.0f records/s) in %.2f s",
            self.group_id,
            int(newer.sum()),
            partition,
            self.coefficients_topic,
            read,
            read / max(elapsed, 1e-9),
            elapsed,
        )

    # ------------------------------------------------------------------ the batch function

    def process(self, messages: list[Message], checkpoint: Checkpoint) -> None:
        """Read, update and publish one micro-batch; the checkpoint commits it and writes the states."""
        if not messages:
            return
        stores, dead_letters = self.clients.stores, self.clients.dead_letters
        offsets = np.fromiter((m.offset() for m in messages), dtype=np.int64, count=len(messages))
        read = self._reader.read([m.value() for m in messages], offsets)
        for row, reason in read.problems:
            dead_letters.send(checkpoint, messages[row], reason)
        partitions = np.fromiter((m.partition() for m in messages), dtype=np.int64, count=len(messages))[read.rows]
        writes = {}
        for partition in np.unique(partitions).tolist():
            mine = partitions == partition
            kept = [messages[row] for row in read.rows[mine].tolist()]
            writes[partition] = self._update_partition(
                stores[partition], partition, read.examples.take(mine), kept, checkpoint
            )
        last = last_offsets(messages)
        checkpoint.consumed_through(last)
        for (_, partition), offset in last.items():
            checkpoint.write(stores[partition], writes.get(partition, ()), offsets={"input": offset})

    def _update_partition(
        self,
        store: PartitionStore,
        partition: int,
        examples: CoordinateExamples,
        messages: list[Message],
        checkpoint: Checkpoint,
    ) -> list[tuple[bytes, bytes]]:
        """Update one partition's entities and publish them; returns the store writes (key, state)."""
        batches, invalid_rows = valid_entity_batches(examples)
        for row in invalid_rows.tolist():
            self.clients.dead_letters.send(
                checkpoint, messages[row], "non-finite feature, label, weight, offset or score, or a negative weight"
            )
        writes: list[tuple[bytes, bytes]] = []
        for batch in batches:
            writes += self._update_entities(store, partition, batch, checkpoint)
        return writes

    def _update_entities(
        self, store: PartitionStore, partition: int, batch: EntityBatch, checkpoint: Checkpoint
    ) -> list[tuple[bytes, bytes]]:
        """Update one batch of the partition's entities and publish them; returns the store writes (key, state)."""
        self.stats.examples += int(batch.mask.sum())
        update = update_entities(store, self.math, batch)
        outcome = update.outcome
        values = entity_model_values(
            self._model_codec, self.coordinate, update.entity_ids, update.states, self.math.layout, partition
        )
        for entity_id, value in zip(update.entity_ids, values):
            checkpoint.produce(self.coefficients_topic, entity_id.encode(), value, partition)
        now_ms = int(time.time() * 1000)
        positive = batch.mask & (batch.labels > 0) & outcome.changed[:, None]
        freshness_ms = now_ms - batch.label_times[positive]
        self.stats.freshness_ms.extend(freshness_ms.tolist())
        self.stats.freshness_seconds.observe_many(freshness_ms / 1000)
        if outcome.update is not None:
            self.stats.newton_iterations.observe_many(outcome.update.iterations)
            self.stats.unconverged_updates += int((~outcome.update.converged).sum())
        self.stats.entity_updates += len(update.entity_ids)
        self.stats.failed_updates += int(outcome.solved.sum()) - len(update.entity_ids)
        self.stats.replayed_events += outcome.replayed_events
        self.stats.widened_entities += outcome.widened_entities
        self.stats.reset_entities += outcome.reset_entities
        return update.writes
