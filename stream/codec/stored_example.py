"""The unlabeled ``LabeledExample`` values the join state keeps, read and labeled as a batch without decoding them.

When an impression's window closes, the joiner needs a few things from the example it
stored (the ids, the offset, the indexed features to score it by) and sends it on with
its label, label time, interaction types, scores and model versions. Those five fields
sit together near the front of the record (see :data:`~stream.codec.example_writer.LABELED_EXAMPLE_FIELDS`),
so :func:`scan_stored` finds, in one compiled pass, where every field the joiner reads
lies, and :func:`splice_labels` writes each labeled value as the stored bytes with that
stretch replaced: features, context and unindexed features are copied, not decoded and
encoded again (DESIGN §8: encode each example once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from stream.codec.columnar.kernel import gathered, read_long, same_range, sliced
from stream.codec.columnar.writer import MAX_VARINT, split_values, write_bytes, write_long, write_raw
from stream.codec.exceptions import DecodeError

_OK, _NOT_UNLABELED, _OTHER_COORDINATES, _TRUNCATED = 0, 1, 2, 3
_PROBLEMS = {
    _NOT_UNLABELED: "already has interaction types, scores or versions",
    _OTHER_COORDINATES: "holds other coordinates than the configured ones, or in another order",
    _TRUNCATED: "is truncated",
}


@dataclass(frozen=True)
class StoredExamples:
    """Where the fields of N stored examples lie in ``data`` (their values concatenated; row ``i`` from ``starts[i]``).

    ``ids`` (2, 3, N): offsets, then lengths, of example id, member id, item id.
    ``label_at``: the label's 8 bytes; ``label_part_at``: the label time, which starts the
    replaced stretch; ``tail_at``: the first byte after it. ``weight_at`` / ``offset_at``: the two doubles.
    ``global_features`` (4, N): offset and length of the int32 indices, then of the float32 values.
    ``entity_ids`` and ``dense_refs`` (2, M, N): offsets, then lengths, per configured coordinate.
    """

    data: np.ndarray
    starts: np.ndarray
    header_size: int
    ids: np.ndarray
    label_at: np.ndarray
    event_time: np.ndarray
    label_part_at: np.ndarray
    tail_at: np.ndarray
    global_features: np.ndarray
    entity_ids: np.ndarray
    dense_refs: np.ndarray

    def __len__(self) -> int:
        return len(self.label_at)

    def strings(self, refs: np.ndarray) -> list[bytes]:
        """The bytes of each (offset, length) in ``refs`` (2, N)."""
        return sliced(self.data, refs[0], refs[1])

    def doubles_at(self, positions: np.ndarray) -> np.ndarray:
        """The little-endian doubles at ``positions``."""
        return self.data[positions[:, None] + np.arange(8)].copy().view("<f8").ravel()

    def weights(self) -> np.ndarray:
        """Each example's weight (the double after the label)."""
        return self.doubles_at(self.label_at + 8)

    def offsets(self) -> np.ndarray:
        """Each example's offset, the fixed margin outside every coordinate."""
        return self.doubles_at(self.label_at + 16)

    def global_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every example's global features as COO: (row, column, value)."""
        refs = self.global_features
        if ((refs[1] % 4) != 0).any() or (refs[1] != refs[3]).any():
            raise DecodeError(
                "LabeledExample: a stored example's global indices and values are not int32/float32 pairs"
            )
        counts = refs[1] // 4
        rows = np.repeat(np.arange(len(self)), counts)
        columns = gathered(self.data, self.global_features[0], self.global_features[1]).view("<i4")
        values = gathered(self.data, self.global_features[2], self.global_features[3]).view("<f4")
        return rows, columns.astype(np.int64), values.astype(np.float64)

    def dense(self, coordinate: int, width: int) -> np.ndarray:
        """(N, width) float32 features of coordinate ``coordinate`` (its position in the configured order)."""
        starts, lengths = self.dense_refs[0, coordinate], self.dense_refs[1, coordinate]
        if len(self) and not (lengths == 4 * width).all():
            raise DecodeError(f"LabeledExample: a stored example's dense features are not {width} floats wide")
        return gathered(self.data, starts, lengths).view("<f4").reshape(len(self), width)


