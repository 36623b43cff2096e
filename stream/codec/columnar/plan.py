"""From an Avro record schema to the program the compiled decoder runs, and the column layout it fills.

A reader schema's fields become columns (one slot in a typed table per field); each
known writer schema becomes a program: one op per writer field, in wire order, naming
the column it fills. The program is data, not code, so one compiled kernel decodes
every schema and numba's on-disk cache holds it once. A field whose type has no op
raises :class:`UnsupportedSchemaError` when the decoder is built: a schema change
either decodes or fails loudly, never mis-decodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from stream.codec.exceptions import CodecError
from stream.codec.schemas import AvroSchema


class UnsupportedSchemaError(CodecError):
    """A schema has a field type the columnar decoder has no op for; the message names the field."""


class Status(IntEnum):
    """Outcome of decoding one value; everything but ``OK`` is a reason to dead-letter (or fall back)."""

    OK = 0
    MISSING_VALUE = 1
    BAD_HEADER = 2
    UNKNOWN_WRITER_SCHEMA = 3
    TRUNCATED = 4
    TRAILING_BYTES = 5
    BAD_UTF8 = 6
    BAD_UNION_INDEX = 7
    BAD_ENUM_INDEX = 8
    NEGATIVE_LENGTH = 9
    BAD_VARINT = 10
    INT_OUT_OF_RANGE = 11
    BAD_BOOLEAN = 12
    DUPLICATE_MAP_KEY = 13
    AFTER_UNDECODABLE = 14


STATUS_TEXT = {
    Status.OK: "ok",
    Status.MISSING_VALUE: "no value (a tombstone)",
    Status.BAD_HEADER: "bad or missing framing header",
    Status.UNKNOWN_WRITER_SCHEMA: "unknown writer schema",
    Status.TRUNCATED: "truncated value",
    Status.TRAILING_BYTES: "trailing bytes after the Avro body",
    Status.BAD_UTF8: "string is not valid UTF-8",
    Status.BAD_UNION_INDEX: "union branch index out of range",
    Status.BAD_ENUM_INDEX: "enum symbol index out of range",
    Status.NEGATIVE_LENGTH: "negative string, bytes or block length",
    Status.BAD_VARINT: "varint longer than 64 bits",
    Status.INT_OUT_OF_RANGE: "int outside 32 bits",
    Status.BAD_BOOLEAN: "boolean byte is neither 0 nor 1",
    Status.DUPLICATE_MAP_KEY: "map key repeated",
    Status.AFTER_UNDECODABLE: "follows a body that does not decode, so where it starts is unknown",
}


class Kind(IntEnum):
    """A field type the kernel decodes; also the op code of the field in a program."""

    STRING = 1
    BYTES = 2
    INT = 3
    LONG = 4
    BOOLEAN = 5
    FLOAT = 6
    DOUBLE = 7
    ENUM = 8
    OPTIONAL = 9
    STRING_MAP = 10
    FEATURE_BAGS = 11


class Storage(IntEnum):
    """The table of the kernel's output a kind's values go to (one row of it per column)."""

    INTS = 0
    FLOATS = 1
    STRINGS = 2
    PRESENCE = 3
    STRING_MAPS = 4
    FEATURE_BAGS = 5


STORAGE = {
    Kind.STRING: Storage.STRINGS,
    Kind.BYTES: Storage.STRINGS,
    Kind.INT: Storage.INTS,
    Kind.LONG: Storage.INTS,
    Kind.BOOLEAN: Storage.INTS,
    Kind.ENUM: Storage.INTS,
    Kind.FLOAT: Storage.FLOATS,
    Kind.DOUBLE: Storage.FLOATS,
    Kind.OPTIONAL: Storage.PRESENCE,
    Kind.STRING_MAP: Storage.STRING_MAPS,
    Kind.FEATURE_BAGS: Storage.FEATURE_BAGS,
}
_PRIMITIVES = {
    "string": Kind.STRING,
    "bytes": Kind.BYTES,
    "int": Kind.INT,
    "long": Kind.LONG,
    "boolean": Kind.BOOLEAN,
    "float": Kind.FLOAT,
    "double": Kind.DOUBLE,
}
_SCALARS = frozenset(_PRIMITIVES.values()) | {Kind.ENUM}
_NAME_TERM_VALUE = (("name", "string"), ("term", "string"), ("value", "double"))
OP_COLUMNS = 4  # an op is (kind, slot, extra, field number): extra is an enum's symbol count or a union's null branch


@dataclass(frozen=True)
class FieldType:
    """A field's decoded kind; for ``OPTIONAL`` also the non-null branch's kind and the null branch's index."""

    kind: Kind
    inner: Kind | None = None
    null_branch: int = 0
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True)
class Column:
    """One reader field: where its values land (``slot`` in its storage table; ``presence`` for an optional)."""

    name: str
    type: FieldType
    slot: int
    presence: int = -1


@dataclass
class SlotCounter:
    """Hands out rows of each storage table; reader columns first, then the slots writer-only fields decode into."""

    used: list[int] = field(default_factory=lambda: [0] * len(Storage))

    def take(self, storage: Storage) -> int:
        """The next free row of ``storage``."""
        self.used[storage] += 1
        return self.used[storage] - 1


