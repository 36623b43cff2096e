"""The compiled decode loop: framed Avro values of one batch into typed tables, a status per row.

One kernel for every schema: it runs the ops of the row's writer program (see
:mod:`stream.codec.columnar.plan`) over the row's bytes. Strings stay where they are
in the batch buffer, as (offset, length); map entries and features are appended to
per-column tables that grow by doubling, with per-row offsets (CSR). A row that fails
is rolled back out of those tables, so the rows after it are unaffected.

Feature hash (``feature_hash``): 64-bit FNV-1a over the UTF-8 bytes of bag, 0xFF, name,
0xFF, term. 0xFF never occurs in UTF-8, so distinct (bag, name, term) triples hash
distinct byte strings and only FNV itself can collide.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from stream.codec.columnar.plan import Kind, Status

_OK = int(Status.OK)
_MISSING = int(Status.MISSING_VALUE)
_BAD_HEADER = int(Status.BAD_HEADER)
_UNKNOWN_WRITER = int(Status.UNKNOWN_WRITER_SCHEMA)
_TRUNCATED = int(Status.TRUNCATED)
_TRAILING = int(Status.TRAILING_BYTES)
_AFTER_UNDECODABLE = int(Status.AFTER_UNDECODABLE)
_BAD_UTF8 = int(Status.BAD_UTF8)
_BAD_UNION = int(Status.BAD_UNION_INDEX)
_BAD_ENUM = int(Status.BAD_ENUM_INDEX)
_NEGATIVE = int(Status.NEGATIVE_LENGTH)
_BAD_VARINT = int(Status.BAD_VARINT)
_INT_RANGE = int(Status.INT_OUT_OF_RANGE)
_BAD_BOOLEAN = int(Status.BAD_BOOLEAN)
_DUPLICATE = int(Status.DUPLICATE_MAP_KEY)

_STRING = int(Kind.STRING)
_BYTES = int(Kind.BYTES)
_INT = int(Kind.INT)
_LONG = int(Kind.LONG)
_BOOLEAN = int(Kind.BOOLEAN)
_FLOAT = int(Kind.FLOAT)
_DOUBLE = int(Kind.DOUBLE)
_ENUM = int(Kind.ENUM)
_OPTIONAL = int(Kind.OPTIONAL)
_STRING_MAP = int(Kind.STRING_MAP)
_FEATURE_BAGS = int(Kind.FEATURE_BAGS)

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
SEPARATOR = np.uint64(0xFF)
STRING_MAP_REFS = 4  # key offset, key length, value offset, value length
FEATURE_REFS = 6  # bag, name and term: offset and length each
BAG_REFS = 3  # key offset, key length, first feature
_PAIRWISE_KEYS = 16  # up to this many keys a map is checked for repeats pair by pair, beyond it by sorted hashes
# Functions that allocate nothing (here and in stream.tables.hash_index) are compiled without numba's reference
# counting (``_nrt=False``): with it, every call that passes the batch buffer did an atomic incref and decref that
# numba could not prune, ~14 ns a call here, most of the decode's time.
leaf = njit(nogil=True, cache=True, _nrt=False)  # type: ignore[call-overload]  # _nrt is not in numba's stubs


@leaf
def fnv1a(buf, start, stop, h):
    """``h`` extended by FNV-1a 64 over ``buf[start:stop]``."""
    for i in range(start, stop):
        h = (h ^ np.uint64(buf[i])) * FNV_PRIME
    return h


@leaf
def fnv1a_separator(h):
    """``h`` extended by the 0xFF separator byte."""
    return (h ^ SEPARATOR) * FNV_PRIME


@leaf
def read_long(buf, pos, end):
    """Avro long at ``pos``: (value, next position, status); more than 64 bits of varint is BAD_VARINT."""
    result = np.uint64(0)
    shift = np.uint64(0)
    while True:
        if pos >= end:
            return np.int64(0), pos, _TRUNCATED
        byte = np.uint64(buf[pos])
        if shift == np.uint64(63) and byte > np.uint64(1):
            return np.int64(0), pos, _BAD_VARINT
        pos += 1
        result |= (byte & np.uint64(0x7F)) << shift
        if byte < np.uint64(0x80):
            break
        shift += np.uint64(7)
    return np.int64(result >> np.uint64(1)) ^ -np.int64(result & np.uint64(1)), pos, _OK


@leaf
def valid_utf8(buf, start, stop):
    """Whether ``buf[start:stop]`` is well-formed UTF-8 as Python's strict decoder has it (no surrogates, overlongs)."""
    i = start
    while i < stop:
        lead = buf[i]
        if lead < 0x80:
            i += 1
            continue
        if lead < 0xC2 or lead > 0xF4:
            return False
        low, high = 0x80, 0xBF
        if lead < 0xE0:
            tail = 1
        elif lead < 0xF0:
            tail = 2
            if lead == 0xE0:
                low = 0xA0
            elif lead == 0xED:
                high = 0x9F
        else:
            tail = 3
            if lead == 0xF0:
                low = 0x90
            elif lead == 0xF4:
                high = 0x8F
        if i + tail >= stop:
            return False
        if buf[i + 1] < low or buf[i + 1] > high:
            return False
        for j in range(i + 2, i + tail + 1):
            if buf[j] < 0x80 or buf[j] > 0xBF:
                return False
        i += tail + 1
    return True


