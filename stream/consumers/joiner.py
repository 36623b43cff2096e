"""The joiner: impressions + interactions -> labeled examples keyed by member and by job (DESIGN §2).

Both input topics are keyed by member id and co-partitioned, so partition p of each
lands in the same consumer (range assignment) and shares one RocksDB store of pending
impressions (:mod:`stream.consumers.join_state`). Per micro-batch: decode both topics in
batch, dead-letter what is malformed, join, close windows, build and score the finished
examples, produce them, flush, write the store (join state + processed offsets, one
WriteBatch), commit. Input at or below a store's processed offset is a replay and is
skipped, so a restart neither loses pending impressions nor joins twice; a crash between
the flush and the write can re-emit that batch's examples (at-least-once, without
Kafka transactions).

The joiner follows ``glmix.model.global`` (feature indexes and global coefficients) and
every coordinate's coefficients topic, so a new version is used from the next batch on,
without a restart.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.codec import make_codec
from stream.codec.avro import decode_batch, encode_batch
from stream.codec.validation import impression_problem, interaction_problem
from stream.config import Settings
from stream.consumers.join_state import IMPRESSIONS, INTERACTIONS, JoinBatch, JoinCounts
from stream.consumers.labeling import (IMPRESSION, INTERACTION, ExampleIndexer, ExampleJoin, JoinInput, interaction_types,
                                      warm_up_complete)
from stream.consumers.outbox import OutgoingRecord, already_produced, outbox_entries, pending, wall_ms
from stream.errors import GlmixError
from stream.kafka.clients import consumer_config, prepare_topics, producer_config
from stream.kafka.dead_letter import DeadLetters
from stream.kafka.messages import commit_processed, last_offsets, without_errors
from stream.metrics.histogram import CumulativeHistogram, batch_seconds_histogram
from stream.metrics.kafka_statistics import KafkaStatistics, statistics_settings
from stream.metrics.progressive_window import ProgressiveWindow
from stream.model.export import initial_global_model_record
from stream.model.losses import get_loss
from stream.runtime.stats import StageStats
from stream.scoring.follower import ModelFollower
from stream.state.ownership import PartitionStores
from stream.state.partition_store import open_or_wipe, store_path

log = logging.getLogger(__name__)


class JoinerError(GlmixError):
    """The joiner cannot go on: say what is missing."""


@dataclass
class JoinerStats(StageStats):
    """Counters of one joiner since it started."""

    positives: int = 0
    negatives: int = 0
    eager_emissions: int = 0
    orphans: int = 0
    replayed: int = 0
    busy_seconds: float = 0.0
    indexing: ExampleIndexer | None = None
    outbox_recovered: int = 0
    join: JoinCounts = field(default_factory=JoinCounts)
    batch_seconds: CumulativeHistogram = field(default_factory=batch_seconds_histogram)
    progressive: ProgressiveWindow | None = None

    @property
    def examples(self) -> int:
        """Examples emitted."""
        return self.positives + self.negatives


class Joiner:
    """Joins impressions with interactions into labeled examples for every coordinate."""

    def __init__(self, settings: Settings, bootstrap_servers: str = "", statistics: KafkaStatistics | None = None) -> None:
        self.settings = settings
        self.group_id = group_id = settings.kafka.group_id("joiner")
        self.stats = JoinerStats(progressive=ProgressiveWindow(
            list(settings.model.coordinates), get_loss(settings.model.loss), list(settings.joiner.labels),
            segment_by=settings.metrics.segment_by, segment_values=settings.metrics.segment_values))
        topics, kafka = settings.topics, settings.kafka
        registry, registry_settings = kafka.schema_registry_url, kafka.schema_registry
        self._bootstrap = bootstrap_servers
        self._impression_codec = make_codec("Impression", topics.impressions, registry, registry_settings)
        self._interaction_codec = make_codec("Interaction", topics.interactions, registry, registry_settings)
        self._outputs = {
            name: (topics.examples(name, c.entity_field), c.entity_field) for name, c in settings.model.coordinates.items()
        }
        self._output_codecs = {
            topic: make_codec("LabeledExample", topic, registry, registry_settings) for topic, _ in self._outputs.values()
        }
        self._global_model_codec = make_codec("GlobalModel", topics.model_global, registry, registry_settings)
        self._join = ExampleJoin(settings, interaction_types(self._interaction_codec.schema.plain))
        self.stats.indexing = self._join.indexer
        j = settings.joiner
        self._producer = Producer(producer_config(kafka, bootstrap_servers))
        self._dead_letters = DeadLetters(self._producer, topics.dead_letter, "joiner")
        prepare_topics(settings, bootstrap_servers)  # a consumer may not see a topic created after it subscribed
        self.models = ModelFollower(settings, bootstrap_servers, group_id)
        self.models.catch_up()
        config = consumer_config(kafka, group_id, bootstrap_servers, **statistics_settings(statistics, "joiner"))
        config["partition.assignment.strategy"] = "range"  # partition p of both topics to one consumer
        self._consumer = Consumer(config)
        self._ownership = PartitionStores(self.group_id, self._assign)
        self._stores = self._ownership.stores
        self._last_delivery: dict[tuple[str, int], float] = {}
        self._idle_s = j.idle_input_ms / 1000
        self._unchecked: set[int] = set()
        self._warm_up_held: list = []
        self._warm_up_since: float | None = None
        self._consumer.subscribe([topics.impressions, topics.interactions], on_assign=self._ownership.on_assign,
                                 on_revoke=self._ownership.on_revoke, on_lost=self._ownership.on_revoke)

    @property
    def assigned_partitions(self) -> list[int]:
        """Partitions (of both input topics) this joiner owns now."""
        return self._ownership.partitions

    def state_size_bytes(self) -> int:
        """Size of the local state of every owned partition (RocksDB's estimate)."""
        return self._ownership.size_bytes()

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Open the store of each assigned partition number (shared by both input topics)."""
        for p in sorted({tp.partition for tp in partitions}):
            if p not in self._stores:
                path = store_path(self.settings.state_dir, "joiner", self.settings.topics.impressions, p)
                self._stores[p], _ = open_or_wipe(path)
                self._unchecked.add(p)

    def step(self) -> int:
        """Consume, join, emit, write state and commit one micro-batch; returns the messages it took."""
        j = self.settings.joiner
        self.models.refresh()
        if self.models.global_model.current is None and not j.bootstrap_model:
            log.warning("no global model on %s yet and joiner.bootstrap_model is off; waiting", self.settings.topics.model_global)
            time.sleep(j.batch_time_ms / 1000)
            return 0
        messages = self._consumer.consume(j.batch_size, timeout=j.batch_time_ms / 1000)
        self._ownership.raise_pending()
        self._recover_outboxes()
        if self.models.global_model.current is None:
            consumed = len(messages)
            messages = self._warm_up(messages)
            if not messages:
                return consumed
        started = time.monotonic()
        good = without_errors(messages, self.group_id)
        for m in good:
            self._last_delivery[(m.topic(), m.partition())] = started
        events = self._decode(good)
        last = {key: offset for key, offset in last_offsets(good).items() if key[1] in self._stores}
        self._bootstrap_model_if_needed(events)
        writes = []
        for partition in list(self._stores):  # quiet partitions too: their windows close once an input is idle
            items = events.get(partition, [])
            batch = self._join_partition(partition, items)
            offsets = {topic: offset for (topic, p), offset in last.items() if p == partition}
            if items or offsets or batch.result.emissions or batch.result.orphans:
                writes.append((partition, batch, offsets, self._outgoing(batch.result.emissions)))
        if not messages and not writes:
            return 0
        # Effectively-once (stream.consumers.outbox): state, processed offsets and outgoing records in one
        # WriteBatch, then produce, flush, empty the outbox, commit.
        written_ms = wall_ms()
        outboxes = []
        for partition, batch, offsets, records in writes:
            entries = outbox_entries(records, written_ms)
            batch.write(offsets, entries)
            outboxes.append((partition, [key for key, _ in entries]))
        for _, _, _, records in writes:
            self._produce(records)
        self._producer.flush()
        for partition, keys in outboxes:
            if keys:
                self._stores[partition].commit([], keys)
        if not commit_processed(self._consumer, last, self.group_id):
            self.stats.refused_commits += 1
        self.stats.batches += 1
        self.stats.dead_lettered = self._dead_letters.total
        elapsed = time.monotonic() - started
        self.stats.busy_seconds += elapsed
        self.stats.batch_seconds.observe(elapsed)
        return len(messages)

    def _decode(self, good: list) -> dict[int, list[JoinInput]]:
        """Decoded, valid events per partition, in consume order; everything else dead-lettered."""
        topics = self.settings.topics
        by_kind = {
            IMPRESSION: [m for m in good if m.topic() == topics.impressions],
            INTERACTION: [m for m in good if m.topic() == topics.interactions],
        }
        decoded: dict[int, JoinInput] = {}
        for kind, batch in by_kind.items():
            codec = self._impression_codec if kind == IMPRESSION else self._interaction_codec
            problem = impression_problem if kind == IMPRESSION else interaction_problem
            result = decode_batch(codec, batch)
            for message, error in result.failures:
                self._dead_letters.send(message, str(error))
            for record, message in zip(result.records, result.messages):
                reason = problem(record)
                if reason is not None:
                    self._dead_letters.send(message, reason)
                else:
                    decoded[id(message)] = JoinInput(kind, record, message.offset(), message.value(), message.key() or b"")
        events: dict[int, list[JoinInput]] = {}
        for m in good:
            item = decoded.get(id(m))
            if item is not None:
                events.setdefault(m.partition(), []).append(item)
        return events

    def _warm_up(self, messages: list) -> list:
        """Hold input until the warm-up is complete, then hand all of it back (nothing is committed meanwhile).

        The first feature index is built from ``joiner.bootstrap_impressions`` impressions,
        or from what ``joiner.bootstrap_wait_ms`` brought, never from one micro-batch (DESIGN §1).
        A rebalance during the warm-up re-delivers what was held, so repeats are dropped,
        as are messages of partitions this joiner no longer owns.
        """
        j = self.settings.joiner
        if messages and self._warm_up_since is None:
            self._warm_up_since = time.monotonic()
        self._warm_up_held.extend(messages)
        impressions = sum(1 for m in self._warm_up_held if m.topic() == self.settings.topics.impressions)
        waited_ms = 0.0 if self._warm_up_since is None else 1000 * (time.monotonic() - self._warm_up_since)
        if not warm_up_complete(impressions, waited_ms, j):
            return []
        held, self._warm_up_held, self._warm_up_since = self._warm_up_held, [], None
        seen: set[tuple[str, int, int]] = set()
        kept = []
        for m in held:
            key = (m.topic(), m.partition(), m.offset())
            if key not in seen and m.partition() in self._stores:
                seen.add(key)
                kept.append(m)
        return kept

    def _bootstrap_model_if_needed(self, events: dict[int, list]) -> None:
        """Publish a first global model indexed from the warm-up's impressions, then use whichever first one the topic has.

        Two joiners warming up together may both publish; every reader takes the first
        version 1 on the topic, this joiner included.
        """
        if self.models.global_model.current is not None:
            return
        impressions = [e.record for items in events.values() for e in items if e.kind == IMPRESSION]
        if not impressions:
            return
        record = initial_global_model_record(impressions, self.settings.model)
        self._producer.produce(self.settings.topics.model_global, key=record["model_name"].encode(),
                               value=self._global_model_codec.encode(record))
        self._producer.flush()
        deadline = time.monotonic() + 30
        while self.models.global_model.current is None:
            if time.monotonic() > deadline:
                raise JoinerError(f"published a first global model to {self.settings.topics.model_global} but could not "
                                  "read it back within 30 s")
            self.models.refresh(timeout_s=0.2)
        log.warning("no global model was published: bootstrapped one from %d warm-up impressions (zero coefficients); "
                    "using version %d with %d global features", len(impressions), self.models.global_model.current.version,
                    self.models.global_model.current.global_index.dim)

    def _join_partition(self, partition: int, items: list[JoinInput]) -> JoinBatch:
        store = self._stores[partition]
        topics = self.settings.topics
        done = {IMPRESSION: store.processed_offset(topics.impressions),
                INTERACTION: store.processed_offset(topics.interactions)}
        fresh = [e for e in items if e.offset > done[e.kind]]
        self.stats.replayed += len(items) - len(fresh)
        batch = self._join.join(store, fresh, self.models.global_model.current, self._idle_inputs(partition))
        for orphan in batch.result.orphans:
            self._dead_letters.send_raw(orphan.key, orphan.raw, topics.interactions, partition, orphan.offset,
                                        "orphan interaction: no impression known for it (none arrived within "
                                        "joiner.allowed_lateness_ms, or it is older than joiner.emitted_retention_ms)")
        self.stats.orphans += len(batch.result.orphans)
        self.stats.join.add(batch.result.counts)
        return batch

    def _idle_inputs(self, partition: int) -> frozenset[str]:
        """Inputs of ``partition`` that delivered nothing for ``idle_input_ms`` and have nothing left to read.

        Both conditions are needed: the cached high watermark can be stale, and a quiet
        input may just be slow.
        """
        topics = self.settings.topics
        names = {topics.impressions: IMPRESSIONS, topics.interactions: INTERACTIONS}
        now = time.monotonic()
        quiet = [t for t in names if now - self._last_delivery.get((t, partition), 0.0) >= self._idle_s]
        if not quiet:
            return frozenset()
        idle = set()
        for tp in self._consumer.position([TopicPartition(t, partition) for t in quiet]):
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= high:
                idle.add(names[tp.topic])
        return frozenset(idle)

    def _outgoing(self, emissions: list) -> list[OutgoingRecord]:
        """The records that carry ``emissions`` to every examples topic (labeled and scored with the current models)."""
        if not emissions:
            return []
        examples = self._join.labeled(emissions, self.models.global_model.current, self.models.tables)
        self.stats.progressive.add(examples)
        records = []
        for name, (topic, _) in self._outputs.items():
            encoded = encode_batch(self._output_codecs[topic], examples)
            records.extend(OutgoingRecord(topic, example["coordinates"][name]["entity_id"].encode(), value,
                                          example["example_id"]) for example, value in zip(examples, encoded))
        positives = sum(1 for e in emissions if e.label > 0)
        self.stats.positives += positives
        self.stats.negatives += len(emissions) - positives
        self.stats.eager_emissions += sum(1 for e in emissions if e.eager)
        return records

    def _produce(self, records: list[OutgoingRecord]) -> None:
        for record in records:
            self._producer.produce(record.topic, key=record.key, value=record.value)
        self._producer.poll(0)

    def _recover_outboxes(self) -> None:
        """Produce what a crash left unproduced in the outbox of each newly opened store (see stream.consumers.outbox)."""
        while self._unchecked:
            partition = self._unchecked.pop()
            store = self._stores.get(partition)
            if store is None:
                continue
            keys, records, written_ms = pending(store)
            if not records:
                continue
            found = already_produced(self.settings, self._bootstrap, self._output_codecs, records, written_ms,
                                     client_id=f"{self.group_id}-outbox")
            missing = [r for r in records if (r.topic, r.example_id) not in found]
            self._produce(missing)
            self._producer.flush()
            store.commit([], keys)
            self.stats.outbox_recovered += len(missing)
            log.warning("joiner: partition %d: a crash left %d outgoing records; %d had not reached their topic and "
                        "were produced now", partition, len(records), len(missing))

    def close(self) -> None:
        """Flush, leave the group, close stores and readers."""
        self._producer.flush(10)
        self._consumer.close()
        self._ownership.close()
        self.models.close()

