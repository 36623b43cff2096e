"""Impressions -> labeled examples with indexed features, and their score breakdown at join time.

The joiner is the edge of DESIGN §8: it decodes name–term–value bags once and ships every
coordinate's features indexed — the global coordinate as int32/float32 index/value
bytes, each random effect as a packed float32 vector of its fixed width — tagged with
the index version. Features an index cannot place travel packed in
``unindexed_features``, where the vocabulary writer counts them and the refit fits them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.codec.columnar import ColumnarBatch, ScalarColumn, StringColumn, StringMapColumn
from stream.codec.example_writer import UnlabeledColumns, encode_unlabeled_examples
from stream.codec.feature_bags import pack_feature_rows
from stream.config import ModelSettings
from stream.config.settings import entity_of
from stream.model.game import GLOBAL
from stream.tables.indexing import IndexedRows, MissedFeatures
from stream.tables.models import EntityTable, GlobalModel


def unlabeled_examples(
    batch: ColumnarBatch,
    rows: np.ndarray,
    indexed: IndexedRows,
    model: GlobalModel,
    settings: ModelSettings,
    header: bytes,
) -> list[bytes]:
    """The framed ``LabeledExample`` (``header`` + body) of each impression ``rows`` of ``batch``, label 0.

    ``indexed`` holds the rows' features indexed by ``model``'s indexes (row ``i`` is
    ``rows[i]``); repeated features add up, and each slot's intercept comes first.
    """
    n = len(rows)
    intercepts = [model.global_index.intercept] + [model.coordinate_indices[c].intercept for c in settings.coordinates]
    global_offsets, global_columns, global_values = _global_rows(
        indexed.rows[0], indexed.columns[0], indexed.values[0], n, model.global_index.dim, intercepts[0]
    )
    dense = []
    for slot, name in enumerate(settings.coordinates, start=1):
        matrix = np.zeros((n, model.coordinate_indices[name].width), dtype="<f4")
        if intercepts[slot]:
            matrix[:, 0] = 1.0
        np.add.at(matrix, (indexed.rows[slot], indexed.columns[slot]), indexed.values[slot])
        dense.append(matrix)
    side = _SideBuffer(len(batch.data))
    unindexed = _packed_misses(indexed.missed, n, side)
    entity_ids = np.zeros((2, 0, n), dtype=np.int64)
    if settings.coordinates:
        entity_ids = np.stack(
            [_entity_ids(batch, rows, c.entity_field, side) for c in settings.coordinates.values()], 1
        )
    context = batch.columns["context"]
    assert isinstance(context, StringMapColumn)
    context_offsets, context_refs = _map_rows(context, rows)
    columns = UnlabeledColumns(
        buffer=np.frombuffer(batch.data + side.data(), dtype=np.uint8),
        ids=np.stack([_string_refs(batch, name, rows) for name in ("impression_id", "member_id", "item_id")], axis=1),
        event_time=_scalars(batch, "event_time", rows),
        global_offsets=global_offsets,
        global_columns=global_columns,
        global_values=global_values,
        coordinates=tuple(settings.coordinates),
        entity_ids=entity_ids,
        dense=np.concatenate(dense, axis=1) if dense else np.zeros((n, 0), dtype="<f4"),
        dense_offsets=np.cumsum([0] + [m.shape[1] for m in dense]),
        index_version=model.index_version,
        random_bucket=_scalars(batch, "random_bucket", rows),
        position=_scalars(batch, "position", rows),
        context_offsets=context_offsets,
        context=context_refs,
        unindexed=unindexed,
    )
    return encode_unlabeled_examples(header, columns)


class _SideBuffer:
    """Bytes that are not in the batch buffer (packed misses, formatted entity ids), placed after it."""

    def __init__(self, base: int) -> None:
        self._base, self._size = base, 0
        self._parts: list[bytes] = []

    def add(self, data: bytes) -> tuple[int, int]:
        """Append ``data``; its (offset, length) in batch buffer + side buffer."""
        at = self._base + self._size
        self._parts.append(data)
        self._size += len(data)
        return at, len(data)

    def data(self) -> bytes:
        return b"".join(self._parts)


def _string_refs(batch: ColumnarBatch, name: str, rows: np.ndarray) -> np.ndarray:
    column = batch.columns[name]
    assert isinstance(column, StringColumn)
    return np.stack([column.offsets[rows], column.lengths[rows]])


def _scalars(batch: ColumnarBatch, name: str, rows: np.ndarray) -> np.ndarray:
    column = batch.columns[name]
    assert isinstance(column, ScalarColumn)
    return column.values[rows]


def _entity_ids(batch: ColumnarBatch, rows: np.ndarray, entity_field: str, side: _SideBuffer) -> np.ndarray:
    """(offsets, lengths) of each row's entity id (see :func:`stream.config.settings.entity_of`)."""
    column = None if entity_field.startswith("context:") else batch.columns.get(entity_field)
    if isinstance(column, StringColumn) and column.text:
        return np.stack([column.offsets[rows], column.lengths[rows]])
    refs = [side.add(entity_of(batch.record(int(row)), entity_field).encode()) for row in rows.tolist()]
    return np.array(refs, dtype=np.int64).reshape(-1, 2).T


