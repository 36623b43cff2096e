"""One coordinate's micro-batch update on stored states: exactly-once per entity, both priors, index changes."""

from __future__ import annotations

import numpy as np
import pytest

from stream.config import CoordinateSettings
from stream.model.losses import get_loss
from stream.model.newton import EntityEvents, GaussianPrior, newton_update
from stream.model.priors import l2_prior
from stream.updaters.examples import CoordinateExamples, entity_batches, group_by_entity, valid_entity_batches
from stream.updaters.state_update import CoordinateMath, apply_batch

D = 4


def _math(prior="bayes", loss="logistic", window=64, precision="full") -> CoordinateMath:
    settings = CoordinateSettings(entity_field="member_id", feature_bags=("job_title",), max_features=D, prior=prior,
                                  precision=precision, window_events=window, newton_steps=50, gradient_tolerance=1e-10)
    return CoordinateMath.of(settings, get_loss(loss))


def _examples(n: int, entities: list[str], seed: int, first_offset: int = 0, index_version: int = 1,
              linear: bool = False) -> CoordinateExamples:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D))
    x[:, 0] = 1.0
    margin = x @ np.array([0.5, 1.0, -1.0, 0.3])
    labels = margin + rng.normal(size=n) if linear else (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(float)
    return CoordinateExamples(
        entity_ids=np.array([entities[i % len(entities)] for i in range(n)], dtype=object),
        features=x, labels=labels, offsets=rng.normal(scale=0.1, size=n), weights=np.ones(n),
        event_times=np.arange(n, dtype=np.int64) * 1000, label_times=np.arange(n, dtype=np.int64) * 1000,
        input_offsets=np.arange(first_offset, first_offset + n, dtype=np.int64),
        index_versions=np.full(n, index_version, dtype=np.int64),
    )


def _rows(ex: CoordinateExamples, rows: slice) -> CoordinateExamples:
    return CoordinateExamples(**{k: v[rows] for k, v in ex.__dict__.items()})


def _fresh(math: CoordinateMath, batch) -> np.ndarray:
    return math.layout.new_states(batch.num_entities, math.new_entity_precision)


def test_grouping_pads_each_entity_in_input_order():
    ex = _examples(7, ["b", "a"], seed=0)
    batch = group_by_entity(ex)
    assert batch.entity_ids.tolist() == ["a", "b"]
    assert batch.mask.sum(axis=1).tolist() == [3, 4]
    assert batch.input_offsets[0, :3].tolist() == [1, 3, 5] and batch.input_offsets[1].tolist() == [0, 2, 4, 6]
    assert np.array_equal(batch.features[0, 1], ex.features[3])


@pytest.mark.parametrize("prior", ["bayes", "l2"])
def test_a_hot_entity_gets_a_batch_of_its_own_and_every_state_is_what_one_batch_gives(prior):
    """One entity with 3,000 events among 2,000 with one each: one padded batch would be 3,000 x 2,001 slots."""
    entities = [f"e{i}" for i in range(2000)]
    ex = _examples(5000, entities + ["hot"] * 3000, seed=4)
    batches = entity_batches(ex)
    assert len(batches) == 2 and [b.num_entities for b in batches] == [2000, 1]
    assert all(b.mask.sum() == b.mask.size for b in batches)  # no padding left: each batch's counts are alike
    math = _math(prior=prior)
    whole = group_by_entity(ex)
    expected = apply_batch(math, _fresh(math, whole), whole).states
    got = np.concatenate([apply_batch(math, _fresh(math, b), b).states for b in batches])
    ids = np.concatenate([b.entity_ids for b in batches])
    order = np.argsort(ids)
    assert ids[order].tolist() == whole.entity_ids.tolist()
    for field in ("mean", "precision", "version", "last_offset", "event_count"):
        assert np.array_equal(got[order][field], expected[field]), field
    assert len(entity_batches(_examples(60, ["a", "b", "c"], seed=1))) == 1  # a small batch stays whole


def test_a_micro_batch_whose_examples_are_all_invalid_groups_to_no_entity_and_updates_nothing():
    ex = _examples(3, ["a", "b"], seed=5)
    ex.features[:, 1] = np.nan
    [batch], invalid = valid_entity_batches(ex)
    assert invalid.tolist() == [0, 1, 2] and batch.num_entities == 0 and batch.features.shape == (0, 0, D)
    math = _math()
    outcome = apply_batch(math, _fresh(math, batch), batch)
    assert not outcome.changed.any() and outcome.absorbed_events == 0


def test_bayes_update_is_the_newton_solution_from_the_new_entity_prior():
    math = _math()
    batch = group_by_entity(_examples(60, ["a", "b", "c"], seed=1))
    outcome = apply_batch(math, _fresh(math, batch), batch)
    assert outcome.changed.all() and outcome.absorbed_events == 60
    prior = l2_prior(3, D, 1.0, 1.0, diagonal=False)
    events = EntityEvents(batch.features, batch.labels, batch.offsets, batch.weights, batch.mask)
    direct = newton_update(events, prior, get_loss("logistic"), max_steps=50, gradient_tolerance=1e-10)
    assert np.allclose(outcome.states["mean"], direct.mean, atol=1e-9)
    assert outcome.states["version"].tolist() == [1, 1, 1]
    assert outcome.states["last_offset"].tolist() == [57, 58, 59]
    assert outcome.states["event_count"].tolist() == [20, 20, 20]


def test_a_replayed_batch_changes_nothing():
    math = _math()
    batch = group_by_entity(_examples(30, ["a", "b"], seed=2))
    first = apply_batch(math, _fresh(math, batch), batch)
    again = apply_batch(math, first.states, batch)
    assert not again.changed.any() and again.replayed_events == 30 and again.absorbed_events == 0
    assert again.states.tobytes() == first.states.tobytes()


def test_a_partly_replayed_batch_absorbs_only_the_new_events():
    math = _math()
    ex = _examples(40, ["a"], seed=3)
    first_half = group_by_entity(_rows(ex, slice(0, 20)))
    done = apply_batch(math, _fresh(math, first_half), first_half)
    whole = group_by_entity(ex)
    outcome = apply_batch(math, done.states, whole)
    assert outcome.replayed_events == 20 and outcome.absorbed_events == 20
    assert outcome.states["event_count"][0] == 40 and outcome.states["version"][0] == 2


@pytest.mark.parametrize("precision", ["full", "diagonal"])
def test_bayes_with_no_forgetting_fed_in_two_batches_equals_one_batch_for_the_linear_loss(precision):
    math = _math(loss="linear", precision=precision)
    ex = _examples(50, ["a", "b"], seed=4, linear=True)
    halves = [_rows(ex, s) for s in (slice(0, 25), slice(25, 50))]
    one = apply_batch(math, _fresh(math, group_by_entity(ex)), group_by_entity(ex))
    states = _fresh(math, group_by_entity(ex))
    for half in halves:
        states = apply_batch(math, states, group_by_entity(half)).states
    if precision == "full":
        assert np.allclose(states["mean"], one.states["mean"], atol=1e-8)
    else:  # a diagonal posterior forgets the correlations between features, so it is only close
        assert np.allclose(states["mean"], one.states["mean"], atol=0.15)


def test_l2_refits_the_newest_window_of_events():
    math = _math(prior="l2", window=5)
    ex = _examples(12, ["a"], seed=5)
    states = _fresh(math, group_by_entity(ex))
    for s in (slice(0, 4), slice(4, 8), slice(8, 12)):
        states = apply_batch(math, states, group_by_entity(_rows(ex, s))).states
    assert states["window_size"][0] == 5
    assert np.allclose(states["window_times"][0], ex.event_times[7:12])
    batch = group_by_entity(_rows(ex, slice(7, 12)))
    events = EntityEvents(batch.features.astype(np.float32).astype(float), batch.labels,
                          batch.offsets.astype(np.float32).astype(float), batch.weights, batch.mask)
    direct = newton_update(events, l2_prior(1, D, 1.0, 1.0, diagonal=False), get_loss("logistic"), max_steps=50,
                           gradient_tolerance=1e-10)
    assert np.allclose(states["mean"], direct.mean, atol=1e-6)


def _grown_examples(n: int, seed: int, old_dim: int, first_offset: int, index_version: int) -> CoordinateExamples:
    """Examples whose features use only the first ``old_dim`` columns (an index of that size)."""
    ex = _examples(n, ["a", "b"], seed=seed, first_offset=first_offset, index_version=index_version)
    ex.features[:, old_dim:] = 0.0
    return ex


@pytest.mark.parametrize("prior", ["bayes", "l2"])
@pytest.mark.parametrize("precision", ["full", "diagonal"])
def test_a_state_of_an_older_index_is_its_widened_state_and_keeps_learning(prior, precision):
    math = _math(prior=prior, precision=precision)
    old_dim = 2  # index version 1: intercept + one feature; version 2 appends two columns
    states = _fresh(math, group_by_entity(_grown_examples(30, 8, old_dim, 0, 1)))
    for first in (0, 30):
        states = apply_batch(math, states, group_by_entity(_grown_examples(30, 8 + first, old_dim, first, 1))).states
    # The columns index version 1 did not have hold the new-entity prior exactly: mean 0, prior precision, no correlation.
    stored = math.layout.unpack_precision(states["precision"])
    if stored.ndim == 2:
        stored = np.stack([np.diag(p) for p in stored])
    assert np.array_equal(states["mean"][:, old_dim:], np.zeros((2, D - old_dim)))
    assert np.array_equal(stored[:, old_dim:, old_dim:], np.broadcast_to(np.diag(math.new_entity_precision[old_dim:]),
                                                                        (2, D - old_dim, D - old_dim)))
    assert not stored[:, old_dim:, :old_dim].any()
    learned = states.copy()
    new = group_by_entity(_examples(20, ["a", "b"], seed=9, first_offset=60, index_version=2))
    outcome = apply_batch(math, states, new)
    assert outcome.widened_entities == 2 and outcome.changed.all() and outcome.reset_entities == 0
    # Nothing was reset: counts and versions go on from the old state.
    assert outcome.states["event_count"].tolist() == [40, 40] and outcome.states["version"].tolist() == [3, 3]
    assert outcome.states["index_version"].tolist() == [2, 2]
    if prior == "bayes":  # the widened problem: old posterior on the old columns, new-entity prior on the new ones
        widened = EntityEvents(new.features, new.labels, new.offsets, new.weights, new.mask)
        full = np.zeros((2, D, D))
        full[:, :old_dim, :old_dim] = stored[:, :old_dim, :old_dim]
        full[:, range(old_dim, D), range(old_dim, D)] = math.new_entity_precision[old_dim:]
        mean = np.zeros((2, D))
        mean[:, :old_dim] = learned["mean"][:, :old_dim]
        direct = newton_update(widened, GaussianPrior(mean, full), get_loss("logistic"), start=mean, max_steps=50,
                               gradient_tolerance=1e-10)
    else:  # the window of old events (zero on the new columns) and the new ones, refit around 0
        parts = [_grown_examples(30, 8 + first, old_dim, first, 1) for first in (0, 30)]
        parts.append(_examples(20, ["a", "b"], seed=9, first_offset=60, index_version=2))
        window = group_by_entity(CoordinateExamples(**{k: np.concatenate([getattr(p, k) for p in parts])
                                                       for k in parts[0].__dict__}))
        events = EntityEvents(window.features.astype(np.float32).astype(float), window.labels,
                              window.offsets.astype(np.float32).astype(float), window.weights, window.mask)
        direct = newton_update(events, l2_prior(2, D, 1.0, 1.0, diagonal=precision == "diagonal"),
                               get_loss("logistic"), max_steps=50, gradient_tolerance=1e-10)
    assert np.allclose(outcome.states["mean"], direct.mean, atol=1e-7)


def test_events_of_an_older_index_version_are_still_absorbed():
    math = _math()
    new = group_by_entity(_examples(10, ["a"], seed=6, index_version=2))
    states = apply_batch(math, _fresh(math, new), new).states
    older = _examples(10, ["a"], seed=7, first_offset=10, index_version=1)
    outcome = apply_batch(math, states, group_by_entity(older))
    assert outcome.absorbed_events == 10 and outcome.widened_entities == 0
    assert outcome.states["index_version"][0] == 2 and outcome.states["event_count"][0] == 20


@pytest.mark.parametrize("prior", ["bayes", "l2"])
@pytest.mark.parametrize("precision", ["full", "diagonal"])
@pytest.mark.parametrize("loss", ["logistic", "linear", "poisson"])
def test_warm_up_runs_the_whole_update_for_every_layout_and_loss(prior, precision, loss):
    math = _math(prior=prior, loss=loss, precision=precision)
    math.warm_up()
    batch = group_by_entity(_examples(6, ["a", "b"], seed=3))
    outcome = apply_batch(math, _fresh(math, batch), batch)
    assert outcome.changed.all()  # warming up left nothing behind that changes a real update
