"""A batch of ``LabeledExample`` values read into arrays in one compiled pass: what an update or a refit needs of it.

An updater needs eight things from each example: the label, weight and time fields, the
index version, its coordinate's entity id and dense features, and the margin outside its
coordinate (the fixed offset plus every other coordinate's join-time score). A refit reads
the same scan with the global coordinate as "its" coordinate, plus the packed global
features, the example id, the random-bucket flag and the unindexed features. Decoded by
fastavro into a dict per example, that cost more than the update on the hot workload and
most of a refit's read of the archive. :func:`scan_labeled` walks every field of every
value (so a malformed value is found wherever its fault is, as fastavro finds it) and
keeps those fields as arrays; strings and bytes stay where they are in the batch buffer,
as (offset, length).

It knows exactly one writer schema, ``LabeledExample.avsc`` as shipped (by its
fingerprint: the parsing canonical form fixes the wire layout), under any framing header
the caller names, or none: :func:`scan_bodies` reads the bodies of a container file's
blocks, back to back. Values of other writer schemas get ``UNKNOWN_WRITER_SCHEMA`` and are
the caller's to decode with fastavro. Every bad value gets a status and a one-line reason
(:meth:`LabeledColumns.reason`); a bad value never fails its batch. A map key repeated
is bad here (fastavro would keep the last one), as in the columnar decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from stream.codec.columnar.kernel import (
    gathered,
    grown,
    has_repeated_key,
    read_block_count,
    read_double,
    read_long,
    read_string,
    same_range,
    sliced,
    writer_of,
)
from stream.codec.columnar.plan import STATUS_TEXT, Status
from stream.codec.example_writer import LABELED_EXAMPLE_FIELDS

_OK = int(Status.OK)
_MISSING = int(Status.MISSING_VALUE)
_TRUNCATED = int(Status.TRUNCATED)
_TRAILING = int(Status.TRAILING_BYTES)
_BAD_UNION = int(Status.BAD_UNION_INDEX)
_BAD_BOOLEAN = int(Status.BAD_BOOLEAN)
_INT_RANGE = int(Status.INT_OUT_OF_RANGE)
_DUPLICATE = int(Status.DUPLICATE_MAP_KEY)
# Field numbers (wire order) the kernel reports a fault in; -1 is the framing header.
(
    _EXAMPLE_ID,
    _MEMBER_ID,
    _ITEM_ID,
    _LABEL,
    _WEIGHT,
    _OFFSET,
    _EVENT_TIME,
    _LABEL_TIME,
    _TYPES,
    _SCORES,
    _VERSIONS,
    _GLOBAL,
    _COORDINATES,
    _INDEX_VERSION,
    _RANDOM_BUCKET,
    _POSITION,
    _CONTEXT,
    _UNINDEXED,
) = range(len(LABELED_EXAMPLE_FIELDS))
_KEYS = 16  # first size of the per-map key table; it doubles when a map is longer


@dataclass(frozen=True)
class LabeledColumns:
    """N ``LabeledExample`` values as one coordinate's update (or a refit) reads them; a status per row.

    ``entity`` and ``dense`` are (2, N): offset into ``data``, then length, of the
    coordinate's entity id and dense bytes; ``found`` says whether the value had the
    coordinate at all. ``dense_values`` (N, dim) holds the dense float32 values of the rows
    whose dense bytes are exactly ``dim`` floats (zeros elsewhere). ``others`` is the sum of
    every other coordinate's score; ``margin`` adds the fixed ``offset`` to it. ``example_id``,
    ``global_indices``, ``global_values`` and ``unindexed`` are (2, N) refs like ``entity``
    (``has_unindexed``: whether the optional field is set). A row whose status is not OK holds zeros.
    """

    data: np.ndarray
    starts: np.ndarray
    status: np.ndarray
    error_at: np.ndarray
    error_field: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    offset: np.ndarray
    others: np.ndarray
    event_time: np.ndarray
    label_time: np.ndarray
    index_version: np.ndarray
    random_bucket: np.ndarray
    found: np.ndarray
    has_unindexed: np.ndarray
    entity: np.ndarray
    dense: np.ndarray
    example_id: np.ndarray
    global_indices: np.ndarray
    global_values: np.ndarray
    unindexed: np.ndarray
    dense_values: np.ndarray

    def __len__(self) -> int:
        return len(self.status)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the rows that decoded."""
        return self.status == Status.OK

    @property
    def margin(self) -> np.ndarray:
        """The fixed offset plus every other coordinate's join-time score: the margin outside this coordinate."""
        with np.errstate(over="ignore", invalid="ignore"):  # an infinite margin is the update's to refuse
            return self.offset + self.others

    def reason(self, row: int) -> str:
        """One line saying why row ``row`` did not decode (for its dead letter)."""
        status = Status(int(self.status[row]))
        field = int(self.error_field[row])
        where = f" in field {LABELED_EXAMPLE_FIELDS[field]!r}" if field >= 0 else ""
        length = int(self.starts[row + 1] - self.starts[row])
        return f"LabeledExample: {STATUS_TEXT[status]}{where} at byte {int(self.error_at[row])} of {length}"

    def _strings(self, refs: np.ndarray, rows: np.ndarray) -> list[str]:
        return [text.decode() for text in sliced(self.data, refs[0, rows], refs[1, rows])]

    def entity_ids(self, rows: np.ndarray) -> list[str]:
        """The entity ids of ``rows`` (decoded: the scan checked their UTF-8)."""
        return self._strings(self.entity, rows)

    def example_ids(self, rows: np.ndarray) -> list[str]:
        """The example ids of ``rows``."""
        return self._strings(self.example_id, rows)

    def unindexed_features(self, rows: np.ndarray) -> list[bytes | None]:
        """The packed unindexed features of ``rows`` (None where the example has none)."""
        out: list[bytes | None] = [None] * len(rows)
        present = np.flatnonzero(self.has_unindexed[rows])
        chosen = rows[present]
        for at, packed in zip(
            present.tolist(), sliced(self.data, self.unindexed[0, chosen], self.unindexed[1, chosen])
        ):
            out[at] = packed
        return out

    def global_features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per row of ``rows``, its packed global features as (lengths, int32 columns, float32 values, malformed).

        A row is malformed when its indices and values differ in length or are not whole
        4-byte numbers; it is given no features.
        """
        index_bytes, value_bytes = self.global_indices[1, rows], self.global_values[1, rows]
        whole = (index_bytes == value_bytes) & (index_bytes % 4 == 0)
        taken = np.where(whole, index_bytes, 0)
        columns = gathered(self.data, self.global_indices[0, rows], taken).view("<i4")
        values = gathered(self.data, self.global_values[0, rows], taken).view("<f4")
        return taken // 4, columns, values, ~whole

    def features(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) float64 dense features of ``rows`` (zeros where the dense bytes are not ``dim`` floats)."""
        with np.errstate(invalid="ignore"):  # a signalling NaN stays NaN, and the update refuses it
            return self.dense_values[rows].astype(np.float64)


