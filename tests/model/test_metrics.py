"""Metrics against brute-force definitions on seeded data with ties."""

import numpy as np
import pytest

from stream.model.metrics import (
    auc,
    grouped_auc,
    log_loss,
    observed_expected,
    observed_expected_by_group,
    precision_at_k,
    rmse,
)


def brute_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = (rng.random(600) < 0.3).astype(float)
    s = np.round(rng.normal(size=600) + y, 1)  # rounding makes ties
    g = rng.integers(0, 15, 600)
    return y, s, g


def test_auc_counts_ties_as_half(data):
    y, s, _ = data
    assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(auc(np.ones(3), np.arange(3)))


def test_weighted_auc_equals_duplicated_rows(data):
    y, s, _ = data
    w = np.random.default_rng(1).integers(1, 4, size=y.size)
    assert auc(y, s, w) == pytest.approx(brute_auc(np.repeat(y, w), np.repeat(s, w)), abs=1e-12)


def test_grouped_auc_is_the_mean_over_groups_with_both_classes(data):
    y, s, g = data
    y[g == 3] = 1.0  # group 3 has one class: excluded
    expected = np.mean([brute_auc(y[g == k], s[g == k]) for k in range(15) if 0 < y[g == k].sum() < (g == k).sum()])
    assert grouped_auc(y, s, g) == pytest.approx(expected, abs=1e-12)


def test_precision_at_k(data):
    y, s, g = data
    expected = np.mean([y[g == k][np.argsort(-s[g == k], kind="stable")][:3].mean() for k in range(15)])
    assert precision_at_k(y, s, g, 3) == pytest.approx(expected)


def test_log_loss_rmse_and_oe():
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.8, 0.3, 0.6, 0.1])
    assert log_loss(y, p) == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.6, 0.9])))
    assert rmse(y, p) == pytest.approx(np.sqrt(np.mean((y - p) ** 2)))
    assert observed_expected(y, p) == pytest.approx(2 / 1.8)
    by = observed_expected_by_group(y, p, np.array(["click", "click", "apply", "apply"]))
    assert by == {"apply": pytest.approx(1 / 0.7), "click": pytest.approx(1 / 1.1)}
