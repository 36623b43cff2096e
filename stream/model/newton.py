"""Warm-started, regularized Newton updates for many entities at once (DESIGN §4).

For each entity ``e`` of a batch, with events ``(z_k, y_k, o_k, w_k)`` and a Gaussian
prior ``N(mu0, Lambda0^-1)``, minimize

    F(theta) = sum_k w_k * loss(y_k, o_k + z_k . theta) + 1/2 (theta - mu0)' Lambda0 (theta - mu0)

by Newton steps from a warm start, with a backtracking (Armijo) line search on F and a
per-entity stop when ``||grad F||_2 <= gradient_tolerance``. The returned precision is
the Hessian of F at the new mean — the Laplace posterior, which is exactly the
sequential-Bayesian update ``P <- Lambda0 + Z' diag(w * loss'') Z`` (sample weights
inside). Every entity of the batch is solved together: padded arrays, ``einsum`` for
gradients and Hessians, one stacked solve per step. No Python loop runs over entities.

When every entity has fewer events than coefficients and starts at its prior mean (the
sequential-Bayesian case), the same optimum is found in the span of the events
(:mod:`stream.model.low_rank`): a k x k problem per entity instead of d x d.

Inputs with non-finite values or invalid labels or weights reject their entity (status
``REJECTED_INPUT``); a solve that turns non-finite stops its entity at the last finite
iterate (status ``NUMERICAL_FAILURE``). Neither ever yields a non-finite mean.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from stream.model.linalg import solve_spd
from stream.model.line_search import armijo_backtrack
from stream.model.losses import LogisticLoss, Loss
from stream.model.low_rank import low_rank_solve

_LOGISTIC = LogisticLoss()
# Entities are solved in chunks of about this many feature values (4 MiB of float64), so
# each chunk's working set stays in cache; measured 2-3x faster than whole-batch arrays.
_CHUNK_ELEMENTS = 1 << 19


class UpdateStatus(IntEnum):
    """How one entity's update ended."""

    CONVERGED = 0
    NOT_CONVERGED = 1
    REJECTED_INPUT = 2
    NUMERICAL_FAILURE = 3


@dataclass(frozen=True)
class EntityEvents:
    """Padded events of B entities: up to n events each over d features.

    ``mask[b, k]`` marks real events; padded slots may hold anything and are ignored.
    """

    features: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray
    mask: np.ndarray

    @classmethod
    def build(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        offsets: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ) -> EntityEvents:
        """Events with zero offsets, unit weights and no padding unless given."""
        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        shape = labels.shape
        if features.ndim != 3 or features.shape[:2] != shape:
            raise ValueError(f"features must be (B, n, d) matching labels (B, n); got {features.shape} and {shape}")
        return cls(
            features=features,
            labels=labels,
            offsets=np.zeros(shape) if offsets is None else np.asarray(offsets, dtype=np.float64),
            weights=np.ones(shape) if weights is None else np.asarray(weights, dtype=np.float64),
            mask=np.ones(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool),
        )

    @property
    def num_entities(self) -> int:
        """B, the number of entities in the batch."""
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        """d, the number of coefficients per entity."""
        return self.features.shape[2]


@dataclass(frozen=True)
class GaussianPrior:
    """Per-entity prior means (B, d) and precisions: full (B, d, d) or diagonal (B, d)."""

    mean: np.ndarray
    precision: np.ndarray

    @property
    def diagonal(self) -> bool:
        """Whether precisions are stored as their diagonals."""
        return self.precision.ndim == 2

    def full_precision(self) -> np.ndarray:
        """Precisions as (B, d, d) matrices."""
        if not self.diagonal:
            return self.precision
        b, d = self.precision.shape
        full = np.zeros((b, d, d))
        full[:, np.arange(d), np.arange(d)] = self.precision
        return full

    def take(self, index: np.ndarray) -> GaussianPrior:
        """The prior of a subset of entities."""
        return GaussianPrior(self.mean[index], self.precision[index])


