"""The joiner: impressions + interactions -> labeled examples keyed by member and by job (DESIGN §2).

Both input topics are keyed by member id and co-partitioned, so partition p of each
lands in the same consumer (range assignment) and shares one RocksDB store of pending
impressions (:mod:`stream.consumers.join_state`). Per micro-batch: decode both topics in
batch, dead-letter what is malformed, join, close windows, build and score the finished
examples, and hand everything to the runtime's Checkpoint: the batch's store changes,
processed offsets and outgoing examples are logged to the joiner's changelog topic
(:mod:`stream.state.store_changelog`), then the examples are produced, the input
offsets committed and the store written. Input at or below a store's processed offset is
a replay and is skipped; a partition that arrives without its store (another machine)
or behind it is restored from the changelog, and the outbox (:mod:`stream.consumers.outbox`)
delivers what a crash left unproduced. So every valid impression becomes exactly one
example in each examples topic, through kills and rebalances, on any broker.

The joiner follows ``glmix.model.global`` (feature indexes and global coefficients) and
every coordinate's coefficients topic, so a new version is used from the next batch on,
without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import Any

import numpy as np
from confluent_kafka import Message, TopicPartition

from stream.codec import make_codec
from stream.config import Settings
from stream.consumers.impressions import DecodedRow, impression_decoder, interaction_decoder
from stream.consumers.join_state import IMPRESSIONS, INTERACTIONS, JoinBatch, JoinCounts
from stream.consumers.labeling import (
    IMPRESSION,
    INTERACTION,
    ExampleIndexer,
    ExampleJoin,
    JoinInput,
    LabeledBatch,
    decoded_inputs,
    interaction_types,
    warm_up_complete,
)
from stream.consumers.outbox import (
    OutgoingRecord,
    already_produced,
    outbox_entries,
    outbox_size_item,
    pending,
    previous_outbox_keys,
    wall_ms,
)
from stream.errors import GlmixError
from stream.kafka.clients import producer_wait_seconds
from stream.kafka.messages import last_offsets, source_of
from stream.metrics.families import MetricFamilies
from stream.metrics.progressive_window import ProgressiveWindow
from stream.model.export import initial_global_model_record
from stream.model.game import GLOBAL
from stream.model.losses import get_loss
from stream.runtime.checkpoint import Checkpoint
from stream.runtime.stage import Stage, StageClients
from stream.runtime.stats import StageStats
from stream.state.partition_store import PartitionStore
from stream.state.store_changelog import ChangelogReplay, batch_records, replay
from stream.tables.follower import ModelFollower

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
    replayed_events: int = 0
    indexing: ExampleIndexer | None = None
    outbox_recovered: int = 0
    changelog_batches_restored: int = 0
    join: JoinCounts = field(default_factory=JoinCounts)
    progressive: ProgressiveWindow | None = None

    @property
    def examples(self) -> int:
        """Examples emitted."""
        return self.positives + self.negatives

    def consumed(self) -> int:
        """Impressions and interactions consumed (dead-lettered ones included)."""
        return self.join.impressions + self.join.interactions + self.dead_lettered

    def replayed(self) -> int:
        """Events at or below a partition's processed offsets."""
        return self.replayed_events

    def add_samples(self, stage: str, families: MetricFamilies) -> None:
        """Stage samples, plus join outcomes, examples, vocabulary and progressive validation."""
        super().add_samples(stage, families)
        families.counter("glmix_examples_emitted", ["positive"], self.positives)
        families.counter("glmix_examples_emitted", ["negative"], self.negatives)
        for outcome in self.join.__dataclass_fields__:
            if outcome not in ("impressions", "interactions"):
                families.counter("glmix_join_events", [outcome], getattr(self.join, outcome))
        families.counter("glmix_join_events", ["orphan_interactions"], self.orphans)
        families.counter("glmix_outbox_recovered", [], self.outbox_recovered)
        if self.indexing is not None:
            for coordinate, count in self.indexing.unindexed_features.items():
                families.counter("glmix_unindexed_features", [coordinate], count)
            for coordinate, columns in self.indexing.index_columns.items():
                families.gauge("glmix_feature_index_columns", [coordinate], columns)
            if self.indexing.index_columns:
                families.gauge("glmix_feature_index_version", [], self.indexing.index_version)
        if self.progressive is not None and self.progressive.size:
            self.progressive.add_samples(families)


