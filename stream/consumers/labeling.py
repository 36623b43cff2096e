"""The join of one partition's events into labeled examples: the one rule the live joiner and the backtest share.

:class:`ExampleJoin` turns decoded impressions and interactions into a
:class:`~stream.consumers.join_state.JoinBatch` over a partition store (impressions
indexed once, on arrival, with the current model) and the batch's emissions into
labeled, scored ``LabeledExample`` records. Where the events come from (Kafka or files)
and where the examples go (topics or a replay's updaters) is the caller's business, so
there is one implementation of the join (STYLE trap 3).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.codec import load_schema
from stream.codec.avro import RecordCodec, SingleObjectCodec, encode_batch
from stream.codec.columnar import ColumnarBatch, FeatureBagsColumn
from stream.codec.example_writer import check_labeled_example_schema
from stream.codec.feature_bags import pack_feature_rows
from stream.codec.stored_example import StoredExamples, scan_stored, splice_labels
from stream.config import ConfigError, JoinerSettings, ModelSettings, Settings
from stream.consumers.example_builder import JoinTimeScores, join_time_scores, unlabeled_examples
from stream.consumers.impressions import DecodedRow, impression_rows, join_fields
from stream.consumers.join_state import Emission, ImpressionEvent, InteractionEvent, JoinBatch, JoinRules, label_types
from stream.errors import InvalidValueError
from stream.evaluation.progressive import TraceColumns
from stream.model.game import GLOBAL
from stream.state.partition_store import PartitionStore
from stream.tables.hash_index import FeatureColumns, FeatureLookup, model_indexer
from stream.tables.indexing import FeatureResolver, IndexedRows, MissedFeatures
from stream.tables.models import EntityTable, GlobalModel

IMPRESSION, INTERACTION = "impression", "interaction"
KIND_SCHEMAS = {IMPRESSION: "Impression", INTERACTION: "Interaction"}  # the schema of each kind of input event


@dataclass(frozen=True)
class JoinInput:
    """One valid input event of a partition, in arrival order; ``raw``, ``key`` and ``offset`` feed dead letters.

    ``columns`` is the event's row of a decoded batch when it came as one (an impression's
    is what the join indexes). ``record`` holds at least the impression id and event time,
    and an interaction's its type symbol.
    """

    kind: str
    record: Mapping[str, Any]
    offset: int = -1
    raw: bytes = b""
    key: bytes = b""
    columns: DecodedRow | None = None

    def full_record(self) -> Mapping[str, Any]:
        """The whole record, for the few readers of more than the join's fields (a warm-up or a bootstrap counting
        features): built from the decoded row when the event came as one (never the hot path's business)."""
        if self.columns is None:
            return self.record
        return self.columns.batch.record(self.columns.row)


class ExampleIndexer:
    """Indexes decoded impressions with a model: the compiled lookup, or the resolver when the spec has transforms.

    One index per model version. The lookup resolves a decoded batch whole, once per
    version; the join asks for it partition by partition, so the last few are kept.
    """

    _KEPT_BATCHES = 4

    def __init__(self, settings: ModelSettings, stored: SingleObjectCodec) -> None:
        check_labeled_example_schema(stored.schema)
        self._settings = settings
        self._header = stored.header()
        self._version: int | None = None
        self._lookup: FeatureLookup | None = None
        self._resolver: FeatureResolver | None = None
        self._resolved: OrderedDict[int, tuple[ColumnarBatch, FeatureColumns]] = OrderedDict()
        self.unindexed_features: dict[str, int] = {}
        self.index_columns: dict[str, int] = {}
        self.index_version = 0

    def examples(self, impressions: Sequence[DecodedRow], model: GlobalModel) -> list[bytes]:
        """Unlabeled, framed examples of ``impressions`` under ``model``, counting what its indexes could not place."""
        self._use(model)
        by_batch: dict[int, list[int]] = {}
        for i, impression in enumerate(impressions):
            by_batch.setdefault(id(impression.batch), []).append(i)
        out: list[bytes] = [b""] * len(impressions)
        for positions in by_batch.values():
            batch = impressions[positions[0]].batch
            rows = np.array([impressions[i].row for i in positions], dtype=np.int64)
            indexed = self._indexed(batch, rows)
            if indexed.missed is not None:
                for name, count in zip([GLOBAL, *self._settings.coordinates], indexed.missed.per_slot.tolist()):
                    self.unindexed_features[name] = self.unindexed_features.get(name, 0) + count
            for i, value in zip(
                positions, unlabeled_examples(batch, rows, indexed, model, self._settings, self._header)
            ):
                out[i] = value
        return out

    def _use(self, model: GlobalModel) -> None:
        if self._version == model.version:
            return
        self._version, self.index_version = model.version, model.index_version
        self._resolved.clear()
        indexer = model_indexer(model, self._settings)
        self._resolver = indexer if isinstance(indexer, FeatureResolver) else None
        self._lookup = indexer if isinstance(indexer, FeatureLookup) else None
        self.index_columns = {
            GLOBAL: model.global_index.dim,
            **{name: index.dim for name, index in model.coordinate_indices.items()},
        }

    def _indexed(self, batch: ColumnarBatch, rows: np.ndarray) -> IndexedRows:
        features = batch.columns["features"]
        assert isinstance(features, FeatureBagsColumn)
        if self._lookup is None:
            assert self._resolver is not None
            return self._resolver.index([features.value(int(row)) for row in rows], with_missed=True)
        kept = self._resolved.get(id(batch))
        if kept is None or kept[0] is not batch:
            kept = self._resolved[id(batch)] = (batch, self._lookup.lookup(features))
            while len(self._resolved) > self._KEPT_BATCHES:
                self._resolved.popitem(last=False)
        return kept[1].indexed(rows)


class ExampleJoin:
    """The attribution-window join of :mod:`stream.consumers.join_state` with the joiner's settings."""

    def __init__(self, settings: Settings, type_symbols: Sequence[str]) -> None:
        j = settings.joiner
        unknown = sorted(set(j.labels) - set(type_symbols))
        if unknown:
            raise ConfigError(
                "joiner.labels", f"unknown interaction types {unknown} (known: {', '.join(type_symbols)})"
            )
        self.type_symbols = list(type_symbols)
        self.rules = JoinRules(
            j.attribution_window_ms,
            j.allowed_lateness_ms,
            {self.type_symbols.index(k): v for k, v in j.labels.items()},
            j.emitted_retention_ms,
            j.early_positives,
        )
        self._stored = SingleObjectCodec(load_schema("LabeledExample"))
        self.coordinates = list(settings.model.coordinates)
        self.indexer = ExampleIndexer(settings.model, self._stored)

    def join(
        self,
        store: PartitionStore,
        events: Sequence[JoinInput],
        model: GlobalModel | None,
        idle: frozenset[str] = frozenset(),
    ) -> JoinBatch:
        """Join ``events`` (impressions indexed with ``model``) into ``store``'s state and close due windows.

        The batch is not written: the caller writes it with its offsets once the
        emissions are safely out.
        """
        batch = JoinBatch(store, self.rules, (e.record["impression_id"] for e in events))
        impressions = [e for e in events if e.kind == IMPRESSION]
        examples = iter(
            self.indexer.examples(_rows_of(impressions), model) if impressions and model is not None else []
        )
        for event in events:
            record = event.record
            if event.kind == IMPRESSION:
                batch.add_impression(ImpressionEvent(record["impression_id"], record["event_time"], next(examples)))
            else:
                batch.add_interaction(
                    InteractionEvent(
                        record["impression_id"],
                        record["event_time"],
                        self.type_symbols.index(record["type"]),
                        event.raw,
                        event.key,
                        event.offset,
                    )
                )
        batch.close_windows(idle)
        return batch

    def emitted(
        self, emissions: Sequence[Emission], model: GlobalModel | None, tables: Mapping[str, EntityTable]
    ) -> LabeledBatch:
        """The emitted examples as columns: labels, and every coordinate's margin under the current models.

        Without a model (a bootstrap's history) nothing is scored.
        """
        emissions = list(emissions)
        n = len(emissions)
        stored = scan_stored([e.example for e in emissions], len(self._stored.header()), self.coordinates)
        scores = None
        if model is not None and n:
            coordinates = {
                name: (
                    stored.dense(c, tables[name].dim),
                    _texts(stored.strings(stored.entity_ids[:, c])),
                    np.ones(n, bool),
                )
                for c, name in enumerate(self.coordinates)
                if name in tables
            }
            scores = join_time_scores(n, stored.global_rows(), coordinates, model, tables)
        return LabeledBatch(
            emissions,
            stored,
            np.array([e.label for e in emissions], dtype=np.float64),
            np.array([e.label_time for e in emissions], dtype=np.int64),
            np.array([e.types for e in emissions], dtype=np.int64),
            scores,
        )

    def labeled(
        self, emissions: Iterable[Emission], model: GlobalModel | None, tables: Mapping[str, EntityTable]
    ) -> list[dict[str, Any]]:
        """The emitted examples as records, labeled and scored (:meth:`emitted`), for in-process readers (the replay)."""
        return self.records(self.emitted(list(emissions), model, tables))

    def records(self, batch: LabeledBatch) -> list[dict[str, Any]]:
        """``batch`` as ``LabeledExample`` records, each with its ``entity_history`` when scored."""
        examples = [self._stored.decode(e.example) for e in batch.emissions]
        for i, example in enumerate(examples):
            example["label"] = float(batch.labels[i])
            example["label_time"] = int(batch.label_times[i])
            example["interaction_types"] = label_types(int(batch.types[i]), self.type_symbols)
            if batch.scores is not None:
                example["scores"] = dict(zip(batch.scores.names, batch.scores.scores[i].tolist()))
                example["model_versions"] = dict(zip(batch.scores.names, batch.scores.versions[i].tolist()))
                example["entity_history"] = {name: int(h[i]) for name, h in batch.scores.history.items()}
        return examples

    def trace_columns(self, batch: LabeledBatch) -> TraceColumns:
        """``batch`` as the progressive report reads it (what :meth:`records` would hold, without a record each)."""
        stored, names = batch.stored, (GLOBAL, *self.coordinates)
        scores = np.zeros((len(batch), len(names)))
        if batch.scores is not None:
            for j, name in enumerate(batch.scores.names):
                scores[:, names.index(name)] = batch.scores.scores[:, j]
        return TraceColumns(
            event_times=stored.event_time,
            labels=batch.labels,
            weights=stored.weights(),
            offsets=stored.offsets(),
            member_ids=np.array(_texts(stored.strings(stored.ids[:, 1]))),
            type_bits=batch.types,
            type_symbols=tuple(self.type_symbols),
            scores=scores,
            entity_ids={name: np.array(_texts(batch.entity_keys(c))) for c, name in enumerate(self.coordinates)},
        )

    def encoded(self, batch: LabeledBatch, codec: RecordCodec) -> list[bytes]:
        """``batch`` as ``codec`` values.

        When ``codec`` writes the join state's own schema, each value is the stored bytes
        with the label part spliced in (:func:`~stream.codec.stored_example.splice_labels`), not a second encoding.
        """
        if codec.schema.fingerprint != self._stored.schema.fingerprint:
            return encode_batch(codec, self.records(batch))
        n = len(batch.emissions)
        names: tuple[str, ...] = ()
        scores, versions = np.zeros((n, 0)), np.zeros((n, 0), dtype=np.int64)
        if batch.scores is not None:
            names, scores, versions = batch.scores.names, batch.scores.scores, batch.scores.versions
        return splice_labels(
            batch.stored, codec.header(), batch.labels, batch.label_times, batch.types, self.type_symbols,
            names, scores, versions,
        )  # fmt: skip


@dataclass(frozen=True)
class LabeledBatch:
    """Emitted examples as columns: where each stored example's fields lie, its label, and its join-time scores."""

    emissions: list[Emission]
    stored: StoredExamples
    labels: np.ndarray
    label_times: np.ndarray
    types: np.ndarray
    scores: JoinTimeScores | None

    def __len__(self) -> int:
        return len(self.emissions)

    def example_ids(self) -> list[str]:
        """Each example's id (its impression's)."""
        return _texts(self.stored.strings(self.stored.ids[:, 0]))

    def entity_keys(self, coordinate: int) -> list[bytes]:
        """Each example's entity id of the ``coordinate``-th configured coordinate, as message key bytes."""
        return self.stored.strings(self.stored.entity_ids[:, coordinate])

    def has_types(self, symbols: Sequence[str]) -> np.ndarray:
        """(N, T) whether each example had each interaction type."""
        codes = np.arange(len(symbols), dtype=np.int64)
        return (self.types[:, None] >> codes & 1).astype(bool)


def _texts(raw: list[bytes]) -> list[str]:
    return [value.decode() for value in raw]


def unlabeled_records(
    impressions: Sequence[Mapping[str, Any]], model: GlobalModel, settings: ModelSettings
) -> list[dict[str, Any]]:
    """The unlabeled ``LabeledExample`` records of valid Impression records, as the join keeps them (in-process callers)."""
    codec = SingleObjectCodec(load_schema("LabeledExample"))
    encoded = ExampleIndexer(settings, codec).examples(_rows_of([JoinInput(IMPRESSION, r) for r in impressions]), model)
    return [codec.decode(value) for value in encoded]


def decoded_inputs(
    kind: str, rows: Sequence[DecodedRow], offsets: Sequence[int], raws: Sequence[bytes], keys: Sequence[bytes]
) -> list[JoinInput]:
    """The join inputs of decoded impressions or interactions (``kind``), with their offsets, original bytes and keys.

    An interaction keeps its bytes and key (it may wait for its impression, or become an orphan dead letter).
    """
    fields = join_fields(rows)
    if kind == IMPRESSION:
        return [JoinInput(IMPRESSION, f, o, b"", k, row) for f, o, k, row in zip(fields, offsets, keys, rows)]
    return [JoinInput(INTERACTION, f, o, raw, k, row) for f, o, raw, k, row in zip(fields, offsets, raws, keys, rows)]


def _rows_of(impressions: Sequence[JoinInput]) -> list[DecodedRow]:
    """Each impression's row; impressions given only as records (tests, in-process callers) are decoded here."""
    missing = [e.record for e in impressions if e.columns is None]
    decoded = iter(impression_rows(missing) if missing else [])
    rows = []
    for event in impressions:
        row = event.columns if event.columns is not None else next(decoded)
        if isinstance(row, str):
            raise InvalidValueError(f"an impression handed to the join is invalid: {row}")
        rows.append(row)
    return rows


def warm_up_complete(impressions: int, waited_ms: float, joiner: JoinerSettings) -> bool:
    """Whether a warm-up that holds ``impressions`` after ``waited_ms`` may index the first model (DESIGN §1).

    The live joiner counts wall time, a backtest event time; the rule is this one.
    """
    return impressions > 0 and (impressions >= joiner.bootstrap_impressions or waited_ms >= joiner.bootstrap_wait_ms)


def interaction_types(interaction_schema: Mapping[str, Any]) -> list[str]:
    """The symbols of the Interaction ``type`` enum; a symbol's position is its type code."""
    field_type = next(f["type"] for f in interaction_schema["fields"] if f["name"] == "type")
    return list(field_type["symbols"])


def warm_up_join_kernels(settings: Settings) -> list[bytes]:
    """Compile the join's numba kernels (decode, lookup, example writer, scan, splice) into numba's disk cache.

    One made-up impression goes through the columnar path, so a stage's first batch does not pay the compile.
    Returns the labeled example value it made (the updaters' reader warms up on it). The made-up impression's
    features are all indexed, so the packer of unindexed features warms up on a feature of its own.
    """
    from stream.model.export import initial_global_model_record
    from stream.tables.models import GlobalModelTable

    bag = (settings.model.global_feature_bags or ["warm_up"])[0]
    impression = {
        "impression_id": "warm-up", "request_id": "warm-up", "member_id": "m", "item_id": "j", "position": 0,
        "event_time": 1, "random_bucket": False, "features": {bag: [{"name": "n", "term": "t", "value": 1.0}]},
        "context": {"surface": "warm-up"},
    }  # fmt: skip
    table = GlobalModelTable(settings.model)
    table.apply([initial_global_model_record([impression], settings.model)])
    model = table.current
    assert model is not None
    join = ExampleJoin(settings, interaction_types(load_schema("Interaction").plain))
    [stored] = join.indexer.examples(_rows_of([JoinInput(IMPRESSION, impression)]), model)
    batch = join.emitted([Emission(stored, 1.0, 1, 2, False)], model, {})
    unindexed = MissedFeatures.of_keys(np.zeros(1, dtype=np.int64), [(bag, "n", "u")], np.ones(1), np.zeros(1))
    pack_feature_rows(unindexed.strings, unindexed.refs, unindexed.rows, unindexed.values, 1)  # features no index has
    return join.encoded(batch, join._stored)
