"""The refit's splits (train, holdout) as chunks of rows, whichever engine holds them: the one seam between engines.

A split is a sequence of chunks: chunk k holds rows ``[k * chunk_rows, (k + 1) * chunk_rows)``
of the split, in archive order, stored as the columns of :func:`chunk_columns`. The local
engine keeps the chunks on disk (:class:`stream.refit.spill.SpilledExamples`), the Spark
engine as cached partitions, one chunk each (:mod:`stream.refit.spark`), the bootstrap in
memory (:class:`MemoryExamples`). Everything a refit computes over a split is a sum of
per-chunk partials (:meth:`ExampleSplit.summed`: objective and gradient, the Hessian
diagonal) or per-row values in chunk order (:meth:`ExampleSplit.mapped`: margins,
columns), and both engines add the partials in the same fixed order (:func:`tree_sum`).
Floating-point addition is not associative, so that order is what makes the two engines
reach bit-identical objectives and gradients, and so the same coefficients, instead of
coefficients a few ulps apart that an optimizer's stopping test can turn into a different
iteration count.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from stream.model.game import GlobalBlock
from stream.model.losses import Loss

# Partials are added in groups of this many consecutive chunks, then the groups in order: what a
# Spark job sums on executors before the driver sees one vector per group.
TREE_FANOUT = 16
Columns = Mapping[str, np.ndarray]


class RowBatch(NamedTuple):
    """Rows of a split: per row its label, weight, offsets, event time and ``lengths[i]`` global features."""

    labels: np.ndarray
    weights: np.ndarray
    offsets: np.ndarray
    fixed_offsets: np.ndarray
    event_times: np.ndarray
    lengths: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def rows(self) -> int:
        """How many rows."""
        return len(self.labels)

    def head(self, n: int) -> tuple[RowBatch, RowBatch]:
        """The first ``n`` rows and the rest."""
        cut = int(self.lengths[:n].sum())
        per_row = len(self) - 2  # the per-row columns come first, the features' entries last
        first = RowBatch._make([*(a[:n] for a in self[:per_row]), self.indices[:cut], self.values[:cut]])
        rest = RowBatch._make([*(a[n:] for a in self[:per_row]), self.indices[cut:], self.values[cut:]])
        return first, rest

    @classmethod
    def concatenate(cls, batches: Sequence[RowBatch]) -> RowBatch:
        """``batches``' rows one after the other."""
        return cls._make(np.concatenate([b[k] for b in batches]) for k in range(len(cls._fields)))


def chunk_columns(batch: RowBatch) -> dict[str, np.ndarray]:
    """The stored form of a chunk: per-row columns, features as CSR (``indptr``, ``indices``, float64 ``values``)."""
    indptr = np.zeros(batch.rows + 1, dtype=np.int64)
    np.cumsum(batch.lengths, out=indptr[1:])
    return {
        "labels": batch.labels,
        "weights": batch.weights,
        "offsets": batch.offsets,
        "fixed_offsets": batch.fixed_offsets,
        "event_times": batch.event_times,
        "indptr": indptr,
        "indices": batch.indices,
        "values": batch.values.astype(np.float64),  # what the sparse products compute in, converted once
    }


def pack_columns(columns: Columns) -> bytes:
    """Columns as ``.npz`` bytes (no pickle), how chunks travel and are cached off the local disk."""
    out = io.BytesIO()
    np.savez(out, **dict(columns))  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag
    return out.getvalue()


