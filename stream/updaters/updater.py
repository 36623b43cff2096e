"""The updater of one random-effect coordinate: a consumer group over its examples topic.

Each micro-batch (at most ``batch_size`` examples or ``batch_time_ms``) is decoded at
once, split by input partition, grouped by entity, read from the partition's store with
one multi-get, updated by one call of the compiled Newton solver (:mod:`stream.updaters.state_update`),
published, committed, and written back with one WriteBatch, in DESIGN §5's order:
produce coefficients -> flush -> commit input offsets -> write the batch (states + offset).

A crash between any two steps loses nothing: before the commit, the batch is replayed
and every entity's offset stamp turns the replay into a no-op for the events it already
absorbed; after the commit but before the write, the store is behind the committed
offset, so the partition is restored from the coefficients topic (which was flushed)
on its next assignment. Rebalance callbacks run inside ``consume()``, between batches,
so a revoked partition never has a batch in flight: its store is simply closed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.codec import make_codec
from stream.codec.avro import decode_batch
from stream.config import Settings
from stream.gc_pause import cyclic_gc_paused
from stream.kafka.clients import consumer_config, prepare_topics, producer_config
from stream.kafka.dead_letter import DeadLetters
from stream.kafka.messages import commit_processed, last_offsets, without_errors
from stream.kafka.topic_reader import TopicReader
from stream.metrics.histogram import (
    FRESHNESS_SECONDS_BUCKETS,
    NEWTON_ITERATIONS_BUCKETS,
    CumulativeHistogram,
    batch_seconds_histogram,
)
from stream.metrics.kafka_statistics import KafkaStatistics, statistics_settings
from stream.model.losses import get_loss
from stream.runtime.stats import StageStats
from stream.state.changelog import entity_model_values, states_from_records
from stream.state.exceptions import StateLayoutError
from stream.state.ownership import PartitionStores
from stream.state.partition_store import NO_OFFSET, PartitionStore, open_or_wipe, store_path
from stream.updaters.examples import example_problem, valid_entity_batch
from stream.updaters.state_update import CoordinateMath, apply_batch

log = logging.getLogger(__name__)

ENTITY_PREFIX = b"e"
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
    restore_seconds: float = 0.0
    busy_seconds: float = 0.0
    freshness_ms: deque = field(default_factory=lambda: deque(maxlen=_FRESHNESS_SAMPLES))
    freshness_seconds: CumulativeHistogram = field(default_factory=lambda: CumulativeHistogram(FRESHNESS_SECONDS_BUCKETS))
    newton_iterations: CumulativeHistogram = field(default_factory=lambda: CumulativeHistogram(NEWTON_ITERATIONS_BUCKETS))
    unconverged_updates: int = 0
    batch_seconds: CumulativeHistogram = field(default_factory=batch_seconds_histogram)


def _entity_key(entity_id: str) -> bytes:
    return ENTITY_PREFIX + entity_id.encode()


class CoordinateUpdater:
    """Keeps one coordinate's per-entity models up to date from its examples topic."""

    def __init__(self, settings: Settings, coordinate: str, bootstrap_servers: str = "",
                 statistics: KafkaStatistics | None = None) -> None:
        if coordinate not in settings.model.coordinates:
            raise KeyError(f"no coordinate {coordinate!r} in model.coordinates ({', '.join(settings.model.coordinates)})")
        self.settings = settings
        self.coordinate = coordinate
        self.coordinate_settings = settings.model.coordinates[coordinate]
        self.math = CoordinateMath.of(self.coordinate_settings, get_loss(settings.model.loss))
        self.math.warm_up()
        self.topic = settings.topics.examples(coordinate, self.coordinate_settings.entity_field)
        self.coefficients_topic = settings.topics.coefficients(coordinate)
        self.group_id = settings.kafka.group_id(f"updater-{coordinate}")
        self.stats = UpdaterStats()
        self._bootstrap = bootstrap_servers
        self._registry = settings.kafka.schema_registry_url
        self._examples_codec = make_codec("LabeledExample", self.topic, self._registry, settings.kafka.schema_registry)
        self._model_codec = make_codec("EntityModel", self.coefficients_topic, self._registry,
                                       settings.kafka.schema_registry)
        self._producer = Producer(producer_config(settings.kafka, bootstrap_servers))
        self._dead_letters = DeadLetters(self._producer, settings.topics.dead_letter, f"updater-{coordinate}")
        prepare_topics(settings, bootstrap_servers)  # a consumer may not see a topic created after it subscribed
        self._consumer = Consumer(consumer_config(settings.kafka, self.group_id, bootstrap_servers,
                                                  **statistics_settings(statistics, f"updater-{coordinate}")))
        self._ownership = PartitionStores(self.group_id, self._assign)
        self._stores = self._ownership.stores
        self._consumer.subscribe([self.topic], on_assign=self._ownership.on_assign,
                                 on_revoke=self._ownership.on_revoke, on_lost=self._ownership.on_revoke)

    # ------------------------------------------------------------------ partitions

    @property
    def state_dir(self) -> Path:
        """Where this updater's partition stores live."""
        return Path(self.settings.state_dir) / f"updater-{self.coordinate}"

    @property
    def assigned_partitions(self) -> list[int]:
        """Input partitions this updater owns now."""
        return self._ownership.partitions

    def state_size_bytes(self) -> int:
        """Size of the local state of every owned partition (RocksDB's estimate)."""
        return self._ownership.size_bytes()

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Open each assigned partition's store; restore it from the changelog when missing, unreadable or behind."""
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=30)}
        for tp in partitions:
            store, wiped = open_or_wipe(store_path(self.settings.state_dir, self.state_dir.name, self.topic, tp.partition))
            self._stores[tp.partition] = store
            done = max(committed.get(tp.partition, -1), 0) - 1
            if wiped or store.processed_offset() < done or store.processed_offset() == NO_OFFSET:
                try:
                    self._restore(tp.partition, store, done)
                except StateLayoutError as exc:  # unreadable local values: start over from the changelog alone
                    log.warning("%s: partition %d store unreadable (%s); rebuilding it", self.group_id, tp.partition, exc)
                    store.wipe()
                    self._restore(tp.partition, store, done)

    def _restore(self, partition: int, store: PartitionStore, done_offset: int) -> None:
        """Bring ``store`` up to date from changelog partition ``partition``; newer local states win."""
        started = time.monotonic()
        reader = TopicReader(self.settings.kafka, self.coefficients_topic, self._model_codec, [partition], self._bootstrap,
                             client_id=f"{self.group_id}-restore")
        latest: dict[str, dict] = {}
        read = 0
        try:
            for batch in reader.read_to_end(timeout_s=120):
                for record in batch.records:
                    read += 1
                    if record["coordinate"] != self.coordinate or record["source_partition"] != partition:
                        continue
                    held = latest.get(record["entity_id"])
                    if held is None or record["version"] > held["version"]:
                        latest[record["entity_id"]] = record
                if read and read % 100_000 < len(batch.records):
                    log.info("%s: restoring partition %d: %d changelog records read", self.group_id, partition, read)
        finally:
            reader.close()
        records = list(latest.values())
        keys = [_entity_key(r["entity_id"]) for r in records]
        local, found = self.math.layout.decode(store.get_many(keys), self.math.new_entity_precision)
        restored = states_from_records(records, self.math.layout, self.math.new_entity_precision)
        newer = ~found | (restored["version"] > local["version"])
        values = self.math.layout.encode(restored[newer])
        store.commit(zip([k for k, n in zip(keys, newer) if n], values), offsets={"input": max(done_offset, store.processed_offset())})
        elapsed = time.monotonic() - started
        self.stats.restored_entities += int(newer.sum())
        self.stats.restore_seconds += elapsed
        log.info("%s: restored %d entities of partition %d from %s (%d records read) in %.2f s",
                 self.group_id, int(newer.sum()), partition, self.coefficients_topic, read, elapsed)

    # ------------------------------------------------------------------ the loop

    def step(self) -> int:
        """Consume, update, publish and commit one micro-batch; returns the messages it took."""
        s = self.coordinate_settings
        messages = self._consumer.consume(s.batch_size, timeout=s.batch_time_ms / 1000)
        self._ownership.raise_pending()
        if not messages:
            return 0
        started = time.monotonic()
        usable = without_errors(messages, self.group_id)
        # The decoded records are acyclic and alive until the batch is done: a collection
        # in between would only rescan them (see stream.gc_pause).
        with cyclic_gc_paused():
            decoded = decode_batch(self._examples_codec, usable)
            for message, error in decoded.failures:
                self._dead_letters.send(message, error.reason)
            by_partition: dict[int, tuple[list, list]] = {}
            for record, message in zip(decoded.records, decoded.messages):
                problem = example_problem(record, self.coordinate, self.math.layout.dim)
                if problem is not None:
                    self._dead_letters.send(message, problem)
                    continue
                records, kept = by_partition.setdefault(message.partition(), ([], []))
                records.append(record)
                kept.append(message)
            writes = {p: self._update_partition(p, records, kept) for p, (records, kept) in by_partition.items()
                      if p in self._stores}
            del decoded, by_partition
        self._commit(usable, writes)
        self.stats.batches += 1
        self.stats.dead_lettered = self._dead_letters.total
        elapsed = time.monotonic() - started
        self.stats.busy_seconds += elapsed
        self.stats.batch_seconds.observe(elapsed)
        return len(messages)

    def _commit(self, messages: list, writes: dict[int, list[tuple[bytes, bytes]]]) -> None:
        """DESIGN §5's order: flush the published coefficients, commit the input offsets, write each store."""
        self._producer.flush()
        last = {key: offset for key, offset in last_offsets(messages).items() if key[1] in self._stores}
        if not commit_processed(self._consumer, last, self.group_id):
            self.stats.refused_commits += 1
        for (_, partition), offset in last.items():
            self._stores[partition].commit(writes.get(partition, ()), offsets={"input": offset})

    def _update_partition(self, partition: int, records: list, messages: list) -> list[tuple[bytes, bytes]]:
        """Update one partition's entities and publish them; returns the store writes (key, state)."""
        layout = self.math.layout
        batch, invalid_rows = valid_entity_batch(records, [m.offset() for m in messages], self.coordinate, layout.dim)
        for row in invalid_rows:
            self._dead_letters.send(messages[row], "non-finite feature, label, weight, offset or score, or a negative weight")
        self.stats.examples += int(batch.mask.sum())
        keys = [_entity_key(e) for e in batch.entity_ids]
        store = self._stores[partition]
        states, _ = layout.decode(store.get_many(keys), self.math.new_entity_precision)
        outcome = apply_batch(self.math, states, batch)
        changed = np.flatnonzero(outcome.changed)
        entity_ids = batch.entity_ids[changed].tolist()
        values = entity_model_values(self._model_codec, self.coordinate, entity_ids, outcome.states[changed], layout, partition)
        for entity_id, value in zip(entity_ids, values):
            self._producer.produce(self.coefficients_topic, key=entity_id.encode(), value=value, partition=partition)
        self._producer.poll(0)
        now_ms = int(time.time() * 1000)
        positive = batch.mask & (batch.labels > 0) & outcome.changed[:, None]
        freshness_ms = now_ms - batch.label_times[positive]
        self.stats.freshness_ms.extend(freshness_ms.tolist())
        self.stats.freshness_seconds.observe_many(freshness_ms / 1000)
        if outcome.update is not None:
            self.stats.newton_iterations.observe_many(outcome.update.iterations)
            self.stats.unconverged_updates += int((~outcome.update.converged).sum())
        self.stats.entity_updates += len(changed)
        self.stats.failed_updates += int(outcome.solved.sum()) - len(changed)
        self.stats.replayed_events += outcome.replayed_events
        self.stats.widened_entities += outcome.widened_entities
        self.stats.reset_entities += outcome.reset_entities
        return list(zip((keys[i] for i in changed), layout.encode(outcome.states[changed])))

    def close(self) -> None:
        """Flush, leave the group (revoking and closing every store) and release the clients."""
        self._producer.flush(10)
        self._consumer.close()
        self._ownership.close()
