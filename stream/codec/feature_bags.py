"""Feature bags packed into one Avro ``bytes`` field: ``LabeledExample.unindexed_features``.

The value is shaped like ``Impression.features`` (bag -> array of NameTermValue) and
Avro-encoded without framing: its schema is fixed by the field's documentation, so a
reader needs nothing else. Packing keeps the updaters' decode at one copy for a field
that only the vocabulary writer and the refit read.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from stream.codec.exceptions import DecodeError
from stream.codec.schemas import load_schema

BagItems = Mapping[str, Sequence[Mapping[str, Any]]]


@cache
def _bags_schema() -> Any:
    ntv = next(f for f in load_schema("Impression").plain["fields"] if f["name"] == "features")["type"]["values"][
        "items"
    ]
    return parse_schema({"type": "map", "values": {"type": "array", "items": ntv}}, named_schemas={})


def encode_bags(bags: BagItems) -> bytes | None:
    """The packed bytes of ``bags`` (None for no features, the field's default)."""
    if not bags:
        return None
    out = io.BytesIO()
    schemaless_writer(out, _bags_schema(), bags)
    return out.getvalue()


def decode_bags(packed: bytes | None) -> dict[str, list[dict[str, Any]]]:
    """The bags packed by :func:`encode_bags`."""
    if not packed:
        return {}
    try:
        return cast(dict[str, list[dict[str, Any]]], schemaless_reader(io.BytesIO(packed), _bags_schema(), None))
    except Exception as exc:  # fastavro raises several kinds for truncated or foreign bytes
        raise DecodeError(f"unindexed_features is not a packed bag map: {exc}") from exc