def scan_stored(values: Sequence[bytes], header_size: int, coordinates: Sequence[str]) -> StoredExamples:
    """Find the fields of stored unlabeled examples (the join state's values); raises :class:`DecodeError` on a bad one."""
    n = len(values)
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(v) for v in values], out=starts[1:])
    data = np.frombuffer(b"".join(values), dtype=np.uint8)
    names = [name.encode() for name in coordinates]
    name_offsets = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum([len(name) for name in names], out=name_offsets[1:])
    arena = np.frombuffer(b"".join(names) or b"\0", dtype=np.uint8)
    ids, fixed, global_features, entity_ids, dense, status = _scan(data, starts, header_size, arena, name_offsets)
    bad = np.flatnonzero(status != _OK)
    if len(bad):
        raise DecodeError(f"LabeledExample: stored example {int(bad[0])} of {n} {_PROBLEMS[int(status[bad[0]])]}")
    return StoredExamples(
        data, starts, header_size, ids, fixed[0], fixed[1], fixed[2], fixed[3], global_features, entity_ids, dense
    )


@njit(nogil=True, cache=True)
def _scan(data, starts, header_size, names, name_offsets):
    n = starts.shape[0] - 1
    m = name_offsets.shape[0] - 1
    ids = np.zeros((2, 3, n), dtype=np.int64)
    fixed = np.zeros((4, n), dtype=np.int64)  # label_at, event_time, label_part_at, tail_at
    global_features = np.zeros((4, n), dtype=np.int64)
    entity_ids = np.zeros((2, m, n), dtype=np.int64)
    dense = np.zeros((2, m, n), dtype=np.int64)
    status = np.zeros(n, dtype=np.int64)
    for row in range(n):
        end = starts[row + 1]
        pos = starts[row] + header_size
        failed = False
        for field in range(3):
            length, pos, code = read_long(data, pos, end)
            failed |= code != 0
            ids[0, field, row] = pos
            ids[1, field, row] = length
            pos += length
        fixed[0, row] = pos
        pos += 24  # label, weight, offset
        value, pos, code = read_long(data, pos, end)
        failed |= code != 0
        fixed[1, row] = value
        fixed[2, row] = pos
        _, pos, code = read_long(data, pos, end)
        failed |= code != 0
        if failed or pos + 3 > end:
            status[row] = _TRUNCATED
            continue
        if data[pos] != 0 or data[pos + 1] != 0 or data[pos + 2] != 0:
            status[row] = _NOT_UNLABELED
            continue
        pos += 3
        fixed[3, row] = pos
        for part in range(2):  # global indices, then values
            length, pos, code = read_long(data, pos, end)
            failed |= code != 0
            global_features[2 * part, row] = pos
            global_features[2 * part + 1, row] = length
            pos += length
        count, pos, code = read_long(data, pos, end)
        failed |= code != 0
        if count != m:
            status[row] = _OTHER_COORDINATES
            continue
        for c in range(m):
            length, pos, code = read_long(data, pos, end)
            failed |= code != 0
            expected = name_offsets[c + 1] - name_offsets[c]
            if length != expected or pos + length > end or not same_range(data, pos, names, name_offsets[c], length):
                status[row] = _OTHER_COORDINATES
                break
            pos += length
            for refs in (entity_ids, dense):
                length, pos, code = read_long(data, pos, end)
                failed |= code != 0
                refs[0, c, row] = pos
                refs[1, c, row] = length
                pos += length
        if status[row] == _OK and (failed or pos > end):
            status[row] = _TRUNCATED
    return ids, fixed, global_features, entity_ids, dense, status


