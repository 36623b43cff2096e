"""Name–term–value bags -> every coordinate's columns, in one pass per request.

For one model version, each (bag, name, term) seen is resolved once to the columns it
feeds — the global coordinate's and each random effect's whose bags include it — and
cached. The model spec's feature transforms are applied first, so the joiner and the
scorer index identical features. A request then costs one dict lookup per feature: the member's bags are indexed
once and shared by every candidate, and each candidate adds only its own features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.config import ModelSettings
from stream.model.features import FeatureIndex
from stream.model.transforms import FeatureTransforms
from stream.tables.models import GlobalModel

Bags = Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class IndexedRows:
    """Features of N rows: per slot (0 = global, then the coordinates in order) COO arrays (row, column, value)."""

    rows: list[np.ndarray]
    columns: list[np.ndarray]
    values: list[np.ndarray]
    missed: MissedFeatures | None = None

    @staticmethod
    def merged(parts: Sequence[tuple[np.ndarray, IndexedRows]]) -> IndexedRows:
        """One set of rows from parts that each index a subset of them (``positions[i]`` is part row i's row)."""
        slots = len(parts[0][1].rows)
        return IndexedRows(
            rows=[np.concatenate([positions[part.rows[s]] for positions, part in parts]) for s in range(slots)],
            columns=[np.concatenate([part.columns[s] for _, part in parts]) for s in range(slots)],
            values=[np.concatenate([part.values[s] for _, part in parts]) for s in range(slots)],
        )


@dataclass(frozen=True)
class MissedFeatures:
    """Features some coordinate's index could not place: the vocabulary's growth candidates (DESIGN §1).

    Feature ``i`` is on row ``rows[i]`` with ``values[i]``; its bag, name and term lie at
    ``refs[:, i]`` (offset and length of each: six rows) in ``strings`` (a decoded batch's
    buffer, as the compiled lookup leaves them). A feature is listed once when at least one
    slot whose bags include its bag lacks it. ``per_slot[s]`` counts the occurrences slot
    ``s`` could not place.
    """

    rows: np.ndarray
    strings: bytes
    refs: np.ndarray
    values: np.ndarray
    per_slot: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def of_keys(
        cls, rows: np.ndarray, keys: Sequence[tuple[str, str, str]], values: np.ndarray, per_slot: np.ndarray
    ) -> MissedFeatures:
        """The missed features ``keys`` ((bag, name, term) each) on ``rows``."""
        parts = [part.encode() for key in keys for part in key]
        lengths = np.array([len(part) for part in parts], dtype=np.int64)
        offsets = np.zeros(len(parts), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        refs = np.stack([offsets, lengths]).reshape(2, len(keys), 3).transpose(2, 0, 1).reshape(6, len(keys))
        return cls(rows, b"".join(parts), refs, values, per_slot)

    @property
    def keys(self) -> list[tuple[str, str, str]]:
        """Each feature's (bag, name, term), decoded (for readers of single features; the packer reads ``refs``)."""
        text = self.strings
        return [
            (text[b : b + bl].decode(), text[n : n + nl].decode(), text[t : t + tl].decode())
            for b, bl, n, nl, t, tl in self.refs.T.tolist()
        ]


class FeatureResolver:
    """Resolves features to columns of every coordinate of one global model version (cached per feature).

    Each distinct (bag, name, term) gets a small integer id the first time it is seen, and
    a row of ``_columns`` (one column per slot, -1 where the slot does not use it); a
    request then costs one dict lookup per feature and a few numpy gathers.
    """

    def __init__(self, model: GlobalModel, settings: ModelSettings) -> None:
        self.version = model.version
        self.coordinates = list(settings.coordinates)
        self._indexes: list[FeatureIndex] = [model.global_index] + [
            model.coordinate_indices[c] for c in self.coordinates
        ]
        self._bags = [set(index.bag_names) for index in self._indexes]
        self._ids: dict[tuple[str, str, str], int] = {}
        self._columns = np.full((len(self._indexes), 1024), -1, dtype=np.int64)
        self._missing = np.zeros((len(self._indexes), 1024), dtype=bool)  # slot uses the key's bag but lacks it
        self._transforms = FeatureTransforms.from_settings(settings)

    @property
    def slots(self) -> int:
        """Number of coordinates, the global one included."""
        return len(self._indexes)

    def _learn(self, key: tuple[str, str, str]) -> int:
        """Give ``key`` an id and record its column in every slot."""
        bag, name, term = key
        new = len(self._ids)
        if new >= self._columns.shape[1]:
            self._columns = np.concatenate([self._columns, np.full_like(self._columns, -1)], axis=1)
            self._missing = np.concatenate([self._missing, np.zeros_like(self._missing)], axis=1)
        for slot, (index, bags) in enumerate(zip(self._indexes, self._bags)):
            col = index.column(name, term, admit=False) if bag in bags else None
            self._columns[slot, new] = -1 if col is None else col
            self._missing[slot, new] = bag in bags and col is None
        self._ids[key] = new
        return new

    def index(self, bag_rows: Sequence[Bags], with_missed: bool = False) -> IndexedRows:
        """COO arrays per slot for ``bag_rows`` after the model's transforms (intercepts included where the index has one).

        ``with_missed`` also lists the features some slot could not place (the joiner
        records them for the vocabulary writer; scoring does not need them).
        """
        bag_rows = self._transforms.apply_rows(bag_rows)
        get = self._ids.get
        # One list comprehension per column: the per-feature Python work is what a request pays for.
        found = [
            get((bag, item["name"], item.get("term", "")), -1)
            for bags in bag_rows
            for bag, items in bags.items()
            for item in items
        ]
        values = np.array(
            [item.get("value", 1.0) for bags in bag_rows for items in bags.values() for item in items], dtype=np.float64
        )
        lengths = np.array([sum(map(len, bags.values())) for bags in bag_rows], dtype=np.int64)
        ids = np.array(found, dtype=np.int64)
        keys: list[tuple[str, str, str]] | None = None
        if with_missed or -1 in found:
            keys = [
                (bag, item["name"], item.get("term", ""))
                for bags in bag_rows
                for bag, items in bags.items()
                for item in items
            ]
            for i in np.flatnonzero(ids < 0):
                ids[i] = self._ids.get(keys[i], -1) if keys[i] in self._ids else self._learn(keys[i])
        rows = np.repeat(np.arange(len(bag_rows)), lengths)
        out_rows, out_cols, out_vals = [], [], []
        for slot in range(len(self._indexes)):
            cols = self._columns[slot, ids]
            used = cols >= 0
            out_rows.append(rows[used])
            out_cols.append(cols[used])
            out_vals.append(values[used])
        missed = None
        if with_missed:
            misses = self._missing[:, ids]
            where = np.flatnonzero(misses.any(axis=0))
            assert keys is not None
            missed = MissedFeatures.of_keys(rows[where], [keys[i] for i in where], values[where], misses.sum(axis=1))
        return IndexedRows(rows=out_rows, columns=out_cols, values=out_vals, missed=missed)

    @property
    def combines_features(self) -> bool:
        """Whether rows must be indexed whole (a product transform may pair a shared feature with a row's own)."""
        return self._transforms.combines_features

    def intercepts(self) -> list[bool]:
        """Whether each slot's index has an intercept column (column 0)."""
        return [index.intercept for index in self._indexes]


class ItemRows:
    """Indexed features of catalog items (``glmix serve``'s items topic), kept per model version as CSR per slot.

    Items are indexed once, with ``index`` (the model version's lookup or resolver), the
    first time a request names them; a request then only gathers its items' rows with numpy.
    """

    def __init__(self, slots: int, index: Callable[[Sequence[Bags]], IndexedRows]) -> None:
        self._index = index
        self._rows: dict[str, int] = {}
        self._csr = [(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)) for _ in range(slots)]

    def indexed(self, item_ids: Sequence[str], catalog: Mapping[str, Bags]) -> IndexedRows:
        """COO arrays per slot for rows whose features are ``catalog[item_id]``."""
        new = [i for i in dict.fromkeys(item_ids) if i not in self._rows]
        if new:
            self._append(new, catalog)
        picked = np.fromiter((self._rows[i] for i in item_ids), dtype=np.int64, count=len(item_ids))
        out_rows, out_cols, out_vals = [], [], []
        for indptr, columns, values in self._csr:
            starts = indptr[picked]
            lengths = indptr[picked + 1] - starts
            firsts = np.cumsum(lengths) - lengths
            gather = np.repeat(starts - firsts, lengths) + np.arange(int(lengths.sum()))
            out_rows.append(np.repeat(np.arange(len(picked)), lengths))
            out_cols.append(columns[gather])
            out_vals.append(values[gather])
        return IndexedRows(rows=out_rows, columns=out_cols, values=out_vals)

    def _append(self, item_ids: list[str], catalog: Mapping[str, Bags]) -> None:
        indexed = self._index([catalog[i] for i in item_ids])
        first = len(self._csr[0][0]) - 1
        for slot, (indptr, columns, values) in enumerate(self._csr):
            counts = np.bincount(indexed.rows[slot], minlength=len(item_ids))
            order = np.argsort(indexed.rows[slot], kind="stable")
            self._csr[slot] = (
                np.concatenate([indptr, indptr[-1] + np.cumsum(counts)]),
                np.concatenate([columns, indexed.columns[slot][order]]),
                np.concatenate([values, indexed.values[slot][order]]),
            )
        for offset, item_id in enumerate(item_ids):
            self._rows[item_id] = first + offset

    def forget(self, item_ids: Iterable[str]) -> None:
        """Drop the indexed rows of items whose catalog features changed (they are indexed again when next used)."""
        for item_id in item_ids:
            self._rows.pop(item_id, None)
