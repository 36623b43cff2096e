"""A coefficient table on local RocksDB with a bounded in-memory cache of hot entities.

Same interface and version rule as :class:`~stream.tables.models.CoefficientTable`, for
coordinates with more entities than memory should hold: every entity's latest record
lives on disk (one key per entity: version, event count, means and, for exploration, the
packed precision), and the ``cache_entities`` most recently used entities stay in memory. A
lookup reads its misses with one multi-get. The store is a cache of the compacted topic:
it is wiped when opened and rebuilt by the follower reading the topic, so it never
serves coefficients older than the topic holds.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from stream.errors import InvalidValueError
from stream.state.partition_store import PartitionStore
from stream.tables.models import precision_matrix

_HEADER = struct.Struct("<qqB")  # version, event count, precision kind (0 diagonal, 1 packed upper)
_KINDS = ("DIAGONAL", "PACKED_UPPER")


class _Held(NamedTuple):
    version: int
    means: np.ndarray
    event_count: int


class StoredCoefficientTable:
    """One coordinate's latest means per entity on disk, with an LRU cache of ``cache_entities`` in memory."""

    def __init__(
        self, coordinate: str, dim: int, directory: str | Path, cache_entities: int, keep_posteriors: bool = False
    ) -> None:
        self.coordinate = coordinate
        self.dim = dim
        self.keep_posteriors = keep_posteriors
        self.cache_entities = cache_entities
        self.path = Path(directory) / f"{coordinate}-{os.getpid()}"
        shutil.rmtree(self.path, ignore_errors=True)
        self._store = PartitionStore(self.path)
        self._cache: OrderedDict[str, _Held] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()
        self._means_bytes = 8 * dim

    def __len__(self) -> int:
        return self._count

    def _encode(self, version: int, means: np.ndarray, record: Mapping[str, Any]) -> bytes:
        kind = _KINDS.index(record.get("precision_kind", "DIAGONAL"))
        precision = bytes(record.get("precision", b"")) if self.keep_posteriors else b""
        count = int(record.get("event_count", 0))
        return _HEADER.pack(version, count, kind) + means.astype("<f8").tobytes() + precision

    def _decode(self, value: bytes) -> _Held:
        version, count, _ = _HEADER.unpack_from(value)
        means = np.frombuffer(value, dtype="<f8", count=self.dim, offset=_HEADER.size)
        return _Held(version, means, count)

    def _remember(self, entity: str, held: _Held) -> None:
        self._cache[entity] = held
        self._cache.move_to_end(entity)
        while len(self._cache) > self.cache_entities:
            self._cache.popitem(last=False)

    def _held(self, entities: Sequence[str]) -> dict[str, _Held]:
        """Version, means and event count of every entity the table holds (cache first, then one multi-get)."""
        cache = self._cache
        found: dict[str, _Held] = {}
        for entity in entities:
            hit = cache.get(entity)
            if hit is not None:
                found[entity] = hit
                cache.move_to_end(entity)  # least recently used leaves first
        missing = [e for e in dict.fromkeys(entities) if e not in found]
        for entity, value in zip(missing, self._store.get_many([e.encode() for e in missing])):
            if value is not None:
                found[entity] = self._decode(value)
                self._remember(entity, found[entity])
        return found

    def apply(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Take every record newer than what the table holds; returns how many were taken."""
        latest: dict[str, tuple[int, np.ndarray, Mapping[str, Any]]] = {}
        for record in records:
            means = np.asarray(record["means"], dtype=np.float64)
            if means.shape != (self.dim,) or not np.isfinite(means).all():
                continue
            entity, version = record["entity_id"], int(record["version"])
            if entity not in latest or version > latest[entity][0]:
                latest[entity] = (version, means, record)
        if not latest:
            return 0
        with self._lock:
            held = self._held(list(latest))
            newer = {e: v for e, v in latest.items() if e not in held or v[0] > held[e][0]}
            self._store.commit((e.encode(), self._encode(v, m, r)) for e, (v, m, r) in newer.items())
            for entity, (version, means, record) in newer.items():
                if entity in self._cache:
                    self._remember(entity, _Held(version, means, int(record.get("event_count", 0))))
            self._count += sum(1 for e in newer if e not in held)
        return len(newer)

    def version(self, entity_id: str) -> int:
        """The version held for ``entity_id`` (0: none)."""
        with self._lock:
            held = self._held([entity_id])
        return held[entity_id].version if entity_id in held else 0

    def lookup(self, entity_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(N, dim) means (zeros for unknown entities) and (N,) versions (0: unknown)."""
        with self._lock:
            held = self._held(entity_ids)
        means = np.zeros((len(entity_ids), self.dim))
        versions = np.zeros(len(entity_ids), dtype=np.int64)
        for i, entity in enumerate(entity_ids):
            found = held.get(entity)
            if found is not None:
                versions[i], means[i] = found.version, found.means
        return means, versions

    def event_counts(self, entity_ids: Sequence[str]) -> np.ndarray:
        """(N,) events each entity's held model had absorbed (0: unknown)."""
        with self._lock:
            held = self._held(entity_ids)
        return np.array([held[e].event_count if e in held else 0 for e in entity_ids], dtype=np.int64)

    def posteriors(self, entity_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, d) means, (N, d, d) precisions and (N,) known mask, read from disk."""
        if not self.keep_posteriors:
            raise InvalidValueError(f"table {self.coordinate!r} keeps no posteriors (keep_posteriors=False)")
        values = self._store.get_many([e.encode() for e in entity_ids])
        means = np.zeros((len(entity_ids), self.dim))
        precisions = np.zeros((len(entity_ids), self.dim, self.dim))
        known = np.zeros(len(entity_ids), dtype=bool)
        for i, value in enumerate(values):
            if value is None:
                continue
            _, _, kind = _HEADER.unpack_from(value)
            matrix = precision_matrix(_KINDS[kind], value[_HEADER.size + self._means_bytes :], self.dim)
            if matrix is not None:
                means[i], precisions[i], known[i] = self._decode(value).means, matrix, True
        return means, precisions, known

    def close(self) -> None:
        """Close and delete the store (it is rebuilt from the topic next time)."""
        self._store.close()
        shutil.rmtree(self.path, ignore_errors=True)