@leaf
def read_little_endian(buf, pos, width):
    """The unsigned little-endian integer of ``width`` bytes at ``pos``."""
    value = np.uint64(0)
    for i in range(width):
        value |= np.uint64(buf[pos + i]) << np.uint64(8 * i)
    return value


@leaf
def read_double(buf, pos, bits, as_double):
    """The little-endian IEEE double at ``pos``, through ``bits`` (a 1-element uint64 array) and its float64 view."""
    bits[0] = read_little_endian(buf, pos, 8)
    return as_double[0]


@leaf
def read_string(buf, pos, end, check_utf8):
    """Avro string or bytes at ``pos``: (offset, length, next position, status)."""
    length, pos, code = read_long(buf, pos, end)
    if code != _OK:
        return 0, 0, pos, code
    if length < 0:
        return 0, 0, pos, _NEGATIVE
    if length > end - pos:
        return 0, 0, end, _TRUNCATED
    if check_utf8 and not valid_utf8(buf, pos, pos + length):
        return 0, 0, pos, _BAD_UTF8
    return pos, length, pos + length, _OK


@leaf
def read_block_count(buf, pos, end):
    """An array or map block's item count at ``pos`` (a negative count is followed by the block's size, skipped)."""
    count, pos, code = read_long(buf, pos, end)
    if code != _OK or count >= 0:
        return count, pos, code
    count = -count
    if count < 0:
        return 0, pos, _NEGATIVE
    _, pos, code = read_long(buf, pos, end)
    return count, pos, code


@leaf
def same_range(a, a_start, b, b_start, length):
    """Whether ``a[a_start:a_start+length]`` equals ``b[b_start:b_start+length]`` (the decoder's and the index's key test)."""
    for i in range(length):
        if a[a_start + i] != b[b_start + i]:
            return False
    return True


@leaf
def same_bytes(buf, a, a_length, b, b_length):
    """Whether ``buf[a:a+a_length]`` equals ``buf[b:b+b_length]``."""
    return a_length == b_length and same_range(buf, a, buf, b, a_length)


@leaf
def repeated_pairwise(buf, offsets, lengths, start, stop):
    """Whether two of the keys ``(offsets[k], lengths[k])`` for k in [start, stop) are equal, comparing every pair."""
    for a in range(start, stop):
        for b in range(a + 1, stop):
            if same_bytes(buf, offsets[a], lengths[a], offsets[b], lengths[b]):
                return True
    return False


@njit(nogil=True, cache=True)
def has_repeated_key(buf, offsets, lengths, start, stop):
    """Whether two of the keys ``(offsets[k], lengths[k])`` for k in [start, stop) are equal (many: by sorted hashes)."""
    count = stop - start
    if count <= _PAIRWISE_KEYS:
        return repeated_pairwise(buf, offsets, lengths, start, stop)
    hashes = np.empty(count, dtype=np.uint64)
    for k in range(count):
        hashes[k] = fnv1a(buf, offsets[start + k], offsets[start + k] + lengths[start + k], FNV_OFFSET)
    order = np.argsort(hashes)
    for a in range(count - 1):
        b = a + 1
        while b < count and hashes[order[b]] == hashes[order[a]]:
            x, y = start + order[a], start + order[b]
            if same_bytes(buf, offsets[x], lengths[x], offsets[y], lengths[y]):
                return True
            b += 1
    return False