def scan_labeled(
    values: Sequence[bytes | None], magic: bytes, headers: Sequence[bytes], coordinate: str, dim: int
) -> LabeledColumns:
    """Read ``values`` (None: a tombstone) for ``coordinate`` of ``dim`` features.

    ``headers`` are the framing headers (all one length) of values written with the shipped schema.
    """
    n = len(values)
    starts = np.zeros(n + 1, dtype=np.int64)
    if None in values:
        present = np.fromiter((v is not None for v in values), dtype=np.uint8, count=n)
        values = [v if v is not None else b"" for v in values]
    else:
        present = np.ones(n, dtype=np.uint8)
    np.cumsum(np.fromiter(map(len, values), np.int64, n), out=starts[1:])  # type: ignore[arg-type]
    data = np.frombuffer(b"".join(values), dtype=np.uint8)  # type: ignore[arg-type]
    width = len(headers[0]) if headers else len(magic)
    prefixes = np.array([np.frombuffer(h, dtype=np.uint8) for h in headers], dtype=np.uint8).reshape(-1, width)
    return _columns(data, starts, present, np.frombuffer(magic, dtype=np.uint8), prefixes, coordinate, dim, False)


# No framing: the magic read-only and the header table writable, as scan_labeled passes them, so that numba
# compiles (and caches) one specialization of the scan for both.
_NO_MAGIC = np.frombuffer(b"", dtype=np.uint8)
_NO_HEADER = np.zeros((1, 0), dtype=np.uint8)


def scan_bodies(data: bytes, count: int, coordinate: str, dim: int) -> LabeledColumns:
    """Read ``count`` unframed bodies of the shipped schema, back to back (a container file's blocks).

    A body that fails leaves the ones after it unlocated: they get its status too.
    """
    starts = np.zeros(count + 1, dtype=np.int64)
    starts[count] = len(data)
    buffer = np.frombuffer(data, dtype=np.uint8)
    present = np.ones(count, dtype=np.uint8)
    return _columns(buffer, starts, present, _NO_MAGIC, _NO_HEADER, coordinate, dim, True)


def rescanned(columns: LabeledColumns, coordinate: str, dim: int) -> LabeledColumns:
    """The unframed bodies ``columns`` were scanned from, read again for another coordinate."""
    present = np.ones(len(columns), dtype=np.uint8)
    return _columns(columns.data, columns.starts, present, _NO_MAGIC, _NO_HEADER, coordinate, dim, False)


