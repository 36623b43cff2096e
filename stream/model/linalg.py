"""Solves for stacks of small symmetric positive definite systems, with per-matrix fallbacks.

The fast path is one LAPACK call for the whole stack (``numpy.linalg.solve``). But
LAPACK fails a whole stack for one singular matrix and says nothing about which one,
and numpy has no batched triangular solve; so the fallback factors the few bad matrices
with a batched Cholesky that loops over the d columns (never over the B matrices) and
reports per matrix whether it was positive definite, loading only the diagonals that
need it.
"""

from __future__ import annotations

import numpy as np


def batched_cholesky(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factors of a (B, d, d) stack, and a (B,) mask of which succeeded.

    A matrix whose pivot is not positive and finite is marked failed; its factor is
    garbage and must not be used.
    """
    b, d, _ = a.shape
    low = np.zeros_like(a)
    ok = np.ones(b, dtype=bool)
    for j in range(d):
        row = low[:, j, :j]
        pivot = a[:, j, j] - np.einsum("bk,bk->b", row, row)
        good = np.isfinite(pivot) & (pivot > 0.0)
        ok &= good
        root = np.sqrt(np.where(good, pivot, 1.0))
        low[:, j, j] = root
        if j + 1 < d:
            below = a[:, j + 1:, j] - np.einsum("bik,bk->bi", low[:, j + 1:, :j], row)
            low[:, j + 1:, j] = below / root[:, None]
    return low, ok


def cholesky_solve(low: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``L L^T x = rhs`` for a (B, d, d) stack of lower factors and (B, d) right sides."""
    b, d, _ = low.shape
    y = np.empty_like(rhs)
    for i in range(d):
        y[:, i] = (rhs[:, i] - np.einsum("bk,bk->b", low[:, i, :i], y[:, :i])) / low[:, i, i]
    x = np.empty_like(rhs)
    for i in range(d - 1, -1, -1):
        x[:, i] = (y[:, i] - np.einsum("bk,bk->b", low[:, i + 1:, i], x[:, i + 1:])) / low[:, i, i]
    return x


def factor_with_loading(a: np.ndarray, relative_loading: float = 1e-10, max_tries: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Cholesky factors of ``a``, adding diagonal loading only to matrices that need it.

    Returns the factors and the loading added to each matrix (0 for most). The loading
    starts at ``relative_loading`` times the matrix's mean absolute diagonal (or 1e-10)
    and grows tenfold until the factorization succeeds.
    """
    low, ok = batched_cholesky(a)
    loading = np.zeros(a.shape[0])
    if ok.all():
        return low, loading
    d = a.shape[1]
    scale = np.maximum(np.abs(np.diagonal(a, axis1=1, axis2=2)).mean(axis=1), 1e-10)
    bad = np.flatnonzero(~ok)
    tau = relative_loading * scale[bad]
    for _ in range(max_tries):
        loaded = a[bad] + tau[:, None, None] * np.eye(d)
        sub_low, sub_ok = batched_cholesky(loaded)
        low[bad[sub_ok]] = sub_low[sub_ok]
        loading[bad[sub_ok]] = tau[sub_ok]
        bad, tau = bad[~sub_ok], tau[~sub_ok] * 10.0
        if bad.size == 0:
            break
    loading[bad] = np.nan  # still failed: caller treats as a numerical failure
    return low, loading


def solve_spd(a: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``a x = rhs`` for a (B, d, d) stack of symmetric PSD matrices and (B, d) right sides.

    Returns ``x`` and the diagonal loading each system needed (0 for most, NaN where even
    loading failed; those rows of ``x`` are NaN). A solution that is not finite or not a
    descent direction (``rhs . x <= 0`` for nonzero ``rhs``) marks its matrix as not
    numerically positive definite and sends it to the loaded Cholesky path.
    """
    loading = np.zeros(a.shape[0])
    try:
        x = np.linalg.solve(a, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        x = np.full_like(rhs, np.nan)
    with np.errstate(invalid="ignore", over="ignore"):
        descent = np.einsum("bd,bd->b", rhs, x)
        nonzero = np.any(rhs != 0.0, axis=1)
    bad = ~np.isfinite(x).all(axis=1) | (nonzero & ~(descent > 0.0))
    if bad.any():
        idx = np.flatnonzero(bad)
        low, sub_loading = factor_with_loading(a[idx])
        solved = np.isfinite(sub_loading)
        x[idx[solved]] = cholesky_solve(low[solved], rhs[idx[solved]])
        x[idx[~solved]] = np.nan
        loading[idx] = sub_loading
    return x, loading
