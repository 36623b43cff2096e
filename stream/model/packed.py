"""Symmetric matrices stored as their upper triangles, row by row: d(d+1)/2 values instead of d².

The layout of full-precision entity states and of published ``PACKED_UPPER`` precisions.
The conversions are plain copy loops, compiled: numpy's gather over index arrays was a
tenth of a cold full-precision micro-batch.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit


def packed_size(dim: int) -> int:
    """Values in the packed upper triangle of a d x d matrix."""
    return dim * (dim + 1) // 2


@functools.lru_cache(maxsize=16)
def diagonal_positions(dim: int) -> np.ndarray:
    """Where the diagonal entries (i, i) sit in the packed row-by-row upper triangle."""
    rows = np.arange(dim)
    return rows * dim - rows * (rows - 1) // 2


def packed_diagonal(diagonals: np.ndarray) -> np.ndarray:
    """(B, d) diagonals -> the packed (B, d(d+1)/2) upper triangles of those diagonal matrices."""
    b, d = diagonals.shape
    packed = np.zeros((b, packed_size(d)))
    packed[:, diagonal_positions(d)] = diagonals
    return packed


@njit(nogil=True, cache=True)
def pack_matrix(matrix: np.ndarray, out: np.ndarray) -> None:
    """One symmetric d x d matrix -> its packed upper triangle in ``out`` (the one definition of the order)."""
    d = matrix.shape[0]
    k = 0
    for i in range(d):
        for j in range(i, d):
            out[k] = matrix[i, j]
            k += 1


@njit(nogil=True, cache=True)
def unpack_matrix(packed: np.ndarray, out: np.ndarray) -> None:
    """One packed upper triangle -> the symmetric d x d matrix ``out``."""
    d = out.shape[0]
    k = 0
    for i in range(d):
        for j in range(i, d):
            out[i, j] = packed[k]
            out[j, i] = packed[k]
            k += 1


@njit(nogil=True, cache=True)
def pack_upper(full: np.ndarray) -> np.ndarray:
    """(B, d, d) symmetric matrices -> (B, d(d+1)/2) upper triangles, row by row."""
    b, d = full.shape[0], full.shape[1]
    packed = np.empty((b, d * (d + 1) // 2))
    for e in range(b):
        pack_matrix(full[e], packed[e])
    return packed


@njit(nogil=True, cache=True)
def unpack_upper(packed: np.ndarray, d: int) -> np.ndarray:
    """(B, d(d+1)/2) upper triangles -> (B, d, d) symmetric matrices."""
    b = packed.shape[0]
    full = np.empty((b, d, d))
    for e in range(b):
        unpack_matrix(packed[e], full[e])
    return full
