"""Labeled examples as one coordinate's updater sees them: values read into arrays, then padded per entity.

The joiner ships each coordinate's features already indexed (DESIGN §8), so a micro-batch
of ``LabeledExample`` values becomes arrays in one compiled scan, with no record dicts
(:class:`ExampleReader`). The offset of an example for coordinate c is its fixed offset
plus every *other* coordinate's score at join time (GLMix coordinate descent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from stream.codec.avro import SINGLE_OBJECT_MAGIC, RecordCodec, SingleObjectCodec
from stream.codec.columnar.plan import Status
from stream.codec.exceptions import DecodeError, EncodeError
from stream.codec.labeled_example import LabeledColumns, scan_labeled
from stream.codec.schemas import load_schema


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


def invalid_values(examples: CoordinateExamples) -> np.ndarray:
    """(N,) mask of examples with a non-finite feature, label, weight or offset, or a negative weight."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(examples.features).all(axis=1)
        ok &= np.isfinite(examples.labels) & np.isfinite(examples.offsets)
        ok &= np.isfinite(examples.weights) & (examples.weights >= 0)
    return ~ok


@dataclass(frozen=True)
class ReadExamples:
    """What :class:`ExampleReader` made of a batch of values: the examples of the values in ``rows``, and the rest.

    ``examples`` holds, in input order, one example per value of ``rows``; ``problems``
    pairs each other value's position with the one-line reason it must be dead-lettered.
    """

    examples: CoordinateExamples
    rows: np.ndarray
    problems: list[tuple[int, str]]


class ExampleReader:
    """Reads batches of ``LabeledExample`` values, framed as ``codec`` frames them, into one coordinate's examples.

    Values of the shipped writer schema are read by the compiled scan
    (:func:`~stream.codec.labeled_example.scan_labeled`); any other writer schema is
    decoded by ``codec`` (fastavro, which fetches a registry schema it has not seen),
    encoded again with the shipped schema and scanned with the rest, so one path builds
    every example. A value that cannot feed the coordinate gets its reason; its batch goes on.
    """

    def __init__(self, codec: RecordCodec, coordinate: str, dim: int) -> None:
        self._codec = codec
        self._reader = SingleObjectCodec(load_schema("LabeledExample"))
        self.coordinate = coordinate
        self.dim = dim

    def _headers(self) -> list[bytes]:
        shipped = self._reader.schema.fingerprint
        return [h for h, writer in self._codec.writers().items() if writer.fingerprint == shipped]

    def read(self, values: Sequence[bytes | None], input_offsets: np.ndarray) -> ReadExamples:
        """The examples of ``values``, ``input_offsets[i]`` being value ``i``'s offset in its input."""
        offsets = np.asarray(input_offsets, dtype=np.int64)
        columns = scan_labeled(values, self._codec.magic, self._headers(), self.coordinate, self.dim)
        problems: dict[int, str] = {}
        everything = np.arange(len(values))
        parts = [self._sort_out(columns, everything, offsets, problems, fallback=True)]
        others = np.flatnonzero(columns.status == Status.UNKNOWN_WRITER_SCHEMA).tolist()
        if others:
            again, positions = [], []
            for row in others:
                try:
                    again.append(self._reader.encode(self._codec.decode(values[row])))  # type: ignore[arg-type]
                    positions.append(row)
                except (DecodeError, EncodeError) as exc:
                    problems[row] = str(exc)
            rescanned = scan_labeled(again, SINGLE_OBJECT_MAGIC, [self._reader.header()], self.coordinate, self.dim)
            parts.append(self._sort_out(rescanned, np.array(positions, dtype=np.int64), offsets, problems))
        rows = np.concatenate([p[1] for p in parts])
        order = np.argsort(rows, kind="stable")
        examples = CoordinateExamples(
            **{name: np.concatenate([getattr(p[0], name) for p in parts])[order] for name in _FIELDS}
        )
        return ReadExamples(examples, rows[order], sorted(problems.items()))

    def _sort_out(
        self,
        columns: LabeledColumns,
        positions: np.ndarray,
        offsets: np.ndarray,
        problems: dict[int, str],
        fallback: bool = False,
    ) -> tuple[CoordinateExamples, np.ndarray]:
        """The examples of the usable rows of ``columns`` (value ``positions[i]`` is row i); the others' reasons.

        With ``fallback``, rows of an unknown writer schema are left to the caller.
        """
        c, dim = self.coordinate, self.dim
        undecoded = ~columns.ok
        if fallback:
            undecoded &= columns.status != Status.UNKNOWN_WRITER_SCHEMA
        for row in np.flatnonzero(undecoded).tolist():
            problems[int(positions[row])] = columns.reason(row)
        usable = columns.ok.copy()
        wrong_width = columns.dense[1] != 4 * dim
        for mask, reason in (
            (~columns.found, f"no features for coordinate {c!r}"),
            (columns.entity[1] == 0, f"empty entity id for coordinate {c!r}"),
            (wrong_width, ""),
        ):
            for row in np.flatnonzero(usable & mask).tolist():
                width = int(columns.dense[1, row]) // 4
                problems[int(positions[row])] = reason or f"coordinate {c!r} has {width} features, expected {dim}"
            usable &= ~mask
        rows = np.flatnonzero(usable)
        examples = CoordinateExamples(
            entity_ids=np.array(columns.entity_ids(rows), dtype=object),
            features=columns.features(rows),
            labels=columns.label[rows],
            offsets=columns.margin[rows],
            weights=columns.weight[rows],
            event_times=columns.event_time[rows],
            label_times=columns.label_time[rows],
            input_offsets=offsets[positions[rows]],
            index_versions=columns.index_version[rows],
        )
        return examples, positions[rows]


