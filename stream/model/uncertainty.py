"""Posterior uncertainty from precisions: covariances, Thompson samples and UCB scores.

The posterior of an entity is ``N(mean, precision^-1)`` (the Laplace approximation the
Newton update returns). Exploration policies draw from it (Thompson sampling) or add
a multiple of the score's standard deviation (UCB). Randomness comes only from the
``numpy.random.Generator`` passed in, so a seed reproduces the draws.
"""

from __future__ import annotations

import numpy as np


def covariance(precision: np.ndarray) -> np.ndarray:
    """Covariances (B, d, d) from precisions, full (B, d, d) or diagonal (B, d)."""
    if precision.ndim == 2:
        cov = np.zeros(precision.shape + precision.shape[-1:])
        d = precision.shape[-1]
        cov[:, np.arange(d), np.arange(d)] = 1.0 / precision
        return cov
    return np.linalg.inv(precision)


def thompson_samples(mean: np.ndarray, precision: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One coefficient draw per entity from ``N(mean, precision^-1)``, shape (B, d)."""
    noise = rng.standard_normal(mean.shape)
    if precision.ndim == 2:
        return mean + noise / np.sqrt(precision)
    factor = np.linalg.cholesky(covariance(precision))
    return mean + np.einsum("bde,be->bd", factor, noise)


def score_std(features: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Standard deviation of the margin ``z . theta`` for (B, n, d) candidates of B entities."""
    cov = covariance(precision)
    return np.sqrt(np.maximum(np.einsum("bnd,bde,bne->bn", features, cov, features), 0.0))


def ucb_scores(features: np.ndarray, mean: np.ndarray, precision: np.ndarray, width: float = 1.0) -> np.ndarray:
    """Upper confidence margins ``z . mean + width * std(z . theta)``, shape (B, n)."""
    return np.einsum("bnd,bd->bn", features, mean) + width * score_std(features, precision)
