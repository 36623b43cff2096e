"""Newton updates in the span of the new events, for entities with fewer events than coefficients.

With prior N(mu0, Lambda0^-1) and events Z (k x d), the optimum of F satisfies
``Lambda0 (theta - mu0) = -Z' g(theta)``, so it lies on ``theta = mu0 + A u`` with
``A = Lambda0^-1 Z'`` (d x k). On that subspace F becomes

    f(u) = sum_k w_k loss(y_k, o_k + z_k . mu0 + (K u)_k) + 1/2 u' K u,      K = Z Lambda0^-1 Z'

a k-dimensional problem with the same optimum: its Newton step solves
``(D K + I) delta = u + g`` (k x k) and ``grad F(theta) = Z' (u + g)`` gives the same
stopping rule as the d-dimensional solver. This is DESIGN §4's Woodbury lever without
keeping a covariance in state: one solve with Lambda0 per entity, then k x k work per
step. It pays when k < d — the cold workload, where each entity brings one or two events.
"""

from __future__ import annotations

import numpy as np

from stream.model.line_search import armijo_backtrack
from stream.model.losses import Loss


def low_rank_solve(z: np.ndarray, y: np.ndarray, o: np.ndarray, w: np.ndarray, mu0: np.ndarray, lam: np.ndarray,
                   loss: Loss, max_steps: int, tol: float, max_backtracks: int, armijo: float):
    """Solve B entities (padded slots already zeroed) from ``theta = mu0``.

    Returns ``(theta, precision, objective, gradient_norm, iterations, converged, finite)``;
    ``precision`` is ``Lambda0 + Z' D Z`` at ``theta`` in ``lam``'s layout. Raises
    ``np.linalg.LinAlgError`` when a full ``lam`` is singular (the caller falls back).
    """
    b, n, d = z.shape
    zt = np.ascontiguousarray(z.transpose(0, 2, 1))
    diagonal = lam.ndim == 2
    with np.errstate(divide="ignore", invalid="ignore"):
        a = zt / lam[:, :, None] if diagonal else np.linalg.solve(lam, zt)  # (B, d, n)
    if not np.isfinite(a).all():
        raise np.linalg.LinAlgError("a prior precision is singular")
    k = np.matmul(z, a)  # (B, n, n)
    gram = np.matmul(z, zt)
    base = o + np.matmul(z, mu0[:, :, None])[:, :, 0]
    u = np.zeros((b, n))
    eye = np.eye(n)
    iterations = np.zeros(b, dtype=np.int32)
    active = np.ones(b, dtype=bool)
    for step in range(max_steps + 1):
        margins = base + np.matmul(k, u[:, :, None])[:, :, 0]
        with np.errstate(over="ignore", invalid="ignore"):
            first, second = loss.derivatives(y, margins)
        r = u + w * first
        gnorm = np.sqrt(np.maximum(np.einsum("bi,bij,bj->b", r, gram, r), 0.0))
        done = ~np.isfinite(gnorm) | (gnorm <= tol)
        active &= ~done
        if step == max_steps or not active.any():
            break
        rows = np.flatnonzero(active)
        system = (w * second)[rows, :, None] * k[rows] + eye
        delta = np.linalg.solve(system, r[rows, :, None])[:, :, 0]
        u[rows] = _backtrack(u[rows], delta, margins[rows], r[rows], k[rows], y[rows], w[rows], loss, max_backtracks, armijo)
        iterations[rows] += 1
    margins = base + np.matmul(k, u[:, :, None])[:, :, 0]
    with np.errstate(over="ignore", invalid="ignore"):
        first, second = loss.derivatives(y, margins)
        objective = _reduced_objective(u, margins, k, y, w, loss)
    r = u + w * first
    gnorm = np.sqrt(np.maximum(np.einsum("bi,bij,bj->b", r, gram, r), 0.0))
    theta = mu0 + np.matmul(a, u[:, :, None])[:, :, 0]
    weighted = w * second
    if diagonal:
        precision = lam + np.einsum("bn,bnd->bd", weighted, z * z)
    else:
        precision = lam + np.matmul(zt * weighted[:, None, :], z)
    finite = np.isfinite(theta).all(axis=1) & np.isfinite(objective) & np.isfinite(gnorm)
    return theta, precision, objective, gnorm, iterations, gnorm <= tol, finite


def _reduced_objective(u, margins, k, y, w, loss):
    return np.einsum("bn,bn->b", w, loss.value(y, margins)) + 0.5 * np.einsum("bi,bij,bj->b", u, k, u)


def _backtrack(u, delta, margins, r, k, y, w, loss, max_backtracks, armijo):
    """Armijo backtracking on f along ``-delta`` from ``u`` (its ``margins`` and ``r = u + g`` given); rows that find no decrease keep ``u``."""
    with np.errstate(over="ignore", invalid="ignore"):
        f0 = _reduced_objective(u, margins, k, y, w, loss)
    slope = np.einsum("bn,bn->b", np.matmul(k, r[:, :, None])[:, :, 0], delta)
    k_delta = np.matmul(k, delta[:, :, None])[:, :, 0]

    def trial_objective(rows: np.ndarray, t: np.ndarray) -> np.ndarray:
        trial = u[rows] - t[:, None] * delta[rows]
        return _reduced_objective(trial, margins[rows] - t[:, None] * k_delta[rows], k[rows], y[rows], w[rows], loss)

    return armijo_backtrack(u, delta, slope, f0, trial_objective, max_backtracks, armijo)
