"""The vectorized Newton update against scipy.optimize on the same objective, and its guards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from stream.model import (
    EntityEvents,
    GaussianPrior,
    LinearLoss,
    LogisticLoss,
    PoissonLoss,
    UpdateStatus,
    forgetting_prior,
    l2_prior,
    newton_update,
)

LOSSES = {"logistic": LogisticLoss(), "linear": LinearLoss(), "poisson": PoissonLoss()}


def reference_objective(loss: str, z, y, o, w, mu0, lam_full, theta) -> float:
    """The per-entity objective written independently of the package (plain formulas)."""
    m = o + z @ theta
    if loss == "logistic":
        per = np.log1p(np.exp(m)) - y * m
    elif loss == "linear":
        per = 0.5 * (m - y) ** 2
    else:
        per = np.exp(m) - y * m
    diff = theta - mu0
    return float(w @ per + 0.5 * diff @ lam_full @ diff)


def scipy_optimum(loss, z, y, o, w, mu0, lam_full) -> float:
    fun = lambda t: reference_objective(loss, z, y, o, w, mu0, lam_full, t)  # noqa: E731
    best = minimize(fun, mu0, method="BFGS", options={"gtol": 1e-10, "maxiter": 2000})
    return float(best.fun)


def random_problem(rng, loss: str, b: int, n: int, d: int, prior: str, diagonal: bool, padded: bool = True):
    z = rng.normal(size=(b, n, d)) / np.sqrt(d)
    z[:, :, 0] = 1.0
    truth = rng.normal(size=(b, d))
    m = np.einsum("bnd,bd->bn", z, truth)
    if loss == "logistic":
        y = (rng.random((b, n)) < 1 / (1 + np.exp(-m))).astype(float)
    elif loss == "linear":
        y = m + rng.normal(size=m.shape)
    else:
        y = rng.poisson(np.exp(np.clip(m, -4, 3))).astype(float)
    o = rng.normal(scale=0.3, size=(b, n))
    w = rng.uniform(0.2, 3.0, size=(b, n))
    mask = rng.random((b, n)) < 0.8 if padded else np.ones((b, n), dtype=bool)
    mask[:, 0] = True
    events = EntityEvents.build(z, y, o, w, mask)
    if prior == "l2":
        pri = l2_prior(b, d, l2=rng.uniform(0.1, 5.0), intercept_l2=0.5, diagonal=diagonal)
    else:
        a = rng.normal(size=(b, d, d)) / np.sqrt(d)
        precision = np.einsum("bij,bkj->bik", a, a) + 0.3 * np.eye(d)
        if diagonal:
            precision = np.diagonal(precision, axis1=1, axis2=2).copy()
        pri = GaussianPrior(rng.normal(scale=0.5, size=(b, d)), precision)
    return events, pri


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("prior", ["l2", "bayes"])
@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "diagonal"])
def test_every_entity_reaches_scipys_optimum(loss, prior, diagonal):
    rng = np.random.default_rng(hash((loss, prior, diagonal)) % 2**32)
    events, pri = random_problem(rng, loss, b=24, n=30, d=6, prior=prior, diagonal=diagonal)
    result = newton_update(events, pri, LOSSES[loss], max_steps=30, gradient_tolerance=1e-9)
    assert result.converged.all(), result.status
    full = pri.full_precision()
    for b in range(events.num_entities):
        m = events.mask[b]
        args = (events.features[b][m], events.labels[b][m], events.offsets[b][m], events.weights[b][m], pri.mean[b], full[b])
        ours = reference_objective(loss, *args, result.mean[b])
        theirs = scipy_optimum(loss, *args)
        assert (ours - theirs) / abs(theirs) <= 1e-6
        assert result.objective[b] == pytest.approx(ours, rel=1e-9)


PROBLEMS = dict(
    seed=st.integers(0, 2**31 - 1),
    loss=st.sampled_from(sorted(LOSSES)),
    prior=st.sampled_from(["l2", "bayes"]),
    diagonal=st.booleans(),
    n=st.integers(1, 40),
    d=st.integers(1, 8),
)


@given(**PROBLEMS)
def test_hypothesis_random_problems_match_scipy(seed, loss, prior, diagonal, n, d):
    rng = np.random.default_rng(seed)
    events, pri = random_problem(rng, loss, b=3, n=n, d=d, prior=prior, diagonal=diagonal)
    result = newton_update(events, pri, LOSSES[loss], max_steps=50, gradient_tolerance=1e-9)
    full = pri.full_precision()
    for b in range(3):
        m = events.mask[b]
        args = (events.features[b][m], events.labels[b][m], events.offsets[b][m], events.weights[b][m], pri.mean[b], full[b])
        theirs = scipy_optimum(loss, *args)
        assert (reference_objective(loss, *args, result.mean[b]) - theirs) / max(abs(theirs), 1e-12) <= 1e-6


@pytest.mark.slow
@settings(max_examples=600)
@given(**PROBLEMS)
def test_many_more_random_problems_match_scipy(seed, loss, prior, diagonal, n, d):
    test_hypothesis_random_problems_match_scipy.hypothesis.inner_test(seed, loss, prior, diagonal, n, d)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_a_newton_step_from_the_optimum_stays_there(loss):
    rng = np.random.default_rng(5)
    events, pri = random_problem(rng, loss, b=10, n=25, d=5, prior="l2", diagonal=False)
    first = newton_update(events, pri, LOSSES[loss], max_steps=40, gradient_tolerance=1e-10)
    again = newton_update(events, pri, LOSSES[loss], start=first.mean, max_steps=1, gradient_tolerance=0.0 + 1e-300)
    np.testing.assert_allclose(again.mean, first.mean, atol=1e-9)
    assert (again.objective <= first.objective + 1e-9 * np.abs(first.objective)).all()


def test_returned_precision_is_the_hessian_with_weights_inside():
    rng = np.random.default_rng(11)
    events, pri = random_problem(rng, "logistic", b=4, n=20, d=3, prior="bayes", diagonal=False, padded=False)
    result = newton_update(events, pri, LOSSES["logistic"], max_steps=30, gradient_tolerance=1e-10)
    m = events.offsets + np.einsum("bnd,bd->bn", events.features, result.mean)
    p = 1 / (1 + np.exp(-m))
    expected = pri.precision + np.einsum("bnd,bn,bne->bde", events.features, events.weights * p * (1 - p), events.features)
    np.testing.assert_allclose(result.precision, expected, rtol=1e-10)


def _split_fit(loss: str, seed: int):
    rng = np.random.default_rng(seed)
    events, _ = random_problem(rng, loss, b=6, n=40, d=4, prior="l2", diagonal=False, padded=False)
    start = l2_prior(6, 4, l2=2.0, intercept_l2=1.0, diagonal=False)
    whole = newton_update(events, start, LOSSES[loss], max_steps=50, gradient_tolerance=1e-12)
    halves = [EntityEvents.build(*(a[:, s] for a in (events.features, events.labels, events.offsets, events.weights)))
              for s in (slice(0, 20), slice(20, 40))]
    first = newton_update(halves[0], start, LOSSES[loss], max_steps=50, gradient_tolerance=1e-12)
    posterior = forgetting_prior(GaussianPrior(first.mean, first.precision), 1.0, np.full(4, 2.0))
    second = newton_update(halves[1], posterior, LOSSES[loss], max_steps=50, gradient_tolerance=1e-12)
    return whole, second


def test_bayes_with_delta_one_in_two_halves_equals_one_fit_exactly_for_linear():
    whole, second = _split_fit("linear", 21)
    np.testing.assert_allclose(second.mean, whole.mean, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(second.precision, whole.precision, rtol=1e-9)


def test_bayes_with_delta_one_in_two_halves_is_close_for_logistic():
    whole, second = _split_fit("logistic", 22)
    # The Laplace posterior of the first half stands in for its likelihood; with 20 events
    # per half over 4 coefficients the approximation error stays well under 0.05.
    np.testing.assert_allclose(second.mean, whole.mean, atol=0.05)


def test_forgetting_decays_old_precision_toward_the_new_entity_prior():
    posterior = GaussianPrior(np.ones((2, 3)), np.stack([np.diag([10.0, 20.0, 30.0])] * 2))
    decayed = forgetting_prior(posterior, 0.5, np.array([1.0, 1.0, 2.0]))
    np.testing.assert_allclose(decayed.precision[0], np.diag([5.5, 10.5, 16.0]))
    with pytest.raises(ValueError, match="forgetting"):
        forgetting_prior(posterior, 0.0, np.ones(3))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_integer_weights_equal_duplicated_rows(loss):
    rng = np.random.default_rng(3)
    events, pri = random_problem(rng, loss, b=5, n=12, d=4, prior="l2", diagonal=True, padded=False)
    counts = rng.integers(1, 4, size=(5, 12))
    weighted = EntityEvents.build(events.features, events.labels, events.offsets, counts.astype(float))
    n_max = counts.sum(axis=1).max()
    feats, labels, offsets = (np.zeros((5, n_max, 4)), np.zeros((5, n_max)), np.zeros((5, n_max)))
    mask = np.zeros((5, n_max), dtype=bool)
    for b in range(5):  # test-side construction of the duplicated data set
        idx = np.repeat(np.arange(12), counts[b])
        feats[b, : idx.size], labels[b, : idx.size], offsets[b, : idx.size] = (
            events.features[b, idx], events.labels[b, idx], events.offsets[b, idx])
        mask[b, : idx.size] = True
    duplicated = EntityEvents.build(feats, labels, offsets, None, mask)
    a = newton_update(weighted, pri, LOSSES[loss], max_steps=40, gradient_tolerance=1e-11)
    b_ = newton_update(duplicated, pri, LOSSES[loss], max_steps=40, gradient_tolerance=1e-11)
    np.testing.assert_allclose(a.mean, b_.mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(a.precision, b_.precision, rtol=1e-7)


def test_padding_is_ignored_even_when_it_holds_nan():
    rng = np.random.default_rng(8)
    events, pri = random_problem(rng, "logistic", b=8, n=20, d=4, prior="l2", diagonal=False)
    dirty = EntityEvents(
        np.where(events.mask[..., None], events.features, np.nan), np.where(events.mask, events.labels, np.inf),
        events.offsets, events.weights, events.mask,
    )
    clean = newton_update(events, pri)
    noisy = newton_update(dirty, pri)
    np.testing.assert_array_equal(clean.mean, noisy.mean)
    assert noisy.usable.all()


def test_one_class_and_all_zero_features_give_finite_results():
    b, n, d = 3, 15, 4
    z = np.random.default_rng(0).normal(size=(b, n, d))
    z[2] = 0.0  # all-zero features
    y = np.ones((b, n))
    y[1] = 0.0  # one class only, both ways
    result = newton_update(EntityEvents.build(z, y), l2_prior(b, d, l2=1.0, intercept_l2=1.0, diagonal=False))
    assert np.isfinite(result.mean).all() and np.isfinite(result.precision).all()
    assert result.usable.all()


def test_unregularized_intercept_with_one_class_stays_finite():
    z = np.ones((2, 10, 1))
    result = newton_update(EntityEvents.build(z, np.ones((2, 10))), l2_prior(2, 1, l2=0.0, intercept_l2=0.0), max_steps=10)
    assert np.isfinite(result.mean).all()
    assert (result.mean > 5).all()  # pushed far toward the only class, without overflow
    assert (result.status != UpdateStatus.CONVERGED).all()  # and honestly not converged


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_reject_only_their_entity(bad):
    rng = np.random.default_rng(2)
    events, pri = random_problem(rng, "logistic", b=4, n=10, d=3, prior="l2", diagonal=False, padded=False)
    features = events.features.copy()
    features[1, 3, 2] = bad
    offsets = events.offsets.copy()
    offsets[2, 0] = bad
    result = newton_update(EntityEvents.build(features, events.labels, offsets, events.weights), pri)
    assert result.status.tolist() == [UpdateStatus.CONVERGED, UpdateStatus.REJECTED_INPUT, UpdateStatus.REJECTED_INPUT, UpdateStatus.CONVERGED]
    assert np.isfinite(result.mean).all() and np.isfinite(result.precision).all()


def test_invalid_labels_and_negative_weights_are_rejected():
    z = np.ones((3, 2, 1))
    y = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 1.0]])  # 2 is not a logistic label
    w = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    result = newton_update(EntityEvents.build(z, y, weights=w), l2_prior(3, 1, 1.0))
    assert result.status.tolist() == [UpdateStatus.CONVERGED, UpdateStatus.REJECTED_INPUT, UpdateStatus.REJECTED_INPUT]


def test_huge_features_end_in_a_finite_result_or_a_clear_failure():
    z = np.full((2, 4, 2), 1e300)
    z[0] = 1.0
    y = np.array([[0.0, 1.0, 0.0, 1.0]] * 2)
    result = newton_update(EntityEvents.build(z, y), l2_prior(2, 2, 1.0, diagonal=False))
    assert np.isfinite(result.mean).all() and np.isfinite(result.precision).all()
    assert result.status[0] == UpdateStatus.CONVERGED
    assert result.status[1] == UpdateStatus.NUMERICAL_FAILURE


def test_singular_hessian_gets_diagonal_loading():
    # Zero prior precision and two identical columns: the Hessian is singular.
    z = np.ones((2, 6, 2))
    y = np.array([[0, 1, 0, 1, 1, 0]] * 2, dtype=float)
    result = newton_update(EntityEvents.build(z, y), GaussianPrior(np.zeros((2, 2)), np.zeros((2, 2))), max_steps=20)
    assert np.isfinite(result.mean).all()
    np.testing.assert_allclose(result.mean.sum(axis=1), 0.0, atol=1e-6)  # logit(1/2) split over the twins


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_inputs_are_left_unchanged_and_results_repeat(loss):
    rng = np.random.default_rng(17)
    events, pri = random_problem(rng, loss, b=6, n=10, d=3, prior="bayes", diagonal=False)
    copies = [a.copy() for a in (events.features, events.labels, events.offsets, events.weights, events.mask, pri.mean, pri.precision)]
    start = pri.mean + 0.1
    start_copy = start.copy()
    first = newton_update(events, pri, LOSSES[loss], start=start)
    second = newton_update(events, pri, LOSSES[loss], start=start)
    for before, after in zip(copies, (events.features, events.labels, events.offsets, events.weights, events.mask, pri.mean, pri.precision)):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(start, start_copy)
    np.testing.assert_array_equal(first.mean, second.mean)
    np.testing.assert_array_equal(first.precision, second.precision)


def test_threads_give_the_same_result():
    rng = np.random.default_rng(19)
    events, pri = random_problem(rng, "logistic", b=3000, n=8, d=3, prior="l2", diagonal=False)
    one = newton_update(events, pri, threads=1)
    two = newton_update(events, pri, threads=2)
    np.testing.assert_array_equal(one.mean, two.mean)
    np.testing.assert_array_equal(one.status, two.status)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "diagonal"])
def test_fewer_events_than_coefficients_reach_the_same_optimum_and_posterior(loss, diagonal):
    """n < d with a warm start at the prior mean takes the low-rank path (stream.model.entity_solver)."""
    rng = np.random.default_rng(hash(("low-rank", loss, diagonal)) % 2**32)
    events, pri = random_problem(rng, loss, b=16, n=3, d=12, prior="bayes", diagonal=diagonal)
    result = newton_update(events, pri, LOSSES[loss], max_steps=30, gradient_tolerance=1e-9)
    assert result.converged.all(), result.status
    full = pri.full_precision()
    for b in range(events.num_entities):
        m = events.mask[b]
        z, y, o, w = events.features[b][m], events.labels[b][m], events.offsets[b][m], events.weights[b][m]
        ours = reference_objective(loss, z, y, o, w, pri.mean[b], full[b], result.mean[b])
        assert (ours - scipy_optimum(loss, z, y, o, w, pri.mean[b], full[b])) / abs(ours) <= 1e-6
        _, second = LOSSES[loss].derivatives(y, o + z @ result.mean[b])
        posterior = full[b] + z.T @ np.diag(w * second) @ z
        assert np.allclose(result.precision[b], np.diag(posterior) if diagonal else posterior, atol=1e-9)


def test_singular_hessian_reports_the_loading_it_needed():
    z = np.ones((1, 6, 2))
    y = np.array([[1, 1, 0, 1, 1, 0]], dtype=float)
    prior = GaussianPrior(np.zeros((1, 2)), np.zeros((1, 2, 2)))
    first_step = newton_update(EntityEvents.build(z, y), prior, max_steps=1)
    assert first_step.loading[0] > 0.0  # the exactly singular first system
    solved = newton_update(EntityEvents.build(z, y), prior, max_steps=20)
    np.testing.assert_allclose(solved.mean.sum(), np.log(2.0), atol=1e-6)  # logit(4/6) split over the twins
    regular = newton_update(EntityEvents.build(z[:, :, :1], y), l2_prior(1, 1, 1.0))
    assert regular.loading[0] == 0.0


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_compiled_loss_terms_match_the_numpy_losses(loss):
    """The compiled solver's scalar loss formulas and label rules are those of stream.model.losses, extremes included."""
    from stream.model.entity_solver import loss_code, loss_terms

    margins = np.array([-800.0, -40.0, -3.0, -1e-9, 0.0, 1e-9, 0.7, 29.9, 30.0, 31.5, 40.0, 800.0])
    labels = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.5, 2.0, 3.0, 0.0, 1.0, 1.0]) if loss != "logistic" else \
        np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.5, 1.0, 0.0, 0.0, 1.0, 1.0])
    code = loss_code(LOSSES[loss])
    compiled = np.array([loss_terms(code, y, m) for y, m in zip(labels, margins)])
    first, second = LOSSES[loss].derivatives(labels, margins)
    with np.errstate(over="ignore"):
        expected = np.column_stack([LOSSES[loss].value(labels, margins), first, second])
    from stream.model.entity_solver import label_is_valid

    candidates = np.array([-1.0, -1e-300, 0.0, 0.5, 1.0, 1.0 + 1e-15, 2.0, 7.0, np.nan, np.inf, -np.inf])
    compiled_valid = [label_is_valid(code, y) for y in candidates]
    assert compiled_valid == LOSSES[loss].valid_labels(candidates).tolist()
    # Values agree to rounding at the scale of the margin (``m - y m`` cancels for large m).
    scale = np.finfo(float).eps * (1.0 + np.abs(margins))[:, None]
    np.testing.assert_array_less(np.abs(compiled - expected), 1e-12 * np.abs(expected) + 4 * scale)


