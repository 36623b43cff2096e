"""The archive's file layout: hourly directories of Avro container files of labeled examples.

``<root>/dt=YYYY-MM-DD/hour=HH/part-<partition>-<first offset>-<last offset>.avro`` holds
examples of one input partition whose event time falls in that UTC hour. The offset range
in the name is what makes archiving exactly-once: a restarted archiver skips, per hour
and partition, offsets at or below the newest file's last offset. Files are written under
a dot-name and renamed into place, so readers only ever see whole files. ``root`` is a
local directory or any fsspec URL.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import fsspec
import numpy as np

from stream.codec.container import (
    container_bodies,
    container_metadata,
    encoded_bodies,
    read_container_file,
    write_container_bodies,
)
from stream.codec.labeled_example import LabeledColumns, scan_bodies
from stream.errors import DiskFullError, GlmixError, is_disk_full
from stream.model.game import GLOBAL

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
SCHEMA = "LabeledExample"
_HOUR_DIR = re.compile(r"dt=(\d{4})-(\d{2})-(\d{2})/hour=(\d{2})$")
_PART = re.compile(r"part-(\d+)-(\d+)-(\d+)\.avro$")
_FIRST_TIME, _LAST_TIME = "glmix.first_event_time", "glmix.last_event_time"  # in each file's header


def hour_of(event_time_ms: int) -> int:
    """The start (epoch ms) of the UTC hour holding ``event_time_ms``."""
    return event_time_ms - event_time_ms % HOUR_MS


def hour_dir(hour_ms: int) -> str:
    """The relative directory of one hour."""
    t = datetime.fromtimestamp(hour_ms / 1000, tz=timezone.utc)
    return f"dt={t:%Y-%m-%d}/hour={t:%H}"


def _hour_of_dir(path: str) -> int | None:
    match = _HOUR_DIR.search(path.rstrip("/"))
    if match is None:
        return None
    y, mo, d, h = map(int, match.groups())
    return int(datetime(y, mo, d, h, tzinfo=timezone.utc).timestamp() * 1000)


class ArchiveError(GlmixError):
    """An archive file could not be written (other than a full disk, which is a :class:`DiskFullError`)."""


@dataclass(frozen=True)
class ArchiveFile:
    """One archived file: its path, hour, input partition and offset range."""

    path: str
    hour_ms: int
    partition: int
    first_offset: int
    last_offset: int


class ArchiveFiles:
    """Reads and writes the hourly example files under one root."""

    def __init__(self, root: str) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(root)
        self.root = self.root.rstrip("/")

    def _dir(self, hour_ms: int) -> str:
        return f"{self.root}/{hour_dir(hour_ms)}"

    def write(
        self, hour_ms: int, partition: int, first_offset: int, last_offset: int, records: Iterable[Mapping[str, Any]]
    ) -> ArchiveFile:
        """Write one file of ``records`` (example dicts); see :meth:`write_bodies`."""
        listed = list(records)
        times = np.array([int(r["event_time"]) for r in listed], dtype=np.int64)
        return self.write_bodies(hour_ms, partition, first_offset, last_offset, encoded_bodies(SCHEMA, listed), times)

    def write_bodies(
        self,
        hour_ms: int,
        partition: int,
        first_offset: int,
        last_offset: int,
        bodies: Sequence[bytes],
        event_times: np.ndarray,
    ) -> ArchiveFile:
        """Write one file atomically (dot-name, then rename) of examples already encoded (unframed bodies); return it.

        A write that fails leaves no file behind: the partial dot-file is deleted (on a full
        disk it holds the space a retry needs) and the error names the file, as
        :class:`~stream.errors.DiskFullError` when the filesystem is full.
        """
        directory = self._dir(hour_ms)
        name = f"part-{partition:05d}-{first_offset:020d}-{last_offset:020d}.avro"
        temporary = f"{directory}/.{name}.tmp"
        metadata = {_FIRST_TIME: str(event_times.min()), _LAST_TIME: str(event_times.max())} if len(bodies) else {}
        try:
            self.fs.makedirs(directory, exist_ok=True)
            with self.fs.open(temporary, "wb") as out:
                write_container_bodies(out, SCHEMA, bodies, metadata=metadata)
            self.fs.mv(temporary, f"{directory}/{name}")
        except OSError as exc:
            self._remove_partial(temporary)
            what = f"the archive file {name} (partition {partition}, offsets {first_offset}-{last_offset})"
            if is_disk_full(exc):
                raise DiskFullError(directory, what, exc) from exc
            raise ArchiveError(f"writing {what} to {directory} failed: {exc}") from exc
        return ArchiveFile(f"{directory}/{name}", hour_ms, partition, first_offset, last_offset)

    def _remove_partial(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except OSError as exc:  # the write's own error is the one to raise
            log.warning("archive: could not delete the partial file %s: %s", path, exc)

    def hours(self) -> list[int]:
        """Every archived hour, oldest first."""
        if not self.fs.exists(self.root):
            return []
        found = (_hour_of_dir(p) for p in self.fs.glob(f"{self.root}/dt=*/hour=*"))
        return sorted(h for h in found if h is not None)

    def files(self, hour_ms: int) -> list[ArchiveFile]:
        """The whole files of one hour, by partition then offset."""
        directory = self._dir(hour_ms)
        if not self.fs.exists(directory):
            return []
        out = []
        for path in self.fs.ls(directory, detail=False):
            match = _PART.search(path)
            if match is not None and not path.rsplit("/", 1)[-1].startswith("."):
                p, first, last = map(int, match.groups())
                out.append(ArchiveFile(path, hour_ms, p, first, last))
        return sorted(out, key=lambda f: (f.partition, f.first_offset))

    def files_between(self, from_ms: int, to_ms: int) -> list[ArchiveFile]:
        """Files of every hour overlapping ``[from_ms, to_ms)``, oldest hour first."""
        return [f for h in self.hours() if h + HOUR_MS > from_ms and h < to_ms for f in self.files(h)]

    def archived_through(self, hour_ms: int, partition: int) -> int:
        """The last offset of ``partition`` already archived in ``hour_ms`` (-1 when none)."""
        return max((f.last_offset for f in self.files(hour_ms) if f.partition == partition), default=-1)

    def read(self, file: ArchiveFile) -> Iterator[dict[str, Any]]:
        """Stream one file's examples."""
        with self.fs.open(file.path, "rb") as fh:
            yield from read_container_file(fh, SCHEMA, file.path)

    def scanned(self, files: Sequence[ArchiveFile], rows: int) -> Iterator[LabeledColumns]:
        """The examples of ``files``, in order, scanned into columns in batches of about ``rows`` (whole blocks).

        The refit's read: the compiled scan of the blocks' bodies, with the global
        coordinate as the scan's own (``margin`` is then the fixed offset plus every random
        effect's join-time score). Raises :class:`ArchiveError` naming the file of an example that does not scan.
        """
        parts: list[bytes] = []
        counts: list[tuple[ArchiveFile, int]] = []
        held = 0
        for file in files:
            with self.fs.open(file.path, "rb") as fh:
                whole = io.BytesIO(fh.read())  # one read: fastavro's many small ones through fsspec cost more
            for data, count in container_bodies(whole, SCHEMA, file.path):
                parts.append(data)
                counts.append((file, count))
                held += count
                if held >= rows:
                    yield _scanned(parts, counts, held)
                    parts, counts, held = [], [], 0
        if counts:
            yield _scanned(parts, counts, held)

    def event_times(self, file: ArchiveFile) -> tuple[int, int] | None:
        """The first and last event time of ``file``'s examples (None when it holds none), from its header.

        A file written without them in its header (by an older version) is read through.
        """
        with self.fs.open(file.path, "rb") as fh:
            metadata = container_metadata(fh, file.path)
        if _FIRST_TIME in metadata and _LAST_TIME in metadata:
            return int(metadata[_FIRST_TIME]), int(metadata[_LAST_TIME])
        times = [int(r["event_time"]) for r in self.read(file)]
        return (min(times), max(times)) if times else None

    def examples_between(self, from_ms: int, to_ms: int) -> Iterator[dict[str, Any]]:
        """Stream every archived example with ``from_ms <= event_time < to_ms`` (hour by hour)."""
        for file in self.files_between(from_ms, to_ms):
            for record in self.read(file):
                if from_ms <= record["event_time"] < to_ms:
                    yield record

    def expire(self, newest_hour_ms: int, retention_hours: int) -> list[int]:
        """Delete hours older than ``retention_hours`` before ``newest_hour_ms``; returns the deleted hours."""
        if retention_hours <= 0:
            return []
        cutoff = newest_hour_ms - retention_hours * HOUR_MS
        expired = [h for h in self.hours() if h < cutoff]
        for h in expired:
            self.fs.rm(self._dir(h), recursive=True)
            log.info("archive: deleted hour %s (retention %d h)", hour_dir(h), retention_hours)
        return expired


def _scanned(parts: list[bytes], counts: list[tuple[ArchiveFile, int]], rows: int) -> LabeledColumns:
    """One scan of consecutive blocks' bodies (``rows`` in all); a body that does not scan fails it, naming its file."""
    columns = scan_bodies(b"".join(parts), rows, GLOBAL, 0)
    bad = np.flatnonzero(~columns.ok)
    if len(bad):
        row = int(bad[0])
        for file, count in counts:
            if row < count:
                raise ArchiveError(f"{file.path}: an archived example does not read: {columns.reason(int(bad[0]))}")
            row -= count
    return columns
