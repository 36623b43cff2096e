"""Labeled examples as one coordinate's updater sees them: arrays, then padded per entity.

The joiner ships each coordinate's features already indexed (DESIGN §8), so turning a
micro-batch of decoded ``LabeledExample`` records into arrays is one ``np.frombuffer``
over the joined packed vectors. The offset of an example for coordinate c is its fixed
offset plus every *other* coordinate's score at join time (GLMix coordinate descent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CoordinateExamples:
    """N examples of one coordinate, in input order, as flat arrays."""

    entity_ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray
    event_times: np.ndarray
    label_times: np.ndarray
    input_offsets: np.ndarray
    index_versions: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> CoordinateExamples:
        """The examples at ``rows`` (indices or a mask)."""
        return CoordinateExamples(**{name: values[rows] for name, values in self.__dict__.items()})


def example_problem(record: Mapping[str, Any], coordinate: str, dim: int) -> str | None:
    """Why ``record`` cannot feed ``coordinate`` by its shape (None when it can); values are checked in batch."""
    features = record.get("coordinates", {}).get(coordinate)
    if features is None:
        return f"no features for coordinate {coordinate!r}"
    if not features["entity_id"]:
        return f"empty entity id for coordinate {coordinate!r}"
    if len(features["dense"]) != 4 * dim:
        return f"coordinate {coordinate!r} has {len(features['dense']) // 4} features, expected {dim}"
    return None


def invalid_values(examples: CoordinateExamples) -> np.ndarray:
    """(N,) mask of examples with a non-finite feature, label, weight or offset, or a negative weight."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(examples.features).all(axis=1)
        ok &= np.isfinite(examples.labels) & np.isfinite(examples.offsets)
        ok &= np.isfinite(examples.weights) & (examples.weights >= 0)
    return ~ok


def coordinate_examples(
    records: Sequence[Mapping[str, Any]], input_offsets: Sequence[int], coordinate: str, dim: int
) -> CoordinateExamples:
    """Arrays of ``records`` (shapes checked by :func:`example_problem`; values by :func:`invalid_values`)."""
    parts = [r["coordinates"][coordinate] for r in records]
    n = len(records)
    features = np.frombuffer(b"".join(p["dense"] for p in parts), dtype="<f4").reshape(n, dim).astype(np.float64)
    others = np.fromiter(
        (r["offset"] + sum(v for k, v in r["scores"].items() if k != coordinate) for r in records),
        dtype=np.float64,
        count=n,
    )
    return CoordinateExamples(
        entity_ids=np.array([p["entity_id"] for p in parts], dtype=object),
        features=features,
        labels=np.fromiter((r["label"] for r in records), dtype=np.float64, count=n),
        offsets=others,
        weights=np.fromiter((r["weight"] for r in records), dtype=np.float64, count=n),
        event_times=np.fromiter((r["event_time"] for r in records), dtype=np.int64, count=n),
        label_times=np.fromiter((r["label_time"] for r in records), dtype=np.int64, count=n),
        input_offsets=np.asarray(input_offsets, dtype=np.int64),
        index_versions=np.fromiter((r["index_version"] for r in records), dtype=np.int64, count=n),
    )


@dataclass(frozen=True)
class EntityBatch:
    """Examples grouped by entity and padded: B entities x n slots, input order kept per entity."""

    entity_ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray
    event_times: np.ndarray
    label_times: np.ndarray
    input_offsets: np.ndarray
    index_versions: np.ndarray
    mask: np.ndarray

    @property
    def num_entities(self) -> int:
        """B."""
        return len(self.entity_ids)


def group_by_entity(examples: CoordinateExamples) -> EntityBatch:
    """Pad ``examples`` into per-entity rows without a Python loop over entities."""
    ids, inverse, counts = np.unique(examples.entity_ids.astype(str), return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    slot = np.arange(len(order)) - np.repeat(starts, counts)
    rows = inverse[order]
    b, n, d = len(ids), int(counts.max(initial=0)), examples.features.shape[1]

    def pad(values: np.ndarray, fill: float = 0) -> np.ndarray:
        out = np.full((b, n) + values.shape[1:], fill, dtype=values.dtype)
        out[rows, slot] = values[order]
        return out

    mask = np.zeros((b, n), dtype=bool)
    mask[rows, slot] = True
    return EntityBatch(
        entity_ids=ids,
        features=pad(examples.features).reshape(b, n, d),
        labels=pad(examples.labels),
        offsets=pad(examples.offsets),
        weights=pad(examples.weights),
        event_times=pad(examples.event_times),
        label_times=pad(examples.label_times),
        input_offsets=pad(examples.input_offsets, fill=-1),
        index_versions=pad(examples.index_versions, fill=-1),
        mask=mask,
    )


def valid_entity_batch(
    records: Sequence[Mapping[str, Any]], input_offsets: Sequence[int], coordinate: str, dim: int
) -> tuple[EntityBatch, np.ndarray]:
    """The records' examples of ``coordinate`` grouped by entity, and the rows left out for invalid values.

    The one way from decoded records to an update's input: the live updater (which
    dead-letters the rows left out) and the backtest both call it.
    """
    examples = coordinate_examples(records, input_offsets, coordinate, dim)
    invalid = invalid_values(examples)
    return group_by_entity(examples.take(~invalid) if invalid.any() else examples), np.flatnonzero(invalid)
