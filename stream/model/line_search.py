"""Armijo backtracking for many entities at once, shared by the full and the low-rank Newton solvers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TrialObjective = Callable[[np.ndarray, np.ndarray], np.ndarray]


def armijo_backtrack(x: np.ndarray, direction: np.ndarray, slope: np.ndarray, fval: np.ndarray,
                     trial_objective: TrialObjective, max_backtracks: int, armijo: float) -> np.ndarray:
    """``x - t * direction`` per row, with the largest t in 1, 1/2, 1/4, ... that decreases F enough.

    ``slope`` is the rate at which F decreases along ``-direction``; ``trial_objective(rows,
    t)`` is F at ``x[rows] - t[:, None] * direction[rows]``. Rows that find no such t within
    ``max_backtracks`` halvings (or have no descent direction) keep ``x``.
    """
    step = np.ones(len(x))
    accepted = np.zeros(len(x), dtype=bool)
    pending = np.isfinite(direction).all(axis=1) & (slope > 0)
    slack = 1e-12 * np.abs(fval)  # tolerate rounding noise at the optimum
    for _ in range(max_backtracks):
        rows = np.flatnonzero(pending)
        if rows.size == 0:
            break
        with np.errstate(over="ignore", invalid="ignore"):
            f_trial = trial_objective(rows, step[rows])
        good = np.isfinite(f_trial) & (f_trial <= fval[rows] - armijo * step[rows] * slope[rows] + slack[rows])
        accepted[rows[good]] = True
        pending[rows[good]] = False
        step[rows[~good]] *= 0.5
    moved = x.copy()
    moved[accepted] = x[accepted] - step[accepted, None] * direction[accepted]
    return moved
