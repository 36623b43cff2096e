"""Warm-started, regularized Newton updates for many entities at once (DESIGN §4).

For each entity ``e`` of a batch, with events ``(z_k, y_k, o_k, w_k)`` and a Gaussian
prior ``N(mu0, Lambda0^-1)``, minimize

    F(theta) = sum_k w_k * loss(y_k, o_k + z_k . theta) + 1/2 (theta - mu0)' Lambda0 (theta - mu0)

by Newton steps from a warm start, with a backtracking (Armijo) line search on F and a
per-entity stop when ``||grad F||_2 <= gradient_tolerance``. The returned precision is
the Hessian of F at the new mean — the Laplace posterior, which is exactly the
sequential-Bayesian update ``P <- Lambda0 + Z' diag(w * loss'') Z`` (sample weights
inside).

This module is the batch interface: padded (B, n, d) events in, per-entity results and
diagnostics out, inputs validated in bulk. The solving itself runs entity by entity in
compiled code (:mod:`stream.model.entity_solver`), which also takes the low-rank path
when an entity has fewer events than coefficients and starts at its prior mean.

Inputs with non-finite values or invalid labels or weights reject their entity (status
``REJECTED_INPUT``); a solve that turns non-finite stops its entity at the last finite
iterate (status ``NUMERICAL_FAILURE``). Neither ever yields a non-finite mean.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from stream.errors import InvalidValueError
from stream.model.entity_solver import DIAGONAL, FULL, PACKED, UpdateStatus, loss_code, solve_rows, solver_workspace
from stream.model.losses import LogisticLoss, Loss
from stream.model.packed import unpack_upper

__all__ = ["EntityEvents", "EntityUpdate", "GaussianPrior", "UpdateStatus", "newton_update", "objective"]

_LOGISTIC = LogisticLoss()


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
            raise InvalidValueError(
                f"features must be (B, n, d) matching labels (B, n); got {features.shape} and {shape}"
            )
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
    """Per-entity prior means (B, d) and precisions: full (B, d, d), diagonal (B, d), or packed.

    ``packed=True`` means (B, d(d+1)/2) upper triangles row by row (:mod:`stream.model.packed`),
    the layout entity states keep; the solver reads and returns it without unpacking.
    """

    mean: np.ndarray
    precision: np.ndarray
    packed: bool = False

    @property
    def diagonal(self) -> bool:
        """Whether precisions are stored as their diagonals."""
        return self.precision.ndim == 2 and not self.packed

    def full_precision(self) -> np.ndarray:
        """Precisions as (B, d, d) matrices."""
        if self.packed:
            return unpack_upper(np.ascontiguousarray(self.precision, dtype=np.float64), self.mean.shape[1])
        if not self.diagonal:
            return self.precision
        b, d = self.precision.shape
        full = np.zeros((b, d, d))
        full[:, np.arange(d), np.arange(d)] = self.precision
        return full

    def take(self, index: np.ndarray) -> GaussianPrior:
        """The prior of a subset of entities."""
        return GaussianPrior(self.mean[index], self.precision[index], self.packed)


@dataclass(frozen=True)
class EntityUpdate:
    """Result of :func:`newton_update` for B entities.

    ``precision`` has the prior's layout (full, diagonal or packed). ``objective`` is F at the
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


def objective(events: EntityEvents, prior: GaussianPrior, theta: np.ndarray, loss: Loss = _LOGISTIC) -> np.ndarray:
    """F(theta) per entity: weighted loss sum plus the prior's quadratic penalty (numpy, for checks and reports)."""
    m = events.mask
    z = np.where(m[..., None], events.features, 0.0)
    y, o, w = (np.where(m, a, 0.0) for a in (events.labels, events.offsets, events.weights))
    margins = o + np.einsum("bnd,bd->bn", z, theta)
    return np.einsum("bn,bn->b", w, loss.value(y, margins)) + 0.5 * _quadratic(prior.precision, theta - prior.mean)


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
    once their gradient norm is at most ``gradient_tolerance``. With ``threads > 1`` the
    entities are split between that many threads (the compiled solver releases the GIL),
    using more cores for the same result.
    """
    b, n, d = events.features.shape
    code = loss_code(loss)
    layout = PACKED if prior.packed else DIAGONAL if prior.diagonal else FULL
    result = EntityUpdate(
        mean=np.empty((b, d)),
        precision=np.empty(prior.precision.shape),
        iterations=np.empty(b, dtype=np.int32),
        gradient_norm=np.empty(b),
        objective=np.empty(b),
        status=np.empty(b, dtype=np.int8),
        loading=np.empty(b),
    )
    if b == 0:
        return result
    matrices = layout == FULL
    arrays = (
        code,
        _contiguous(events.features),
        _contiguous(events.labels),
        _contiguous(events.offsets),
        _contiguous(events.weights),
        _contiguous(events.mask, np.bool_),
        _contiguous(prior.mean),
        np.empty((0, 0)) if matrices else _contiguous(prior.precision),
        _contiguous(prior.precision) if matrices else np.empty((0, 0, 0)),
        layout,
        _contiguous(prior.mean if start is None else start),
        max_steps,
        gradient_tolerance,
        max_backtracks,
        armijo,
    )
    outputs = (
        result.mean,
        np.empty((0, 0)) if matrices else result.precision,
        result.precision if matrices else np.empty((0, 0, 0)),
        result.iterations,
        result.gradient_norm,
        result.objective,
        result.status,
        result.loading,
    )
    rows = np.arange(b)

    def solve(part: np.ndarray) -> None:
        solve_rows(part, *arrays, solver_workspace(n, d), *outputs)

    parts = np.array_split(rows, min(max(1, threads), b))
    if len(parts) > 1:
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            list(pool.map(solve, parts))
    else:
        solve(rows)
    return result


def _contiguous(a: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """``a`` as the one array type the solver is compiled for (C-contiguous, writeable), copied only if it is not.

    numba compiles a separate specialization, for seconds, per array type: a read-only
    input (``np.frombuffer``, ``broadcast_to``) would otherwise trigger one mid-stream.
    """
    return np.require(a, dtype=dtype, requirements=["C", "W"])
