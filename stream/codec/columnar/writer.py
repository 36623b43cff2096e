"""Avro primitives for the compiled batch writers: zig-zag varints and length-prefixed byte ranges.

Shared by the writers that encode whole batches from arrays (``EntityModel`` in
:mod:`stream.codec.entity_model_writer`, ``LabeledExample`` in
:mod:`stream.codec.example_writer`); each writes into a preallocated ``uint8`` buffer and
returns the next position.
"""

from __future__ import annotations

import itertools

import numpy as np

from stream.codec.columnar.kernel import leaf

MAX_VARINT = 10  # bytes of the longest Avro long


@leaf
def write_long(buffer, pos, value):
    """Avro long: zig-zag, then base-128 varint; returns the next position."""
    encoded = np.uint64((value << 1) ^ (value >> 63))
    while encoded >= 0x80:
        buffer[pos] = np.uint8((encoded & np.uint64(0x7F)) | np.uint64(0x80))
        encoded >>= np.uint64(7)
        pos += 1
    buffer[pos] = np.uint8(encoded)
    return pos + 1


@leaf
def write_raw(buffer, pos, data, start, stop):
    """``data[start:stop]`` copied as it is; returns the next position."""
    for i in range(start, stop):
        buffer[pos] = data[i]
        pos += 1
    return pos


@leaf
def write_bytes(buffer, pos, data, start, stop):
    """Avro bytes or string: the length, then ``data[start:stop]``; returns the next position."""
    pos = write_long(buffer, pos, np.int64(stop - start))
    return write_raw(buffer, pos, data, start, stop)


def split_values(buffer: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    """The values a batch writer wrote back to back into ``buffer``: value ``i`` is ``offsets[i]:offsets[i + 1]``."""
    data = buffer.tobytes()
    bounds = offsets.tolist()
    return [data[a:b] for a, b in itertools.pairwise(bounds)]
