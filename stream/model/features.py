"""Per-coordinate feature index maps: (name, term) -> column.

Each coordinate owns one :class:`FeatureIndex`. Random-effect coordinates are dense and
bounded (DESIGN §1): at most ``capacity`` columns, intercept included, with an explicit
policy for features the index has not seen — ``admit`` them while there is room, or
``drop`` them — and every dropped occurrence is counted, never an error. The global
coordinate uses the same map to build ``scipy.sparse`` rows. The ordered key list is
what gets saved with a model, so an index can be rebuilt exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from stream.errors import InvalidValueError

INTERCEPT_KEY = ("(INTERCEPT)", "")

FeatureKey = tuple[str, str]
Bags = Mapping[str, Sequence[Any]]


def feature_counts(rows: Iterable[Bags], bag_names: Sequence[str]) -> Counter[FeatureKey]:
    """How many times each (name, term) of ``bag_names`` occurs in ``rows``."""
    counts: Counter[FeatureKey] = Counter()
    for bags in rows:
        counts.update((n, t) for n, t, _ in _triples(bags, bag_names))
    return counts


def _triples(bags: Bags, bag_names: Sequence[str]) -> Iterable[tuple[str, str, float]]:
    """(name, term, value) of the named bags; bags are Avro NTV dicts or plain tuples."""
    for bag in bag_names:
        for item in bags.get(bag, ()):
            if isinstance(item, Mapping):
                yield item["name"], item.get("term", ""), float(item.get("value", 1.0))
            else:
                yield item[0], item[1], float(item[2])


class FeatureIndex:
    """An ordered map from (name, term) to column for one coordinate's feature bags.

    >>> index = FeatureIndex(["job_title"], capacity=3)
    >>> index.dense({"job_title": [("title", "nurse", 1.0)]}).tolist()
    [1.0, 1.0, 0.0]
    >>> index.keys
    [('(INTERCEPT)', ''), ('title', 'nurse')]
    """

    def __init__(
        self,
        bag_names: Sequence[str],
        keys: Iterable[FeatureKey] = (),
        intercept: bool = True,
        capacity: int | None = None,
        unseen: str = "admit",
        version: int = 0,
    ) -> None:
        if unseen not in ("admit", "drop"):
            raise InvalidValueError(f"unseen must be 'admit' or 'drop', got {unseen!r}")
        self.bag_names = tuple(bag_names)
        self.intercept = intercept
        self.capacity = capacity
        self.unseen = unseen
        self.version = version
        self.dropped = 0
        self._keys: list[FeatureKey] = []
        self._columns: dict[FeatureKey, int] = {}
        if intercept:
            self._add(INTERCEPT_KEY)
        for key in keys:
            if key not in self._columns and not self._add(tuple(key)):  # type: ignore[arg-type]
                raise InvalidValueError(f"{len(self._keys) + 1} keys exceed the capacity of {capacity}")

    @classmethod
    def from_data(
        cls,
        rows: Iterable[Bags],
        bag_names: Sequence[str],
        intercept: bool = True,
        capacity: int | None = None,
        min_count: int = 1,
        unseen: str = "drop",
        version: int = 0,
    ) -> FeatureIndex:
        """An index of the most frequent features in ``rows`` (ties broken by key), up to ``capacity``."""
        return cls.from_counts(
            feature_counts(rows, bag_names), bag_names, intercept, capacity, min_count, unseen, version
        )

    @classmethod
    def from_counts(
        cls,
        counts: Mapping[FeatureKey, int],
        bag_names: Sequence[str],
        intercept: bool = True,
        capacity: int | None = None,
        min_count: int = 1,
        unseen: str = "drop",
        version: int = 0,
    ) -> FeatureIndex:
        """:meth:`from_data` of features already counted (:func:`feature_counts`, added up over parts of the rows)."""
        ranked = sorted(
            (k for k, c in counts.items() if c >= min_count and k != INTERCEPT_KEY), key=lambda k: (-counts[k], k)
        )
        room = None if capacity is None else capacity - int(intercept)
        return cls(bag_names, ranked[:room], intercept=intercept, capacity=capacity, unseen=unseen, version=version)

    def _add(self, key: FeatureKey) -> bool:
        if self.capacity is not None and len(self._keys) >= self.capacity:
            return False
        self._columns[key] = len(self._keys)
        self._keys.append(key)
        return True

    @property
    def keys(self) -> list[FeatureKey]:
        """The (name, term) of each column, in column order (save this with the model)."""
        return list(self._keys)

    @property
    def dim(self) -> int:
        """Number of columns today (grows under ``admit`` until ``capacity``)."""
        return len(self._keys)

    @property
    def width(self) -> int:
        """Columns a dense row has: ``capacity`` when bounded, else the current ``dim``."""
        return self.capacity if self.capacity is not None else self.dim

    def column(self, name: str, term: str = "", admit: bool = True) -> int | None:
        """The column of (name, term); admits it under the ``admit`` policy while there is room."""
        key = (name, term)
        col = self._columns.get(key)
        if col is None and admit and self.unseen == "admit" and self._add(key):
            col = self._columns[key]
        if col is None:
            self.dropped += 1
        return col

    def dense(self, bags: Bags, admit: bool = True) -> np.ndarray:
        """One (width,) float64 row; repeated (name, term) pairs add up."""
        row = np.zeros(self.width)
        if self.intercept:
            row[0] = 1.0
        for name, term, value in _triples(bags, self.bag_names):
            col = self.column(name, term, admit)
            if col is not None:
                row[col] += value
        return row

    def dense_rows(self, rows: Iterable[Bags], admit: bool = True) -> np.ndarray:
        """An (N, width) matrix of :meth:`dense` rows."""
        return np.array([self.dense(bags, admit) for bags in rows]).reshape(-1, self.width)

    def sparse_rows(self, rows: Iterable[Bags], admit: bool = False) -> sp.csr_matrix:
        """An (N, dim) CSR matrix of the global coordinate's rows (duplicates summed)."""
        indptr, indices, values = [0], [], []
        for bags in rows:
            if self.intercept:
                indices.append(0)
                values.append(1.0)
            for name, term, value in _triples(bags, self.bag_names):
                col = self.column(name, term, admit)
                if col is not None:
                    indices.append(col)
                    values.append(value)
            indptr.append(len(indices))
        matrix = sp.csr_matrix((values, indices, indptr), shape=(len(indptr) - 1, self.dim))
        matrix.sum_duplicates()
        return matrix

    def extends(self, other: FeatureIndex) -> bool:
        """Whether this index keeps every column of ``other`` in place (it is ``other`` or a later version of it)."""
        return self._keys[: len(other._keys)] == other._keys and self.intercept == other.intercept

    def extended(self, keys: Iterable[FeatureKey], version: int) -> tuple[FeatureIndex, list[FeatureKey]]:
        """Version ``version`` of this index: every column kept in place, ``keys`` appended while there is room.

        Returns the new index and the keys that did not fit (DESIGN §1: append-only, a
        column never changes meaning). Keys the index already has are ignored.
        """
        grown = FeatureIndex(
            self.bag_names,
            self._keys[1:] if self.intercept else self._keys,
            intercept=self.intercept,
            capacity=self.capacity,
            unseen=self.unseen,
            version=version,
        )
        dropped = [key for key in dict.fromkeys(keys) if key not in grown._columns and not grown._add(key)]
        return grown, dropped

    def to_record(self) -> list[dict[str, str]]:
        """The key list as Avro ``FeatureKey`` records (intercept included, in column order)."""
        return [{"name": n, "term": t} for n, t in self._keys]

    @classmethod
    def from_record(
        cls,
        records: Sequence[Mapping[str, str]],
        bag_names: Sequence[str],
        capacity: int | None = None,
        unseen: str = "drop",
        version: int = 0,
    ) -> FeatureIndex:
        """Rebuild an index saved by :meth:`to_record`."""
        keys = [(r["name"], r.get("term", "")) for r in records]
        intercept = bool(keys) and keys[0] == INTERCEPT_KEY
        return cls(
            bag_names,
            keys[1:] if intercept else keys,
            intercept=intercept,
            capacity=capacity,
            unseen=unseen,
            version=version,
        )
