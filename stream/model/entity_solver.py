"""The compiled per-entity Newton solver behind :func:`stream.model.newton.newton_update`.

Every entity's problem is small (d coefficients, n events) and independent of the others.
Solved one entity at a time in compiled code (numba, GIL released), each problem's
working set stays in cache and no padded (B, n, d) temporaries are built; the batched
numpy formulation this replaced spent most of its time moving those temporaries through
memory and in per-call overhead at the small batch sizes freshness needs (DESIGN §8).

Per entity, with its real (unmasked) events compacted first:

* **Low-rank path**, when the entity has fewer events than coefficients and starts at
  its prior mean (the sequential-Bayesian case). The optimum lies on
  ``theta = mu0 + A u`` with ``A = Lambda0^-1 Z'`` (d x k), where F becomes

      f(u) = sum_k w_k loss(y_k, o_k + z_k . mu0 + (K u)_k) + 1/2 u' K u,   K = Z Lambda0^-1 Z'

  a k-dimensional problem with the same optimum: its Newton step solves
  ``(D K + I) delta = u + g`` and ``grad F(theta) = Z' (u + g)`` gives the same stopping
  rule. DESIGN §4's Woodbury lever, without keeping a covariance in state. A singular
  prior or a non-finite result falls back to the full path.
* **Full path**: Newton steps on F with the Hessian ``Lambda0 + Z' diag(w loss'') Z``,
  factored by Cholesky with diagonal loading when it is not numerically positive
  definite.

Both take Armijo backtracking steps on the true objective and stop on
``||grad F||_2 <= tol``; the returned precision is the Hessian at the returned mean.
Inputs are validated entity by entity while its events are compacted, in the same pass.
"""

from __future__ import annotations

from collections import namedtuple
from enum import IntEnum

import numpy as np
from numba import njit

from stream.errors import InvalidValueError
from stream.model.losses import POISSON_MAX_MARGIN, Loss
from stream.model.packed import pack_matrix, unpack_matrix


class UpdateStatus(IntEnum):
    """How one entity's update ended."""

    CONVERGED = 0
    NOT_CONVERGED = 1
    REJECTED_INPUT = 2
    NUMERICAL_FAILURE = 3


LOSS_CODES = {"logistic": 0, "linear": 1, "poisson": 2}
# How a batch's prior precisions are laid out: (B, d) diagonals, (B, d, d) matrices, or
# (B, d(d+1)/2) packed upper triangles (stream.model.packed); results come back the same way.
DIAGONAL, FULL, PACKED = 0, 1, 2

_CONVERGED = int(UpdateStatus.CONVERGED)
_NOT_CONVERGED = int(UpdateStatus.NOT_CONVERGED)
_NUMERICAL_FAILURE = int(UpdateStatus.NUMERICAL_FAILURE)
_REJECTED_INPUT = int(UpdateStatus.REJECTED_INPUT)
_LOGISTIC, _LINEAR = LOSS_CODES["logistic"], LOSS_CODES["linear"]
_RELATIVE_LOADING = 1e-10
_LOADING_TRIES = 30
# Reassociation lets LLVM vectorize the dot products; NaN and inf stay honoured (no
# "nnan"/"ninf"), so the finiteness checks below keep working.
_FAST_MATH = {"reassoc", "contract", "arcp", "nsz"}
_ROUNDING_SLACK = 1e-12  # relative objective noise tolerated by the Armijo test at the optimum
# From about this many multiply-adds a BLAS call beats the compiled loop for Z' D Z
# (measured: at d=8, n=256 BLAS is 1.5x faster).
_BLAS_HESSIAN_MACS = 1 << 13


