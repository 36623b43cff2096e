"""Impressions -> labeled examples with indexed features, and their score breakdown at join time.

The joiner is the edge of DESIGN §8: it decodes name–term–value bags once and ships every
coordinate's features indexed — the global coordinate as int32/float32 index/value
bytes, each random effect as a packed float32 vector of its fixed width — tagged with
the index version. Features the index does not know are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream.config import ModelSettings
from stream.model.dataset import entity_of
from stream.model.features import FeatureIndex
from stream.model.game import GLOBAL
from stream.scoring.tables import CoefficientTable, GlobalModel


def _sparse_row(index: FeatureIndex, bags: Mapping[str, Sequence[Any]]) -> tuple[bytes, bytes]:
    columns: dict[int, float] = {0: 1.0} if index.intercept else {}
    for bag in index.bag_names:
        for item in bags.get(bag, ()):
            col = index.column(item["name"], item.get("term", ""), admit=False)
            if col is not None:
                columns[col] = columns.get(col, 0.0) + float(item["value"])
    cols = np.fromiter(columns.keys(), dtype="<i4", count=len(columns))
    values = np.fromiter(columns.values(), dtype="<f4", count=len(columns))
    return cols.tobytes(), values.tobytes()


def unlabeled_example(impression: Mapping[str, Any], model: GlobalModel, settings: ModelSettings) -> dict[str, Any]:
    """The ``LabeledExample`` of ``impression`` with label 0, features indexed by ``model``'s indexes."""
    bags = impression["features"]
    indices, values = _sparse_row(model.global_index, bags)
    coordinates = {
        name: {
            "entity_id": entity_of(impression, c.entity_field),
            "dense": model.coordinate_indices[name].dense(bags, admit=False).astype("<f4").tobytes(),
        }
        for name, c in settings.coordinates.items()
    }
    return {
        "example_id": impression["impression_id"],
        "member_id": impression["member_id"],
        "item_id": impression["item_id"],
        "label": 0.0,
        "weight": 1.0,
        "offset": 0.0,
        "event_time": impression["event_time"],
        "label_time": impression["event_time"],
        "interaction_types": [],
        "scores": {},
        "model_versions": {},
        "global_features": {"indices": indices, "values": values},
        "coordinates": coordinates,
        "index_version": model.index_version,
    }


def add_scores(examples: Sequence[dict[str, Any]], model: GlobalModel, tables: Mapping[str, CoefficientTable]) -> None:
    """Fill each example's per-coordinate margins and model versions from the current models (vectorized).

    Examples indexed with another index version than ``model`` get a global score of 0 and
    global version 0: their columns mean something else.
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
    same_index = np.fromiter((e["index_version"] == model.index_version for e in examples), dtype=bool, count=n)
    global_scores = np.where(same_index, global_scores, 0.0)
    breakdown = {GLOBAL: global_scores}
    versions = {GLOBAL: np.where(same_index, model.version, 0)}
    for name, table in tables.items():
        parts = [e["coordinates"].get(name) for e in examples]
        present = np.array([p is not None for p in parts])
        dense = np.zeros((n, table.dim))
        if present.any():
            dense[present] = np.frombuffer(b"".join(p["dense"] for p in parts if p is not None), dtype="<f4").reshape(-1, table.dim)
        means, entity_versions = table.lookup([p["entity_id"] if p is not None else "" for p in parts])
        breakdown[name] = np.einsum("nd,nd->n", dense, means) * present
        versions[name] = entity_versions
    for i, example in enumerate(examples):
        example["scores"] = {name: float(s[i]) for name, s in breakdown.items()}
        example["model_versions"] = {name: int(v[i]) for name, v in versions.items()}