@njit(nogil=True, cache=True)
def grown(table, needed):
    """``table`` (2-D, entries along axis 1) with room for ``needed`` entries, doubling when it must grow."""
    capacity = table.shape[1]
    if needed <= capacity:
        return table
    while capacity < needed:
        capacity *= 2
    bigger = np.empty((table.shape[0], capacity), dtype=table.dtype)
    bigger[:, : table.shape[1]] = table
    return bigger


@njit(nogil=True, cache=True)
def read_string_map(buf, pos, end, slot, count, refs):
    """A map<string> at ``pos`` appended to column ``slot`` of ``refs``: (next position, status, entries, refs)."""
    first = count
    row = STRING_MAP_REFS * slot
    while True:
        items, pos, code = read_block_count(buf, pos, end)
        if code != _OK:
            return pos, code, count, refs
        if items == 0:
            break
        for _ in range(items):
            key, key_length, pos, code = read_string(buf, pos, end, True)
            if code != _OK:
                return pos, code, count, refs
            value, value_length, pos, code = read_string(buf, pos, end, True)
            if code != _OK:
                return pos, code, count, refs
            if count == refs.shape[1]:
                refs = grown(refs, count + 1)
            refs[row, count] = key
            refs[row + 1, count] = key_length
            refs[row + 2, count] = value
            refs[row + 3, count] = value_length
            count += 1
    if has_repeated_key(buf, refs[row], refs[row + 1], first, count):
        return pos, _DUPLICATE, count, refs
    return pos, _OK, count, refs


@njit(nogil=True, cache=True)
def read_feature_bags(buf, pos, end, slot, features, feature_refs, values, hashes, bags, bag_refs, bits, as_double):
    """A map<array<NameTermValue>> at ``pos`` appended to column ``slot``: one entry per bag, one per feature, hashed.

    Returns (next position, status, features, feature_refs, values, hashes, bags, bag_refs)
    with the entry counts and the tables, grown if they had to.
    """
    row = FEATURE_REFS * slot
    first_bag = bags
    while True:
        items, pos, code = read_block_count(buf, pos, end)
        if code != _OK:
            return pos, code, features, feature_refs, values, hashes, bags, bag_refs
        if items == 0:
            break
        for _ in range(items):
            bag, bag_length, pos, code = read_string(buf, pos, end, True)
            if code != _OK:
                return pos, code, features, feature_refs, values, hashes, bags, bag_refs
            if bags == bag_refs.shape[1]:
                bag_refs = grown(bag_refs, bags + 1)
            bag_refs[BAG_REFS * slot, bags] = bag
            bag_refs[BAG_REFS * slot + 1, bags] = bag_length
            bag_refs[BAG_REFS * slot + 2, bags] = features
            bags += 1
            bag_hash = fnv1a_separator(fnv1a(buf, bag, bag + bag_length, FNV_OFFSET))
            while True:
                block, pos, code = read_block_count(buf, pos, end)
                if code != _OK:
                    return pos, code, features, feature_refs, values, hashes, bags, bag_refs
                if block == 0:
                    break
                for _ in range(block):
                    name, name_length, pos, code = read_string(buf, pos, end, True)
                    if code != _OK:
                        return pos, code, features, feature_refs, values, hashes, bags, bag_refs
                    term, term_length, pos, code = read_string(buf, pos, end, True)
                    if code != _OK:
                        return pos, code, features, feature_refs, values, hashes, bags, bag_refs
                    if end - pos < 8:
                        return end, _TRUNCATED, features, feature_refs, values, hashes, bags, bag_refs
                    if features == values.shape[1]:
                        feature_refs = grown(feature_refs, features + 1)
                        values = grown(values, features + 1)
                        hashes = grown(hashes, features + 1)
                    feature_refs[row, features] = bag
                    feature_refs[row + 1, features] = bag_length
                    feature_refs[row + 2, features] = name
                    feature_refs[row + 3, features] = name_length
                    feature_refs[row + 4, features] = term
                    feature_refs[row + 5, features] = term_length
                    values[slot, features] = read_double(buf, pos, bits, as_double)
                    pos += 8
                    h = fnv1a_separator(fnv1a(buf, name, name + name_length, bag_hash))
                    hashes[slot, features] = fnv1a(buf, term, term + term_length, h)
                    features += 1
    if has_repeated_key(buf, bag_refs[BAG_REFS * slot], bag_refs[BAG_REFS * slot + 1], first_bag, bags):
        return pos, _DUPLICATE, features, feature_refs, values, hashes, bags, bag_refs
    return pos, _OK, features, feature_refs, values, hashes, bags, bag_refs


