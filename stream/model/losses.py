"""Per-sample losses of a GLM as functions of the margin, with their first two derivatives.

Conventions (fixed here for every solver in the package): the loss of one sample with
label ``y`` and margin ``m`` (offset included) is ``loss(y, m)``; the objective sums
``weight * loss`` over samples (a sum, not a mean) and adds the prior's quadratic
penalty. Derivatives are with respect to the margin. All three are evaluated in
numerically stable forms and stay finite for any finite margin:

* logistic: ``log(1 + exp(m)) - y m`` via ``logaddexp``; ``y`` in [0, 1].
* linear: ``(m - y)^2 / 2``.
* poisson: ``exp(m) - y m`` (the ``log y!`` constant dropped); ``y >= 0``. Above
  ``POISSON_MAX_MARGIN`` the exponential is continued by its second-order Taylor
  polynomial, which keeps the loss convex, twice differentiable and overflow-free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.special import expit

from stream.errors import InvalidValueError

POISSON_MAX_MARGIN = 30.0


@dataclass(frozen=True)
class Loss(ABC):
    """A GLM loss: value and margin-derivatives, plus the inverse link for predictions."""

    name: ClassVar[str] = ""

    @abstractmethod
    def value(self, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Per-sample loss."""

    @abstractmethod
    def derivatives(self, y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and second derivative of the loss with respect to the margin."""

    @abstractmethod
    def mean(self, m: np.ndarray) -> np.ndarray:
        """The model's prediction E[y] for margin ``m`` (the inverse link)."""

    def valid_labels(self, y: np.ndarray) -> np.ndarray:
        """Elementwise: is ``y`` a label this loss accepts (finite, and in its range)?"""
        return np.isfinite(y)


@dataclass(frozen=True)
class LogisticLoss(Loss):
    """Binary cross-entropy on the logit; the default for clicks and applies."""

    name: ClassVar[str] = "logistic"

    def value(self, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        return np.logaddexp(0.0, m) - y * m

    def derivatives(self, y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = expit(m)
        return p - y, p * (1.0 - p)

    def mean(self, m: np.ndarray) -> np.ndarray:
        return expit(m)

    def valid_labels(self, y: np.ndarray) -> np.ndarray:
        return np.isfinite(y) & (y >= 0.0) & (y <= 1.0)


@dataclass(frozen=True)
class LinearLoss(Loss):
    """Squared error with the identity link."""

    name: ClassVar[str] = "linear"

    def value(self, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        return 0.5 * (m - y) ** 2

    def derivatives(self, y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return m - y, np.ones_like(m)

    def mean(self, m: np.ndarray) -> np.ndarray:
        return np.asarray(m, dtype=float)


@dataclass(frozen=True)
class PoissonLoss(Loss):
    """Poisson negative log-likelihood with the log link, for counts."""

    name: ClassVar[str] = "poisson"

    @staticmethod
    def _exp(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """exp(m) and its two derivatives, continued quadratically above the cap."""
        capped = np.minimum(m, POISSON_MAX_MARGIN)
        base = np.exp(capped)
        excess = m - capped
        return base * (1.0 + excess + 0.5 * excess**2), base * (1.0 + excess), base

    def value(self, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        return self._exp(m)[0] - y * m

    def derivatives(self, y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, first, second = self._exp(m)
        return first - y, second

    def mean(self, m: np.ndarray) -> np.ndarray:
        return self._exp(m)[0]

    def valid_labels(self, y: np.ndarray) -> np.ndarray:
        return np.isfinite(y) & (y >= 0.0)


LOSSES: dict[str, Loss] = {loss.name: loss for loss in (LogisticLoss(), LinearLoss(), PoissonLoss())}


def get_loss(name: str) -> Loss:
    """The loss called ``name`` (``logistic``, ``linear`` or ``poisson``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise InvalidValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