def _columns(
    data: np.ndarray,
    starts: np.ndarray,
    present: np.ndarray,
    magic: np.ndarray,
    prefixes: np.ndarray,
    coordinate: str,
    dim: int,
    sequential: bool,
) -> LabeledColumns:
    name = coordinate.encode()
    (status, error_at, error_field), doubles, longs, refs, dense = _scan(
        data, starts, present, magic, prefixes, np.frombuffer(name or b"\0", dtype=np.uint8), len(name), dim, sequential
    )
    return LabeledColumns(
        data=data,
        starts=starts,
        status=status,
        error_at=error_at,
        error_field=error_field,
        label=doubles[0],
        weight=doubles[1],
        offset=doubles[2],
        others=doubles[3],
        event_time=longs[0],
        label_time=longs[1],
        index_version=longs[2],
        found=longs[3].astype(bool),
        random_bucket=longs[4].astype(bool),
        has_unindexed=longs[5].astype(bool),
        entity=refs[0:2],
        dense=refs[2:4],
        example_id=refs[4:6],
        global_indices=refs[6:8],
        global_values=refs[8:10],
        unindexed=refs[10:12],
        dense_values=dense,
    )


@njit(nogil=True, cache=True)
def _skip_strings(buf, pos, end):
    """An array<string> at ``pos``: (next position, status)."""
    while True:
        items, pos, code = read_block_count(buf, pos, end)
        if code != _OK or items == 0:
            return pos, code
        for _ in range(items):
            _, _, pos, code = read_string(buf, pos, end, True)
            if code != _OK:
                return pos, code


@njit(nogil=True, cache=True)
def _read_map(buf, pos, end, value_kind, keys, name, name_length, bits, as_double):
    """A map at ``pos`` with keys recorded in ``keys`` (checked for repeats).

    ``value_kind``: 0 double, 1 long, 2 string, 3 CoordinateFeatures. For doubles, the sum of
    the values whose key is not ``name``; for CoordinateFeatures, the refs of ``name``'s
    entry. Returns (next position, status, sum, found, entity offset, entity length,
    dense offset, dense length, keys).
    """
    total = 0.0
    found = False
    entity, entity_length, dense, dense_length = 0, 0, 0, 0
    count = 0
    while True:
        items, pos, code = read_block_count(buf, pos, end)
        if code != _OK:
            return pos, code, total, found, entity, entity_length, dense, dense_length, keys
        if items == 0:
            break
        for _ in range(items):
            key, key_length, pos, code = read_string(buf, pos, end, True)
            if code != _OK:
                return pos, code, total, found, entity, entity_length, dense, dense_length, keys
            if count == keys.shape[1]:
                keys = grown(keys, count + 1)
            keys[0, count] = key
            keys[1, count] = key_length
            count += 1
            mine = key_length == name_length and same_range(buf, key, name, 0, name_length)
            if value_kind == 0:
                if end - pos < 8:
                    return end, _TRUNCATED, total, found, entity, entity_length, dense, dense_length, keys
                if not mine:
                    total += read_double(buf, pos, bits, as_double)
                pos += 8
            elif value_kind == 1:
                _, pos, code = read_long(buf, pos, end)
            elif value_kind == 2:
                _, _, pos, code = read_string(buf, pos, end, True)
            else:
                e, e_length, pos, code = read_string(buf, pos, end, True)
                if code != _OK:
                    return pos, code, total, found, entity, entity_length, dense, dense_length, keys
                d, d_length, pos, code = read_string(buf, pos, end, False)
                if mine:
                    found, entity, entity_length, dense, dense_length = True, e, e_length, d, d_length
            if code != _OK:
                return pos, code, total, found, entity, entity_length, dense, dense_length, keys
    if has_repeated_key(buf, keys[0], keys[1], 0, count):
        return pos, _DUPLICATE, total, found, entity, entity_length, dense, dense_length, keys
    return pos, _OK, total, found, entity, entity_length, dense, dense_length, keys


