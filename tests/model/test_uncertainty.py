"""Posterior uncertainty: covariance, seeded Thompson samples with the right moments, UCB."""

import numpy as np

from stream.model.uncertainty import covariance, score_std, thompson_samples, ucb_scores


def test_thompson_samples_have_the_posterior_moments_and_repeat_for_a_seed():
    mean = np.array([[1.0, -2.0]])
    precision = np.array([[[4.0, 1.0], [1.0, 2.0]]])
    draws = np.concatenate([thompson_samples(mean, precision, np.random.default_rng(s)) for s in range(4000)])
    np.testing.assert_allclose(draws.mean(axis=0), mean[0], atol=0.05)
    np.testing.assert_allclose(np.cov(draws.T), np.linalg.inv(precision[0]), atol=0.03)
    a = thompson_samples(mean, precision, np.random.default_rng(9))
    b = thompson_samples(mean, precision, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)


def test_diagonal_and_full_layouts_agree():
    diag = np.array([[2.0, 8.0]])
    full = np.array([np.diag([2.0, 8.0])])
    np.testing.assert_allclose(covariance(diag), covariance(full))
    z = np.array([[[1.0, 1.0], [0.0, 2.0]]])
    np.testing.assert_allclose(score_std(z, diag), score_std(z, full))
    np.testing.assert_allclose(score_std(z, diag)[0], [np.sqrt(0.5 + 0.125), np.sqrt(4 * 0.125)])


def test_ucb_adds_width_times_std():
    z = np.array([[[1.0, 0.0]]])
    assert ucb_scores(z, np.array([[0.5, 0.0]]), np.array([[4.0, 1.0]]), width=2.0)[0, 0] == 0.5 + 2.0 * 0.5
