"""Feature bags already in Python (a scoring request's) as a :class:`FeatureBagsColumn`, one compiled pass.

The columnar decoder gives the joiner its features as a batch buffer with offsets and
FNV-1a hashes; :func:`bags_column` gives the scorer the same arrays from Python bags, so
both index through one :class:`~stream.tables.hash_index.FeatureLookup`. Python touches
each feature only in C-level loops (``attrgetter`` maps and one ``str.join``); splitting
the joined text and hashing (bag, name, term) is compiled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from operator import attrgetter, methodcaller
from typing import Any

import numpy as np
from numba import njit

from stream.codec.columnar.batch import FeatureBagsColumn
from stream.codec.columnar.kernel import FNV_OFFSET, fnv1a, fnv1a_separator

END = "\x00"  # ends every string in the joined text; a string holding it is measured one by one instead
_END_BYTE = 0
_values = methodcaller("values")


def field_values(records: Sequence[Any], field: str, default: Any) -> Iterable[Any]:
    """``field`` of every record, in order: attributes of typed records (msgspec Structs), keys of mappings (``default``
    if absent).

    The records of one call are of one kind, as a parsed request's or a decoded record's are.
    """
    if records and not isinstance(records[0], Mapping):
        return map(attrgetter(field), records)
    return [record.get(field, default) for record in records]


def bags_column(rows: Sequence[Mapping[str, Sequence[Any]]]) -> FeatureBagsColumn:
    """Row ``i``'s bags of ``{name, term, value}`` items (mappings or typed records) as the decoder's column.

    ``term`` defaults to "" and ``value`` to 1.0, as in the API. Strings are UTF-8 (lone
    surrogates kept as such, so they hash and miss instead of failing).
    """
    keys = list(chain.from_iterable(rows))
    bag_lists = list(chain.from_iterable(map(_values, rows)))
    features = list(chain.from_iterable(bag_lists))
    count = len(keys) + 2 * len(features)
    text = END.join(chain(keys, field_values(features, "name", None), field_values(features, "term", "")))
    data = (text + END).encode("utf-8", "surrogatepass") if count else b""
    buffer = np.frombuffer(data, dtype=np.uint8)
    starts = _string_starts(buffer, count)
    if starts[-1] != len(data):  # some string holds END itself: measure each one
        strings = chain(keys, field_values(features, "name", None), field_values(features, "term", ""))
        encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
        starts = _offsets(map(len, encoded), count, extra=1)
        data = END.encode().join(encoded) + END.encode()
        buffer = np.frombuffer(data, dtype=np.uint8)
    bag_row_offsets = _offsets(map(len, rows), len(rows))
    bag_feature_offsets = _offsets(map(len, bag_lists), len(bag_lists))
    bags, names_at, terms_at, hashes, key_offsets, key_lengths = _assemble(
        buffer, starts, len(keys), bag_feature_offsets
    )
    return FeatureBagsColumn(
        data=data,
        row_offsets=bag_feature_offsets[bag_row_offsets],
        bag_offsets=bags[0],
        bag_lengths=bags[1],
        name_offsets=names_at[0],
        name_lengths=names_at[1],
        term_offsets=terms_at[0],
        term_lengths=terms_at[1],
        values=np.fromiter(field_values(features, "value", 1.0), dtype=np.float64, count=len(features)),
        hashes=hashes,
        bag_row_offsets=bag_row_offsets,
        bag_key_offsets=key_offsets,
        bag_key_lengths=key_lengths,
        bag_feature_offsets=bag_feature_offsets,
    )


def warm_up() -> None:
    """Compile this module's kernels into numba's disk cache (``glmix compile``), so a server's first request does not."""
    bags_column([{"warm-up": [{"name": "n", "term": "t", "value": 1.0}]}, {"warm-up\x00": [{"name": "n\x00"}]}])


def _offsets(counts: Iterable[int], n: int, extra: int = 0) -> np.ndarray:
    """[0, c0, c0 + c1, ...] of ``n`` counts, each plus ``extra``."""
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(counts, dtype=np.int64, count=n) + extra, out=offsets[1:])
    return offsets


@njit(nogil=True, cache=True)
def _string_starts(buffer, count):
    """Where each of ``count`` END-terminated strings starts, then the end of the last; the last entry is short of
    ``len(buffer)`` when some string holds END itself (more terminators than strings)."""
    starts = np.zeros(count + 1, dtype=np.int64)
    found = 0
    for i in range(buffer.shape[0]):
        if buffer[i] == _END_BYTE:
            found += 1
            if found > count:
                break
            starts[found] = i + 1
    return starts


@njit(nogil=True, cache=True)
def _assemble(buffer, starts, bags, bag_feature_offsets):
    """Per feature its bag's, name's and term's (offsets, lengths) and FNV-1a 64 hash; per bag its key's (offset, length).

    Strings are the bag keys, then every feature's name, then every term, each
    ``starts[i]:starts[i+1]-1`` (the END byte excluded).
    """
    n = bag_feature_offsets[-1]
    bag_refs = np.empty((2, n), dtype=np.int64)
    name_refs = np.empty((2, n), dtype=np.int64)
    term_refs = np.empty((2, n), dtype=np.int64)
    hashes = np.empty(n, dtype=np.uint64)
    key_offsets = starts[:bags].copy()
    key_lengths = starts[1 : bags + 1] - key_offsets - 1
    for b in range(bags):
        bag, bag_length = key_offsets[b], key_lengths[b]
        bag_hash = fnv1a_separator(fnv1a(buffer, bag, bag + bag_length, FNV_OFFSET))
        for e in range(bag_feature_offsets[b], bag_feature_offsets[b + 1]):
            name, term = bags + e, bags + n + e
            bag_refs[0, e], bag_refs[1, e] = bag, bag_length
            name_refs[0, e], name_refs[1, e] = starts[name], starts[name + 1] - starts[name] - 1
            term_refs[0, e], term_refs[1, e] = starts[term], starts[term + 1] - starts[term] - 1
            h = fnv1a(buffer, starts[name], starts[name + 1] - 1, bag_hash)
            hashes[e] = fnv1a(buffer, starts[term], starts[term + 1] - 1, fnv1a_separator(h))
    return bag_refs, name_refs, term_refs, hashes, key_offsets, key_lengths