def unpack_columns(raw: bytes) -> dict[str, np.ndarray]:
    """The columns :func:`pack_columns` packed."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as stored:
        return {key: stored[key] for key in stored.files}


def remap_columns(columns: Columns, first: int, moved: np.ndarray) -> dict[str, np.ndarray]:
    """Columns ``first + i`` of a chunk's features become ``moved[i]``; entries moved to -1 are dropped, order kept.

    The vocabulary step gives new features provisional columns while it counts and decides
    afterwards which it admits (:mod:`stream.refit.vocabulary`).
    """
    indices = columns["indices"].astype(np.int64)
    provisional = indices >= first
    indices[provisional] = moved[indices[provisional] - first]
    keep = indices >= 0
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    return {
        **columns,
        "indices": indices[keep],
        "values": columns["values"][keep],
        "indptr": kept_before[columns["indptr"]],
    }


def block_of(columns: Columns, dim: int, offsets: str = "offsets") -> GlobalBlock:
    """A chunk's rows as the global coordinate's problem around its ``offsets`` column (or ``fixed_offsets``)."""
    features = sp.csr_matrix(
        (columns["values"], columns["indices"], columns["indptr"]), shape=(len(columns["labels"]), dim)
    )
    return GlobalBlock(features, columns["labels"], columns["weights"], columns[offsets])


def ordered_sum(parts: Iterable[np.ndarray]) -> np.ndarray:
    """``((p0 + p1) + p2) + ...``: the partials added one after the other, in the order given."""
    total: np.ndarray | None = None
    for part in parts:
        total = np.array(part, dtype=np.float64) if total is None else total + part
    if total is None:
        raise ValueError("no partials to add")
    return total


def tree_sum(parts: Iterable[np.ndarray], fanout: int = TREE_FANOUT) -> np.ndarray:
    """Partials summed in groups of ``fanout`` consecutive ones, then the groups in order (see the module docstring)."""
    groups: list[np.ndarray] = []
    group: list[np.ndarray] = []
    for part in parts:
        group.append(part)
        if len(group) == fanout:
            groups.append(ordered_sum(group))
            group = []
    if group:
        groups.append(ordered_sum(group))
    return ordered_sum(groups)


class ExampleSplit(ABC):
    """One split of the refit's examples, as chunks: sums and per-row values over them, engine-independent."""

    dim: int
    rows: int

    @abstractmethod
    def summed(self, partial: Callable[[Columns], np.ndarray]) -> np.ndarray:
        """:func:`tree_sum` of ``partial`` over every chunk's columns, in chunk order."""

    @abstractmethod
    def mapped(self, per_chunk: Callable[[Columns], np.ndarray]) -> np.ndarray:
        """``per_chunk`` of every chunk's columns, concatenated (axis 0) in chunk order."""

    def summed_blocks(self, partial: Callable[[GlobalBlock], np.ndarray], offsets: str = "offsets") -> np.ndarray:
        """:meth:`summed` of ``partial`` over every chunk as a :class:`GlobalBlock` around ``offsets``."""
        dim = self.dim
        return self.summed(lambda columns: partial(block_of(columns, dim, offsets)))

    def column(self, key: str) -> np.ndarray:
        """One column of every row, in memory (for holdout-sized data: labels, offsets, times)."""
        if not self.rows:
            return np.zeros(0)
        return self.mapped(lambda columns: columns[key])

    def margins(self, coefficients: np.ndarray, offsets: str = "offsets") -> np.ndarray:
        """Every row's margin ``offset + x . beta``: (N,) for one (dim,) vector, (N, K) for (dim, K) columns.

        ``offsets`` names the column added: ``offsets`` (the full model) or ``fixed_offsets`` (global only).
        """
        if not self.rows:
            return np.zeros((0,) + coefficients.shape[1:])
        dim = self.dim

        def margins_of(columns: Columns) -> np.ndarray:
            b = block_of(columns, dim, offsets)
            return (b.offsets if coefficients.ndim == 1 else b.offsets[:, None]) + b.features @ coefficients

        return self.mapped(margins_of)

    def hessian_diagonal(self, coefficients: np.ndarray, loss: Loss, offsets: str = "offsets") -> np.ndarray:
        """``diag(X' W H X)`` at ``coefficients``: the data part of the precision's diagonal."""

        def diagonal_of(b: GlobalBlock) -> np.ndarray:
            _, second = loss.derivatives(b.labels, b.offsets + b.features @ coefficients)
            return np.asarray(b.features.multiply(b.features).T @ (b.weights * second))

        return self.summed_blocks(diagonal_of, offsets) if self.rows else np.zeros(self.dim)


class MemoryExamples(ExampleSplit):
    """A split held in memory as chunk columns (the local bootstrap's rows)."""

    def __init__(self, chunks: Sequence[Columns], dim: int) -> None:
        self.chunks = list(chunks)
        self.dim = dim
        self.rows = sum(len(c["labels"]) for c in self.chunks)

    @classmethod
    def of(cls, batch: RowBatch, dim: int, chunk_rows: int) -> MemoryExamples:
        """``batch`` cut into chunks of ``chunk_rows`` rows."""
        chunks = []
        while batch.rows:
            head, batch = batch.head(chunk_rows)
            chunks.append(chunk_columns(head))
        return cls(chunks, dim)

    def summed(self, partial: Callable[[Columns], np.ndarray]) -> np.ndarray:
        """:func:`tree_sum` of ``partial`` over the chunks."""
        return tree_sum(partial(c) for c in self.chunks)

    def mapped(self, per_chunk: Callable[[Columns], np.ndarray]) -> np.ndarray:
        """``per_chunk`` of every chunk, concatenated."""
        return np.concatenate([per_chunk(c) for c in self.chunks])
