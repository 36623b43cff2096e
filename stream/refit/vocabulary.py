"""Vocabulary growth, the one writer of the feature indexes (DESIGN §1).

Joiners cannot change an index: each example carries the features some coordinate's
index could not place (``LabeledExample.unindexed_features``), and the archive keeps
them. The refit counts them over its training window with :class:`VocabularyCounter`
and admits, per coordinate, the (name, term) pairs seen at least ``min_count`` times,
most frequent first (ties by key), up to the coordinate's capacity. What does not fit
is counted and logged once per coordinate. The next index version keeps every column
of the current one in place and appends the admitted ones; the refit publishes it with
the global model, and every stage follows it without a restart.

While counting, the counter also gives every global feature of an example a column:
its column in the current global index when it has one (an example archived before an
earlier growth), else a provisional one past the index's end. The spill stores those,
and :meth:`VocabularyCounter.grow` says where each provisional column went, so the
global coordinate's new columns are fitted on the archived examples that carry them,
in the same single read of the archive.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from stream.codec.feature_bags import decode_bags
from stream.config import ModelSettings
from stream.model.features import FeatureIndex, FeatureKey
from stream.model.game import GLOBAL
from stream.tables.models import GlobalModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Growth:
    """The next index version: the grown model (global coefficients zero on new columns) and what changed."""

    model: GlobalModel
    admitted: Mapping[str, int]
    dropped: Mapping[str, int]
    provisional_columns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def grew(self) -> bool:
        """Whether any coordinate admitted a feature."""
        return any(self.admitted.values())


class VocabularyCounter:
    """Counts, per coordinate, the features its index of ``model`` cannot place, over examples fed to it.

    ``growable`` names the coordinates (``global`` included) whose index may grow; the
    others are frozen and not counted.
    """

    def __init__(self, model: GlobalModel, growable: Sequence[str]) -> None:
        self.model = model
        self._indexes: dict[str, FeatureIndex] = {GLOBAL: model.global_index, **model.coordinate_indices}
        self._growable = [name for name in self._indexes if name in growable]
        self.counts: dict[str, Counter[FeatureKey]] = {name: Counter() for name in self._growable}
        self._provisional: dict[FeatureKey, int] = {}
        self._resolved: dict[tuple[str, str, str], tuple[int, tuple[str, ...]]] = {}

    def _resolve(self, bag: str, name: str, term: str) -> tuple[int, tuple[str, ...]]:
        """(global column or -1, growable coordinates that lack the feature) of one (bag, name, term)."""
        key = (bag, name, term)
        hit = self._resolved.get(key)
        if hit is None:
            feature = (name, term)
            column = -1
            if bag in self.model.global_index.bag_names:
                found = self.model.global_index.column(name, term, admit=False)
                column = (
                    found
                    if found is not None
                    else self.model.global_index.dim + self._provisional.setdefault(feature, len(self._provisional))
                )
            lacking = tuple(
                c
                for c in self._growable
                if bag in self._indexes[c].bag_names and self._indexes[c].column(name, term, admit=False) is None
            )
            hit = self._resolved[key] = (column, lacking)
        return hit

    def global_columns(
        self, unindexed: Sequence[bytes | None], count: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per example, its unindexed global features (``unindexed``: each example's packed
        ``unindexed_features``) as (lengths, columns, values); rows where ``count`` is set are counted.

        Columns at or past the global index's ``dim`` are provisional until :meth:`grow`.
        """
        lengths = np.zeros(len(unindexed), dtype=np.int64)
        columns: list[int] = []
        values: list[float] = []
        for row, packed in enumerate(unindexed):
            if not packed:
                continue
            for bag, items in decode_bags(packed).items():
                for item in items:
                    column, lacking = self._resolve(bag, item["name"], item["term"])
                    if count[row]:
                        for coordinate in lacking:
                            self.counts[coordinate][(item["name"], item["term"])] += 1
                    if column >= 0:
                        columns.append(column)
                        values.append(item["value"])
                        lengths[row] += 1
        return lengths, np.asarray(columns, dtype=np.int32), np.asarray(values, dtype=np.float32)

    @property
    def provisional_keys(self) -> list[FeatureKey]:
        """The features given provisional global columns, in column order (``dim + i`` is the i-th)."""
        return sorted(self._provisional, key=self._provisional.__getitem__)

    def add_counts(self, counts: Mapping[str, Mapping[FeatureKey, int]]) -> None:
        """Add another counter's :attr:`counts` (Spark executors count their files; the driver adds them up)."""
        for name, counted in counts.items():
            self.counts[name].update(counted)

    def grow(self, min_count: int) -> Growth:
        """The next index version from the counts, and where each provisional global column went (-1: not admitted)."""
        indexes = dict(self._indexes)
        admitted, dropped = {}, {}
        version = self.model.index_version + 1
        for name in self._growable:
            ranked = sorted(
                (k for k, c in self.counts[name].items() if c >= min_count),
                key=lambda k: (-self.counts[name][k], k),
            )
            indexes[name], left_out = self._indexes[name].extended(ranked, version)
            admitted[name], dropped[name] = len(ranked) - len(left_out), len(left_out)
            if left_out:
                log.warning(
                    "vocabulary: coordinate %s is at its capacity of %s columns: %d features seen >= %d times "
                    "were not admitted (most frequent: %s)",
                    name,
                    indexes[name].capacity,
                    len(left_out),
                    min_count,
                    ", ".join(f"{n}={t}" if t else n for n, t in left_out[:5]),
                )
        global_index = indexes.pop(GLOBAL)
        provisional = np.full(len(self._provisional), -1, dtype=np.int64)
        for feature, slot in self._provisional.items():
            column = global_index.column(*feature, admit=False)
            provisional[slot] = -1 if column is None else column
        if not any(admitted.values()):
            return Growth(self.model, admitted, dropped, provisional)
        coefficients = np.zeros(global_index.dim)
        coefficients[: len(self.model.coefficients)] = self.model.coefficients
        grown = replace(
            self.model,
            index_version=version,
            global_index=global_index,
            coefficients=coefficients,
            coordinate_indices={name: indexes[name] for name in self.model.coordinate_indices},
        )
        log.info(
            "vocabulary: index version %d admits %s", version, ", ".join(f"{n} +{a}" for n, a in admitted.items() if a)
        )
        return Growth(grown, admitted, dropped, provisional)


def growable_coordinates(settings: ModelSettings, grow_global: bool) -> list[str]:
    """Coordinates whose index the writer may grow: random effects with ``unseen_features = "admit"``, and the global one."""
    names = [name for name, c in settings.coordinates.items() if c.unseen_features == "admit"]
    return ([GLOBAL] if grow_global else []) + names
