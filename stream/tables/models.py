"""Latest coefficients per entity and the latest global model, as readers of the compacted topics keep them.

Records can arrive twice or out of order (a restore republishes, a compacted topic is
re-read from the beginning), so both tables keep, per key, only the highest version seen;
a stale or duplicate record changes nothing. The joiner scores examples with these
tables, the refit and the backtest read them, and the scorer serves from them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Protocol

import numpy as np

from stream.config import ModelSettings
from stream.errors import InvalidValueError
from stream.model.features import FeatureIndex
from stream.state.entity_state import StateLayout

log = logging.getLogger(__name__)


class EntityTable(Protocol):
    """What scorers and the joiner read of a coordinate's table: in memory (:class:`CoefficientTable`) or on disk."""

    coordinate: str
    dim: int

    def __len__(self) -> int: ...
    def apply(self, records: Iterable[Mapping[str, Any]]) -> int: ...
    def version(self, entity_id: str) -> int: ...
    def lookup(self, entity_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...
    def event_counts(self, entity_ids: Sequence[str]) -> np.ndarray: ...
    def posteriors(self, entity_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def close(self) -> None: ...


class CoefficientTable:
    """One random-effect coordinate's latest means per entity (version-checked).

    With ``keep_posteriors`` the table also keeps each entity's packed precision, which
    exploration (Thompson sampling, UCB) needs: d(d+1)/2 doubles per entity with a full
    precision, so only for serving that explores.
    """

    def __init__(self, coordinate: str, dim: int, keep_posteriors: bool = False) -> None:
        self.coordinate = coordinate
        self.dim = dim
        self.keep_posteriors = keep_posteriors
        self._posteriors: dict[str, tuple[str, bytes]] = {}
        self._rows: dict[str, int] = {}
        self._versions = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._means = np.zeros((0, dim))

    def __len__(self) -> int:
        return len(self._rows)

    def apply(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Take every record newer than what the table holds; returns how many were taken.

        New entities become visible only after their means are in place, so a reader on
        another thread never sees a row without its coefficients.
        """
        taken = 0
        new_ids: dict[str, int] = {}
        new_rows: list[np.ndarray] = []
        new_versions: list[int] = []
        new_counts: list[int] = []
        for record in records:
            entity, version = record["entity_id"], int(record["version"])
            count = int(record.get("event_count", 0))
            means = np.asarray(record["means"], dtype=np.float64)
            if means.shape != (self.dim,) or not np.isfinite(means).all():
                continue
            row = self._rows.get(entity)
            if row is not None:
                if version <= self._versions[row]:
                    continue
                self._means[row] = means
                self._versions[row], self._counts[row] = version, count
            elif entity in new_ids:
                pending = new_ids[entity]
                if version <= new_versions[pending]:
                    continue
                new_rows[pending], new_versions[pending], new_counts[pending] = means, version, count
            else:
                new_ids[entity] = len(new_rows)
                new_rows.append(means)
                new_versions.append(version)
                new_counts.append(count)
            if self.keep_posteriors:
                self._posteriors[entity] = (
                    record.get("precision_kind", "DIAGONAL"),
                    bytes(record.get("precision", b"")),
                )
            taken += 1
        if new_rows:
            first = len(self._rows)
            self._reserve(first + len(new_rows))
            self._means[first : first + len(new_rows)] = new_rows
            self._versions[first : first + len(new_rows)] = new_versions
            self._counts[first : first + len(new_rows)] = new_counts
            for entity, pending in new_ids.items():
                self._rows[entity] = first + pending
        return taken

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` entities, doubling the arrays so filling a table costs amortized O(1) per entity."""
        if rows <= len(self._versions):
            return
        capacity = max(rows, 2 * len(self._versions), 1024)
        means, versions = np.zeros((capacity, self.dim)), np.zeros(capacity, dtype=np.int64)
        counts = np.zeros(capacity, dtype=np.int64)
        means[: len(self._versions)] = self._means
        versions[: len(self._versions)] = self._versions
        counts[: len(self._versions)] = self._counts
        self._means, self._versions, self._counts = means, versions, counts

    def version(self, entity_id: str) -> int:
        """The version held for ``entity_id`` (0: none)."""
        row = self._rows.get(entity_id)
        return 0 if row is None else int(self._versions[row])

    def lookup(self, entity_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(N, dim) means (zeros for unknown entities) and (N,) versions (0: unknown)."""
        rows = np.fromiter(map(self._rows.get, entity_ids, repeat(-1)), dtype=np.int64, count=len(entity_ids))
        known = rows >= 0
        means = np.zeros((len(rows), self.dim))
        means[known] = self._means[rows[known]]
        versions = np.zeros(len(rows), dtype=np.int64)
        versions[known] = self._versions[rows[known]]
        return means, versions

    def event_counts(self, entity_ids: Sequence[str]) -> np.ndarray:
        """(N,) events each entity's held model had absorbed (0: unknown)."""
        rows = np.fromiter((self._rows.get(e, -1) for e in entity_ids), dtype=np.int64, count=len(entity_ids))
        counts = np.zeros(len(rows), dtype=np.int64)
        known = rows >= 0
        counts[known] = self._counts[rows[known]]
        return counts

    def posteriors(self, entity_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, d) means, (N, d, d) precisions and (N,) known mask; unknown or unusable entities are not known."""
        if not self.keep_posteriors:
            raise InvalidValueError(f"table {self.coordinate!r} keeps no posteriors (keep_posteriors=False)")
        means, versions = self.lookup(entity_ids)
        precisions = np.zeros((len(entity_ids), self.dim, self.dim))
        known = versions > 0
        for i, entity in enumerate(entity_ids):
            stored = self._posteriors.get(entity) if known[i] else None
            matrix = None if stored is None else precision_matrix(*stored, self.dim)
            if matrix is None:
                known[i] = False
            else:
                precisions[i] = matrix
        return means, precisions, known

    def close(self) -> None:
        """Nothing to release (the disk-backed table deletes its store here)."""


def precision_matrix(kind: str, packed: bytes, dim: int) -> np.ndarray | None:
    """A d x d precision from an EntityModel's packed bytes (None when they do not fit or are not finite)."""
    layout = StateLayout(dim, diagonal=kind == "DIAGONAL", window=0)
    values = np.frombuffer(packed, dtype="<f8")
    if values.size != layout.precision_size or not np.isfinite(values).all():
        return None
    matrix = layout.unpack_precision(values[None, :])[0]
    return np.diag(matrix) if layout.diagonal else matrix


@dataclass(frozen=True)
class GlobalModel:
    """A decoded ``GlobalModel``: version, global index and coefficients, and every coordinate's index."""

    version: int
    index_version: int
    global_index: FeatureIndex
    coefficients: np.ndarray
    coordinate_indices: Mapping[str, FeatureIndex]
    record: Mapping[str, Any]

    @classmethod
    def from_record(cls, record: Mapping[str, Any], model: ModelSettings) -> GlobalModel:
        """Indexes take their bags and capacities from ``model``; a configured coordinate missing from the record is an error."""
        missing = [name for name in model.coordinates if name not in record["coordinate_indices"]]
        if missing:
            raise InvalidValueError(
                f"global model version {record['version']} has no feature index for coordinates {missing}"
            )
        indices = {
            name: FeatureIndex.from_record(
                record["coordinate_indices"][name],
                c.feature_bags,
                capacity=c.max_features,
                unseen="drop",
                version=record["index_version"],
            )
            for name, c in model.coordinates.items()
        }
        global_index = FeatureIndex.from_record(
            record["features"], model.global_feature_bags, unseen="drop", version=record["index_version"]
        )
        coefficients = np.asarray(record["coefficients"], dtype=np.float64)
        if coefficients.shape != (global_index.dim,) or not np.isfinite(coefficients).all():
            raise InvalidValueError(
                f"global model version {record['version']}: coefficients do not match its index or are not finite"
            )
        return cls(int(record["version"]), int(record["index_version"]), global_index, coefficients, indices, record)

    def extends(self, other: GlobalModel) -> bool:
        """Whether every index of this model keeps ``other``'s columns in place (DESIGN §1: indexes only append)."""
        return (
            self.index_version >= other.index_version
            and self.global_index.extends(other.global_index)
            and all(self.coordinate_indices[name].extends(index) for name, index in other.coordinate_indices.items())
        )


class GlobalModelTable:
    """The highest-version global model seen; records that cannot be used are counted and logged, not fatal.

    A version whose feature indexes do not keep the current one's columns in place is
    refused: every stored state and published coefficient would change meaning.
    """

    def __init__(self, model: ModelSettings) -> None:
        self._model = model
        self.current: GlobalModel | None = None
        self.rejected = 0

    def apply(self, records: Iterable[Mapping[str, Any]]) -> bool:
        """Take the newest usable record; returns whether the current model changed."""
        changed = False
        for record in records:
            if self.current is not None and record["version"] <= self.current.version:
                continue
            try:
                candidate = GlobalModel.from_record(record, self._model)
            except ValueError as exc:
                self._reject(record, str(exc))
                continue
            if self.current is not None and not candidate.extends(self.current):
                self._reject(
                    record,
                    f"its feature indexes do not extend those of version {self.current.version} "
                    "(an index may only append columns)",
                )
                continue
            self.current = candidate
            changed = True
        return changed

    def _reject(self, record: Mapping[str, Any], reason: str) -> None:
        self.rejected += 1
        log.warning("global model version %s refused: %s", record.get("version"), reason)