def loss_code(loss: Loss) -> int:
    """The compiled solver's code for ``loss``; only the package's three losses are compiled."""
    try:
        return LOSS_CODES[loss.name]
    except KeyError:
        raise InvalidValueError(
            f"the compiled Newton solver has no loss {loss.name!r}; choose one of {', '.join(LOSS_CODES)}"
        ) from None


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def loss_terms(code: int, y: float, m: float) -> tuple[float, float, float]:
    """Value, first and second margin-derivative of one sample's loss (the formulas of :mod:`stream.model.losses`)."""
    if code == _LOGISTIC:
        if m > 0.0:
            e = np.exp(-m)
            p = 1.0 / (1.0 + e)
            value = m + np.log1p(e) - y * m
        else:
            e = np.exp(m)
            p = e / (1.0 + e)
            value = np.log1p(e) - y * m
        return value, p - y, p * (1.0 - p)
    if code == _LINEAR:
        return 0.5 * (m - y) * (m - y), m - y, 1.0
    capped = min(m, POISSON_MAX_MARGIN)
    base = np.exp(capped)
    excess = m - capped
    return base * (1.0 + excess + 0.5 * excess * excess) - y * m, base * (1.0 + excess) - y, base


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _weighted_loss(code, y, w, margins, n, first, second):
    """sum_k w_k loss_k; fills ``first``/``second`` with w_k loss'_k and w_k loss''_k."""
    total = 0.0
    for k in range(n):
        value, d1, d2 = loss_terms(code, y[k], margins[k])
        total += w[k] * value
        first[k] = w[k] * d1
        second[k] = w[k] * d2
    return total


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _quadratic(a, v, d):
    """v' a v for a symmetric (d, d) matrix."""
    total = 0.0
    for i in range(d):
        row = 0.0
        for j in range(d):
            row += a[i, j] * v[j]
        total += v[i] * row
    return total


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _cholesky(a, low, d, loading):
    """Lower factor of ``a + loading I`` into ``low``; False if a pivot is not positive and finite."""
    for j in range(d):
        pivot = a[j, j] + loading
        for k in range(j):
            pivot -= low[j, k] * low[j, k]
        if not (pivot > 0.0) or not np.isfinite(pivot):
            return False
        root = np.sqrt(pivot)
        low[j, j] = root
        for i in range(j + 1, d):
            s = a[i, j]
            for k in range(j):
                s -= low[i, k] * low[j, k]
            low[i, j] = s / root
        for i in range(j):
            low[i, j] = 0.0
    return True


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _forward_solve(low, rhs, out, d):
    """Solve ``low out = rhs`` (lower triangular)."""
    for i in range(d):
        s = rhs[i]
        for k in range(i):
            s -= low[i, k] * out[k]
        out[i] = s / low[i, i]


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _backward_solve(low, rhs, out, d):
    """Solve ``low' out = rhs``, reading ``low`` by rows; ``rhs`` is overwritten."""
    for i in range(d - 1, -1, -1):
        out[i] = rhs[i] / low[i, i]
        for k in range(i):
            rhs[k] -= low[i, k] * out[i]


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _cholesky_solve(low, rhs, out, scratch, d):
    """Solve ``low low' out = rhs``."""
    _forward_solve(low, rhs, scratch, d)
    _backward_solve(low, scratch, out, d)


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _newton_direction(h, grad, low, direction, scratch, d):
    """Solve ``h direction = grad`` by Cholesky, loading the diagonal until it is a descent direction.

    Returns the loading used, or NaN when even the largest loading failed.
    """
    scale = 0.0
    for i in range(d):
        scale += abs(h[i, i])
    scale = max(scale / d, 1e-10)
    nonzero = False
    for i in range(d):
        if grad[i] != 0.0:
            nonzero = True
    loading = 0.0
    for attempt in range(_LOADING_TRIES + 1):
        if _cholesky(h, low, d, loading):
            _cholesky_solve(low, grad, direction, scratch, d)
            descent = 0.0
            finite = True
            for i in range(d):
                descent += grad[i] * direction[i]
                finite = finite and np.isfinite(direction[i])
            if finite and (descent > 0.0 or not nonzero):
                return loading
        loading = _RELATIVE_LOADING * scale * 10.0**attempt
    return np.nan


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _data_hessian(z, second, n, d, out):
    """out += Z' diag(second) Z: BLAS for large problems, else the lower triangle accumulated and mirrored."""
    if n * d * d >= _BLAS_HESSIAN_MACS:
        rows = np.ascontiguousarray(z[:n])
        weighted = np.empty((n, d))
        for k in range(n):
            for i in range(d):
                weighted[k, i] = second[k] * rows[k, i]
        out += np.dot(rows.T, weighted)
        return
    for k in range(n):
        s = second[k]
        if s == 0.0:
            continue
        for i in range(d):
            zi = s * z[k, i]
            if zi == 0.0:
                continue
            for j in range(i + 1):
                out[i, j] += zi * z[k, j]
    for i in range(d):
        for j in range(i):
            out[j, i] = out[i, j]


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _solve_full(code, z, y, o, w, n, d, p, mu0, theta, max_steps, tol, max_backtracks, armijo, work):
    """Newton on F from ``theta`` (updated in place); ``work.h`` ends as the Hessian at ``theta``.

    Returns (status, iterations, gnorm, objective, loading).
    """
    margins, first, second, zdir = work.margins, work.first, work.second, work.zdir
    trial_margins, trial_first, trial_second = work.trial_margins, work.trial_first, work.trial_second
    grad, diff, direction, h, low = work.grad, work.diff, work.direction, work.h, work.low
    loading = 0.0
    for k in range(n):
        s = o[k]
        for i in range(d):
            s += z[k, i] * theta[i]
        margins[k] = s
    data = _weighted_loss(code, y, w, margins, n, first, second)
    for step in range(max_steps + 1):
        for i in range(d):
            diff[i] = theta[i] - mu0[i]
        fval = data + 0.5 * _quadratic(p, diff, d)
        for i in range(d):
            g = 0.0
            for j in range(d):
                g += p[i, j] * diff[j]
            grad[i] = g
        for k in range(n):
            for i in range(d):
                grad[i] += first[k] * z[k, i]
        gsq = 0.0
        for i in range(d):
            gsq += grad[i] * grad[i]
        h[:, :] = p
        _data_hessian(z, second, n, d, h)
        gnorm = np.sqrt(gsq)
        if not (np.isfinite(fval) and np.isfinite(gnorm) and np.isfinite(h).all()):
            return _NUMERICAL_FAILURE, step, gnorm, fval, loading
        if gnorm <= tol:
            return _CONVERGED, step, gnorm, fval, loading
        if step == max_steps:
            break
        loading = _newton_direction(h, grad, low, direction, work.trial, d)
        if not np.isfinite(loading):
            return _NUMERICAL_FAILURE, step, gnorm, fval, loading
        slope = 0.0
        for i in range(d):
            slope += grad[i] * direction[i]
        for k in range(n):
            s = 0.0
            for i in range(d):
                s += z[k, i] * direction[i]
            zdir[k] = s
        t, trial_data = _armijo_step(
            code,
            y,
            w,
            margins,
            zdir,
            n,
            p,
            diff,
            direction,
            d,
            fval,
            slope,
            max_backtracks,
            armijo,
            work.trial,
            trial_margins,
            trial_first,
            trial_second,
        )
        if t == 0.0:
            break  # no decrease along the Newton direction: another step would repeat this one
        for i in range(d):
            theta[i] -= t * direction[i]
        margins, trial_margins = trial_margins, margins
        first, trial_first = trial_first, first
        second, trial_second = trial_second, second
        data = trial_data
    return _NOT_CONVERGED, step, gnorm, fval, loading


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _armijo_step(
    code,
    y,
    w,
    margins,
    zdir,
    n,
    quad,
    base,
    direction,
    m,
    fval,
    slope,
    max_backtracks,
    armijo,
    trial,
    trial_margins,
    trial_first,
    trial_second,
):
    """The largest t in 1, 1/2, ... with F(x - t direction) <= F(x) - armijo t slope; 0 if none.

    F's data term is read at ``margins - t zdir``; its quadratic is ``1/2 v' quad v`` at
    ``v = base - t direction`` (m-dimensional). Returns t and the data term at t, and
    leaves the margins and weighted loss derivatives at t in the ``trial_*`` arrays, so
    the next Newton step starts from them instead of evaluating the loss again.
    """
    if not slope > 0.0:
        return 0.0, np.nan
    slack = _ROUNDING_SLACK * abs(fval)
    t = 1.0
    for _ in range(max_backtracks):
        for k in range(n):
            trial_margins[k] = margins[k] - t * zdir[k]
        for i in range(m):
            trial[i] = base[i] - t * direction[i]
        data = _weighted_loss(code, y, w, trial_margins, n, trial_first, trial_second)
        f_trial = data + 0.5 * _quadratic(quad, trial, m)
        if np.isfinite(f_trial) and f_trial <= fval - armijo * t * slope + slack:
            return t, data
        t *= 0.5
    return 0.0, np.nan


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _lu_solve(a, rhs, out, k):
    """Solve the k x k system ``a out = rhs`` by Gaussian elimination with partial pivoting (``a`` is overwritten)."""
    for i in range(k):
        out[i] = rhs[i]
    for c in range(k):
        pivot_row = c
        for r in range(c + 1, k):
            if abs(a[r, c]) > abs(a[pivot_row, c]):
                pivot_row = r
        if pivot_row != c:
            for j in range(k):
                a[c, j], a[pivot_row, j] = a[pivot_row, j], a[c, j]
            out[c], out[pivot_row] = out[pivot_row], out[c]
        for r in range(c + 1, k):
            factor = a[r, c] / a[c, c]
            for j in range(c, k):
                a[r, j] -= factor * a[c, j]
            out[r] -= factor * out[c]
    for i in range(k - 1, -1, -1):
        s = out[i]
        for j in range(i + 1, k):
            s -= a[i, j] * out[j]
        out[i] = s / a[i, i]


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _solve_low_rank(code, z, y, o, w, n, d, p, diagonal, mu0, theta, max_steps, tol, max_backtracks, armijo, work):
    """Newton in span(Lambda0^-1 Z') from ``mu0``; writes ``theta`` and the precision into ``work.h``.

    Returns (usable, status, iterations, gnorm, objective); not usable means the caller
    must take the full path (singular prior or a non-finite result).
    """
    vt, kmat, system, low = work.vt, work.kmat, work.system, work.low
    base, u, r, delta, kdelta = work.base, work.u, work.r, work.delta, work.kdelta
    margins, first, second, grad = work.margins, work.first, work.second, work.grad
    # Lambda0 = L L'; V = L^-1 Z' (rows of vt are its columns), so K = V'V and A u = L^-T V u.
    if diagonal:
        for i in range(d):
            if not p[i, i] > 0.0:
                return False, _NOT_CONVERGED, 0, np.nan, np.nan
            low[i, i] = np.sqrt(p[i, i])
        for j in range(n):
            for i in range(d):
                vt[j, i] = z[j, i] / low[i, i]
    else:
        if not _cholesky(p, low, d, 0.0):
            return False, _NOT_CONVERGED, 0, np.nan, np.nan
        for j in range(n):
            _forward_solve(low, z[j], vt[j], d)
    for i in range(n):
        for j in range(i + 1):
            s = 0.0
            for c in range(d):
                s += vt[i, c] * vt[j, c]
            kmat[i, j] = s
            kmat[j, i] = s
        s = o[i]
        for c in range(d):
            s += z[i, c] * mu0[c]
        base[i] = s
        u[i] = 0.0
    trial_margins, trial_first, trial_second = work.trial_margins, work.trial_first, work.trial_second
    iterations = 0
    status = _NOT_CONVERGED
    for i in range(n):
        margins[i] = base[i]
    data = _weighted_loss(code, y, w, margins, n, first, second)
    for step in range(max_steps + 1):
        fval = data + 0.5 * _quadratic(kmat, u, n)
        for i in range(n):
            r[i] = u[i] + first[i]
        for c in range(d):
            grad[c] = 0.0
        for k in range(n):
            for c in range(d):
                grad[c] += z[k, c] * r[k]
        gsq = 0.0
        for c in range(d):
            gsq += grad[c] * grad[c]
        gnorm = np.sqrt(gsq)
        if not (np.isfinite(gnorm) and np.isfinite(fval)):
            return False, _NOT_CONVERGED, 0, np.nan, np.nan
        if gnorm <= tol:
            status = _CONVERGED
            break
        if step == max_steps:
            break
        for i in range(n):
            for j in range(n):
                system[i, j] = second[i] * kmat[i, j] + (1.0 if i == j else 0.0)
        _lu_solve(system, r, delta, n)
        slope = 0.0
        for i in range(n):
            kd = 0.0
            krow = 0.0
            for j in range(n):
                kd += kmat[i, j] * delta[j]
                krow += kmat[i, j] * r[j]
            kdelta[i] = kd
            slope += krow * delta[i]  # grad f(u) = K r
        t, trial_data = _armijo_step(
            code,
            y,
            w,
            margins,
            kdelta,
            n,
            kmat,
            u,
            delta,
            n,
            fval,
            slope,
            max_backtracks,
            armijo,
            work.trial,
            trial_margins,
            trial_first,
            trial_second,
        )
        if t == 0.0:
            break
        for i in range(n):
            u[i] -= t * delta[i]
        margins, trial_margins = trial_margins, margins
        first, trial_first = trial_first, first
        second, trial_second = trial_second, second
        data = trial_data
        iterations += 1
    step_back = work.direction
    for c in range(d):
        s = 0.0
        for j in range(n):
            s += vt[j, c] * u[j]
        step_back[c] = s
    if diagonal:
        for c in range(d):
            theta[c] = mu0[c] + step_back[c] / low[c, c]
    else:
        _backward_solve(low, step_back, theta, d)
        for c in range(d):
            theta[c] += mu0[c]
    for c in range(d):
        if not np.isfinite(theta[c]):
            return False, _NOT_CONVERGED, 0, np.nan, np.nan
    work.h[:, :] = p
    _data_hessian(z, second, n, d, work.h)
    return True, status, iterations, gnorm, fval