@dataclass(frozen=True)
class EntityUpdate:
    """Result of :func:`newton_update` for B entities.

    ``precision`` has the prior's layout (full or diagonal). ``objective`` is F at the
    returned mean; ``loading`` is the diagonal loading the last Newton system needed.
    """

    mean: np.ndarray
    precision: np.ndarray
    iterations: np.ndarray
    gradient_norm: np.ndarray
    objective: np.ndarray
    status: np.ndarray
    loading: np.ndarray

    @property
    def converged(self) -> np.ndarray:
        """(B,) mask of entities whose gradient norm reached the tolerance."""
        return self.status == UpdateStatus.CONVERGED

    @property
    def usable(self) -> np.ndarray:
        """(B,) mask of entities whose new state may be stored and published."""
        return (self.status == UpdateStatus.CONVERGED) | (self.status == UpdateStatus.NOT_CONVERGED)


def _quadratic(precision: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("bd,bd->b", _matvec(precision, v), v)


def _matvec(precision: np.ndarray, v: np.ndarray) -> np.ndarray:
    if precision.ndim == 2:
        return precision * v
    return np.matmul(precision, v[:, :, None])[:, :, 0]


def valid_entities(events: EntityEvents, prior: GaussianPrior, loss: Loss, start: np.ndarray | None = None) -> np.ndarray:
    """(B,) mask of entities whose inputs are all finite and valid for ``loss``.

    Checks real (unmasked) events only: features, labels (in the loss's range), offsets,
    weights (finite, >= 0), and the prior mean, precision and warm start.
    """
    m = events.mask
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(events.features) | ~m[..., None], axis=(1, 2))
        ok &= np.all(loss.valid_labels(events.labels) | ~m, axis=1)
        ok &= np.all(np.isfinite(events.offsets) | ~m, axis=1)
        ok &= np.all((np.isfinite(events.weights) & (events.weights >= 0)) | ~m, axis=1)
        ok &= np.isfinite(prior.mean).all(axis=1)
        ok &= np.isfinite(prior.precision.reshape(len(ok), -1)).all(axis=1)
        if prior.diagonal:  # a diagonal precision must be non-negative to be a precision at all
            ok &= np.all(prior.precision >= 0, axis=1)
        if start is not None:
            ok &= np.isfinite(start).all(axis=1)
    return ok


def objective(events: EntityEvents, prior: GaussianPrior, theta: np.ndarray, loss: Loss = _LOGISTIC) -> np.ndarray:
    """F(theta) per entity: weighted loss sum plus the prior's quadratic penalty."""
    z, y, o, w = _clean(events)
    margins = o + np.einsum("bnd,bd->bn", z, theta)
    return _penalized_loss(loss, y, w, margins, prior.precision, theta - prior.mean)


def _penalized_loss(loss: Loss, y: np.ndarray, w: np.ndarray, margins: np.ndarray, precision: np.ndarray,
                    diff: np.ndarray) -> np.ndarray:
    """The one formula of F, given margins and ``theta - mu0``: used by the solver and by :func:`objective`."""
    return np.einsum("bn,bn->b", w, loss.value(y, margins)) + 0.5 * _quadratic(precision, diff)


