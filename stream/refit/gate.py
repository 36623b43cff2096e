"""The refit's publication gate: the new global model must not be worse on a later-in-time holdout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.config import RefitSettings
from stream.model.losses import Loss
from stream.model.metrics import auc, observed_expected

HIGHER_IS_BETTER = {"auc": True, "log_loss": False}


def holdout_metrics(labels: np.ndarray, weights: np.ndarray, margins: np.ndarray, loss: Loss) -> dict[str, float]:
    """AUC, mean loss (log loss for the logistic loss), observed/expected and the count of a holdout."""
    if not len(labels):
        return {"examples": 0.0}
    binary = ((labels == 0) | (labels == 1)).all()
    means = loss.mean(margins)
    return {
        "auc": auc(labels > 0, margins, weights) if binary else float("nan"),
        "log_loss": float(weights @ loss.value(labels, margins) / weights.sum()),
        "observed_expected": observed_expected(labels, means, weights),
        "examples": float(len(labels)),
    }


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may be published, and the numbers that decided it."""

    passed: bool
    metric: str
    current: float
    candidate: float
    tolerance: float

    @property
    def reason(self) -> str:
        """One line for the log."""
        verdict = "passes" if self.passed else "is refused"
        return (
            f"candidate {verdict}: holdout {self.metric} {self.candidate:.5f} vs current {self.current:.5f} "
            f"(tolerance {self.tolerance})"
        )


def gate(current: dict[str, float], candidate: dict[str, float], settings: RefitSettings) -> GateDecision:
    """Pass when the candidate's gate metric is not worse than the current one's by more than the tolerance.

    A candidate whose metric is not a number never passes; a current model without one
    (say, no holdout positives) lets any finite candidate through.
    """
    metric = settings.gate_metric
    now, new = current.get(metric, float("nan")), candidate.get(metric, float("nan"))
    if not np.isfinite(new):
        passed = False
    elif not np.isfinite(now):
        passed = True
    elif HIGHER_IS_BETTER[metric]:
        passed = new >= now - settings.gate_tolerance
    else:
        passed = new <= now + settings.gate_tolerance
    return GateDecision(passed, metric, now, new, settings.gate_tolerance)