def test_read_only_inputs_use_the_one_compiled_solver():
    from stream.model.entity_solver import solve_rows

    rng = np.random.default_rng(23)
    events, pri = random_problem(rng, "logistic", b=4, n=6, d=3, prior="bayes", diagonal=False)
    frozen = [a.copy() for a in (events.features, events.labels, events.offsets, events.weights, events.mask, pri.mean,
                                 pri.precision)]
    for a in frozen:
        a.flags.writeable = False
    expected = newton_update(events, pri)
    compiled = len(solve_rows.signatures)
    result = newton_update(EntityEvents(*frozen[:5]), GaussianPrior(*frozen[5:]))
    assert len(solve_rows.signatures) == compiled  # no second specialization compiled for read-only arrays
    np.testing.assert_array_equal(result.mean, expected.mean)


@pytest.mark.parametrize("n", [3, 20], ids=["low-rank", "full-path"])
def test_a_packed_prior_gives_the_full_priors_result_in_packed_form(n):
    from stream.model.packed import pack_upper

    rng = np.random.default_rng(29)
    events, pri = random_problem(rng, "logistic", b=12, n=n, d=6, prior="bayes", diagonal=False)
    events = EntityEvents.build(events.features, events.labels, events.offsets, events.weights)  # no padding: n stays n
    delta, ridge = 0.8, np.linspace(0.5, 1.5, 6)
    full = newton_update(events, forgetting_prior(pri, delta, ridge))
    packed_prior = forgetting_prior(GaussianPrior(pri.mean, pack_upper(pri.precision), packed=True), delta, ridge)
    np.testing.assert_allclose(packed_prior.full_precision(), forgetting_prior(pri, delta, ridge).precision, rtol=1e-15)
    packed = newton_update(events, packed_prior)
    np.testing.assert_array_equal(packed.status, full.status)
    np.testing.assert_allclose(packed.mean, full.mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(packed.precision, pack_upper(full.precision), rtol=1e-12)