def splice_labels(
    stored: StoredExamples,
    header: bytes,
    labels: np.ndarray,
    label_times: np.ndarray,
    types: np.ndarray,
    type_symbols: Sequence[str],
    score_names: Sequence[str],
    scores: np.ndarray,
    versions: np.ndarray,
) -> list[bytes]:
    """Each stored example as a framed labeled value: ``header``, the stored body with the label part written in.

    ``types`` holds each example's interaction types as a bit set of positions in
    ``type_symbols``; ``scores`` and ``versions`` are (N, K), one column per ``score_names``.
    """
    n = len(stored)
    if n == 0:
        return []
    symbols = [s.encode() for s in type_symbols]
    names = [s.encode() for s in score_names]
    symbol_offsets = np.zeros(len(symbols) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in symbols], out=symbol_offsets[1:])
    name_offsets = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in names], out=name_offsets[1:])
    capacity = int(stored.starts[-1]) + n * (
        len(header) + 8 + 4 * MAX_VARINT + int(symbol_offsets[-1]) + len(symbols) * MAX_VARINT
        + 2 * (int(name_offsets[-1]) + len(names) * MAX_VARINT) + 16 * len(names)
    )  # fmt: skip
    out, offsets = _splice(
        stored.data,
        stored.starts,
        stored.header_size,
        stored.label_at,
        stored.label_part_at,
        stored.tail_at,
        np.frombuffer(header, dtype=np.uint8),
        np.ascontiguousarray(labels, dtype="<f8").view(np.uint8).reshape(n, 8),
        np.ascontiguousarray(label_times, dtype=np.int64),
        np.ascontiguousarray(types, dtype=np.int64),
        np.frombuffer(b"".join(symbols) or b"\0", dtype=np.uint8),
        symbol_offsets,
        np.frombuffer(b"".join(names) or b"\0", dtype=np.uint8),
        name_offsets,
        np.ascontiguousarray(scores, dtype="<f8").view(np.uint8).reshape(n, 8 * len(names)),
        np.ascontiguousarray(versions, dtype=np.int64).reshape(n, len(names)),
        capacity,
    )
    return split_values(out, offsets)


@njit(nogil=True, cache=True)
def _splice(
    data,
    starts,
    header_size,
    label_at,
    label_part_at,
    tail_at,
    header,
    labels,
    label_times,
    types,
    symbols,
    symbol_offsets,
    names,
    name_offsets,
    scores,
    versions,
    capacity,
):
    n = label_at.shape[0]
    k = name_offsets.shape[0] - 1
    out = np.empty(capacity, dtype=np.uint8)
    offsets = np.empty(n + 1, dtype=np.int64)
    pos = 0
    for row in range(n):
        offsets[row] = pos
        pos = write_raw(out, pos, header, 0, header.shape[0])
        pos = write_raw(out, pos, data, starts[row] + header_size, label_at[row])
        pos = write_raw(out, pos, labels[row], 0, 8)
        pos = write_raw(out, pos, data, label_at[row] + 8, label_part_at[row])
        pos = write_long(out, pos, label_times[row])
        count = 0
        for code in range(symbol_offsets.shape[0] - 1):
            if types[row] >> code & 1:
                count += 1
        if count > 0:
            pos = write_long(out, pos, np.int64(count))
            for code in range(symbol_offsets.shape[0] - 1):
                if types[row] >> code & 1:
                    pos = write_bytes(out, pos, symbols, symbol_offsets[code], symbol_offsets[code + 1])
        out[pos] = 0
        pos += 1
        if k > 0:
            pos = write_long(out, pos, np.int64(k))
            for j in range(k):
                pos = write_bytes(out, pos, names, name_offsets[j], name_offsets[j + 1])
                pos = write_raw(out, pos, scores[row], 8 * j, 8 * j + 8)
        out[pos] = 0
        pos += 1
        if k > 0:
            pos = write_long(out, pos, np.int64(k))
            for j in range(k):
                pos = write_bytes(out, pos, names, name_offsets[j], name_offsets[j + 1])
                pos = write_long(out, pos, versions[row, j])
        out[pos] = 0
        pos += 1
        pos = write_raw(out, pos, data, tail_at[row], starts[row + 1])
    offsets[n] = pos
    return out[:pos], offsets