def _named_types(node: Any, found: dict[str, Any]) -> dict[str, Any]:
    """Every named type (record, enum, fixed) defined anywhere in ``node``, by full name."""
    if isinstance(node, list):
        for item in node:
            _named_types(item, found)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed") and "name" in node:
            found[node["name"]] = node
        for key in ("fields", "items", "values", "type"):
            if key in node:
                _named_types(node[key], found)
    return found


def _resolve(node: Any, named: Mapping[str, Any]) -> Any:
    """``node`` with a reference to a named type replaced by its definition, and ``{"type": "long"}`` by ``"long"``."""
    if isinstance(node, str) and node in named:
        return named[node]
    if isinstance(node, dict) and node.get("type") in _PRIMITIVES and len(node) == 1:
        return node["type"]
    return node


def _is_name_term_value_array(node: Any, named: Mapping[str, Any]) -> bool:
    node = _resolve(node, named)
    if not isinstance(node, dict) or node.get("type") != "array":
        return False
    item = _resolve(node["items"], named)
    if not isinstance(item, dict) or item.get("type") != "record":
        return False
    fields = tuple((f["name"], _resolve(f["type"], named)) for f in item["fields"])
    return fields == _NAME_TERM_VALUE


def field_type(node: Any, named: Mapping[str, Any], where: str) -> FieldType:
    """The kind of a field of Avro type ``node``; raises :class:`UnsupportedSchemaError` naming ``where``."""
    node = _resolve(node, named)
    if isinstance(node, str) and node in _PRIMITIVES:
        return FieldType(_PRIMITIVES[node])
    if isinstance(node, list) and len(node) == 2 and "null" in node:
        null_branch = node.index("null")
        inner = field_type(node[1 - null_branch], named, where)
        if inner.kind in _SCALARS:
            return FieldType(Kind.OPTIONAL, inner.kind, null_branch, inner.symbols)
    if isinstance(node, dict) and node.get("type") == "enum":
        return FieldType(Kind.ENUM, symbols=tuple(node["symbols"]))
    if isinstance(node, dict) and node.get("type") == "map":
        if _resolve(node["values"], named) == "string":
            return FieldType(Kind.STRING_MAP)
        if _is_name_term_value_array(node["values"], named):
            return FieldType(Kind.FEATURE_BAGS)
    raise UnsupportedSchemaError(
        f"{where}: the columnar decoder has no op for Avro type {node!r} (scalars, enums, ['null', scalar] unions, "
        "map<string> and map<array<NameTermValue>> are supported); decode this schema with fastavro"
    )


def _column(name: str, kind: FieldType, slots: SlotCounter) -> Column:
    if kind.kind is Kind.OPTIONAL:
        assert kind.inner is not None
        presence = slots.take(Storage.PRESENCE)
        return Column(name, kind, slots.take(STORAGE[kind.inner]), presence)
    return Column(name, kind, slots.take(STORAGE[kind.kind]))


def schema_fields(schema: AvroSchema) -> list[tuple[str, FieldType]]:
    """(name, type) of every field of ``schema``, in wire order."""
    named = _named_types(schema.plain, {})
    return [(f["name"], field_type(f["type"], named, f"{schema.name}.{f['name']}")) for f in schema.plain["fields"]]


def reader_columns(schema: AvroSchema, slots: SlotCounter) -> tuple[Column, ...]:
    """The columns a batch decoded to ``schema`` has, one per field in field order."""
    return tuple(_column(name, kind, slots) for name, kind in schema_fields(schema))


def _op(column: Column, number: int) -> list[list[int]]:
    kind = column.type
    if kind.kind is Kind.OPTIONAL:
        assert kind.inner is not None
        inner = [int(kind.inner), column.slot, len(kind.symbols), number]
        return [[int(Kind.OPTIONAL), column.presence, kind.null_branch, number], inner]
    return [[int(kind.kind), column.slot, len(kind.symbols), number]]


@dataclass(frozen=True)
class Program:
    """The ops decoding one writer schema's records; an op's field number indexes ``field_names`` (wire order)."""

    ops: np.ndarray
    field_names: tuple[str, ...]


def writer_program(columns: Iterable[Column], writer: AvroSchema, slots: SlotCounter) -> Program | None:
    """The program decoding ``writer``'s records into ``columns``, or None if the kernel cannot resolve them.

    A writer field the reader lacks is decoded into a slot of its own and dropped; a
    reader field the writer lacks, or a field whose type changed, leaves the writer to
    fastavro's schema resolution (None).
    """
    by_name = {column.name: column for column in columns}
    fields = schema_fields(writer)
    if set(by_name) - {name for name, _ in fields}:
        return None
    if any(name in by_name and by_name[name].type != kind for name, kind in fields):
        return None
    ops: list[list[int]] = []
    for number, (name, kind) in enumerate(fields):
        ops += _op(by_name[name] if name in by_name else _column(name, kind, slots), number)
    return Program(np.array(ops, dtype=np.int64).reshape(-1, OP_COLUMNS), tuple(name for name, _ in fields))
