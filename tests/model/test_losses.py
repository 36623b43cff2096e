"""Losses: derivatives against finite differences, and stability at extreme margins."""

import numpy as np
import pytest

from stream.model.losses import POISSON_MAX_MARGIN, LinearLoss, LogisticLoss, PoissonLoss, get_loss

LOSSES = [LogisticLoss(), LinearLoss(), PoissonLoss()]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
def test_derivatives_match_finite_differences(loss):
    m = np.linspace(-8, 8, 41)
    y = np.where(np.arange(41) % 2 == 0, 1.0, 0.0) if loss.name != "linear" else np.sin(m)
    h = 1e-5
    first, second = loss.derivatives(y, m)
    np.testing.assert_allclose(first, (loss.value(y, m + h) - loss.value(y, m - h)) / (2 * h), rtol=1e-6, atol=1e-7)
    d1_plus, _ = loss.derivatives(y, m + h)
    d1_minus, _ = loss.derivatives(y, m - h)
    np.testing.assert_allclose(second, (d1_plus - d1_minus) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
def test_extreme_margins_stay_finite(loss):
    m = np.array([-1e6, -800.0, 800.0, 1e6])
    y = np.array([0.0, 1.0, 0.0, 1.0])
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        value = loss.value(y, m)
        first, second = loss.derivatives(y, m)
    assert np.isfinite(value).all() and np.isfinite(first).all() and np.isfinite(second).all()
    assert (second >= 0).all()


def test_poisson_continuation_is_smooth_at_the_cap():
    loss = PoissonLoss()
    below, above = np.array([POISSON_MAX_MARGIN - 1e-9]), np.array([POISSON_MAX_MARGIN + 1e-9])
    y = np.zeros(1)
    np.testing.assert_allclose(loss.value(y, below), loss.value(y, above), rtol=1e-8)
    np.testing.assert_allclose(loss.derivatives(y, below)[0], loss.derivatives(y, above)[0], rtol=1e-8)


def test_logistic_labels_outside_zero_one_are_invalid():
    assert LogisticLoss().valid_labels(np.array([0.0, 1.0, 0.5, 2.0, np.nan])).tolist() == [True, True, True, False, False]


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match="logistic, linear, poisson"):
        get_loss("hinge")
