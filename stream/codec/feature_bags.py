"""Feature bags packed into one Avro ``bytes`` field: ``LabeledExample.unindexed_features``.

The value is shaped like ``Impression.features`` (bag -> array of NameTermValue) and
Avro-encoded without framing: its schema is fixed by the field's documentation, so a
reader needs nothing else. Packing keeps the updaters' decode at one copy for a field
that only the vocabulary writer and the refit read.

The joiner packs a whole batch's features at once from arrays (:func:`pack_feature_rows`,
compiled); :func:`encode_bags` packs one row's dict, the same bytes, through fastavro.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, cast

import numpy as np
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from numba import njit

from stream.codec.columnar.kernel import same_bytes
from stream.codec.columnar.writer import MAX_VARINT, write_bytes, write_long, write_raw
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


def pack_feature_rows(
    strings: bytes, refs: np.ndarray, rows: np.ndarray, values: np.ndarray, n: int
) -> tuple[bytes, np.ndarray]:
    """Each of ``n`` rows' features packed as :func:`encode_bags` packs them: one buffer and each row's (offset,
    length) in it (length -1: a row without features).

    Feature ``i`` is on row ``rows[i]`` with value ``values[i]``; its bag, name and term lie at
    ``refs[:, i]`` (offset and length of each, six rows) in ``strings``. A row's bags come in
    the order of their first feature, a bag's features in their order, as a dict built by
    appending them in turn holds them.
    """
    spans = np.zeros((2, n), dtype=np.int64)
    spans[1] = -1
    if not len(rows):
        return b"", spans
    refs = np.ascontiguousarray(refs, dtype=np.int64)
    capacity = int(refs[1].sum() + refs[3].sum() + refs[5].sum()) + len(rows) * (5 * MAX_VARINT + 8) + 2 * MAX_VARINT
    out = np.empty(capacity, dtype=np.uint8)
    order = np.argsort(rows, kind="stable")
    value_bytes = np.ascontiguousarray(values, dtype="<f8").view(np.uint8)
    data = np.frombuffer(strings, dtype=np.uint8) if strings else np.zeros(1, dtype=np.uint8)
    end = _pack_rows(data, refs, np.asarray(rows, dtype=np.int64), value_bytes, order, out, spans)
    return out[:end].tobytes(), spans


@njit(nogil=True, cache=True)
def _pack_rows(data, refs, rows, value_bytes, order, out, spans):
    m = order.shape[0]
    first = np.empty(m, dtype=np.int64)  # per position in ``order``: the position of the first feature of its bag
    counts = np.zeros(m, dtype=np.int64)  # per first feature of a bag: the bag's features on the row
    pos = 0
    i = 0
    while i < m:
        row = rows[order[i]]
        j = i
        while j < m and rows[order[j]] == row:
            j += 1
        bags = 0
        for a in range(i, j):
            first[a] = a
            for b in range(i, a):
                if first[b] == b and same_bytes(
                    data, refs[0, order[a]], refs[1, order[a]], refs[0, order[b]], refs[1, order[b]]
                ):
                    first[a] = b
                    break
            counts[first[a]] += 1
            if first[a] == a:
                bags += 1
        start = pos
        pos = write_long(out, pos, np.int64(bags))
        for a in range(i, j):
            if first[a] != a:
                continue
            e = order[a]
            pos = write_bytes(out, pos, data, refs[0, e], refs[0, e] + refs[1, e])
            pos = write_long(out, pos, counts[a])
            for c in range(a, j):
                if first[c] != a:
                    continue
                f = order[c]
                pos = write_bytes(out, pos, data, refs[2, f], refs[2, f] + refs[3, f])
                pos = write_bytes(out, pos, data, refs[4, f], refs[4, f] + refs[5, f])
                pos = write_raw(out, pos, value_bytes, 8 * f, 8 * f + 8)
            pos = write_long(out, pos, np.int64(0))
        pos = write_long(out, pos, np.int64(0))
        spans[0, row] = start
        spans[1, row] = pos - start
        i = j
    return pos
