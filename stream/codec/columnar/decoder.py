"""The columnar decoder of one reader schema, built once from its schemas, and fastavro as the fallback.

``ColumnarDecoder.single_object(load_schema("Impression")).decode(values)`` turns a
batch of framed values into a :class:`ColumnarBatch` in one compiled pass. Rows whose
writer schema has no compiled program get ``UNKNOWN_WRITER_SCHEMA``; :func:`decode_fallback`
decodes those with the project's fastavro codec, or gives fastavro's reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.codec.avro import REGISTRY_MAGIC, SINGLE_OBJECT_MAGIC, RecordCodec
from stream.codec.columnar.batch import (
    ColumnarBatch,
    FeatureBagsColumn,
    FieldColumn,
    ScalarColumn,
    StringColumn,
    StringMapColumn,
)
from stream.codec.columnar.kernel import BAG_REFS, FEATURE_REFS, STRING_MAP_REFS, decode_values, hash_triple
from stream.codec.columnar.plan import (
    OP_COLUMNS,
    STORAGE,
    Column,
    Kind,
    Program,
    SlotCounter,
    Status,
    Storage,
    reader_columns,
    writer_program,
)
from stream.codec.exceptions import DecodeError
from stream.codec.schemas import AvroSchema
from stream.errors import InvalidValueError

# Typed arrays of the scalar kinds; the kernel decodes them all into int64 or float64.
_DTYPES = {
    Kind.INT: np.int32,
    Kind.LONG: np.int64,
    Kind.BOOLEAN: np.bool_,
    Kind.ENUM: np.int32,
    Kind.FLOAT: np.float32,
    Kind.DOUBLE: np.float64,
}
FALLBACK_STATUSES = frozenset({Status.UNKNOWN_WRITER_SCHEMA})
_FEATURES_PER_ROW = 16  # first guess of the map and feature tables' size; they double when it is short


def feature_hash(bag: str, name: str, term: str) -> int:
    """FNV-1a 64 of bag, 0xFF, name, 0xFF, term (UTF-8): the hash the decoder stores with each feature."""
    parts = [part.encode() for part in (bag, name, term)]
    buf = np.frombuffer(b"".join(parts), dtype=np.uint8)
    return int(hash_triple(buf, len(parts[0]), len(parts[0]) + len(parts[1])))


class ColumnarDecoder:
    """Decodes batches of framed values of one reader schema into columns, one compiled pass per batch.

    ``writers`` maps each known framing header (magic + writer key: a single-object
    fingerprint or a registry schema id) to its writer schema. A program is built for
    each writer the kernel can resolve to ``reader``; values of other writers get
    ``UNKNOWN_WRITER_SCHEMA`` and go to :func:`decode_fallback`. Raises
    :class:`~stream.codec.columnar.plan.UnsupportedSchemaError` if ``reader`` has a field
    type the kernel cannot decode.
    """

    def __init__(self, reader: AvroSchema, magic: bytes, writers: Mapping[bytes, AvroSchema]) -> None:
        self.schema = reader
        slots = SlotCounter()
        self.columns = reader_columns(reader, slots)
        programs: list[tuple[bytes, Program]] = []
        for header, writer in writers.items():
            if not header.startswith(magic):
                raise InvalidValueError(f"writer header {header.hex()} does not start with the magic {magic.hex()}")
            program = writer_program(self.columns, writer, slots)
            if program is not None:
                programs.append((header, program))
        if len({len(header) for header, _ in programs}) > 1:
            raise InvalidValueError("every writer header of one framing must have the same length")
        header_length = len(programs[0][0]) if programs else len(magic)
        self._magic = np.frombuffer(magic, dtype=np.uint8)
        self._prefixes = np.array(
            [np.frombuffer(header, dtype=np.uint8) for header, _ in programs], dtype=np.uint8
        ).reshape(len(programs), header_length)
        self._ops = np.concatenate([p.ops for _, p in programs] or [np.zeros((0, OP_COLUMNS), dtype=np.int64)])
        self._op_starts = np.cumsum([0] + [len(p.ops) for _, p in programs], dtype=np.int64)
        self._writer_fields = tuple(p.field_names for _, p in programs)
        self._slots = np.array(slots.used, dtype=np.int64)

    @classmethod
    def single_object(cls, reader: AvroSchema, writer_schemas: Iterable[AvroSchema] = ()) -> ColumnarDecoder:
        """The decoder of Avro single-object values, as :class:`~stream.codec.SingleObjectCodec` frames them."""
        writers = {SINGLE_OBJECT_MAGIC + reader.fingerprint: reader}
        writers.update({SINGLE_OBJECT_MAGIC + w.fingerprint: w for w in writer_schemas})
        return cls(reader, SINGLE_OBJECT_MAGIC, writers)

    @classmethod
    def of_codec(cls, codec: RecordCodec) -> ColumnarDecoder:
        """The decoder of the values ``codec`` reads, for every writer schema it knows now."""
        return cls(codec.schema, codec.magic, codec.writers())

    @classmethod
    def registry(cls, reader: AvroSchema, schema_ids: Mapping[int, AvroSchema]) -> ColumnarDecoder:
        """The decoder of Schema Registry framed values whose writer schemas have the ids ``schema_ids``."""
        writers = {REGISTRY_MAGIC + int(i).to_bytes(4, "big"): w for i, w in schema_ids.items()}
        return cls(reader, REGISTRY_MAGIC, writers)

    @property
    def writer_count(self) -> int:
        """How many writer schemas have a compiled program."""
        return len(self._writer_fields)

    @classmethod
    def bodies(cls, reader: AvroSchema) -> ColumnarDecoder:
        """The decoder of bare Avro bodies written with ``reader`` itself, as a container file's blocks hold them."""
        return cls(reader, b"", {b"": reader})

    def decode(self, values: Sequence[bytes | None]) -> ColumnarBatch:
        """Decode a batch of message values (None: a tombstone); never raises for a bad value."""
        present = np.fromiter((v is not None for v in values), dtype=np.uint8, count=len(values))
        starts = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(v) if v is not None else 0 for v in values), np.int64, len(values)), out=starts[1:])
        return self._decoded(b"".join(v for v in values if v is not None), starts, present, sequential=False)

    def decode_bodies(self, data: bytes, count: int) -> ColumnarBatch:
        """Decode ``count`` values lying back to back in ``data``, each one's end found by decoding it.

        A value that does not decode fails with its reason and every value after it with
        ``AFTER_UNDECODABLE``; bytes left after the last value fail the last one.
        """
        starts = np.zeros(count + 1, dtype=np.int64)
        return self._decoded(data, starts, np.ones(count, dtype=np.uint8), sequential=True)

    def _decoded(self, data: bytes, starts: np.ndarray, present: np.ndarray, sequential: bool) -> ColumnarBatch:
        scalars, maps, bags, outcome = decode_values(
            np.frombuffer(data, dtype=np.uint8),
            starts,
            present,
            self._magic,
            self._prefixes,
            self._ops,
            self._op_starts,
            self._slots,
            max(1, len(present)) * _FEATURES_PER_ROW,
            sequential,
        )
        status, error_at, error_field, writer = outcome
        columns = {c.name: self._column(c, data, scalars, maps, bags) for c in self.columns}
        return ColumnarBatch(
            self.schema.name, data, starts, status, error_at, error_field, writer, columns, self._writer_fields
        )

    def _column(self, column: Column, data: bytes, scalars: tuple, maps: tuple, bags: tuple) -> FieldColumn:
        ints, floats, string_offsets, string_lengths, presence = scalars
        kind = column.type.inner if column.type.kind is Kind.OPTIONAL else column.type.kind
        assert kind is not None
        present = presence[column.presence].astype(bool) if column.presence >= 0 else None
        storage = STORAGE[kind]
        slot = column.slot
        if storage is Storage.STRINGS:
            return StringColumn(data, string_offsets[slot], string_lengths[slot], kind is Kind.STRING, present)
        if storage is Storage.INTS or storage is Storage.FLOATS:
            table = ints if storage is Storage.INTS else floats
            return ScalarColumn(table[slot].astype(_DTYPES[kind]), present, column.type.symbols)
        if storage is Storage.STRING_MAPS:
            rows, refs = maps
            used = int(rows[slot, -1])
            k = STRING_MAP_REFS * slot
            return StringMapColumn(data, rows[slot], *(refs[k + j, :used] for j in range(STRING_MAP_REFS)))
        return _feature_bags(data, slot, bags)


