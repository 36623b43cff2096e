"""The join of one partition's events into labeled examples: the one rule the live joiner and the backtest share.

:class:`ExampleJoin` turns decoded impressions and interactions into a
:class:`~stream.consumers.join_state.JoinBatch` over a partition store (impressions
indexed once, on arrival, with the current model) and the batch's emissions into
labeled, scored ``LabeledExample`` records. Where the events come from (Kafka or files)
and where the examples go (topics or a replay's updaters) is the caller's business, so
there is one implementation of the join (STYLE trap 3).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stream.codec import load_schema
from stream.codec.avro import RecordCodec, SingleObjectCodec, encode_batch
from stream.codec.label_splice import LabelSplicer
from stream.config import ConfigError, JoinerSettings, ModelSettings, Settings
from stream.consumers.example_builder import add_scores, unlabeled_examples
from stream.consumers.join_state import Emission, ImpressionEvent, InteractionEvent, JoinBatch, JoinRules, label_types
from stream.model.game import GLOBAL
from stream.state.partition_store import PartitionStore
from stream.tables.indexing import FeatureResolver
from stream.tables.models import EntityTable, GlobalModel

IMPRESSION, INTERACTION = "impression", "interaction"


@dataclass(frozen=True)
class JoinInput:
    """One valid input event of a partition, in arrival order; ``raw``, ``key`` and ``offset`` feed dead letters."""

    kind: str
    record: Mapping[str, Any]
    offset: int = -1
    raw: bytes = b""
    key: bytes = b""


class ExampleIndexer:
    """Indexes impressions with a model, keeping one feature resolver per model version."""

    def __init__(self, settings: ModelSettings) -> None:
        self._settings = settings
        self._resolver: FeatureResolver | None = None
        self.unindexed_features: dict[str, int] = {}
        self.index_columns: dict[str, int] = {}
        self.index_version = 0

    def examples(self, impressions: list[Mapping[str, Any]], model: GlobalModel) -> list[dict[str, Any]]:
        """Unlabeled examples of ``impressions`` under ``model``, counting what its indexes could not place."""
        if self._resolver is None or self._resolver.version != model.version:
            self._resolver = FeatureResolver(model, self._settings)
            self.index_version = model.index_version
            self.index_columns = {
                GLOBAL: model.global_index.dim,
                **{name: index.dim for name, index in model.coordinate_indices.items()},
            }
        return unlabeled_examples(impressions, model, self._resolver, self._settings, self.unindexed_features)


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
        self._splicer = LabelSplicer(self._stored.schema)
        self.indexer = ExampleIndexer(settings.model)

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
        impressions = [e.record for e in events if e.kind == IMPRESSION]
        examples = iter(self.indexer.examples(impressions, model) if impressions and model is not None else [])
        for event in events:
            record = event.record
            if event.kind == IMPRESSION:
                batch.add_impression(
                    ImpressionEvent(record["impression_id"], record["event_time"], self._stored.encode(next(examples)))
                )
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

    def labeled(
        self, emissions: Iterable[Emission], model: GlobalModel | None, tables: Mapping[str, EntityTable]
    ) -> list[dict[str, Any]]:
        """The emitted examples with their labels, and every coordinate's margin under the current models."""
        emissions = list(emissions)
        examples = [self._stored.decode(e.example) for e in emissions]
        for example, emission in zip(examples, emissions):
            example["label"] = emission.label
            example["label_time"] = emission.label_time
            example["interaction_types"] = label_types(emission.types, self.type_symbols)
        if model is not None:
            add_scores(examples, model, tables)
        return examples

    def encoded(
        self, emissions: Sequence[Emission], examples: Sequence[dict[str, Any]], codec: RecordCodec
    ) -> list[bytes]:
        """``examples`` (:meth:`labeled` of ``emissions``) as ``codec`` values.

        When ``codec`` writes the join state's own schema, each value is the stored bytes
        with the label spliced in (:mod:`stream.codec.label_splice`), not a second encoding.
        """
        if codec.schema.fingerprint != self._splicer.fingerprint:
            return encode_batch(codec, examples)
        header, stored_header = codec.header(), len(self._stored.header())
        return [
            header + self._splicer.body(emission.example, stored_header, example)
            for emission, example in zip(emissions, examples)
        ]


def warm_up_complete(impressions: int, waited_ms: float, joiner: JoinerSettings) -> bool:
    """Whether a warm-up that holds ``impressions`` after ``waited_ms`` may index the first model (DESIGN §1).

    The live joiner counts wall time, a backtest event time; the rule is this one.
    """
    return impressions > 0 and (impressions >= joiner.bootstrap_impressions or waited_ms >= joiner.bootstrap_wait_ms)


def interaction_types(interaction_schema: Mapping[str, Any]) -> list[str]:
    """The symbols of the Interaction ``type`` enum; a symbol's position is its type code."""
    field_type = next(f["type"] for f in interaction_schema["fields"] if f["name"] == "type")
    return list(field_type["symbols"])