@leaf
def writer_of(buf, start, end, magic, prefixes):
    """(writer program index, status) of the value ``buf[start:end]`` from its framing header."""
    header = prefixes.shape[1]
    if end - start < header:
        return -1, _BAD_HEADER
    for i in range(magic.shape[0]):
        if buf[start + i] != magic[i]:
            return -1, _BAD_HEADER
    for w in range(prefixes.shape[0]):
        matches = True
        for i in range(magic.shape[0], header):
            if buf[start + i] != prefixes[w, i]:
                matches = False
                break
        if matches:
            return w, _OK
    return -1, _UNKNOWN_WRITER


@njit(nogil=True, cache=True)
def decode_values(buf, starts, present, magic, prefixes, ops, op_starts, slots, capacity, sequential):
    """Decode every value ``buf[starts[i]:starts[i+1]]`` with the program of its writer.

    ``slots`` gives the number of rows of each storage table (see ``plan.Storage``);
    ``capacity`` the initial entries per row of the map and feature tables. Returns the
    tables in ``plan.Storage`` order, each with what indexes it, and the per-row outcome.
    ``sequential`` values lie back to back with unknown ends (a container file's bodies):
    each one's end, found by decoding it, is written to ``starts`` as the next one's start,
    and after a value that does not decode the rest cannot be found and fail with it.
    """
    n = starts.shape[0] - 1
    status = np.zeros(n, dtype=np.uint8)
    error_at = np.zeros(n, dtype=np.int64)
    error_field = np.full(n, -1, dtype=np.int32)
    writer = np.full(n, -1, dtype=np.int16)
    ints = np.zeros((slots[0], n), dtype=np.int64)
    floats = np.zeros((slots[1], n), dtype=np.float64)
    string_offsets = np.zeros((slots[2], n), dtype=np.int64)
    string_lengths = np.zeros((slots[2], n), dtype=np.int64)
    presence = np.zeros((slots[3], n), dtype=np.uint8)
    map_rows = np.zeros((slots[4], n + 1), dtype=np.int64)
    map_counts = np.zeros(slots[4], dtype=np.int64)
    map_refs = np.empty((STRING_MAP_REFS * slots[4], capacity), dtype=np.int64)
    feature_rows = np.zeros((slots[5], n + 1), dtype=np.int64)
    feature_counts = np.zeros(slots[5], dtype=np.int64)
    feature_refs = np.empty((FEATURE_REFS * slots[5], capacity), dtype=np.int64)
    feature_values = np.empty((slots[5], capacity), dtype=np.float64)
    feature_hashes = np.empty((slots[5], capacity), dtype=np.uint64)
    bag_rows = np.zeros((slots[5], n + 1), dtype=np.int64)
    bag_counts = np.zeros(slots[5], dtype=np.int64)
    bag_refs = np.empty((BAG_REFS * slots[5], capacity), dtype=np.int64)
    bits = np.zeros(1, dtype=np.uint64)
    as_double = bits.view(np.float64)
    bits32 = np.zeros(1, dtype=np.uint32)
    as_float = bits32.view(np.float32)
    lost = _OK
    for i in range(n):
        start, end = starts[i], starts[i + 1]
        if sequential:
            end = buf.shape[0]
        for c in range(slots[4]):
            map_rows[c, i] = map_counts[c]
        for c in range(slots[5]):
            feature_rows[c, i] = feature_counts[c]
            bag_rows[c, i] = bag_counts[c]
        if lost != _OK:
            w, code = -1, lost
        elif not present[i]:
            w, code = -1, _MISSING
        else:
            w, code = writer_of(buf, start, end, magic, prefixes)
        pos = start + prefixes.shape[1] if code == _OK else start
        field = -1
        k = op_starts[w] if w >= 0 else 0
        stop = op_starts[w + 1] if w >= 0 else 0
        while code == _OK and k < stop:
            op, slot, extra, field = ops[k, 0], ops[k, 1], ops[k, 2], ops[k, 3]
            k += 1
            if op == _STRING or op == _BYTES:
                offset, length, pos, code = read_string(buf, pos, end, op == _STRING)
                string_offsets[slot, i] = offset
                string_lengths[slot, i] = length
            elif op == _INT or op == _LONG or op == _ENUM:
                value, pos, code = read_long(buf, pos, end)
                if code == _OK and op == _INT and (value < -(2**31) or value >= 2**31):
                    code = _INT_RANGE
                elif code == _OK and op == _ENUM and (value < 0 or value >= extra):
                    code = _BAD_ENUM
                ints[slot, i] = value
            elif op == _BOOLEAN:
                if pos >= end:
                    code = _TRUNCATED
                elif buf[pos] > 1:
                    code = _BAD_BOOLEAN
                else:
                    ints[slot, i] = buf[pos]
                    pos += 1
            elif op == _DOUBLE:
                if end - pos < 8:
                    code, pos = _TRUNCATED, end
                else:
                    floats[slot, i] = read_double(buf, pos, bits, as_double)
                    pos += 8
            elif op == _FLOAT:
                if end - pos < 4:
                    code, pos = _TRUNCATED, end
                else:
                    bits32[0] = np.uint32(read_little_endian(buf, pos, 4))
                    floats[slot, i] = as_float[0]
                    pos += 4
            elif op == _OPTIONAL:
                branch, pos, code = read_long(buf, pos, end)
                if code == _OK and branch != 0 and branch != 1:
                    code = _BAD_UNION
                elif code == _OK and branch == extra:
                    k += 1
                else:
                    presence[slot, i] = 1
            elif op == _STRING_MAP:
                pos, code, entries, map_refs = read_string_map(buf, pos, end, slot, map_counts[slot], map_refs)
                map_counts[slot] = entries
            else:
                features, bags = feature_counts[slot], bag_counts[slot]
                pos, code, features, feature_refs, feature_values, feature_hashes, bags, bag_refs = read_feature_bags(
                    buf,
                    pos,
                    end,
                    slot,
                    features,
                    feature_refs,
                    feature_values,
                    feature_hashes,
                    bags,
                    bag_refs,
                    bits,
                    as_double,
                )
                feature_counts[slot], bag_counts[slot] = features, bags
        if code == _OK and pos != end and (not sequential or i == n - 1):
            code = _TRAILING
        if sequential:
            starts[i + 1] = pos if code == _OK else end  # a failed value's end is unknown: it keeps the rest
            if code != _OK:
                lost = _AFTER_UNDECODABLE
        if code != _OK:
            status[i] = code
            error_at[i] = max(pos - start, 0)
            error_field[i] = field
            for c in range(slots[4]):
                map_counts[c] = map_rows[c, i]
            for c in range(slots[5]):
                feature_counts[c] = feature_rows[c, i]
                bag_counts[c] = bag_rows[c, i]
        writer[i] = w
        for c in range(slots[4]):
            map_rows[c, i + 1] = map_counts[c]
        for c in range(slots[5]):
            feature_rows[c, i + 1] = feature_counts[c]
            bag_rows[c, i + 1] = bag_counts[c]
    return (
        (ints, floats, string_offsets, string_lengths, presence),
        (map_rows, map_refs),
        (feature_rows, feature_refs, feature_values, feature_hashes, bag_rows, bag_refs),
        (status, error_at, error_field, writer),
    )


