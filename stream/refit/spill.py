"""Archived examples as column chunks on local disk, for a refit in bounded memory.

The refit reads the archive once and writes each chunk of ``chunk_rows`` examples as
plain ``.npy`` columns (labels, weights, offsets, event times, and the global features
as CSR arrays). L-BFGS then passes over the chunks one at a time, each read back whole
(from the page cache when it fits there) and dropped after use: the process holds one
chunk plus the model, for 10M examples as for 10k.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from typing_extensions import Self

from stream.model.game import GlobalBlock

_COLUMNS = ("labels", "weights", "offsets", "fixed_offsets", "event_times", "indptr", "indices", "values")


@dataclass
class SpilledExamples:
    """A growing set of on-disk chunks of one split (train or holdout) of the global problem."""

    directory: Path
    dim: int
    chunk_rows: int
    chunks: list[Path] = field(default_factory=list, init=False)
    rows: int = field(default=0, init=False)
    _pending: list[dict[str, np.ndarray]] = field(default_factory=list, init=False)
    _pending_rows: int = field(default=0, init=False)
    _moved: np.ndarray | None = field(default=None, init=False)
    _moved_from: int = field(default=0, init=False)

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
        self._pending.append(
            {
                "labels": labels,
                "weights": weights,
                "offsets": offsets,
                "fixed_offsets": fixed_offsets,
                "event_times": event_times,
                "lengths": lengths,
                "indices": indices,
                "values": values,
            }
        )
        self._pending_rows += len(labels)
        self.rows += len(labels)
        if self._pending_rows >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows as one chunk."""
        if not self._pending:
            return
        joined = {key: np.concatenate([p[key] for p in self._pending]) for key in self._pending[0]}
        chunk = self.directory / f"chunk-{len(self.chunks):05d}"
        chunk.mkdir(parents=True)
        indptr = np.zeros(len(joined["labels"]) + 1, dtype=np.int64)
        np.cumsum(joined.pop("lengths"), out=indptr[1:])
        joined["values"] = joined["values"].astype(np.float64)  # what the sparse products compute in, converted once
        for key, array in {**joined, "indptr": indptr}.items():
            np.save(chunk / f"{key}.npy", array)
        self.chunks.append(chunk)
        self._pending, self._pending_rows = [], 0

    def move_columns(self, first: int, moved: np.ndarray, dim: int) -> None:
        """Columns ``first + i`` stored so far now mean column ``moved[i]`` (-1: dropped) of a ``dim``-column problem.

        The vocabulary writer spills new features under provisional columns and decides
        afterwards which it admits; chunks are mapped as they are read back.
        """
        self._moved, self._moved_from, self.dim = np.asarray(moved, dtype=np.int64), first, dim

    def _columns(self, chunk: Path) -> dict[str, np.ndarray]:
        columns = {key: np.load(chunk / f"{key}.npy") for key in _COLUMNS}
        if self._moved is not None:
            indices = columns["indices"].astype(np.int64)
            provisional = indices >= self._moved_from
            indices[provisional] = self._moved[indices[provisional] - self._moved_from]
            keep = indices >= 0
            kept_before = np.concatenate([[0], np.cumsum(keep)])
            columns.update(indices=indices[keep], values=columns["values"][keep], indptr=kept_before[columns["indptr"]])
        return columns

    def blocks(self, offsets: str = "offsets") -> Iterator[GlobalBlock]:
        """Every chunk as a :class:`GlobalBlock` around the ``offsets`` column (or ``fixed_offsets``), one at a time."""
        for chunk in self.chunks:
            c = self._columns(chunk)
            features = sp.csr_matrix((c["values"], c["indices"], c["indptr"]), shape=(len(c["labels"]), self.dim))
            yield GlobalBlock(features, c["labels"], c["weights"], c[offsets])

    def column(self, key: str) -> np.ndarray:
        """One column of every row, in memory (for holdout-sized data: labels, offsets, times)."""
        parts = [np.load(chunk / f"{key}.npy") for chunk in self.chunks]
        return np.concatenate(parts) if parts else np.zeros(0)

    def margins(self, coefficients: np.ndarray, offsets: str = "offsets") -> np.ndarray:
        """Every row's margin ``offset + x . beta``: (N,) for one (dim,) vector, (N, K) for (dim, K) columns.

        ``offsets`` names the column added: ``offsets`` (the full model) or ``fixed_offsets`` (global only).
        """
        parts = [
            (b.offsets if coefficients.ndim == 1 else b.offsets[:, None]) + b.features @ coefficients
            for b in self.blocks(offsets)
        ]
        return np.concatenate(parts) if parts else np.zeros((0,) + coefficients.shape[1:])

    def hessian_diagonal(
        self,
        coefficients: np.ndarray,
        derivatives: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
        offsets: str = "offsets",
    ) -> np.ndarray:
        """``diag(X' W H X)`` at ``coefficients`` (``derivatives`` is a loss's): the data part of the precision's diagonal."""
        total = np.zeros(self.dim)
        for b in self.blocks(offsets):
            _, second = derivatives(b.labels, b.offsets + b.features @ coefficients)
            total += b.features.multiply(b.features).T @ (b.weights * second)
        return total


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


def packed_global_features(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row lengths, int32 columns and float32 values of records' packed global features."""
    indices = [r["global_features"]["indices"] for r in records]
    values = [r["global_features"]["values"] for r in records]
    lengths = np.fromiter((len(b) // 4 for b in indices), dtype=np.int64, count=len(records))
    return (lengths, np.frombuffer(b"".join(indices), dtype="<i4"), np.frombuffer(b"".join(values), dtype="<f4"))