_VECTORS_N = (
    "y",
    "o",
    "w",
    "margins",
    "first",
    "second",
    "zdir",
    "trial_margins",
    "trial_first",
    "trial_second",
    "base",
    "u",
    "r",
    "delta",
    "kdelta",
)
_Work = namedtuple(  # type: ignore[misc]  # built from _VECTORS_N; numba compiles namedtuples, not dataclasses
    "_Work", _VECTORS_N + ("z", "grad", "diff", "direction", "trial", "p", "h", "low", "vt", "kmat", "system")
)


def solver_workspace(n: int, d: int) -> _Work:
    """Scratch arrays for entities of up to n events over d coefficients, reused from one entity to the next."""
    vectors_n = {name: np.empty(n) for name in _VECTORS_N}
    return _Work(  # type: ignore[call-arg]
        z=np.empty((n, d)),
        grad=np.empty(d),
        diff=np.empty(d),
        direction=np.empty(d),
        trial=np.empty(max(n, d)),
        p=np.empty((d, d)),
        h=np.empty((d, d)),
        low=np.empty((d, d)),
        vt=np.empty((n, d)),
        kmat=np.empty((n, n)),
        system=np.empty((n, n)),
        **vectors_n,
    )


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def solve_rows(
    rows,
    code,
    features,
    labels,
    offsets,
    weights,
    mask,
    mu0,
    lam_rows,
    lam_full,
    layout,
    start,
    max_steps,
    tol,
    max_backtracks,
    armijo,
    work,
    out_mean,
    out_precision_rows,
    out_precision_full,
    out_iterations,
    out_gnorm,
    out_objective,
    out_status,
    out_loading,
):
    """Validate and solve the entities ``rows``, writing every output of each (see ``newton_update``).

    Precisions are ``lam_rows`` / ``out_precision_rows`` (B, k) for the DIAGONAL and PACKED
    layouts and ``lam_full`` / ``out_precision_full`` (B, d, d) for FULL; the other pair is empty.
    """
    d = features.shape[2]
    z, y, o, w = work.z, work.y, work.o, work.w
    diagonal = layout == DIAGONAL
    for b in rows:
        n = _compact_events(code, features, labels, offsets, weights, mask, b, z, y, o, w)
        valid = n >= 0 and _valid_prior(mu0[b], lam_rows, lam_full, b, layout, start[b], d)
        out_iterations[b] = 0
        out_gnorm[b] = np.nan
        out_objective[b] = np.nan
        out_loading[b] = 0.0
        theta = out_mean[b]
        if not valid:  # rejected inputs leave zeros behind, never their non-finite values
            theta[:] = 0.0
            if layout == FULL:
                out_precision_full[b, :, :] = 0.0
            else:
                out_precision_rows[b, :] = 0.0
            out_status[b] = _REJECTED_INPUT
            continue
        p = _prior_matrix(lam_rows, lam_full, b, layout, d, work.p)
        solved = False
        if n < d:
            at_prior_mean = True
            for i in range(d):
                at_prior_mean = at_prior_mean and start[b, i] == mu0[b, i]
            if at_prior_mean:
                solved, status, iterations, gnorm, fval = _solve_low_rank(
                    code, z, y, o, w, n, d, p, diagonal, mu0[b], theta, max_steps, tol, max_backtracks, armijo, work
                )
                loading = 0.0
        if not solved:
            theta[:] = start[b]
            status, iterations, gnorm, fval, loading = _solve_full(
                code, z, y, o, w, n, d, p, mu0[b], theta, max_steps, tol, max_backtracks, armijo, work
            )
        out_iterations[b] = iterations
        out_status[b] = status
        out_loading[b] = loading
        out_gnorm[b] = gnorm if np.isfinite(gnorm) else np.nan
        if status == _NUMERICAL_FAILURE:  # keeps the last finite mean, and the prior precision
            precision = p
        else:
            out_objective[b] = fval
            precision = work.h
        _store_precision(precision, layout, d, b, out_precision_rows, out_precision_full)


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _prior_matrix(lam_rows, lam_full, b, layout, d, scratch):
    """Entity b's prior precision as a d x d matrix: read in place (FULL) or built in ``scratch``."""
    if layout == FULL:
        return lam_full[b]
    if layout == DIAGONAL:
        scratch[:, :] = 0.0
        for i in range(d):
            scratch[i, i] = lam_rows[b, i]
        return scratch
    unpack_matrix(lam_rows[b], scratch)
    return scratch


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _store_precision(precision, layout, d, b, out_rows, out_full):
    if layout == FULL:
        out_full[b] = precision
    elif layout == DIAGONAL:
        for i in range(d):
            out_rows[b, i] = precision[i, i]
    else:
        pack_matrix(precision, out_rows[b])


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def label_is_valid(code: int, y: float) -> bool:
    """Whether ``y`` is a label the loss accepts (the rule of ``Loss.valid_labels``)."""
    if not np.isfinite(y):
        return False
    if code == _LOGISTIC:
        return 0.0 <= y <= 1.0
    if code == _LINEAR:
        return True
    return y >= 0.0


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _compact_events(code, features, labels, offsets, weights, mask, b, z, y, o, w):
    """Copy entity b's real events to the front of the scratch arrays; their count, or -1 if one is invalid."""
    n = 0
    d = features.shape[2]
    for k in range(features.shape[1]):
        if not mask[b, k]:
            continue
        if not (
            label_is_valid(code, labels[b, k])
            and np.isfinite(offsets[b, k])
            and np.isfinite(weights[b, k])
            and weights[b, k] >= 0.0
        ):
            return -1
        for i in range(d):
            value = features[b, k, i]
            if not np.isfinite(value):
                return -1
            z[n, i] = value
        y[n], o[n], w[n] = labels[b, k], offsets[b, k], weights[b, k]
        n += 1
    return n


@njit(nogil=True, cache=True, fastmath=_FAST_MATH)
def _valid_prior(mean, lam_rows, lam_full, b, layout, start, d):
    """Finite prior mean, precision and warm start; a diagonal precision must also be non-negative."""
    for i in range(d):
        if not (np.isfinite(mean[i]) and np.isfinite(start[i])):
            return False
        if layout == FULL:
            for j in range(d):
                if not np.isfinite(lam_full[b, i, j]):
                    return False
        elif layout == DIAGONAL and not (np.isfinite(lam_rows[b, i]) and lam_rows[b, i] >= 0.0):
            return False
    if layout == PACKED:
        for k in range(lam_rows.shape[1]):
            if not np.isfinite(lam_rows[b, k]):
                return False
    return True
