"""Impressions -> labeled examples with indexed features, and their score breakdown at join time.

The joiner is the edge of DESIGN §8: it decodes name–term–value bags once and ships every
coordinate's features indexed — the global coordinate as int32/float32 index/value
bytes, each random effect as a packed float32 vector of its fixed width — tagged with
the index version. Features an index cannot place travel packed in
``unindexed_features``, where the vocabulary writer counts them and the refit fits them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from stream.codec.feature_bags import encode_bags
from stream.config import ModelSettings
from stream.model.dataset import entity_of
from stream.model.game import GLOBAL
from stream.tables.indexing import FeatureResolver, MissedFeatures
from stream.tables.models import EntityTable, GlobalModel


def unlabeled_examples(
    impressions: Sequence[Mapping[str, Any]],
    model: GlobalModel,
    resolver: FeatureResolver,
    settings: ModelSettings,
    unindexed_counts: MutableMapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """The ``LabeledExample`` of each impression with label 0, indexed by ``model``'s indexes in one pass.

    ``resolver`` must belong to ``model`` (same version). Repeated features add up.
    ``unindexed_counts`` (by coordinate, ``global`` included) gains the occurrences each
    index could not place.
    """
    n = len(impressions)
    indexed = resolver.index([imp["features"] for imp in impressions], with_missed=True)
    if unindexed_counts is not None and indexed.missed is not None:
        for name, count in zip([GLOBAL, *resolver.coordinates], indexed.missed.per_slot.tolist()):
            unindexed_counts[name] = unindexed_counts.get(name, 0) + count
    intercepts = resolver.intercepts()
    global_rows = _global_rows(
        indexed.rows[0], indexed.columns[0], indexed.values[0], n, model.global_index.dim, intercepts[0]
    )
    dense = {}
    for slot, name in enumerate(resolver.coordinates, start=1):
        matrix = np.zeros((n, model.coordinate_indices[name].width), dtype="<f4")
        if intercepts[slot]:
            matrix[:, 0] = 1.0
        np.add.at(matrix, (indexed.rows[slot], indexed.columns[slot]), indexed.values[slot])
        dense[name] = matrix
    unindexed = _packed_misses(indexed.missed, n)
    return [
        {
            "example_id": imp["impression_id"],
            "member_id": imp["member_id"],
            "item_id": imp["item_id"],
            "label": 0.0,
            "weight": 1.0,
            "offset": 0.0,
            "event_time": imp["event_time"],
            "label_time": imp["event_time"],
            "interaction_types": [],
            "scores": {},
            "model_versions": {},
            "global_features": global_rows[i],
            "coordinates": {
                name: {"entity_id": entity_of(imp, c.entity_field), "dense": dense[name][i].tobytes()}
                for name, c in settings.coordinates.items()
            },
            "index_version": model.index_version,
            "random_bucket": bool(imp.get("random_bucket", False)),
            "position": int(imp.get("position", -1)),
            "context": dict(imp.get("context") or {}),
            "unindexed_features": unindexed[i],
        }
        for i, imp in enumerate(impressions)
    ]


def _packed_misses(missed: MissedFeatures | None, n: int) -> list[bytes | None]:
    """Per row, the features some index could not place, packed (None for rows without any)."""
    packed: list[bytes | None] = [None] * n
    if missed is None or not len(missed.rows):
        return packed
    per_row: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for row, (bag, name, term), value in zip(missed.rows.tolist(), missed.keys, missed.values.tolist()):
        per_row.setdefault(row, {}).setdefault(bag, []).append({"name": name, "term": term, "value": value})
    for row, bags in per_row.items():
        packed[row] = encode_bags(bags)
    return packed


def _global_rows(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int, dim: int, intercept: bool
) -> list[dict[str, bytes]]:
    """Per row, its global (indices, values) as packed bytes, repeated columns summed, intercept first."""
    if intercept:
        rows = np.concatenate([np.arange(n), rows])
        cols = np.concatenate([np.zeros(n, dtype=np.int64), cols])
        values = np.concatenate([np.ones(n), values])
    keys, inverse = np.unique(rows * (dim + 1) + cols, return_inverse=True)
    summed = np.bincount(inverse, weights=values, minlength=len(keys))
    key_rows, key_cols = keys // (dim + 1), keys % (dim + 1)
    bounds = np.searchsorted(key_rows, np.arange(n + 1))
    packed_cols, packed_values = key_cols.astype("<i4"), summed.astype("<f4")
    return [
        {"indices": packed_cols[a:b].tobytes(), "values": packed_values[a:b].tobytes()}
        for a, b in itertools.pairwise(bounds)
    ]


def add_scores(examples: Sequence[dict[str, Any]], model: GlobalModel, tables: Mapping[str, EntityTable]) -> None:
    """Fill each example's per-coordinate margins and model versions from the current models (vectorized).

    Each example also gets ``entity_history`` (not part of the record): per coordinate,
    how many events its entity's model had absorbed, which the live quality metrics
    report cold start by.

    Indexes only append columns (DESIGN §1), so a column means the same in every index
    version: an example of any version is scored as it is, columns ``model`` does not
    have yet contributing nothing.
    """
    n = len(examples)
    if n == 0:
        return
    cols = [np.frombuffer(e["global_features"]["indices"], dtype="<i4") for e in examples]
    vals = [np.frombuffer(e["global_features"]["values"], dtype="<f4") for e in examples]
    lengths = np.fromiter((len(c) for c in cols), dtype=np.int64, count=n)
    rows = np.repeat(np.arange(n), lengths)
    all_cols = np.concatenate(cols) if n else np.zeros(0, dtype=np.int32)
    in_range = all_cols < len(model.coefficients)
    contributions = np.where(in_range, model.coefficients[np.where(in_range, all_cols, 0)], 0.0) * np.concatenate(vals)
    global_scores = np.bincount(rows, weights=contributions, minlength=n)
    breakdown = {GLOBAL: global_scores}
    versions = {GLOBAL: np.full(n, model.version)}
    history = {}
    for name, table in tables.items():
        parts = [e["coordinates"].get(name) for e in examples]
        present = np.array([p is not None for p in parts])
        dense = np.zeros((n, table.dim))
        if present.any():
            dense[present] = np.frombuffer(b"".join(p["dense"] for p in parts if p is not None), dtype="<f4").reshape(
                -1, table.dim
            )
        ids = [p["entity_id"] if p is not None else "" for p in parts]
        means, entity_versions = table.lookup(ids)
        breakdown[name] = np.einsum("nd,nd->n", dense, means) * present
        versions[name] = entity_versions
        history[name] = table.event_counts(ids)
    for i, example in enumerate(examples):
        example["scores"] = {name: float(s[i]) for name, s in breakdown.items()}
        example["model_versions"] = {name: int(v[i]) for name, v in versions.items()}
        example["entity_history"] = {name: int(h[i]) for name, h in history.items()}
