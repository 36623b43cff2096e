"""One RocksDB store per assigned input partition (DESIGN §5).

The store keeps raw bytes keys and values (rocksdict's ``raw_mode``: nothing pickled) and
metadata values, the partition's processed input offsets (one per input topic), written in the same
WriteBatch as the data it covers, so the two can never disagree after a crash. RocksDB's
own LOCK file means a second owner, in this process or another, cannot open the store.
Bloom filters and a block cache are on: without them point reads slow down several times
once entities have been overwritten (DESIGN §4).

Without the write-ahead log (``state_write_ahead_log = false``), writes go to the memtable
only, and RocksDB persists them when it flushes a memtable (every 64 MB of writes, and
when the store closes). A flush persists whole write batches, so after a crash the store
holds its state as of some earlier batch, with that batch's offsets: it is behind, and
the stage restores it from its changelog as it restores a store moved between machines.
"""

from __future__ import annotations

import logging
import shutil
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import cast

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

from stream.errors import DiskFullError, GlmixError, is_disk_full
from stream.state.exceptions import StateError, StoreOwnedError

log = logging.getLogger(__name__)

_META_OFFSET = b"\x00meta:processed-offset:"
_OFFSET = struct.Struct("<q")
_BLOCK_CACHE_BYTES = 32 << 20
_BLOOM_BITS_PER_KEY = 10
NO_OFFSET = -1


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    table = BlockBasedOptions()
    table.set_bloom_filter(_BLOOM_BITS_PER_KEY, False)
    table.set_block_cache(Cache(_BLOCK_CACHE_BYTES))
    options.set_block_based_table_factory(table)
    return options


def offset_items(offsets: Mapping[str, int]) -> list[tuple[bytes, bytes]]:
    """The store items that record processed ``offsets`` by input (what a changelog carries for them)."""
    return [(_META_OFFSET + source.encode(), _OFFSET.pack(offset)) for source, offset in offsets.items()]


def store_path(state_dir: str | Path, owner: str, topic: str, partition: int) -> Path:
    """Where the store of (``owner``, ``topic``, ``partition``) lives under the state dir."""
    return Path(state_dir) / owner / f"{topic}-{partition}"


class PartitionStore:
    """The RocksDB state of one input partition: bytes keys to bytes values, plus its processed offset."""

    def __init__(self, path: str | Path, write_ahead_log: bool = True) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._failed(exc, "the state store's directory") from exc
        self._write_options = WriteOptions()
        self._write_options.disable_wal = not write_ahead_log  # type: ignore[method-assign,assignment]  # a property; the stub says method
        self._db: Rdict | None = self._open()

    @property
    def _open_db(self) -> Rdict:
        if self._db is None:
            raise StateError(f"the state store {self.path} is closed")
        return self._db

    def _failed(self, exc: Exception, writing: str) -> GlmixError:
        """The error for a failed write: a full disk says so (it is not corruption: the store must not be wiped for
        it), anything else is a :class:`StateError`; both name the store and what it was ``writing``."""
        if is_disk_full(exc):
            return DiskFullError(self.path, writing, exc)
        return StateError(f"writing {writing} at {self.path} failed: {exc}")

    def _open(self) -> Rdict:
        try:
            return Rdict(str(self.path), _options())
        except Exception as exc:  # rocksdict raises plain Exception for every RocksDB status
            if "lock" in str(exc).lower():
                raise StoreOwnedError(f"{self.path} is already open by another owner: {exc}") from exc
            if is_disk_full(exc):
                raise self._failed(exc, "the log and manifest of the state store (on open)") from exc
            raise StateError(f"cannot open the state store {self.path}: {exc}") from exc

    def processed_offset(self, source: str = "input") -> int:
        """The last offset of input ``source`` whose effects are in the store (-1: none)."""
        raw = self._open_db.get(_META_OFFSET + source.encode())
        return NO_OFFSET if raw is None else _OFFSET.unpack(raw)[0]

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values of ``keys`` in one multi-get (None where absent)."""
        if not keys:
            return []
        try:
            return cast(list[bytes | None], self._open_db.get(list(keys)))
        except Exception as exc:  # rocksdict raises plain Exception for every RocksDB status
            raise StateError(f"reading {len(keys)} keys from the state store {self.path} failed: {exc}") from exc

    def commit(
        self,
        puts: Iterable[tuple[bytes, bytes]],
        deletes: Iterable[bytes] = (),
        offsets: Mapping[str, int] | None = None,
    ) -> None:
        """Write ``puts``, ``deletes`` and the processed ``offsets`` (by input) atomically: one WriteBatch."""
        batch = WriteBatch(raw_mode=True)
        for key in deletes:
            batch.delete(key)
        for key, value in puts:
            batch.put(key, value)
        for key, value in offset_items(offsets or {}):
            batch.put(key, value)
        self._write(batch, f"a write batch of {len(batch)} changes to the state store")

    def apply(self, changes: Iterable[tuple[bytes, bytes | None]], offsets: Mapping[str, int] | None = None) -> None:
        """Write ``changes`` in their order (a None value deletes the key) and ``offsets``: one WriteBatch."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for key, value in offset_items(offsets or {}):
            batch.put(key, value)
        self._write(batch, f"a write batch of {len(batch)} changelog changes to the state store")

    def _write(self, batch: WriteBatch, what: str) -> None:
        try:
            self._open_db.write(batch, self._write_options)
        except Exception as exc:  # rocksdict raises plain Exception for every RocksDB status (disk full, I/O error)
            raise self._failed(exc, what) from exc

    def scan(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Items with ``start <= key < stop``, in key order."""
        it = self._open_db.iter()
        it.seek(start)
        while it.valid():
            key = it.key()
            if key >= stop:
                break
            yield key, it.value()
            it.next()

    def count(self, prefix: bytes) -> int:
        """Number of keys that start with ``prefix`` (a scan; for tests and reports)."""
        return sum(1 for _ in self.scan(prefix, prefix + b"\xff"))

    def size_bytes(self) -> int:
        """RocksDB's estimate of the live data size, memtables included."""
        live = self._open_db.property_int_value("rocksdb.estimate-live-data-size") or 0
        memtables = self._open_db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        return int(live) + int(memtables)

    def flush(self) -> None:
        """Write memtables to disk files (for size measurements and clean shutdown)."""
        try:
            self._open_db.flush()
        except Exception as exc:  # rocksdict raises plain Exception for every RocksDB status
            raise self._failed(exc, "the memtables of the state store") from exc

    def close(self) -> None:
        """Release the store (and its lock); safe to call twice.

        Without the write-ahead log RocksDB writes its memtables on close; when that fails
        (a full disk) the store is released all the same and the error raised: the lost
        writes are behind the changelog, which the next owner restores from.
        """
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Exception as exc:  # rocksdict raises plain Exception for every RocksDB status
                raise self._failed(exc, "the memtables of the state store (on close)") from exc

    def wipe(self) -> None:
        """Delete everything (a corrupt or unusable store) and start empty."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._open()
        log.warning("wiped state store %s", self.path)


def open_or_wipe(path: str | Path, write_ahead_log: bool = True) -> tuple[PartitionStore, bool]:
    """Open the store at ``path``; if it cannot be opened (corrupt), delete it and start empty.

    Returns the store and whether it was wiped. A store owned by someone else is never wiped.
    """
    try:
        return PartitionStore(path, write_ahead_log), False
    except StoreOwnedError:
        raise
    except StateError as exc:
        log.warning("state store %s is unreadable (%s); deleting it to restore from the changelog", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        return PartitionStore(path, write_ahead_log), True
