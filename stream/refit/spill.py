"""Archived examples as column chunks on local disk, for a refit in bounded memory.

The local engine reads the archive once and writes each chunk of ``chunk_rows`` examples
as plain ``.npy`` columns (:func:`stream.refit.examples.chunk_columns`). L-BFGS then passes
over the chunks one at a time, each memory-mapped (served from the page cache when it fits
there, without a copy) and dropped after use: the process holds one chunk plus the model,
for 10M examples as for 10k. A split of a single chunk keeps it in memory between passes, which
is the same bound and spares every L-BFGS pass of a small refit its reads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from typing_extensions import Self

from stream.model.game import GlobalBlock
from stream.refit.examples import Columns, ExampleSplit, RowBatch, block_of, chunk_columns, remap_columns, tree_sum

_FEATURES = ("indptr", "indices", "values")
_COLUMNS = ("labels", "weights", "offsets", "fixed_offsets", "event_times", *_FEATURES)


@dataclass
class SpilledExamples(ExampleSplit):
    """A growing set of on-disk chunks of one split (train or holdout) of the global problem.

    Chunk k holds rows ``[k * chunk_rows, (k + 1) * chunk_rows)`` exactly, the rule every
    engine cuts chunks by (:mod:`stream.refit.examples`).
    """

    directory: Path
    dim: int
    chunk_rows: int
    chunks: list[Path] = field(default_factory=list, init=False)
    rows: int = field(default=0, init=False)
    _pending: list[RowBatch] = field(default_factory=list, init=False)
    _pending_rows: int = field(default=0, init=False)
    _resident: tuple[Path, dict[str, np.ndarray]] | None = field(default=None, init=False)

    def add(
        self,
        labels: np.ndarray,
        weights: np.ndarray,
        offsets: np.ndarray,
        fixed_offsets: np.ndarray,
        event_times: np.ndarray,
        lengths: np.ndarray,
        indices: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """Append rows (``lengths[i]`` features each, in ``indices``/``values`` order); spills full chunks.

        ``offsets`` are what the global coordinate is fitted (or scored) around;
        ``fixed_offsets`` the examples' own offsets alone, which score the global model as
        it serves on its own (an entity the random effects do not know).
        """
        if not len(labels):
            return
        self._pending.append(RowBatch(labels, weights, offsets, fixed_offsets, event_times, lengths, indices, values))
        self._pending_rows += len(labels)
        self.rows += len(labels)
        while self._pending_rows >= self.chunk_rows:
            self._write(self.chunk_rows)

    def flush(self) -> None:
        """Write the pending rows as the last chunk."""
        if self._pending_rows:
            self._write(self._pending_rows)

    def _write(self, rows: int) -> None:
        chunk_rows, rest = RowBatch.concatenate(self._pending).head(rows)
        chunk = self.directory / f"chunk-{len(self.chunks):05d}"
        chunk.mkdir(parents=True)
        for key, array in chunk_columns(chunk_rows).items():
            np.save(chunk / f"{key}.npy", array)
        self.chunks.append(chunk)
        self._pending = [rest] if rest.rows else []
        self._pending_rows -= rows

    def move_columns(self, first: int, moved: np.ndarray, dim: int) -> None:
        """Columns ``first + i`` stored so far now mean column ``moved[i]`` (-1: dropped) of a ``dim``-column problem.

        The vocabulary writer spills new features under provisional columns and decides
        afterwards which it admits. Each chunk is rewritten once, here, so that the fit's passes read it as it is.
        """
        self.dim = dim
        self._resident = None
        if not len(moved):
            return
        for chunk in self.chunks:
            stored = {key: np.load(chunk / f"{key}.npy") for key in _FEATURES}
            for key, array in remap_columns(stored, first, np.asarray(moved, dtype=np.int64)).items():
                _replace(chunk / f"{key}.npy", array)

    def _columns(self, chunk: Path) -> dict[str, np.ndarray]:
        if self._resident is not None and self._resident[0] == chunk:
            return self._resident[1]
        columns = {key: np.load(chunk / f"{key}.npy", mmap_mode="r") for key in _COLUMNS}
        if len(self.chunks) == 1:
            self._resident = (chunk, columns)
        return columns

    def blocks(self, offsets: str = "offsets") -> Iterator[GlobalBlock]:
        """Every chunk as a :class:`GlobalBlock` around the ``offsets`` column (or ``fixed_offsets``), one at a time."""
        for chunk in self.chunks:
            yield block_of(self._columns(chunk), self.dim, offsets)

    def summed(self, partial: Callable[[Columns], np.ndarray]) -> np.ndarray:
        """:func:`~stream.refit.examples.tree_sum` of ``partial`` over the chunks, each read back once."""
        return tree_sum(partial(self._columns(chunk)) for chunk in self.chunks)

    def mapped(self, per_chunk: Callable[[Columns], np.ndarray]) -> np.ndarray:
        """``per_chunk`` of every chunk, concatenated in chunk order."""
        return np.concatenate([per_chunk(self._columns(chunk)) for chunk in self.chunks])


def _replace(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` by renaming a new file over it: a reader still mapping the old one keeps it whole."""
    written = path.with_suffix(".new")
    with open(written, "wb") as out:
        np.save(out, array)
    os.replace(written, path)


class SpillDirectory:
    """A temporary directory holding the splits of one refit, removed on exit."""

    def __init__(self, parent: str | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="glmix-refit-", dir=parent))

    def split(self, name: str, dim: int, chunk_rows: int) -> SpilledExamples:
        """A new, empty split under this directory."""
        return SpilledExamples(self.path / name, dim, chunk_rows)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