class Joiner(Stage):
    """Joins impressions with interactions into labeled examples for every coordinate."""

    name = "joiner"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group_id = settings.kafka.group_id(self.name)
        self.changelog_topic = settings.kafka.changelog_topic(self.name)
        self.stats: JoinerStats = JoinerStats(
            progressive=ProgressiveWindow(
                list(settings.model.coordinates),
                get_loss(settings.model.loss),
                list(settings.joiner.labels),
                segment_by=settings.metrics.segment_by,
                segment_values=settings.metrics.segment_values,
                history_edges=settings.metrics.history_edges,
            )
        )
        topics, kafka = settings.topics, settings.kafka
        registry, registry_settings = kafka.schema_registry_url, kafka.schema_registry
        self._impression_codec = make_codec("Impression", topics.impressions, registry, registry_settings)
        self._impression_decoder = impression_decoder(self._impression_codec)
        self._interaction_codec = make_codec("Interaction", topics.interactions, registry, registry_settings)
        self._interaction_decoder = interaction_decoder(self._interaction_codec)
        # Examples topic -> the coordinate whose entity keys it. Coordinates with the same entity field share one
        # topic (each updater reads it in its own group), so every example goes to each topic once.
        self._outputs: dict[str, str] = {}
        for name, coordinate in settings.model.coordinates.items():
            self._outputs.setdefault(topics.examples(name, coordinate.entity_field), name)
        self._output_codecs = {
            topic: make_codec("LabeledExample", topic, registry, registry_settings) for topic in self._outputs
        }
        self._global_model_codec = make_codec("GlobalModel", topics.model_global, registry, registry_settings)
        self._join = ExampleJoin(settings, interaction_types(self._interaction_codec.schema.plain))
        self.stats.indexing = self._join.indexer
        self.models: ModelFollower | None = None
        self._last_delivery: dict[tuple[str, int], float] = {}
        self._idle_s = settings.joiner.idle_input_ms / 1000
        self._warm_up_held: list = []
        self._warm_up_since: float | None = None
        self._first_model_sent: float | None = None  # when this joiner's first global model went out
        self._compensate: dict[int, list[bytes]] = {}
        self._recovered: dict[int, list[OutgoingRecord]] = {}

    def subscription(self) -> list[str]:
        """Impressions and interactions."""
        return [self.settings.topics.impressions, self.settings.topics.interactions]

    def consumer_settings(self) -> dict[str, Any]:
        """Range assignment: partition p of both (co-partitioned) topics to one consumer."""
        return {"partition.assignment.strategy": "range"}

    def batch_limits(self) -> tuple[int, float]:
        """``joiner.batch_size`` events or ``joiner.batch_time_ms``."""
        return self.settings.joiner.batch_size, self.settings.joiner.batch_time_ms / 1000

    def state_owner(self) -> str:
        """Partition stores live under ``<state_dir>/joiner``."""
        return self.name

    def open(self, clients: StageClients) -> None:
        """Follow the models (global model and indexes, coefficients) from their topics."""
        super().open(clients)
        self.models = ModelFollower(self.settings, clients.bootstrap_servers, self.group_id)
        self.models.catch_up()

    # ------------------------------------------------------------------ restore

    def restore(self, partition: int, store: PartitionStore, committed: Mapping[str, int]) -> Iterator[int]:
        """Replay what the changelog holds beyond ``store`` (all of it on a machine that never had it)."""
        result = ChangelogReplay()
        yield from replay(
            store,
            self.settings.kafka,
            self.changelog_topic,
            partition,
            self.clients.bootstrap_servers,
            f"{self.group_id}-restore",
            result,
            self.settings.restore_max_records_per_s,
        )
        if result.trailing_keys:  # a writer died mid-batch: overwrite what it left with the committed values
            self._compensate[partition] = result.trailing_keys
        if result.records_read:
            self.stats.restored_records += result.records_read
            self.stats.restore_seconds += result.seconds
            self.stats.changelog_batches_restored += result.batches_applied
            log.info(
                "joiner: partition %d: %d changelog records read, %d batches applied, %d trailing records of an "
                "unfinished batch ignored (%.0f records/s)",
                partition,
                result.records_read,
                result.batches_applied,
                len(result.trailing_keys),
                result.records_per_s,
            )

    def restored(self, partition: int) -> None:
        """Find what the outbox of a restored batch did not deliver; the partition's next batch produces it.

        The partition's inputs count as quiet only ``idle_input_ms`` after this, not since the process started.
        """
        self._recover_outbox(partition)
        now = time.monotonic()
        for topic in self.subscription():
            self._last_delivery[(topic, partition)] = now

    def revoked(self, partitions: list[int]) -> None:
        """Forget held warm-up input, pending compensations and recovered outbox records of ``partitions``.

        Their outbox is still in the store and the changelog: the next owner recovers it.
        """
        gone = set(partitions)
        self._warm_up_held = [m for m in self._warm_up_held if m.partition() not in gone]
        for partition in gone:
            self._compensate.pop(partition, None)
            self._recovered.pop(partition, None)

    # ------------------------------------------------------------------ the batch function

    def process(self, messages: list[Message], checkpoint: Checkpoint) -> None:
        """Join one micro-batch (and close the windows of quiet partitions) into the checkpoint."""
        assert self.models is not None
        self.models.refresh()
        if self.models.global_model.current is None:
            self._warm_up(messages, checkpoint)
            return
        if self._warm_up_held:
            messages = self._end_warm_up(messages)
        started = time.monotonic()
        last = last_offsets(messages)
        for key in last:
            self._last_delivery[key] = started
        events = self._decode(messages, checkpoint)
        written_ms = wall_ms()
        stores = self.clients.stores
        for partition in sorted(stores):  # quiet partitions too: their windows close once an input is idle
            items = events.get(partition, [])
            store = stores[partition]
            batch = self._join_partition(store, partition, items, checkpoint)
            offsets = {topic: offset for (topic, p), offset in last.items() if p == partition}
            owed = partition in self._compensate or partition in self._recovered
            if items or offsets or batch.result.emissions or batch.result.orphans or owed:
                self._checkpoint_partition(checkpoint, store, partition, batch, offsets, written_ms)
        checkpoint.consumed_through(last)

    def _checkpoint_partition(
        self,
        checkpoint: Checkpoint,
        store: PartitionStore,
        partition: int,
        batch: JoinBatch,
        offsets: dict[str, int],
        written_ms: int,
    ) -> None:
        """Log the partition's changes with its outbox, produce its examples, write its store (in the checkpoint's order).

        Records a restored outbox had not delivered go first, in this batch's outbox too, so a
        crash before they are out leaves them to the next recovery as before.
        """
        records = self._recovered.pop(partition, []) + self._outgoing(batch.result.emissions)
        puts, deletes = batch.changes()
        deletes += previous_outbox_keys(store)
        outbox = outbox_entries(records, written_ms)
        puts.append(outbox_size_item(outbox))
        changed = {key for key, _ in puts} | set(deletes)
        compensation = [key for key in self._compensate.pop(partition, []) if key not in changed]
        values = store.get_many(compensation)
        log_puts = puts + outbox + [(k, v) for k, v in zip(compensation, values) if v is not None]
        log_deletes = deletes + [k for k, v in zip(compensation, values) if v is None]
        logged = checkpoint.log(self.changelog_topic, partition, batch_records(log_puts, log_deletes, offsets))
        for topic, group in groupby(records, key=attrgetter("topic")):
            checkpoint.produce_many(topic, [(r.key, r.value) for r in group])
        checkpoint.write(store, puts, deletes, offsets, logged=logged)

    def _decode(self, good: list, checkpoint: Checkpoint) -> dict[int, list[JoinInput]]:
        """Decoded, valid events per partition, in consume order; everything else dead-lettered.

        Both inputs are decoded into columns in one compiled pass each (DESIGN §8); values of
        a writer schema the compiled decoder has no program for go through fastavro.
        """
        topics = self.settings.topics
        decoded: dict[int, JoinInput] = {}
        inputs = (
            (IMPRESSION, topics.impressions, self._impression_decoder),
            (INTERACTION, topics.interactions, self._interaction_decoder),
        )
        for kind, topic, decoder in inputs:
            messages = [m for m in good if m.topic() == topic]
            values = [m.value() for m in messages]
            valid: list[tuple[Message, bytes | None, DecodedRow]] = []
            for message, value, row in zip(messages, values, decoder.decode(values)):
                if isinstance(row, str):
                    self.clients.dead_letters.send(checkpoint, message, row)
                else:
                    valid.append((message, value, row))
            offsets = [source_of(m)[2] for m, _, _ in valid]
            raws = [value or b"" for _, value, _ in valid]
            keys = [m.key() or b"" for m, _, _ in valid]
            events = decoded_inputs(kind, [row for _, _, row in valid], offsets, raws, keys)
            for (message, _, _), event in zip(valid, events):
                decoded[id(message)] = event
        by_partition: dict[int, list[JoinInput]] = {}
        for m in good:
            item = decoded.get(id(m))
            if item is not None:
                by_partition.setdefault(m.partition(), []).append(item)
        return by_partition

    def _warm_up(self, messages: list, checkpoint: Checkpoint) -> None:
        """Hold input until there is a global model; once the warm-up is complete, publish a first one.

        The first feature index is built from ``joiner.bootstrap_impressions`` impressions,
        or from what ``joiner.bootstrap_wait_ms`` brought, never from one micro-batch (DESIGN §1).
        It goes out as an output of this batch's checkpoint; the held input is joined once the
        follower has read a first model back (this one, or another joiner's that came first:
        every reader takes the first version 1 on the topic). Nothing is committed meanwhile,
        and a rebalance re-delivers what was held.
        """
        j = self.settings.joiner
        if messages and self._warm_up_since is None:
            self._warm_up_since = time.monotonic()
        self._warm_up_held.extend(messages)
        if not j.bootstrap_model:
            if messages:
                log.warning(
                    "no global model on %s yet and joiner.bootstrap_model is off: holding %d events until one "
                    "is published",
                    self.settings.topics.model_global,
                    len(self._warm_up_held),
                )
            return
        if self._first_model_sent is not None:
            wait_s = producer_wait_seconds(self.settings.kafka)
            if time.monotonic() - self._first_model_sent > wait_s:
                raise JoinerError(
                    f"published a first global model to {self.settings.topics.model_global} but could not "
                    f"read it back within {wait_s:.0f} s"
                )
            return
        impressions = sum(1 for m in self._warm_up_held if m.topic() == self.settings.topics.impressions)
        waited_ms = 0.0 if self._warm_up_since is None else 1000 * (time.monotonic() - self._warm_up_since)
        if warm_up_complete(impressions, waited_ms, j):
            self._send_first_model(checkpoint)

    def _send_first_model(self, checkpoint: Checkpoint) -> None:
        """A first global model indexed from the held impressions that are valid, as an output of ``checkpoint``.

        Invalid ones are left to the join, which dead-letters them once, with the rest of the held input.
        """
        topic = self.settings.topics.model_global
        held = [m.value() for m in self._warm_up_held if m.topic() == self.settings.topics.impressions]
        impressions: list[Mapping[str, Any]] = [
            row.batch.record(row.row) for row in self._impression_decoder.decode(held) if not isinstance(row, str)
        ]
        if not impressions:
            return
        record = initial_global_model_record(impressions, self.settings.model)
        checkpoint.produce(topic, record["model_name"].encode(), self._global_model_codec.encode(record))
        self._first_model_sent = time.monotonic()
        log.warning(
            "no global model was published: publishing one indexed from %d warm-up impressions (zero coefficients) "
            "to %s",
            len(impressions),
            topic,
        )

    def _end_warm_up(self, messages: list) -> list:
        """The held input, then ``messages``: repeats a rebalance re-delivered and partitions no longer owned dropped."""
        held, self._warm_up_held = self._warm_up_held + messages, []
        self._warm_up_since = self._first_model_sent = None
        assert self.models is not None and self.models.global_model.current is not None
        current = self.models.global_model.current
        log.info(
            "joining the held warm-up input with global model version %d (%d global features)",
            current.version,
            current.global_index.dim,
        )
        seen: set[tuple[str, int, int]] = set()
        kept = []
        for m in held:
            key = (m.topic(), m.partition(), m.offset())
            if key not in seen and m.partition() in self.clients.stores:
                seen.add(key)
                kept.append(m)
        return kept

    def _join_partition(
        self, store: PartitionStore, partition: int, items: list[JoinInput], checkpoint: Checkpoint
    ) -> JoinBatch:
        assert self.models is not None
        topics = self.settings.topics
        done = {
            IMPRESSION: store.processed_offset(topics.impressions),
            INTERACTION: store.processed_offset(topics.interactions),
        }
        fresh = [e for e in items if e.offset > done[e.kind]]
        self.stats.replayed_events += len(items) - len(fresh)
        batch = self._join.join(store, fresh, self.models.global_model.current, self._idle_inputs(store, partition))
        for orphan in batch.result.orphans:
            self.clients.dead_letters.send_raw(
                checkpoint,
                orphan.key,
                orphan.raw,
                topics.interactions,
                partition,
                orphan.offset,
                "orphan interaction: no impression known for it (none arrived within "
                "joiner.allowed_lateness_ms, or it is older than joiner.emitted_retention_ms)",
            )
        self.stats.orphans += len(batch.result.orphans)
        self.stats.join.add(batch.result.counts)
        return batch

    def _idle_inputs(self, store: PartitionStore, partition: int) -> frozenset[str]:
        """Inputs of ``partition`` that delivered nothing for ``idle_input_ms`` and have nothing left to read.

        Both conditions are needed: the cached high watermark can be stale, and a quiet
        input may just be slow. A consumer knows its position only once it delivered a
        record; for a partition that arrived fully read, the store's processed offset
        stands in.
        """
        topics = self.settings.topics
        names = {topics.impressions: IMPRESSIONS, topics.interactions: INTERACTIONS}
        now = time.monotonic()
        quiet = [t for t in names if now - self._last_delivery.get((t, partition), now) >= self._idle_s]
        if not quiet:
            return frozenset()
        idle = set()
        consumer = self.clients.consumer
        for tp in consumer.position([TopicPartition(t, partition) for t in quiet]):
            _, high = consumer.get_watermark_offsets(
                tp, cached=True
            )  # from fetch responses (see stream.kafka.messages)
            if high >= 0 and max(tp.offset, store.processed_offset(tp.topic) + 1) >= high:
                idle.add(names[tp.topic])
        return frozenset(idle)

    def _outgoing(self, emissions: list) -> list[OutgoingRecord]:
        """The records that carry ``emissions`` to every examples topic (labeled and scored with the current models)."""
        if not emissions:
            return []
        assert self.models is not None
        batch = self._join.emitted(emissions, self.models.global_model.current, self.models.tables)
        if self.stats.progressive is not None:
            self._add_to_window(self.stats.progressive, batch)
        records: list[OutgoingRecord] = []
        example_ids = batch.example_ids()
        encoded_by_header: dict[bytes, list[bytes]] = {}  # topics whose codecs frame alike share one encoding
        for topic, name in self._outputs.items():
            codec = self._output_codecs[topic]
            encoded = encoded_by_header.get(codec.header())
            if encoded is None:
                encoded = encoded_by_header[codec.header()] = self._join.encoded(batch, codec)
            keys = batch.entity_keys(self._join.coordinates.index(name))
            records.extend(OutgoingRecord(topic, *item) for item in zip(keys, encoded, example_ids))
        positives = int((batch.labels > 0).sum())
        self.stats.positives += positives
        self.stats.negatives += len(emissions) - positives
        self.stats.eager_emissions += sum(1 for e in emissions if e.eager)
        return records

    def _add_to_window(self, window: ProgressiveWindow, batch: LabeledBatch) -> None:
        """The live quality metrics' view of the emitted examples: labels, cumulative margins, types, history."""
        if window.segment_by or batch.scores is None:  # segments read any field: the records have them all
            window.add(self._join.records(batch))
            return
        scores = batch.scores
        columns = [scores.names.index(name) if name in scores.names else -1 for name in [GLOBAL, *window.coordinates]]
        by_variant = np.where(np.array(columns) >= 0, scores.scores[:, np.maximum(columns, 0)], 0.0)
        margins = np.cumsum(by_variant, axis=1) + batch.stored.offsets()[:, None]
        history = np.stack([scores.history.get(c, np.zeros(len(batch), np.int64)) for c in window.coordinates], axis=1)
        has_type = batch.has_types(self._join.type_symbols)[:, [self._join.type_symbols.index(t) for t in window.types]]
        window.add_columns(batch.labels, margins, has_type, history)

    def _recover_outbox(self, partition: int) -> None:
        """Keep what a crash left undelivered in the outbox of a restored partition (see stream.consumers.outbox)."""
        store = self.clients.stores.get(partition)
        if store is None:
            return
        _, records, written_ms = pending(store)
        if not records:
            return
        found = already_produced(
            self.settings,
            self.clients.bootstrap_servers,
            self._output_codecs,
            records,
            written_ms,
            client_id=f"{self.group_id}-outbox",
        )
        missing = [r for r in records if (r.topic, r.example_id) not in found]
        self._recovered[partition] = missing
        self.stats.outbox_recovered += len(missing)
        log.warning(
            "joiner: partition %d: the last logged batch had %d outgoing records; %d had not reached their topic "
            "and go out with the partition's next batch",
            partition,
            len(records),
            len(missing),
        )

    def close(self) -> None:
        """Stop following the models."""
        if self.models is not None:
            self.models.close()
