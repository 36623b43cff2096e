"""Batch Avro encoding of the joiner's unlabeled ``LabeledExample`` values straight from columns.

The join state keeps every impression as the ``LabeledExample`` it becomes, label 0, until
its window closes (DESIGN §2). Built as a dict per impression and written by fastavro,
that cost ~18 µs an impression, as much as decoding it. This writer emits the same bytes
for a whole batch in one compiled pass: the impression's strings are copied from the
decoded batch's buffer, the indexed features from their arrays. It knows exactly one
schema, ``LabeledExample.avsc`` as shipped, which :func:`check_labeled_example_schema`
verifies field by field; the tests compare its output with fastavro's byte for byte.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from numba import njit

from stream.codec.columnar.writer import MAX_VARINT, split_values, write_bytes, write_long, write_raw
from stream.codec.exceptions import EncodeError
from stream.codec.schemas import AvroSchema

# Field names of LabeledExample, in the order the writer emits them.
LABELED_EXAMPLE_FIELDS = (
    "example_id",
    "member_id",
    "item_id",
    "label",
    "weight",
    "offset",
    "event_time",
    "label_time",
    "interaction_types",
    "scores",
    "model_versions",
    "global_features",
    "coordinates",
    "index_version",
    "random_bucket",
    "position",
    "context",
    "unindexed_features",
)
_WEIGHT_ONE = np.frombuffer(np.float64(1.0).tobytes(), dtype=np.uint8)


def check_labeled_example_schema(schema: AvroSchema) -> None:
    """Raise :class:`EncodeError` unless ``schema`` has exactly the fields this writer emits, in order."""
    fields = schema.plain.get("fields", []) if isinstance(schema.plain, dict) else []
    found = tuple(f["name"] for f in fields)
    if schema.name.split(".")[-1] != "LabeledExample" or found != LABELED_EXAMPLE_FIELDS:
        raise EncodeError(f"the batch LabeledExample writer does not know schema {schema.name} with fields {found}")


@dataclass(frozen=True)
class UnlabeledColumns:
    """N impressions as the writer reads them; every string is (offset, length) into ``buffer``.

    ``ids`` is (2, 3, N): offsets, then lengths, of the example (impression) id, member
    id and item id. ``global_offsets``
    (N + 1) splits the int32 ``global_columns`` and float32 ``global_values`` by row.
    ``coordinates`` names the random effects in map order; ``entity_ids`` (2, M, N) holds
    offsets, then lengths; ``dense`` is (N, total width) float32, coordinate
    ``c`` in columns ``dense_offsets[c]:dense_offsets[c + 1]``. ``context_offsets`` (N + 1)
    splits ``context`` (4, E): key offset, key length, value offset, value length.
    ``unindexed`` is (2, N) (offset, length) into ``buffer``, length -1 for none.
    """

    buffer: np.ndarray
    ids: np.ndarray
    event_time: np.ndarray
    global_offsets: np.ndarray
    global_columns: np.ndarray
    global_values: np.ndarray
    coordinates: tuple[str, ...]
    entity_ids: np.ndarray
    dense: np.ndarray
    dense_offsets: np.ndarray
    index_version: int
    random_bucket: np.ndarray
    position: np.ndarray
    context_offsets: np.ndarray
    context: np.ndarray
    unindexed: np.ndarray

    def __len__(self) -> int:
        return len(self.event_time)


def encode_unlabeled_examples(header: bytes, columns: UnlabeledColumns) -> list[bytes]:
    """One framed ``LabeledExample`` value per row: ``header`` + the body, label 0 and nothing scored yet."""
    n = len(columns)
    if n == 0:
        return []
    if sys.byteorder != "little":  # arrays are copied as they lie in memory; Avro's are little-endian
        raise EncodeError("the batch LabeledExample writer needs a little-endian machine")
    names = [name.encode() for name in columns.coordinates]
    name_offsets = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum([len(name) for name in names], out=name_offsets[1:])
    unindexed_lengths = np.maximum(columns.unindexed[1], 0)
    capacity = (
        n * (len(header) + 24 + 16 * MAX_VARINT + len(names) * (int(name_offsets[-1]) + 3 * MAX_VARINT))
        + int(columns.ids[1].sum())
        + 8 * len(columns.global_columns)
        + int(columns.entity_ids[1].sum())
        + columns.dense.nbytes
        + int(columns.context[1].sum() + columns.context[3].sum())
        + 2 * MAX_VARINT * columns.context.shape[1]
        + int(unindexed_lengths.sum())
    )
    buffer, offsets = _write(
        np.frombuffer(header, dtype=np.uint8),
        columns.buffer,
        np.ascontiguousarray(columns.ids, dtype=np.int64).reshape(2, 3, n),
        np.ascontiguousarray(columns.event_time, dtype=np.int64),
        np.ascontiguousarray(columns.global_offsets, dtype=np.int64),
        np.ascontiguousarray(columns.global_columns, dtype="<i4").view(np.uint8),
        np.ascontiguousarray(columns.global_values, dtype="<f4").view(np.uint8),
        np.frombuffer(b"".join(names), dtype=np.uint8),
        name_offsets,
        np.ascontiguousarray(columns.entity_ids, dtype=np.int64).reshape(2, len(names), n),
        np.ascontiguousarray(columns.dense, dtype="<f4").view(np.uint8).reshape(n, -1),
        4 * np.ascontiguousarray(columns.dense_offsets, dtype=np.int64),
        np.int64(columns.index_version),
        np.ascontiguousarray(columns.random_bucket, dtype=np.uint8),
        np.ascontiguousarray(columns.position, dtype=np.int64),
        np.ascontiguousarray(columns.context_offsets, dtype=np.int64),
        np.ascontiguousarray(columns.context, dtype=np.int64).reshape(4, -1),
        np.ascontiguousarray(columns.unindexed, dtype=np.int64),
        capacity,
    )
    return split_values(buffer, offsets)


@njit(nogil=True, cache=True)
def _write(
    header,
    buf,
    ids,
    event_time,
    global_offsets,
    global_columns,
    global_values,
    names,
    name_offsets,
    entity_ids,
    dense,
    dense_offsets,
    index_version,
    random_bucket,
    position,
    context_offsets,
    context,
    unindexed,
    capacity,
):
    n = event_time.shape[0]
    coordinates = name_offsets.shape[0] - 1
    out = np.empty(capacity, dtype=np.uint8)
    offsets = np.empty(n + 1, dtype=np.int64)
    pos = 0
    for row in range(n):
        offsets[row] = pos
        pos = write_raw(out, pos, header, 0, header.shape[0])
        for field in range(3):  # example_id, member_id, item_id
            start = ids[0, field, row]
            pos = write_bytes(out, pos, buf, start, start + ids[1, field, row])
        for _ in range(8):  # label 0.0
            out[pos] = 0
            pos += 1
        pos = write_raw(out, pos, _WEIGHT_ONE, 0, 8)
        for _ in range(8):  # offset 0.0
            out[pos] = 0
            pos += 1
        pos = write_long(out, pos, event_time[row])
        pos = write_long(out, pos, event_time[row])  # label_time: the impression's until it is labeled
        for _ in range(3):  # interaction_types, scores, model_versions: empty
            out[pos] = 0
            pos += 1
        first, last = 4 * global_offsets[row], 4 * global_offsets[row + 1]
        pos = write_bytes(out, pos, global_columns, first, last)
        pos = write_bytes(out, pos, global_values, first, last)
        if coordinates > 0:
            pos = write_long(out, pos, np.int64(coordinates))
            for c in range(coordinates):
                pos = write_bytes(out, pos, names, name_offsets[c], name_offsets[c + 1])
                start = entity_ids[0, c, row]
                pos = write_bytes(out, pos, buf, start, start + entity_ids[1, c, row])
                pos = write_bytes(out, pos, dense[row], dense_offsets[c], dense_offsets[c + 1])
        out[pos] = 0
        pos += 1
        pos = write_long(out, pos, index_version)
        out[pos] = random_bucket[row]
        pos += 1
        pos = write_long(out, pos, position[row])
        entries = context_offsets[row + 1] - context_offsets[row]
        if entries > 0:
            pos = write_long(out, pos, entries)
            for e in range(context_offsets[row], context_offsets[row + 1]):
                pos = write_bytes(out, pos, buf, context[0, e], context[0, e] + context[1, e])
                pos = write_bytes(out, pos, buf, context[2, e], context[2, e] + context[3, e])
        out[pos] = 0
        pos += 1
        if unindexed[1, row] < 0:
            out[pos] = 0
            pos += 1
        else:
            out[pos] = 2  # union branch 1 (bytes), zig-zag encoded
            pos += 1
            pos = write_bytes(out, pos, buf, unindexed[0, row], unindexed[0, row] + unindexed[1, row])
    offsets[n] = pos
    return out[:pos], offsets