_FIELDS = tuple(f.name for f in fields(CoordinateExamples))


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
    return _padded(examples, *_entities(examples))


def _entities(examples: CoordinateExamples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted distinct entity ids, each example's entity among them, and each entity's example count."""
    ids, inverse, counts = np.unique(examples.entity_ids.astype(str), return_inverse=True, return_counts=True)
    return ids, inverse, counts


def _padded(examples: CoordinateExamples, ids: np.ndarray, inverse: np.ndarray, counts: np.ndarray) -> EntityBatch:
    order = np.argsort(inverse, kind="stable")
    starts = np.cumsum(counts) - counts
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


# Entities are padded to the most events one of them has in the batch; a batch is cut in two where that would
# more than double the cells of its entities' real events (a hot entity would otherwise pad every other one), unless
# its cells stay this few (one more update call costs more than padding them).
_MAX_PADDING = 2.0
_SMALL_CELLS = 4096


def entity_batches(examples: CoordinateExamples) -> list[EntityBatch]:
    """``examples`` grouped by entity, entities of alike event counts together, so padding stays within 2x.

    Every entity is in exactly one batch; the updates of entities are independent, so the
    batches give what one batch of them all would.
    """
    ids, inverse, counts = _entities(examples)
    by_count = np.argsort(counts, kind="stable")
    values, multiplicity = np.unique(counts[by_count], return_counts=True)
    ends = np.cumsum(multiplicity).tolist()
    cuts, first, real = [], 0, 0
    for count, many, end in zip(values.tolist(), multiplicity.tolist(), ends):
        padded = (end - first) * count  # this count is the group's largest: every entity padded to it
        if first < end - many and padded > _SMALL_CELLS and padded > _MAX_PADDING * (real + count * many):
            cuts.append(end - many)
            first, real = end - many, 0
        real += count * many
    if not cuts:
        return [_padded(examples, ids, inverse, counts)]
    group = np.empty(len(counts), dtype=np.int64)
    for number, members in enumerate(np.split(by_count, cuts)):
        group[members] = number
    of_example = group[inverse]
    return [group_by_entity(examples.take(of_example == number)) for number in range(len(cuts) + 1)]


def valid_entity_batches(examples: CoordinateExamples) -> tuple[list[EntityBatch], np.ndarray]:
    """``examples`` grouped by entity (:func:`entity_batches`), and the positions of those left out for invalid values.

    The one way from read examples to an update's input: the live updater (which
    dead-letters the examples left out) and the backtest both call it.
    """
    invalid = invalid_values(examples)
    return entity_batches(examples.take(~invalid) if invalid.any() else examples), np.flatnonzero(invalid)