@njit(nogil=True, cache=True)
def _scan(buf, starts, present, magic, prefixes, name, name_length, dim, sequential):
    """Scan every value ``buf[starts[i]:starts[i+1]]``; ``sequential``: values back to back from ``starts[0]`` to
    ``starts[n]``, whose boundaries the scan writes into ``starts`` as it finds them."""
    n = starts.shape[0] - 1
    status = np.zeros(n, dtype=np.uint8)
    error_at = np.zeros(n, dtype=np.int64)
    error_field = np.full(n, -1, dtype=np.int32)
    doubles = np.zeros((4, n), dtype=np.float64)  # label, weight, offset, other coordinates' scores
    longs = np.zeros((6, n), dtype=np.int64)  # event time, label time, index version, found, random bucket, unindexed
    refs = np.zeros((12, n), dtype=np.int64)  # (offset, length) of entity id, dense, example id, global x2, unindexed
    dense_values = np.zeros((n, dim), dtype=np.float32)
    dense_bytes = dense_values.reshape(n * dim).view(np.uint8)
    keys = np.empty((2, _KEYS), dtype=np.int64)
    bits = np.zeros(1, dtype=np.uint64)
    as_double = bits.view(np.float64)
    last = starts[n]
    for i in range(n):
        start = starts[i]
        end = last if sequential else starts[i + 1]
        field = -1
        if not present[i]:
            code, pos = _MISSING, start
        else:
            _, code = writer_of(buf, start, end, magic, prefixes)
            pos = start + prefixes.shape[1] if code == _OK else start
        margin = 0.0
        entity, entity_length, dense, dense_length, found = 0, 0, 0, 0, False
        if code == _OK:
            for field in range(_EXAMPLE_ID, _LABEL):
                offset, length, pos, code = read_string(buf, pos, end, True)
                if code != _OK:
                    break
                if field == _EXAMPLE_ID:
                    refs[4, i], refs[5, i] = offset, length
        if code == _OK:
            for field in range(_LABEL, _EVENT_TIME):
                if end - pos < 8:
                    code, pos = _TRUNCATED, end
                    break
                doubles[field - _LABEL, i] = read_double(buf, pos, bits, as_double)
                pos += 8
        if code == _OK:
            for field in range(_EVENT_TIME, _TYPES):
                value, pos, code = read_long(buf, pos, end)
                if code != _OK:
                    break
                longs[field - _EVENT_TIME, i] = value
        if code == _OK:
            field = _TYPES
            pos, code = _skip_strings(buf, pos, end)
        if code == _OK:
            field = _SCORES
            pos, code, margin, _, _, _, _, _, keys = _read_map(
                buf, pos, end, 0, keys, name, name_length, bits, as_double
            )
        if code == _OK:
            field = _VERSIONS
            pos, code, _, _, _, _, _, _, keys = _read_map(buf, pos, end, 1, keys, name, name_length, bits, as_double)
        if code == _OK:
            field = _GLOBAL
            for k in range(2):  # indices, values
                offset, length, pos, code = read_string(buf, pos, end, False)
                if code != _OK:
                    break
                refs[6 + 2 * k, i], refs[7 + 2 * k, i] = offset, length
        if code == _OK:
            field = _COORDINATES
            pos, code, _, found, entity, entity_length, dense, dense_length, keys = _read_map(
                buf, pos, end, 3, keys, name, name_length, bits, as_double
            )
        if code == _OK:
            field = _INDEX_VERSION
            value, pos, code = read_long(buf, pos, end)
            longs[2, i] = value
        if code == _OK:
            field = _RANDOM_BUCKET
            if pos >= end:
                code = _TRUNCATED
            elif buf[pos] > 1:
                code = _BAD_BOOLEAN
            else:
                longs[4, i] = buf[pos]
                pos += 1
        if code == _OK:
            field = _POSITION
            value, pos, code = read_long(buf, pos, end)
            if code == _OK and (value < -(2**31) or value >= 2**31):
                code = _INT_RANGE
        if code == _OK:
            field = _CONTEXT
            pos, code, _, _, _, _, _, _, keys = _read_map(buf, pos, end, 2, keys, name, name_length, bits, as_double)
        if code == _OK:
            field = _UNINDEXED
            branch, pos, code = read_long(buf, pos, end)
            if code == _OK and branch == 1:
                offset, length, pos, code = read_string(buf, pos, end, False)
                refs[10, i], refs[11, i], longs[5, i] = offset, length, 1
            elif code == _OK and branch != 0:
                code = _BAD_UNION
        if code == _OK and pos != end and (not sequential or i == n - 1):
            code = _TRAILING
        if code != _OK:
            status[i] = code
            error_at[i] = max(pos - start, 0)
            error_field[i] = field
            doubles[:, i] = 0.0
            longs[:, i] = 0
            refs[:, i] = 0
            if sequential:  # the values after this one cannot be found
                status[i + 1 :] = code
                error_at[i + 1 :] = 0
                starts[i + 1 : n] = last
                break
            continue
        if sequential:
            starts[i + 1] = pos
        doubles[3, i] = margin
        longs[3, i] = found
        refs[0, i], refs[1, i], refs[2, i], refs[3, i] = entity, entity_length, dense, dense_length
        if found and dense_length == 4 * dim:
            dense_bytes[4 * dim * i : 4 * dim * (i + 1)] = buf[dense : dense + dense_length]
    return (status, error_at, error_field), doubles, longs, refs, dense_values
