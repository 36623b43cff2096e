"""Avro container files of any of the package's schemas: streamed in, streamed out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fastavro

from stream.codec.exceptions import DecodeError, EncodeError
from stream.codec.schemas import load_schema


def write_container(path: str | Path, schema_name: str, records: Iterable[Mapping[str, Any]], codec: str = "deflate") -> int:
    """Write ``records`` to an Avro container file with schema ``schema_name``; returns the count."""
    schema = load_schema(schema_name)
    count = 0

    def counted() -> Iterator[Mapping[str, Any]]:
        nonlocal count
        for record in records:
            count += 1
            yield record

    try:
        with open(path, "wb") as out:
            fastavro.writer(out, schema.parsed, counted(), codec=codec)
    except (ValueError, TypeError, KeyError) as exc:
        raise EncodeError(f"{schema_name} record {count} does not match the schema: {exc}") from exc
    return count


def read_container(path: str | Path, schema_name: str) -> Iterator[dict[str, Any]]:
    """Stream the records of a container file, resolved to ``schema_name`` (timestamps as epoch ms)."""
    schema = load_schema(schema_name)
    with open(path, "rb") as fh:
        try:
            for record in fastavro.reader(fh, reader_schema=schema.plain):
                yield record  # type: ignore[misc]
        except (ValueError, EOFError, fastavro.read.SchemaResolutionError) as exc:
            raise DecodeError(f"{path}: not a readable {schema_name} container file: {exc}") from exc
