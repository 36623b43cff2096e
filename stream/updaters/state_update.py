"""One micro-batch of one coordinate: stored states + grouped events -> new states (no I/O: arrays in, arrays out).

This is DESIGN §4 applied to the state layout of :mod:`stream.state.entity_state`:

- events at or below an entity's ``last_offset`` stamp were absorbed before (a replay
  after a crash) and are ignored, so each event is applied once per entity;
- feature indexes only append columns (DESIGN §1), so events of every index version
  are used as they are, and a state of an older version needs no rewrite to be
  *widened*: a column no event has fed keeps the new-entity prior (mean 0, the
  coordinate's prior precision, no correlation with other columns) through every
  update, since neither a Newton step nor the posterior moves a column whose features
  are all zero; the state's ``index_version`` is the newest it has absorbed;
- ``bayes``: the prior is the stored posterior with forgetting, the data are the new events;
- ``l2``: the stored window plus the new events, cut to the last ``window_events``
  (and ``window_max_age_ms``), are refit around a zero mean;
- only entities whose update is usable (finite, converged or not) get a new state; the
  others keep theirs and are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.config import CoordinateSettings
from stream.model.losses import Loss
from stream.model.newton import EntityEvents, EntityUpdate, GaussianPrior, newton_update
from stream.model.packed import packed_diagonal
from stream.model.priors import forgetting_prior, l2_precision_diagonal, l2_prior
from stream.state.entity_state import StateLayout
from stream.updaters.examples import EntityBatch


@dataclass(frozen=True)
class CoordinateMath:
    """What one coordinate's update needs to know: its state layout, settings and loss."""

    layout: StateLayout
    settings: CoordinateSettings
    loss: Loss

    @classmethod
    def of(cls, settings: CoordinateSettings, loss: Loss) -> CoordinateMath:
        """The layout follows the settings: dim = max_features, window only for ``l2``."""
        layout = StateLayout(
            dim=settings.max_features,
            diagonal=settings.precision == "diagonal",
            window=settings.window_events if settings.prior == "l2" else 0,
        )
        return cls(layout, settings, loss)

    def warm_up(self) -> None:
        """Load the compiled parts of an update (the Newton solver, state packing) now.

        They load from numba's cache in ~0.2 s (and compile in seconds without one); a stage
        calls this at start-up rather than adding it to its first micro-batch's freshness.
        """
        d = self.layout.dim
        single = {
            name: np.zeros((1, 1), dtype=np.int64)
            for name in ("event_times", "label_times", "input_offsets", "index_versions")
        }
        batch = EntityBatch(
            entity_ids=np.array(["warm-up"], dtype=object),
            features=np.zeros((1, 1, d)),
            labels=np.zeros((1, 1)),
            offsets=np.zeros((1, 1)),
            weights=np.ones((1, 1)),
            mask=np.ones((1, 1), dtype=bool),
            **single,
        )
        apply_batch(self, self.layout.new_states(1, self.new_entity_precision), batch)

    @property
    def new_entity_precision(self) -> np.ndarray:
        """(d,) prior precision diagonal of an entity never seen before."""
        s = self.settings
        return l2_precision_diagonal(self.layout.dim, s.l2, s.intercept_l2, 0 if s.intercept else None)


@dataclass(frozen=True)
class BatchOutcome:
    """New states of a batch's entities and what happened to each.

    ``changed`` marks entities with a new state to store and publish; ``replayed`` counts
    events ignored because the state had absorbed them; ``update`` covers the entities
    that were solved (``solved`` marks them among the batch's entities);
    ``widened_entities`` counts stored states that met a newer feature index and kept
    everything they had learned; ``reset_entities`` counts changed states that did not
    go on from their stored version (there should never be any: it is the check).
    """

    states: np.ndarray
    changed: np.ndarray
    solved: np.ndarray
    update: EntityUpdate | None
    absorbed_events: int
    replayed_events: int
    widened_entities: int
    reset_entities: int = 0


def apply_batch(math: CoordinateMath, states: np.ndarray, batch: EntityBatch) -> BatchOutcome:
    """Update ``states`` (one per ``batch`` entity, same order) with the batch's events."""
    states = states.copy()
    live = batch.mask & (batch.input_offsets > states["last_offset"][:, None])
    newest_index = np.where(live, batch.index_versions, -1).max(axis=1, initial=-1)
    widened = int(((states["version"] > 0) & (states["index_version"] < newest_index)).sum())
    replayed = int((batch.mask & ~live).sum())
    solved = np.asarray(live.any(axis=1))
    outcome = BatchOutcome(states, np.zeros(len(states), dtype=bool), solved, None, int(live.sum()), replayed, widened)
    if not solved.any():
        return outcome
    rows = np.flatnonzero(solved)
    if math.settings.prior == "bayes":
        update, window = _bayes_update(math, states[rows], batch, live, rows), None
    else:
        update, window = _l2_update(math, states[rows], batch, live, rows)
    usable = update.usable
    target = rows[usable]
    new = states[target]
    new["mean"] = update.mean[usable]
    new["precision"] = update.precision[usable]  # both updates solve in the stored layout
    new["version"] += 1
    live_rows = live[target]
    new["last_offset"] = np.where(live_rows, batch.input_offsets[target], -1).max(axis=1)
    new["event_count"] += live_rows.sum(axis=1)
    new["last_event_time"] = np.maximum(
        new["last_event_time"], np.where(live_rows, batch.event_times[target], 0).max(axis=1)
    )
    new["index_version"] = np.maximum(new["index_version"], newest_index[target])
    if window is not None:
        _store_window(new, window, usable)
    reset = int((new["version"] != states["version"][target] + 1).sum())
    states[target] = new
    changed = np.zeros(len(states), dtype=bool)
    changed[target] = True
    return BatchOutcome(states, changed, solved, update, int(live.sum()), replayed, widened, reset)