def _map_rows(column: StringMapColumn, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR of ``rows``' map entries: row offsets and (key offset, key length, value offset, value length)."""
    starts, stops = column.row_offsets[rows], column.row_offsets[rows + 1]
    lengths = stops - starts
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    entries = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    refs = np.stack([column.key_offsets, column.key_lengths, column.value_offsets, column.value_lengths])
    return offsets, refs[:, entries]


def _packed_misses(missed: MissedFeatures | None, n: int, side: _SideBuffer) -> np.ndarray:
    """Per row, (offset, length) of the features some index could not place, packed (length -1: none)."""
    if missed is None:
        refs = np.zeros((2, n), dtype=np.int64)
        refs[1] = -1
        return refs
    packed, refs = pack_feature_rows(missed.strings, missed.refs, missed.rows, missed.values, n)
    at, _ = side.add(packed)
    refs[0, refs[1] >= 0] += at
    return refs


def _global_rows(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int, dim: int, intercept: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of the rows' global (indices, values): repeated columns summed, intercept first, float32 values."""
    if intercept:
        rows = np.concatenate([np.arange(n), rows])
        cols = np.concatenate([np.zeros(n, dtype=np.int64), cols])
        values = np.concatenate([np.ones(n), values])
    keys, inverse = np.unique(rows * (dim + 1) + cols, return_inverse=True)
    summed = np.bincount(inverse, weights=values, minlength=len(keys))
    key_rows, key_cols = keys // (dim + 1), keys % (dim + 1)
    bounds = np.searchsorted(key_rows, np.arange(n + 1))
    return bounds, key_cols.astype("<i4"), summed.astype("<f4")


@dataclass(frozen=True)
class JoinTimeScores:
    """Per example and coordinate (``names``: global first, then each table): margin, model version, entity history.

    ``history`` counts the events each example's entity model had absorbed (not part of
    the record), which the live quality metrics report cold start by.
    """

    names: tuple[str, ...]
    scores: np.ndarray
    versions: np.ndarray
    history: dict[str, np.ndarray]


def join_time_scores(
    n: int,
    global_coo: tuple[np.ndarray, np.ndarray, np.ndarray],
    coordinates: Mapping[str, tuple[np.ndarray, list[str], np.ndarray]],
    model: GlobalModel,
    tables: Mapping[str, EntityTable],
) -> JoinTimeScores:
    """Every coordinate's margin of N examples under the current models, and the versions that gave it.

    ``global_coo`` is the examples' global features as (row, column, value);
    ``coordinates`` maps a coordinate to its (N, d) features, entity ids and which examples
    have it (the others, and coordinates not given, score 0). Indexes only
    append columns (DESIGN §1), so a column means the same in every index version: an
    example of any version is scored as it is, columns ``model`` does not have yet
    contributing nothing.
    """
    rows, columns, values = global_coo
    in_range = columns < len(model.coefficients)
    contributions = np.where(in_range, model.coefficients[np.where(in_range, columns, 0)], 0.0) * values
    names, scores, versions = (
        [GLOBAL],
        [np.bincount(rows, weights=contributions, minlength=n)],
        [np.full(n, model.version)],
    )
    history = {}
    for name, table in tables.items():
        dense, ids, present = coordinates.get(name, (np.zeros((n, table.dim)), [""] * n, np.zeros(n, dtype=bool)))
        means, entity_versions = table.lookup(ids)
        names.append(name)
        scores.append(np.einsum("nd,nd->n", dense.astype(np.float64), means) * present)
        versions.append(entity_versions)
        history[name] = table.event_counts(ids)
    return JoinTimeScores(tuple(names), np.stack(scores, axis=1), np.stack(versions, axis=1), history)


def add_scores(examples: Sequence[dict[str, Any]], model: GlobalModel, tables: Mapping[str, EntityTable]) -> None:
    """Fill each example record's per-coordinate margins, model versions and ``entity_history`` (:func:`join_time_scores`)."""
    n = len(examples)
    if n == 0:
        return
    cols = [np.frombuffer(e["global_features"]["indices"], dtype="<i4") for e in examples]
    vals = [np.frombuffer(e["global_features"]["values"], dtype="<f4") for e in examples]
    rows = np.repeat(np.arange(n), [len(c) for c in cols])
    global_coo = (rows, np.concatenate(cols).astype(np.int64), np.concatenate(vals).astype(np.float64))
    coordinates = {}
    for name, table in tables.items():
        parts = [e["coordinates"].get(name) for e in examples]
        present = np.array([p is not None for p in parts])
        dense = np.zeros((n, table.dim))
        if present.any():
            features = b"".join(p["dense"] for p in parts if p is not None)
            dense[present] = np.frombuffer(features, dtype="<f4").reshape(-1, table.dim)
        coordinates[name] = (dense, [p["entity_id"] if p is not None else "" for p in parts], present)
    result = join_time_scores(n, global_coo, coordinates, model, tables)
    for i, example in enumerate(examples):
        example["scores"] = dict(zip(result.names, result.scores[i].tolist()))
        example["model_versions"] = dict(zip(result.names, result.versions[i].tolist()))
        example["entity_history"] = {name: int(h[i]) for name, h in result.history.items()}
