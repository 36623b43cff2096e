"""The refit's publication gate: the new global model must not be worse on a later-in-time holdout."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stream.config import RefitSettings
from stream.model.losses import Loss
from stream.model.metrics import auc, observed_expected

HIGHER_IS_BETTER = {"auc": True, "log_loss": False}
# A candidate the gate refuses is tried again at shorter steps from the current coefficients (a backtracking line
# search of the global coordinate): random effects learned around the current global model double-count a new
# global model that explains what they already do, and a shorter step leaves them room to re-centre.
STEPS = (1.0, 0.5, 0.25, 0.125)


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
    """Whether a candidate may be published, and the numbers that decided it.

    Two views of the holdout decide: the full model (the candidate beside the random
    effects' join-time scores) and the global model alone (what serves a member or job
    the random effects do not know yet). Neither may get worse.
    """

    passed: bool
    metric: str
    current: float
    candidate: float
    tolerance: float
    global_only_current: float = float("nan")
    global_only_candidate: float = float("nan")

    @property
    def reason(self) -> str:
        """One line for the log."""
        verdict = "passes" if self.passed else "is refused"
        return (
            f"candidate {verdict}: holdout {self.metric} {self.candidate:.5f} vs current {self.current:.5f}, "
            f"global-only {self.global_only_candidate:.5f} vs {self.global_only_current:.5f} "
            f"(tolerance {self.tolerance})"
        )


def _not_worse(now: float, new: float, metric: str, tolerance: float) -> bool:
    """A candidate value that is not a number never passes; a current one that is not lets any finite one through."""
    if not np.isfinite(new):
        return False
    if not np.isfinite(now):
        return True
    return new >= now - tolerance if HIGHER_IS_BETTER[metric] else new <= now + tolerance


def gate(current: dict[str, float], candidate: dict[str, float], settings: RefitSettings) -> GateDecision:
    """Pass when neither the full model's nor the global-only gate metric is worse than now by more than the tolerance.

    The global-only view is judged where the metrics carry it (``global_only_<metric>``).
    """
    metric, tolerance = settings.gate_metric, settings.gate_tolerance
    alone = f"global_only_{metric}"
    nan = float("nan")
    full_ok = _not_worse(current.get(metric, nan), candidate.get(metric, nan), metric, tolerance)
    alone_ok = alone not in candidate or _not_worse(current.get(alone, nan), candidate[alone], metric, tolerance)
    return GateDecision(
        full_ok and alone_ok,
        metric,
        current.get(metric, nan),
        candidate.get(metric, nan),
        tolerance,
        current.get(alone, nan),
        candidate.get(alone, nan),
    )


def choose_trial(decisions: Mapping[tuple[str, float], GateDecision]) -> tuple[str, float]:
    """The (candidate, step) to publish: the longest step at which a candidate passes, and there the best full-model
    metric; when none passes, the best full step (which is refused).

    Full-model metrics within the gate's tolerance of the best are a tie (holdout noise), and a
    tie goes to the candidate that is better alone: it is all that serves a new member or
    job, and a choice made on noise would flip the global model between fits from one run
    to the next.
    """

    def goodness(value: float, metric: str) -> float:
        value = value if HIGHER_IS_BETTER[metric] else -value
        return value if math.isfinite(value) else -math.inf

    def best(trials: list[tuple[str, float]]) -> tuple[str, float]:
        full = {t: goodness(decisions[t].candidate, decisions[t].metric) for t in trials}
        top = max(full.values())
        tied = [t for t in trials if full[t] >= top - decisions[t].tolerance]
        alone = {t: goodness(decisions[t].global_only_candidate, decisions[t].metric) for t in tied}
        return max(tied, key=lambda t: (alone[t], full[t]))

    for step in STEPS:
        passing = [trial for trial, d in decisions.items() if d.passed and trial[1] == step]
        if passing:
            return best(passing)
    return max(
        (t for t in decisions if t[1] == STEPS[0]),
        key=lambda t: goodness(decisions[t].candidate, decisions[t].metric),
    )
