"""Model-quality metrics, vectorized: AUC, log loss, RMSE, O/E ratios, per-group AUC, precision@k.

Per-group AUC follows Photon-ML's ``AUC:<id>``: the unweighted mean of each group's AUC
over the groups that have both classes. Ties in scores count one half, as in the
Mann-Whitney statistic.
"""

from __future__ import annotations

import numpy as np

from stream.errors import InvalidValueError


def _as_arrays(*arrays: np.ndarray) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    if len({a.size for a in out}) > 1:
        raise InvalidValueError(f"arrays differ in length: {[a.size for a in out]}")
    return out


def _group_codes(groups: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(groups).ravel(), return_inverse=True)[1]


def _auc_terms(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, groups: np.ndarray):
    """Per group: weighted positive mass, negative mass, and positive-above-negative mass."""
    order = np.lexsort((scores, groups))
    g, s = groups[order], scores[order]
    pos = weights[order] * (labels[order] > 0.5)
    neg = weights[order] * (labels[order] <= 0.5)
    new_block = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])]
    block = np.cumsum(new_block) - 1
    pos_b = np.bincount(block, pos)
    neg_b = np.bincount(block, neg)
    block_group = g[new_block]
    cum_neg = np.cumsum(neg_b)
    group_start = np.r_[True, block_group[1:] != block_group[:-1]]
    start_cum = (cum_neg - neg_b)[group_start]
    first_block_of = np.cumsum(group_start) - 1
    neg_below = cum_neg - neg_b - start_cum[first_block_of]
    n_groups = int(groups.max()) + 1 if groups.size else 0
    above = np.bincount(block_group, pos_b * (neg_below + 0.5 * neg_b), minlength=n_groups)
    return np.bincount(g, pos, minlength=n_groups), np.bincount(g, neg, minlength=n_groups), above


def auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve (NaN when only one class is present).

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y, s = _as_arrays(labels, scores)
    w = np.ones_like(y) if weights is None else _as_arrays(weights)[0]
    p, n, above = _auc_terms(y, s, w, np.zeros(y.size, dtype=np.int64))
    return float(above[0] / (p[0] * n[0])) if y.size and p[0] > 0 and n[0] > 0 else float("nan")


def grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Unweighted mean AUC over the groups that have both classes (Photon-ML ``AUC:<id>``)."""
    y, s = _as_arrays(labels, scores)
    p, n, above = _auc_terms(y, s, np.ones_like(y), _group_codes(groups))
    both = (p > 0) & (n > 0)
    return float(np.mean(above[both] / (p[both] * n[both]))) if both.any() else float("nan")


def log_loss(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None, eps: float = 1e-15
) -> float:
    """Weighted mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]."""
    y, p = _as_arrays(labels, probabilities)
    w = np.ones_like(y) if weights is None else _as_arrays(weights)[0]
    p = np.clip(p, eps, 1.0 - eps)
    return float(np.sum(-w * (y * np.log(p) + (1.0 - y) * np.log1p(-p))) / np.sum(w))


def rmse(labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted root mean squared error."""
    y, p = _as_arrays(labels, predictions)
    w = np.ones_like(y) if weights is None else _as_arrays(weights)[0]
    return float(np.sqrt(np.sum(w * (y - p) ** 2) / np.sum(w)))


def observed_expected(labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Observed over expected: sum of labels / sum of predicted means (1 = calibrated)."""
    y, p = _as_arrays(labels, predictions)
    w = np.ones_like(y) if weights is None else _as_arrays(weights)[0]
    expected = np.sum(w * p)
    return float(np.sum(w * y) / expected) if expected > 0 else float("nan")


def observed_expected_by_group(labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray) -> dict:
    """O/E ratio per group value (e.g. per interaction type), as {group: ratio}."""
    y, p = _as_arrays(labels, predictions)
    values, codes = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    observed = np.bincount(codes, y, minlength=values.size)
    expected = np.bincount(codes, p, minlength=values.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(expected > 0, observed / expected, np.nan)
    return {v.item() if hasattr(v, "item") else v: float(r) for v, r in zip(values, ratio)}


def precision_at_k(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Mean over groups of the share of positives among each group's top-k scores."""
    if k < 1:
        raise InvalidValueError(f"k must be >= 1, got {k}")
    y, s = _as_arrays(labels, scores)
    codes = _group_codes(groups)
    order = np.lexsort((-s, codes))
    g = codes[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    rank = np.arange(g.size) - np.repeat(starts, np.diff(np.r_[starts, g.size]))
    top = rank < k
    hits = np.bincount(g[top], y[order][top] > 0.5)
    shown = np.bincount(g[top])
    return float(np.mean(hits / shown)) if shown.size else float("nan")
