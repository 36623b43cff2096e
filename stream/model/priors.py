"""The two per-entity priors of DESIGN §4, as :class:`GaussianPrior` batches.

* ``l2``: mean ``mu0`` (zero, or a batch-trained model) and precision
  ``diag(l2, ..., l2)`` with the intercept's own ``intercept_l2`` — the penalty on the
  intercept is stated, never implied.
* ``bayes``: sequential Bayesian updating with forgetting. The previous posterior
  ``N(m, P^-1)`` becomes the prior ``N(m, (delta P + (1 - delta) Lambda_new)^-1)``:
  with ``delta = 1`` it is exact Bayesian updating (two halves of the data give the same
  posterior as all of it); with ``delta < 1`` old evidence decays toward the new-entity
  prior ``Lambda_new``, which also serves as the ridge that keeps P from vanishing in
  directions the entity no longer sees.
"""

from __future__ import annotations

import numpy as np

from stream.errors import InvalidValueError
from stream.model.newton import GaussianPrior
from stream.model.packed import diagonal_positions


def l2_precision_diagonal(
    dim: int, l2: float, intercept_l2: float | None = None, intercept_column: int | None = 0
) -> np.ndarray:
    """The (d,) diagonal ``[l2, ..., l2]`` with ``intercept_l2`` at ``intercept_column``."""
    diagonal = np.full(dim, float(l2))
    if intercept_column is not None and intercept_l2 is not None:
        diagonal[intercept_column] = float(intercept_l2)
    return diagonal


def l2_prior(
    num_entities: int,
    dim: int,
    l2: float,
    intercept_l2: float | None = None,
    intercept_column: int | None = 0,
    mean: np.ndarray | None = None,
    diagonal: bool = True,
) -> GaussianPrior:
    """``N(mean, diag(l2)^-1)`` for every entity (mean defaults to zero)."""
    diag = np.broadcast_to(l2_precision_diagonal(dim, l2, intercept_l2, intercept_column), (num_entities, dim))
    mu0 = np.zeros((num_entities, dim)) if mean is None else np.asarray(mean, dtype=np.float64)
    prior = GaussianPrior(mu0, diag.copy())
    return prior if diagonal else GaussianPrior(mu0, prior.full_precision())


def forgetting_prior(posterior: GaussianPrior, forgetting: float, new_entity_precision: np.ndarray) -> GaussianPrior:
    """The prior for the next update: ``delta P + (1 - delta) Lambda_new`` around the old mean.

    ``new_entity_precision`` is the (d,) diagonal of a new entity's prior (see
    :func:`l2_precision_diagonal`); ``posterior`` may be full, diagonal or packed.
    """
    if not 0.0 < forgetting <= 1.0:
        raise InvalidValueError(f"forgetting must be in (0, 1], got {forgetting}")
    if forgetting == 1.0:
        return posterior
    ridge = (1.0 - forgetting) * np.asarray(new_entity_precision, dtype=np.float64)
    if posterior.diagonal:
        return GaussianPrior(posterior.mean, forgetting * posterior.precision + ridge)
    if posterior.packed:
        precision = forgetting * posterior.precision
        precision[:, diagonal_positions(posterior.mean.shape[1])] += ridge
        return GaussianPrior(posterior.mean, precision, packed=True)
    d = posterior.precision.shape[-1]
    precision = forgetting * posterior.precision
    precision[:, np.arange(d), np.arange(d)] += ridge
    return GaussianPrior(posterior.mean, precision)
