"""(bag, name, term) -> every slot's column in a compiled open-addressing table, built once per index version.

The columnar decoder stores each feature's FNV-1a 64 hash of bag, 0xFF, name, 0xFF, term
(:func:`stream.codec.columnar.feature_hash`) and the (offset, length) of its three strings
in the batch buffer. :class:`FeatureLookup` resolves a whole decoded batch with those in
one compiled pass: a hash finds the entry, and the entry's key bytes, kept in one arena,
are compared with the feature's, so a collision (of the 64-bit hash, or of two hashes
modulo the table size) never returns a wrong column (DESIGN §8: lookup is exact).

Semantics are those of :class:`~stream.tables.indexing.FeatureResolver`: slot 0 is the
global index, then the coordinates in order; a feature gets slot ``s``'s column of its
(name, term) when its bag is one of slot ``s``'s bags, and -1 otherwise. A feature is
*missed* (a vocabulary growth candidate, DESIGN §1) when a slot whose bags include its
bag lacks its (name, term); ``per_slot`` counts those occurrences per slot. Features are
looked up as they arrive: the model spec's transforms are not applied here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from stream.codec.columnar import FeatureBagsColumn
from stream.codec.columnar.bags import bags_column
from stream.codec.columnar.kernel import FNV_OFFSET, fnv1a, fnv1a_separator, leaf, same_range
from stream.config import ModelSettings
from stream.errors import InvalidValueError
from stream.model.features import FeatureIndex
from stream.tables.indexing import Bags, FeatureResolver, IndexedRows, MissedFeatures
from stream.tables.models import GlobalModel

SEPARATOR = b"\xff"  # never occurs in UTF-8, so the three strings of a key split unambiguously
_EMPTY = -1
_MIX = np.uint64(0xFF51AFD7ED558CCD)  # murmur3's fmix64 constant: FNV-1a's low bits alone place keys poorly
_SHIFT = np.uint64(33)


@dataclass(frozen=True)
class KeyArrays:
    """Keys of one table as arrays: key ``i`` is ``arena[offsets[i]:offsets[i+1]]``, bag 0xFF name 0xFF term in UTF-8.

    ``hashes[i]`` is the key's :func:`~stream.codec.columnar.feature_hash`, the hash the
    decoder stores with a feature, so a decoded feature is looked up without rehashing.
    """

    arena: np.ndarray
    offsets: np.ndarray
    hashes: np.ndarray

    @classmethod
    def of(cls, triples: Sequence[tuple[str, str, str]]) -> KeyArrays:
        """The arrays of ``triples`` = (bag, name, term), hashed as the decoder hashes features."""
        encoded = [SEPARATOR.join(part.encode() for part in triple) for triple in triples]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(key) for key in encoded], out=offsets[1:])
        arena = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return cls(arena, offsets, _hash_keys(arena, offsets))

    def __len__(self) -> int:
        return len(self.hashes)

    def triple(self, i: int) -> tuple[str, str, str]:
        """Key ``i`` as (bag, name, term) strings."""
        bag, name, term = self.arena[self.offsets[i] : self.offsets[i + 1]].tobytes().split(SEPARATOR)
        return bag.decode(), name.decode(), term.decode()


@dataclass(frozen=True)
class HashTable:
    """An open-addressing table (linear probing, load at most 1/2) over :class:`KeyArrays`: ``slots[p]`` is a key or -1."""

    keys: KeyArrays
    slots: np.ndarray

    @classmethod
    def build(cls, keys: KeyArrays) -> HashTable:
        """The table of ``keys``; raises :class:`InvalidValueError` if a key occurs twice (its column would be ambiguous)."""
        if len(keys.offsets) != len(keys) + 1 or keys.hashes.dtype != np.uint64:
            raise InvalidValueError(
                f"keys need n + 1 offsets and uint64 hashes, got {len(keys.offsets)} offsets, "
                f"{len(keys)} {keys.hashes.dtype} hashes"
            )
        size = 8
        while size < 2 * len(keys):
            size *= 2
        slots, repeated = _insert_all(keys.hashes, keys.arena, keys.offsets, size)
        if repeated >= 0:
            raise InvalidValueError(f"key {keys.triple(repeated)!r} occurs twice in one index version")
        return cls(keys, slots)


@dataclass(frozen=True)
class FeatureColumns:
    """Columns of a decoded batch's features, aligned with its CSR features (``row_offsets`` is the batch's).

    ``columns[s, e]`` is slot ``s``'s column of feature ``e`` (-1: the slot does not place
    it); ``lacking[s, e]`` whether slot ``s`` reads feature ``e``'s bag but lacks it (a
    vocabulary growth candidate); ``rows[e]`` the feature's row.
    """

    features: FeatureBagsColumn
    columns: np.ndarray
    lacking: np.ndarray
    rows: np.ndarray

    @property
    def missed(self) -> np.ndarray:
        """Whether some slot whose bags include feature ``e``'s bag lacks it."""
        return np.asarray(self.lacking.any(axis=0))

    @property
    def per_slot(self) -> np.ndarray:
        """How many occurrences each slot could not place."""
        return self.lacking.sum(axis=1)

    def coo(self, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slot ``slot``'s placed features as COO (row, column, value), in feature order as the resolver gives them."""
        placed = self.columns[slot] >= 0
        return self.rows[placed], self.columns[slot, placed], self.features.values[placed]

    def placed(self) -> IndexedRows:
        """Every row's placed features as the resolver indexes them, without the missed ones (scoring needs no more)."""
        slots = [self.coo(slot) for slot in range(self.columns.shape[0])]
        return IndexedRows(
            rows=[rows for rows, _, _ in slots],
            columns=[columns for _, columns, _ in slots],
            values=[values for _, _, values in slots],
        )

    def missed_features(self) -> MissedFeatures:
        """The missed features as the resolver lists them, keys decoded to strings (the joiner packs and counts these)."""
        where = np.flatnonzero(self.missed)
        return self._missed(where, self.rows[where], self.lacking.sum(axis=1))

    def indexed(self, rows: np.ndarray) -> IndexedRows:
        """Features of the batch rows ``rows`` only, as the resolver indexes them: row ``i`` of the result is ``rows[i]``.

        Only those rows' features are touched, so a micro-batch of a long decoded batch (a
        backtest's whole log) costs what its own rows hold.
        """
        offsets = self.features.row_offsets
        ordered = np.sort(rows)
        starts, ends = offsets[ordered], offsets[ordered + 1]
        counts = ends - starts
        total = int(counts.sum())
        run_starts = np.repeat(starts - np.cumsum(counts) + counts, counts)
        elements = run_starts + np.arange(total)  # the rows' features in batch order, as the resolver lists them
        position = np.empty(len(offsets) - 1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        renumbered = position[self.rows[elements]]
        columns = self.columns[:, elements]
        values = self.features.values[elements]
        placed = columns >= 0
        lacking = self.lacking[:, elements]
        where = np.flatnonzero(lacking.any(axis=0))
        return IndexedRows(
            rows=[renumbered[p] for p in placed],
            columns=[c[p] for c, p in zip(columns, placed)],
            values=[values[p] for p in placed],
            missed=self._missed(elements[where], renumbered[where], lacking.sum(axis=1)),
        )

    def _missed(self, elements: np.ndarray, rows: np.ndarray, per_slot: np.ndarray) -> MissedFeatures:
        """Features ``elements`` of the batch, on rows ``rows`` of the result; ``per_slot`` as :class:`MissedFeatures`."""
        f = self.features
        refs = np.stack(
            [
                f.bag_offsets[elements], f.bag_lengths[elements],
                f.name_offsets[elements], f.name_lengths[elements],
                f.term_offsets[elements], f.term_lengths[elements],
            ]
        )  # fmt: skip
        return MissedFeatures(rows, f.data, refs, f.values[elements], per_slot)


@dataclass(frozen=True)
class FeatureLookup:
    """Every slot's column of a (bag, name, term), for one index version, over whole decoded batches.

    ``table`` holds the (bag, name, term) keys some slot indexes, ``columns[k, s]`` key
    ``k``'s column in slot ``s`` (-1: none); ``bags`` holds each bag some slot uses as the
    key (bag, "", ""), ``uses[b, s]`` whether slot ``s`` reads bag ``b``.
    """

    table: HashTable
    columns: np.ndarray
    bags: HashTable
    uses: np.ndarray
    version: int = 0

    @classmethod
    def build(
        cls, keys: KeyArrays, columns: np.ndarray, bags: KeyArrays, uses: np.ndarray, version: int = 0
    ) -> FeatureLookup:
        """The lookup of an index version's keys and bags, as arrays (one column and one ``uses`` row per key and bag)."""
        if columns.shape != (len(keys), uses.shape[1]) or uses.shape[0] != len(bags):
            raise InvalidValueError(
                f"columns {columns.shape} and uses {uses.shape} do not fit {len(keys)} keys and {len(bags)} bags"
            )
        return cls(
            HashTable.build(keys), columns.astype(np.int64), HashTable.build(bags), uses.astype(np.bool_), version
        )

    @classmethod
    def from_indexes(cls, indexes: Sequence[FeatureIndex], version: int = 0) -> FeatureLookup:
        """The lookup of ``indexes`` in slot order (the global index first, then each coordinate's)."""
        bag_names = list(dict.fromkeys(bag for index in indexes for bag in index.bag_names))
        uses = np.array([[bag in index.bag_names for index in indexes] for bag in bag_names], dtype=np.bool_)
        rows: dict[tuple[str, str, str], int] = {}
        placed: list[tuple[int, int, int]] = []  # (key, slot, column)
        for slot, index in enumerate(indexes):
            for column, (name, term) in enumerate(index.keys):
                for bag in index.bag_names:
                    placed.append((rows.setdefault((bag, name, term), len(rows)), slot, column))
        columns = np.full((len(rows), len(indexes)), -1, dtype=np.int64)
        if placed:
            key, slot, column = np.array(placed, dtype=np.int64).T
            columns[key, slot] = column
        bags = KeyArrays.of([(bag, "", "") for bag in bag_names])
        return cls.build(KeyArrays.of(list(rows)), columns, bags, uses.reshape(-1, len(indexes)), version)

    @classmethod
    def for_model(cls, model: GlobalModel, settings: ModelSettings) -> FeatureLookup:
        """The lookup of ``model``'s indexes in the resolver's slot order; refuses a spec with transforms.

        Transformed features (buckets, splines, products) differ from the decoded ones, so
        a lookup of raw features would silently disagree with the resolver.
        """
        if settings.transforms:
            raise InvalidValueError(
                f"the compiled lookup reads features as decoded; transforms {sorted(settings.transforms)} need the resolver"
            )
        indexes = [model.global_index] + [model.coordinate_indices[c] for c in settings.coordinates]
        return cls.from_indexes(indexes, model.index_version)

    @property
    def slots(self) -> int:
        """Number of slots, the global one included."""
        return int(self.columns.shape[1])

    def index(self, bag_rows: Sequence[Bags]) -> IndexedRows:
        """Bags already in Python (a scoring request's) indexed through this lookup: what
        :meth:`~stream.tables.indexing.FeatureResolver.index` gives for a spec without transforms."""
        return self.lookup(bags_column(bag_rows)).placed()

    def lookup(self, features: FeatureBagsColumn) -> FeatureColumns:
        """Every slot's column of every feature of a decoded batch, in one compiled pass."""
        t, b = self.table, self.bags
        columns, lacking = _lookup_batch(
            np.frombuffer(features.data, dtype=np.uint8),
            features.bag_key_offsets,
            features.bag_key_lengths,
            features.bag_feature_offsets,
            features.name_offsets,
            features.name_lengths,
            features.term_offsets,
            features.term_lengths,
            features.hashes,
            t.slots, t.keys.hashes, t.keys.arena, t.keys.offsets, self.columns,
            b.slots, b.keys.hashes, b.keys.arena, b.keys.offsets, self.uses,
        )  # fmt: skip
        rows = np.repeat(np.arange(len(features.row_offsets) - 1), np.diff(features.row_offsets))
        return FeatureColumns(features, columns, lacking, rows)


def model_indexer(model: GlobalModel, settings: ModelSettings) -> FeatureLookup | FeatureResolver:
    """How features are indexed under ``model``: the compiled lookup, or the resolver when the spec has transforms.

    Transforms (buckets, splines, products) make features the lookup's raw keys do not
    hold; the joiner and the scorer choose here, so they index alike.
    """
    return FeatureResolver(model, settings) if settings.transforms else FeatureLookup.for_model(model, settings)


@njit(nogil=True, cache=True)
def _hash_keys(arena, offsets):
    """FNV-1a 64 of every key (the 0xFF separators are in the arena, so this is the decoder's hash)."""
    hashes = np.empty(offsets.shape[0] - 1, dtype=np.uint64)
    for i in range(hashes.shape[0]):
        hashes[i] = fnv1a(arena, offsets[i], offsets[i + 1], FNV_OFFSET)
    return hashes


@leaf
def _home(h, mask):
    """The first slot probed for hash ``h``: its high bits folded in (fmix64), masked to the table size."""
    h = (h ^ (h >> _SHIFT)) * _MIX
    return np.int64((h ^ (h >> _SHIFT)) & mask)


@leaf
def _is_key(arena, start, stop, data, bag, bag_length, name, name_length, term, term_length):
    """Whether ``arena[start:stop]`` is bag 0xFF name 0xFF term, the three strings read from ``data``."""
    if stop - start != bag_length + name_length + term_length + 2:
        return False
    name_at = start + bag_length + 1
    term_at = name_at + name_length + 1
    return (
        arena[name_at - 1] == 0xFF
        and arena[term_at - 1] == 0xFF
        and same_range(arena, start, data, bag, bag_length)
        and same_range(arena, name_at, data, name, name_length)
        and same_range(arena, term_at, data, term, term_length)
    )


@leaf
def _find(slots, hashes, arena, offsets, h, data, bag, bag_length, name, name_length, term, term_length):
    """The key whose hash is ``h`` and whose bytes are the given strings of ``data``, or -1."""
    mask = np.uint64(slots.shape[0] - 1)
    p = _home(h, mask)
    while slots[p] != _EMPTY:
        k = slots[p]
        if hashes[k] == h and _is_key(
            arena, offsets[k], offsets[k + 1], data, bag, bag_length, name, name_length, term, term_length
        ):
            return k
        p = (p + 1) & (slots.shape[0] - 1)
    return _EMPTY


@njit(nogil=True, cache=True)
def _insert_all(hashes, arena, offsets, size):
    """(slots of a table of ``size`` holding every key, the first key that repeats an earlier one or -1)."""
    slots = np.full(size, _EMPTY, dtype=np.int64)
    mask = np.uint64(size - 1)
    for k in range(hashes.shape[0]):
        start, stop = offsets[k], offsets[k + 1]
        p = _home(hashes[k], mask)
        while slots[p] != _EMPTY:
            j = slots[p]
            same_length = offsets[j + 1] - offsets[j] == stop - start
            if hashes[j] == hashes[k] and same_length and same_range(arena, offsets[j], arena, start, stop - start):
                return slots, k
            p = (p + 1) & (size - 1)
        slots[p] = k
    return slots, _EMPTY


@njit(nogil=True, cache=True)
def _lookup_batch(
    data,
    bag_key_offsets,
    bag_key_lengths,
    bag_feature_offsets,
    name_offsets,
    name_lengths,
    term_offsets,
    term_lengths,
    hashes,
    key_slots,
    key_hashes,
    key_arena,
    key_offsets,
    columns,
    bag_slots,
    bag_hashes,
    bag_arena,
    bag_offsets,
    uses,
):
    """(columns per slot and feature, slots lacking each feature) of a batch; each bag is looked up once."""
    n = hashes.shape[0]
    width = columns.shape[1]
    placed = np.full((width, n), _EMPTY, dtype=np.int64)
    lacking = np.zeros((width, n), dtype=np.bool_)
    for b in range(bag_key_offsets.shape[0]):
        bag, bag_length = bag_key_offsets[b], bag_key_lengths[b]
        bag_hash = fnv1a_separator(fnv1a_separator(fnv1a(data, bag, bag + bag_length, FNV_OFFSET)))
        bag_id = _find(bag_slots, bag_hashes, bag_arena, bag_offsets, bag_hash, data, bag, bag_length, 0, 0, 0, 0)
        if bag_id == _EMPTY:
            continue  # no slot reads this bag: its features are neither placed nor missed
        for e in range(bag_feature_offsets[b], bag_feature_offsets[b + 1]):
            k = _find(
                key_slots, key_hashes, key_arena, key_offsets, hashes[e], data,
                bag, bag_length, name_offsets[e], name_lengths[e], term_offsets[e], term_lengths[e],
            )  # fmt: skip
            for s in range(width):
                if not uses[bag_id, s]:
                    continue
                column = columns[k, s] if k != _EMPTY else _EMPTY
                if column != _EMPTY:
                    placed[s, e] = column
                else:
                    lacking[s, e] = True
    return placed, lacking
