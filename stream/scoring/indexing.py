"""Name–term–value bags -> every coordinate's columns, in one pass per request.

For one model version, each (bag, name, term) seen is resolved once to the columns it
feeds — the global coordinate's and each random effect's whose bags include it — and
cached. The model spec's feature transforms are applied first, so the joiner and the
scorer index identical features. A request then costs one dict lookup per feature: the member's bags are indexed
once and shared by every candidate, and each candidate adds only its own features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.config import ModelSettings
from stream.model.features import FeatureIndex
from stream.model.transforms import FeatureTransforms
from stream.scoring.tables import GlobalModel

Bags = Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class IndexedRows:
    """Features of N rows: per slot (0 = global, then the coordinates in order) COO arrays (row, column, value)."""

    rows: list[np.ndarray]
    columns: list[np.ndarray]
    values: list[np.ndarray]


class FeatureResolver:
    """Resolves features to columns of every coordinate of one global model version (cached per feature)."""

    def __init__(self, model: GlobalModel, settings: ModelSettings) -> None:
        self.version = model.version
        self.coordinates = list(settings.coordinates)
        self._indexes: list[FeatureIndex] = [model.global_index] + [model.coordinate_indices[c] for c in self.coordinates]
        self._bags = [set(index.bag_names) for index in self._indexes]
        self._cache: dict[tuple[str, str, str], tuple[tuple[int, int], ...]] = {}
        self._transforms = FeatureTransforms.from_settings(settings)

    @property
    def slots(self) -> int:
        """Number of coordinates, the global one included."""
        return len(self._indexes)

    def _resolve(self, bag: str, name: str, term: str) -> tuple[tuple[int, int], ...]:
        key = (bag, name, term)
        found = self._cache.get(key)
        if found is None:
            found = tuple(
                (slot, col) for slot, (index, bags) in enumerate(zip(self._indexes, self._bags))
                if bag in bags and (col := index.column(name, term, admit=False)) is not None
            )
            self._cache[key] = found
        return found

    def index(self, bag_rows: Sequence[Bags]) -> IndexedRows:
        """COO arrays per slot for ``bag_rows`` after the model's transforms (intercepts included where the index has one)."""
        bag_rows = self._transforms.apply_rows(bag_rows)
        rows: list[list[int]] = [[] for _ in self._indexes]
        cols: list[list[int]] = [[] for _ in self._indexes]
        vals: list[list[float]] = [[] for _ in self._indexes]
        resolve = self._resolve
        for r, bags in enumerate(bag_rows):
            for bag, items in bags.items():
                for item in items:
                    for slot, col in resolve(bag, item["name"], item.get("term", "")):
                        rows[slot].append(r)
                        cols[slot].append(col)
                        vals[slot].append(item["value"])
        return IndexedRows(
            rows=[np.asarray(r, dtype=np.int64) for r in rows],
            columns=[np.asarray(c, dtype=np.int64) for c in cols],
            values=[np.asarray(v, dtype=np.float64) for v in vals],
        )

    @property
    def combines_features(self) -> bool:
        """Whether rows must be indexed whole (a product transform may pair a shared feature with a row's own)."""
        return self._transforms.combines_features

    def intercepts(self) -> list[bool]:
        """Whether each slot's index has an intercept column (column 0)."""
        return [index.intercept for index in self._indexes]