def _feature_bags(data: bytes, slot: int, bags: tuple) -> FeatureBagsColumn:
    feature_rows, feature_refs, values, hashes, bag_rows, bag_refs = bags
    features = int(feature_rows[slot, -1])
    used = int(bag_rows[slot, -1])
    k = FEATURE_REFS * slot
    b = BAG_REFS * slot
    return FeatureBagsColumn(
        data=data,
        row_offsets=feature_rows[slot],
        bag_offsets=feature_refs[k, :features],
        bag_lengths=feature_refs[k + 1, :features],
        name_offsets=feature_refs[k + 2, :features],
        name_lengths=feature_refs[k + 3, :features],
        term_offsets=feature_refs[k + 4, :features],
        term_lengths=feature_refs[k + 5, :features],
        values=values[slot, :features],
        hashes=hashes[slot, :features],
        bag_row_offsets=bag_rows[slot],
        bag_key_offsets=bag_refs[b, :used],
        bag_key_lengths=bag_refs[b + 1, :used],
        bag_feature_offsets=np.append(bag_refs[b + 2, :used], features),
    )


@dataclass
class FallbackResult:
    """What fastavro made of the rows the compiled path left to it: records, or the reason for a dead letter."""

    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)


def decode_fallback(codec: RecordCodec, values: Sequence[bytes | None], batch: ColumnarBatch) -> FallbackResult:
    """Decode with ``codec`` (fastavro) the rows of ``batch`` whose status is in :data:`FALLBACK_STATUSES`."""
    result = FallbackResult()
    for row in np.flatnonzero(np.isin(batch.status, [int(s) for s in FALLBACK_STATUSES])).tolist():
        try:
            result.records[row] = codec.decode(values[row])  # type: ignore[arg-type]  # the codec refuses non-bytes
        except DecodeError as exc:
            result.failures[row] = exc.reason
    return result