@leaf
def hash_triple(buf, bag_stop, name_stop):
    """FNV-1a 64 of ``buf`` split as bag = [0, bag_stop), name = [bag_stop, name_stop), term = the rest."""
    h = fnv1a_separator(fnv1a(buf, 0, bag_stop, FNV_OFFSET))
    h = fnv1a_separator(fnv1a(buf, bag_stop, name_stop, h))
    return fnv1a(buf, name_stop, buf.shape[0], h)


def gathered(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``data[offsets[i] : offsets[i] + lengths[i]]`` for every i, one after the other, in one new array."""
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    gather_ranges(data, offsets, lengths, out)
    return out


def sliced(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """The bytes of each range ``(offsets[i], lengths[i])`` of ``data``: gathered in one copy, then cut apart."""
    raw = gathered(data, offsets, lengths).tobytes()
    ends = np.cumsum(lengths).tolist()
    return [raw[a:b] for a, b in zip([0, *ends[:-1]], ends)]


@njit(nogil=True, cache=True)
def gather_ranges(data, offsets, lengths, out):
    """Copy the ranges ``data[offsets[i] : offsets[i] + lengths[i]]`` into ``out``, one after the other."""
    at = 0
    for i in range(offsets.shape[0]):
        out[at : at + lengths[i]] = data[offsets[i] : offsets[i] + lengths[i]]
        at += lengths[i]