def _clean(events: EntityEvents, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Arrays (of ``rows`` only, if given) with padded slots zeroed, so padding never contributes."""
    arrays = (events.features, events.labels, events.offsets, events.weights, events.mask)
    if rows is not None:
        arrays = tuple(a[rows] for a in arrays)
    z, y, o, w, m = arrays
    if m.all():
        return z, y, o, w
    return np.where(m[..., None], z, 0.0), np.where(m, y, 0.0), np.where(m, o, 0.0), np.where(m, w, 0.0)


def newton_update(
    events: EntityEvents,
    prior: GaussianPrior,
    loss: Loss = _LOGISTIC,
    start: np.ndarray | None = None,
    max_steps: int = 10,
    gradient_tolerance: float = 1e-6,
    max_backtracks: int = 40,
    armijo: float = 1e-4,
    threads: int = 1,
) -> EntityUpdate:
    """Run up to ``max_steps`` Newton steps for every entity; see the module docstring.

    Two members, one clicking everything and one nothing, each with an intercept only:

    >>> import numpy as np
    >>> from stream.model import EntityEvents, l2_prior, newton_update
    >>> events = EntityEvents.build(np.ones((2, 4, 1)), np.array([[1.0] * 4, [0.0] * 4]))
    >>> update = newton_update(events, l2_prior(2, 1, l2=1.0))
    >>> update.mean.round(3).tolist(), update.converged.tolist()
    ([[1.043], [-1.043]], [True, True])

    ``start`` is the warm start (default: the prior mean). Entities stop individually
    once their gradient norm is at most ``gradient_tolerance``. The batch is solved in
    cache-sized chunks; with ``threads > 1`` chunks run concurrently (numpy releases the
    GIL in its kernels), using more cores for the same result.
    """
    b, _, d = events.features.shape
    ok = valid_entities(events, prior, loss, start)
    theta0 = prior.mean if start is None else start
    mean = np.where(ok[:, None], theta0, 0.0)
    precision = np.where(ok.reshape((b,) + (1,) * (prior.precision.ndim - 1)), prior.precision, 0.0)
    result = EntityUpdate(
        mean=mean.astype(np.float64, copy=False),
        precision=precision.astype(np.float64, copy=False),
        iterations=np.zeros(b, dtype=np.int32),
        gradient_norm=np.full(b, np.nan),
        objective=np.full(b, np.nan),
        status=np.where(ok, UpdateStatus.NOT_CONVERGED, UpdateStatus.REJECTED_INPUT).astype(np.int8),
        loading=np.zeros(b),
    )
    index = np.flatnonzero(ok)
    per_chunk = max(8, _CHUNK_ELEMENTS // max(1, events.features.shape[1] * d))
    chunks = [index[i:i + per_chunk] for i in range(0, index.size, per_chunk)]

    low_rank = events.features.shape[1] < d and (start is None or np.array_equal(start, prior.mean))

    def solve(part: np.ndarray) -> None:
        if low_rank:
            part = _solve_low_rank(events, prior, loss, result, part, max_steps, gradient_tolerance, max_backtracks, armijo)
        _solve(events, prior, loss, result, part, max_steps, gradient_tolerance, max_backtracks, armijo)

    if threads > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(solve, chunks))
    else:
        for part in chunks:
            solve(part)
    return result


def _solve(
    events: EntityEvents,
    prior: GaussianPrior,
    loss: Loss,
    out: EntityUpdate,
    index: np.ndarray,
    max_steps: int,
    tol: float,
    max_backtracks: int,
    armijo: float,
) -> None:
    z, y, o, w = _clean(events, index)
    sub_prior = prior.take(index)
    mu0, lam = sub_prior.mean, sub_prior.precision
    lam_full = sub_prior.full_precision()
    # Stacked matmul runs on BLAS; the transposed copy is made once, not per step.
    zt = np.ascontiguousarray(z.transpose(0, 2, 1))
    theta = out.mean[index].copy()
    active = np.arange(index.size)  # positions into the sub-batch that are still iterating
    for step in range(max_steps + 1):
        if active.size < z.shape[0]:
            z, zt, y, o, w = z[active], zt[active], y[active], o[active], w[active]
            mu0, lam, lam_full, theta = mu0[active], lam[active], lam_full[active], theta[active]
            index, active = index[active], np.arange(active.size)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught as non-finite below
            margins = o + np.matmul(z, theta[:, :, None])[:, :, 0]
            first, second = loss.derivatives(y, margins)
            diff = theta - mu0
            grad = np.matmul(zt, (first * w)[:, :, None])[:, :, 0] + _matvec(lam, diff)
            hess = np.matmul(zt * (second * w)[:, None, :], z) + lam_full
            fval = _penalized_loss(loss, y, w, margins, lam, diff)
        gnorm = np.linalg.norm(grad, axis=1)
        finite = np.isfinite(grad).all(axis=1) & np.isfinite(hess).all(axis=(1, 2)) & np.isfinite(fval)
        done = ~finite | (gnorm <= tol) | (step == max_steps)
        _record(out, index[done], theta[done], hess[done], gnorm[done], fval[done], step,
                np.where(~finite[done], UpdateStatus.NUMERICAL_FAILURE,
                         np.where(gnorm[done] <= tol, UpdateStatus.CONVERGED, UpdateStatus.NOT_CONVERGED)),
                lam.ndim == 2)
        keep = ~done
        if not keep.any():
            return
        active = active[keep]
        direction, loading = solve_spd(hess[keep], grad[keep])
        out.loading[index[active]] = loading
        theta[active] = _line_search(
            z[keep], y[keep], o[keep], w[keep], mu0[active], lam[active], loss, theta[active], margins[keep],
            direction, grad[keep], fval[keep], max_backtracks, armijo,
        )


def _solve_low_rank(events: EntityEvents, prior: GaussianPrior, loss: Loss, out: EntityUpdate, index: np.ndarray,
                    max_steps: int, tol: float, max_backtracks: int, armijo: float) -> np.ndarray:
    """Solve ``index`` in the span of their events (:mod:`stream.model.low_rank`); returns the rows left to the full solver."""
    z, y, o, w = _clean(events, index)
    sub_prior = prior.take(index)
    try:
        theta, precision, fval, gnorm, iterations, converged, finite = low_rank_solve(
            z, y, o, w, sub_prior.mean, sub_prior.precision, loss, max_steps, tol, max_backtracks, armijo)
    except np.linalg.LinAlgError:
        return index
    rows = index[finite]
    out.mean[rows] = theta[finite]
    out.precision[rows] = precision[finite]
    out.objective[rows] = fval[finite]
    out.gradient_norm[rows] = gnorm[finite]
    out.iterations[rows] = iterations[finite]
    out.status[rows] = np.where(converged[finite], UpdateStatus.CONVERGED, UpdateStatus.NOT_CONVERGED)
    return index[~finite]


def _record(out: EntityUpdate, rows: np.ndarray, theta: np.ndarray, hess: np.ndarray, gnorm: np.ndarray,
            fval: np.ndarray, step: int, status: np.ndarray, diagonal: bool) -> None:
    failed = status == UpdateStatus.NUMERICAL_FAILURE
    keep_rows = rows[~failed]  # failed rows keep their last finite mean and the prior precision
    out.mean[keep_rows] = theta[~failed]
    out.precision[keep_rows] = np.diagonal(hess[~failed], axis1=1, axis2=2) if diagonal else hess[~failed]
    out.objective[keep_rows] = fval[~failed]
    out.gradient_norm[rows] = np.where(np.isfinite(gnorm), gnorm, np.nan)
    out.iterations[rows] = step
    out.status[rows] = status


def _line_search(z, y, o, w, mu0, lam, loss, theta, margins, direction, grad, fval, max_backtracks, armijo):
    """Backtracking on F along ``-direction``; entities that find no decrease keep ``theta``."""
    slope = np.einsum("bd,bd->b", grad, direction)  # F decreases along -direction at rate slope
    z_dir = np.matmul(z, direction[:, :, None])[:, :, 0]

    def trial_objective(rows: np.ndarray, t: np.ndarray) -> np.ndarray:
        trial = theta[rows] - t[:, None] * direction[rows]
        return _penalized_loss(loss, y[rows], w[rows], margins[rows] - t[:, None] * z_dir[rows], lam[rows], trial - mu0[rows])

    return armijo_backtrack(theta, direction, slope, fval, trial_objective, max_backtracks, armijo)
