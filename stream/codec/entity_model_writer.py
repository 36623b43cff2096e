"""Batch Avro encoding of ``EntityModel`` values straight from state arrays.

Every updated entity is published, so on the cold workload (one event per entity and
micro-batch) encoding one record per event with fastavro — a dict built per entity, then
written field by field — cost more than the Newton update and as much as decoding the
input. This writer emits the same bytes for a whole batch from the state columns in one
compiled pass. It knows exactly one schema: ``EntityModel.avsc`` as shipped, which
:func:`check_entity_model_schema` verifies field by field, and the tests compare its
output with fastavro's byte for byte.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit

from stream.codec.columnar.writer import MAX_VARINT, split_values, write_bytes, write_long
from stream.codec.exceptions import EncodeError
from stream.codec.schemas import AvroSchema

# (name, Avro type) of EntityModel's fields, in the order the writer emits them.
ENTITY_MODEL_FIELDS = (
    ("coordinate", "string"),
    ("entity_id", "string"),
    ("version", "long"),
    ("means", "array<double>"),
    ("precision_kind", "enum"),
    ("precision", "bytes"),
    ("index_version", "long"),
    ("source_partition", "int"),
    ("source_offset", "long"),
    ("event_count", "long"),
    ("last_event_time", "long"),
    ("published_time", "long"),
)
PRECISION_KINDS = ("DIAGONAL", "PACKED_UPPER")


def check_entity_model_schema(schema: AvroSchema) -> None:
    """Raise :class:`EncodeError` unless ``schema`` has exactly the fields this writer emits, in order."""
    fields = schema.plain.get("fields", []) if isinstance(schema.plain, dict) else []

    def kind(avro_type: object) -> str:
        if isinstance(avro_type, dict):
            if avro_type.get("type") == "array":
                return f"array<{avro_type.get('items')}>"
            if avro_type.get("type") == "enum":
                return "enum" if tuple(avro_type.get("symbols", ())) == PRECISION_KINDS else "enum?"
            return str(avro_type.get("type"))
        return str(avro_type)

    found = tuple((f["name"], kind(f["type"])) for f in fields)
    if schema.name.split(".")[-1] != "EntityModel" or found != ENTITY_MODEL_FIELDS:
        raise EncodeError(f"the batch EntityModel writer does not know schema {schema.name} with fields {found}")


def encode_entity_models(
    header: bytes,
    coordinate: str,
    entity_ids: list[str],
    versions: np.ndarray,
    rows: np.ndarray,
    means_at: tuple[int, int],
    precision_kind: str,
    precision_at: tuple[int, int],
    index_versions: np.ndarray,
    partition: int,
    source_offsets: np.ndarray,
    event_counts: np.ndarray,
    last_event_times: np.ndarray,
    published_ms: int,
) -> list[bytes]:
    """One framed ``EntityModel`` value per entity: ``header`` (the codec's framing) + the Avro body.

    The means and the precision are float64 values read where they lie: ``rows`` is a
    (B, k) uint8 array (each entity's state record as bytes) and ``means_at`` /
    ``precision_at`` give (byte offset, number of doubles) inside a row. The integer
    columns are (B,). Raises :class:`NonFiniteCoefficientsError`, encoding nothing, if any
    of those doubles is NaN or infinite: checking while copying costs no extra pass.
    """
    count = len(entity_ids)
    if count == 0:
        return []
    if sys.byteorder != "little":  # doubles are copied as they lie in memory; Avro's are little-endian
        raise EncodeError("the batch EntityModel writer needs a little-endian machine")
    ids = [e.encode() for e in entity_ids]
    id_offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum([len(i) for i in ids], out=id_offsets[1:])
    buffer, offsets, finite = _write(
        np.frombuffer(header, dtype=np.uint8),
        np.frombuffer(coordinate.encode(), dtype=np.uint8),
        np.frombuffer(b"".join(ids), dtype=np.uint8),
        id_offsets,
        _int64(versions),
        np.ascontiguousarray(rows, dtype=np.uint8),
        means_at[0],
        means_at[1],
        PRECISION_KINDS.index(precision_kind),
        precision_at[0],
        precision_at[1],
        _int64(index_versions),
        partition,
        _int64(source_offsets),
        _int64(event_counts),
        _int64(last_event_times),
        published_ms,
    )
    if not finite:
        raise NonFiniteCoefficientsError("refusing to publish non-finite coefficients")
    return split_values(buffer, offsets)


class NonFiniteCoefficientsError(EncodeError):
    """A state about to be published holds a NaN or infinite mean or precision value."""


def _int64(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64)


@njit(nogil=True, cache=True)
def _write(
    header,
    coordinate,
    ids,
    id_offsets,
    versions,
    rows,
    means_offset,
    dim,
    kind,
    precision_offset,
    precision_size,
    index_versions,
    partition,
    source_offsets,
    event_counts,
    last_event_times,
    published_ms,
):
    count = versions.shape[0]
    fixed = header.shape[0] + coordinate.shape[0] + 8 * (dim + precision_size) + 12 * MAX_VARINT
    finite = True
    buffer = np.empty(count * fixed + ids.shape[0], dtype=np.uint8)
    offsets = np.empty(count + 1, dtype=np.int64)
    pos = 0
    for b in range(count):
        offsets[b] = pos
        for i in range(header.shape[0]):
            buffer[pos] = header[i]
            pos += 1
        pos = write_bytes(buffer, pos, coordinate, 0, coordinate.shape[0])
        pos = write_bytes(buffer, pos, ids, id_offsets[b], id_offsets[b + 1])
        pos = write_long(buffer, pos, versions[b])
        if dim > 0:  # one block of d doubles, then the empty block that ends the array
            pos = write_long(buffer, pos, np.int64(dim))
            pos, ok = _write_doubles(buffer, pos, rows[b], means_offset, dim)
            finite = finite and ok
        pos = write_long(buffer, pos, np.int64(0))
        pos = write_long(buffer, pos, np.int64(kind))
        pos = write_long(buffer, pos, np.int64(8 * precision_size))
        pos, ok = _write_doubles(buffer, pos, rows[b], precision_offset, precision_size)
        finite = finite and ok
        pos = write_long(buffer, pos, index_versions[b])
        pos = write_long(buffer, pos, np.int64(partition))
        pos = write_long(buffer, pos, source_offsets[b])
        pos = write_long(buffer, pos, event_counts[b])
        pos = write_long(buffer, pos, last_event_times[b])
        pos = write_long(buffer, pos, np.int64(published_ms))
    offsets[count] = pos
    return buffer[:pos], offsets, finite


@njit(nogil=True, cache=True)
def _write_doubles(buffer, pos, row, start, count):
    """``count`` doubles stored at byte ``start`` of ``row``, copied; also says whether they were all finite.

    Read as bytes, not as a float view, because a state record need not start 8-byte
    aligned: a double is NaN or infinite exactly when its 11 exponent bits are all ones.
    """
    stop = start + 8 * count
    buffer[pos : pos + 8 * count] = row[start:stop]
    finite = True
    for i in range(start, stop, 8):
        if (row[i + 7] & 0x7F) == 0x7F and (row[i + 6] & 0xF0) == 0xF0:
            finite = False
    return pos + 8 * count, finite