def _bayes_update(
    math: CoordinateMath, states: np.ndarray, batch: EntityBatch, live: np.ndarray, rows: np.ndarray
) -> EntityUpdate:
    s = math.settings
    # A full precision stays in the states' packed layout: the solver reads and returns it as is.
    posterior = GaussianPrior(states["mean"].copy(), states["precision"].copy(), packed=not math.layout.diagonal)
    prior = forgetting_prior(posterior, s.forgetting, math.new_entity_precision)
    events = EntityEvents(
        batch.features[rows], batch.labels[rows], batch.offsets[rows], batch.weights[rows], live[rows]
    )
    return newton_update(
        events,
        prior,
        math.loss,
        start=posterior.mean,
        max_steps=s.newton_steps,
        gradient_tolerance=s.gradient_tolerance,
    )


def _stored_layout(diagonal_prior: GaussianPrior, layout: StateLayout) -> GaussianPrior:
    """A diagonal prior in the states' precision layout (packed when they keep full precisions)."""
    if layout.diagonal:
        return diagonal_prior
    return GaussianPrior(diagonal_prior.mean, packed_diagonal(diagonal_prior.precision), packed=True)


@dataclass(frozen=True)
class _Window:
    features: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray
    times: np.ndarray
    mask: np.ndarray


def _l2_update(
    math: CoordinateMath, states: np.ndarray, batch: EntityBatch, live: np.ndarray, rows: np.ndarray
) -> tuple[EntityUpdate, _Window]:
    s, layout = math.settings, math.layout
    window = _merged_window(states, batch, live, rows, s.window_events, s.window_max_age_ms)
    prior = _stored_layout(l2_prior(len(rows), layout.dim, s.l2, s.intercept_l2, 0 if s.intercept else None), layout)
    events = EntityEvents(window.features, window.labels, window.offsets, window.weights, window.mask)
    update = newton_update(
        events,
        prior,
        math.loss,
        start=states["mean"].copy(),
        max_steps=s.newton_steps,
        gradient_tolerance=s.gradient_tolerance,
    )
    return update, window


def _merged_window(
    states: np.ndarray, batch: EntityBatch, live: np.ndarray, rows: np.ndarray, size: int, max_age_ms: int
) -> _Window:
    """The stored window followed by the new events, keeping the newest ``size`` (and young enough)."""
    old_mask = np.arange(size)[None, :] < states["window_size"][:, None]
    mask = np.concatenate([old_mask, live[rows]], axis=1)
    times = np.concatenate([states["window_times"], batch.event_times[rows]], axis=1)
    if max_age_ms > 0:
        newest = np.where(mask, times, np.iinfo(np.int64).min).max(axis=1)
        mask &= times >= (newest - max_age_ms)[:, None]
    from_right = np.cumsum(mask[:, ::-1], axis=1)[:, ::-1]
    keep = mask & (from_right <= size)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :size]

    def take(old: np.ndarray, new: np.ndarray) -> np.ndarray:
        merged = np.concatenate([old.astype(np.float64), new], axis=1)
        index = order.reshape(order.shape + (1,) * (merged.ndim - 2))
        return np.take_along_axis(merged, index, axis=1)

    return _Window(
        features=take(states["window_features"], batch.features[rows]),
        labels=take(states["window_labels"], batch.labels[rows]),
        offsets=take(states["window_offsets"], batch.offsets[rows]),
        weights=take(states["window_weights"], batch.weights[rows]),
        times=np.take_along_axis(times, order, axis=1),
        mask=np.take_along_axis(keep, order, axis=1),
    )


def _store_window(new: np.ndarray, window: _Window, usable: np.ndarray) -> None:
    mask = window.mask[usable]
    new["window_size"] = mask.sum(axis=1)
    new["window_features"] = np.where(mask[..., None], window.features[usable], 0.0)
    new["window_labels"] = np.where(mask, window.labels[usable], 0.0)
    new["window_offsets"] = np.where(mask, window.offsets[usable], 0.0)
    new["window_weights"] = np.where(mask, window.weights[usable], 0.0)
    new["window_times"] = np.where(mask, window.times[usable], 0)
