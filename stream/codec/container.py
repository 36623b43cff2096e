"""Avro container files of any of the package's schemas: streamed in, streamed out.

The ``*_file`` variants take an open binary file, so callers can use any filesystem
(the archive uses fsspec); the others open a local path.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, cast

import fastavro
import numpy as np

from stream.codec.columnar.writer import MAX_VARINT, write_long
from stream.codec.exceptions import DecodeError, EncodeError
from stream.codec.schemas import AvroSchema, load_schema


def write_container_file(
    out: IO[bytes],
    schema_name: str,
    records: Iterable[Mapping[str, Any]],
    codec: str = "deflate",
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write ``records`` as an Avro container with schema ``schema_name`` to ``out``; returns the count.

    ``metadata`` goes into the file's header (:func:`container_metadata` reads it back without the records).
    """
    schema = load_schema(schema_name)
    count = 0

    def counted() -> Iterator[Mapping[str, Any]]:
        nonlocal count
        for record in records:
            count += 1
            yield record

    try:
        fastavro.writer(out, schema.parsed, counted(), codec=codec, metadata=dict(metadata or {}))
    except (ValueError, TypeError, KeyError) as exc:
        raise EncodeError(f"{schema_name} record {count} does not match the schema: {exc}") from exc
    return count


_BLOCK_BYTES = 64 * 1024  # uncompressed record bytes per block


def encoded_bodies(schema_name: str, records: Iterable[Mapping[str, Any]]) -> list[bytes]:
    """Each record Avro-encoded with ``schema_name``'s schema (unframed), for :func:`write_container_bodies`."""
    schema = load_schema(schema_name)
    bodies = []
    for count, record in enumerate(records):
        out = io.BytesIO()
        try:
            fastavro.schemaless_writer(out, schema.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"{schema_name} record {count} does not match the schema: {exc}") from exc
        bodies.append(out.getvalue())
    return bodies


def write_container_bodies(
    out: IO[bytes], schema_name: str, bodies: Sequence[bytes], metadata: Mapping[str, str] | None = None
) -> int:
    """Write records already Avro-encoded with ``schema_name``'s schema (``bodies``, unframed) as a deflate container.

    What :func:`write_container_file` writes, without decoding and encoding each record
    again: the bodies go into the blocks as they are, so they must come from an encoder or
    a scan of that schema. Returns the count.
    """
    sync = os.urandom(16)
    # The header is fastavro's, written for no records; the blocks carry the same sync marker.
    fastavro.writer(
        out, load_schema(schema_name).parsed, [], codec="deflate", metadata=dict(metadata or {}), sync_marker=sync
    )
    counts = np.empty(2 * MAX_VARINT, dtype=np.uint8)
    start = 0
    while start < len(bodies):
        end, size = start, 0
        while end < len(bodies) and (size < _BLOCK_BYTES or end == start):
            size += len(bodies[end])
            end += 1
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)  # raw deflate, as the Avro spec has it
        block = compressor.compress(b"".join(bodies[start:end])) + compressor.flush()
        used = write_long(counts, write_long(counts, 0, end - start), len(block))
        out.write(counts[:used].tobytes() + block + sync)
        start = end
    return len(bodies)


def write_container(
    path: str | Path, schema_name: str, records: Iterable[Mapping[str, Any]], codec: str = "deflate"
) -> int:
    """Write ``records`` to a local Avro container file with schema ``schema_name``; returns the count."""
    with open(path, "wb") as out:
        return write_container_file(out, schema_name, records, codec)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)


def _timestamp_fields(schema: Mapping[str, Any]) -> list[str]:
    return [
        f["name"]
        for f in schema["fields"]
        if isinstance(f["type"], Mapping) and f["type"].get("logicalType", "").startswith("timestamp")
    ]


def read_container_file(fh: IO[bytes], schema_name: str, name: str = "<stream>") -> Iterator[dict[str, Any]]:
    """Stream the records of an open container file, resolved to ``schema_name`` (timestamps as epoch ms).

    fastavro applies the *writer's* logical types, so timestamp fields come back as
    ``datetime`` and are turned back into epoch milliseconds, as every codec returns them.
    """
    schema = load_schema(schema_name)
    timestamps = _timestamp_fields(schema.parsed)
    try:
        for read in fastavro.reader(fh, reader_schema=schema.plain):
            record = cast(dict[str, Any], read)  # a record schema reads as dicts
            for key in timestamps:
                value = record[key]
                if isinstance(value, datetime):
                    record[key] = (value - _EPOCH) // _MILLISECOND
            yield record
    except (ValueError, EOFError, zlib.error, fastavro.read.SchemaResolutionError) as exc:
        raise DecodeError(f"{name}: not a readable {schema_name} container file: {exc}") from exc


def container_bodies(fh: IO[bytes], schema_name: str, name: str = "<stream>") -> Iterator[tuple[bytes, int]]:
    """Each block of an open container file as (its records' Avro bodies back to back, how many), in ``schema_name``.

    A compiled scan reads the bodies without fastavro building a dict per record. When the
    file's writer schema is ``schema_name``'s (the same parsing canonical form) a block's
    bodies are its own decompressed bytes; records of any other writer schema are resolved
    by fastavro and encoded again, so the bodies always have the one layout the scan knows.
    """
    schema = load_schema(schema_name)
    try:
        blocks = fastavro.block_reader(fh, reader_schema=schema.plain)
        same = AvroSchema.from_json(blocks.metadata["avro.schema"]).fingerprint == schema.fingerprint
        for block in blocks:
            if same:  # a block's decompressed bytes; fastavro's type stubs leave the attribute out
                yield block.bytes_.getvalue(), block.num_records  # type: ignore[attr-defined]
            else:
                yield b"".join(encoded_bodies(schema_name, cast(Iterable[Mapping[str, Any]], block))), block.num_records
    except (ValueError, EOFError, KeyError, zlib.error, fastavro.read.SchemaResolutionError) as exc:
        raise DecodeError(f"{name}: not a readable {schema_name} container file: {exc}") from exc


def container_metadata(fh: IO[bytes], name: str = "<stream>") -> dict[str, str]:
    """The key-value metadata of an open container file's header (``avro.schema`` and ``avro.codec`` included)."""
    try:
        return dict(fastavro.reader(fh).metadata)
    except (ValueError, EOFError) as exc:
        raise DecodeError(f"{name}: not an Avro container file: {exc}") from exc


def read_container(path: str | Path, schema_name: str) -> Iterator[dict[str, Any]]:
    """Stream the records of a local container file, resolved to ``schema_name``."""
    with open(path, "rb") as fh:
        yield from read_container_file(fh, schema_name, str(path))
