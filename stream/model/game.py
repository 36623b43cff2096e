"""Batch GAME trainer: a whole GLMix model by block coordinate descent.

One global (fixed-effect) coordinate over sparse features plus any number of
random-effect coordinates over dense, bounded features. Each coordinate is fitted on
the other coordinates' scores as offsets (only residual information travels between
coordinates), the global one with scipy's L-BFGS on the sparse design matrix, the
random effects with the batch Newton solver of :mod:`stream.model.newton`, all
entities at once in buckets of similar event counts. After every coordinate update the
model is scored on a validation set and the best state is kept.

This is the engine of the periodic global refit and the reference that streaming
learning is compared with.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from stream.model.losses import Loss, get_loss
from stream.model.metrics import auc, rmse
from stream.model.newton import EntityEvents, newton_update
from stream.model.priors import l2_precision_diagonal, l2_prior

log = logging.getLogger(__name__)

GLOBAL = "global"


@dataclass(frozen=True)
class RandomEffectData:
    """One random-effect coordinate's view of N rows: each row's entity id and dense features."""

    entity_ids: np.ndarray
    features: np.ndarray


@dataclass(frozen=True)
class GameDataset:
    """N labeled rows with the global coordinate's sparse features and every random effect's view."""

    global_features: sp.csr_matrix
    labels: np.ndarray
    random_effects: Mapping[str, RandomEffectData]
    weights: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def row_weights(self) -> np.ndarray:
        """Sample weights (ones when not given)."""
        return np.ones(len(self)) if self.weights is None else self.weights

    @property
    def row_offsets(self) -> np.ndarray:
        """Fixed offsets outside every coordinate (zeros when not given)."""
        return np.zeros(len(self)) if self.offsets is None else self.offsets


@dataclass(frozen=True)
class CoordinateSpec:
    """Regularization of one coordinate: ``l2`` on features, ``intercept_l2`` on column 0."""

    l2: float = 1.0
    intercept_l2: float | None = None
    intercept_column: int | None = 0


@dataclass(frozen=True)
class RandomEffectModel:
    """Posterior means and diagonal precisions of every entity of one coordinate (ids sorted)."""

    entity_ids: np.ndarray
    means: np.ndarray
    precisions: np.ndarray

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each id in this model and whether it is known (unknown entities score 0)."""
        pos = np.searchsorted(self.entity_ids, ids)
        pos = np.minimum(pos, max(len(self.entity_ids) - 1, 0))
        known = (self.entity_ids[pos] == ids) if len(self.entity_ids) else np.zeros(len(ids), dtype=bool)
        return pos, known

    def score(self, data: RandomEffectData) -> np.ndarray:
        """Each row's margin contribution ``z . alpha_entity`` (0 for unseen entities)."""
        pos, known = self.lookup(data.entity_ids)
        if not len(self.entity_ids):
            return np.zeros(len(data.entity_ids))
        return np.where(known, np.einsum("nd,nd->n", data.features, self.means[pos]), 0.0)


@dataclass(frozen=True)
class GameModel:
    """A fitted GLMix model: loss, global coefficients and random-effect models."""

    loss: str
    global_coefficients: np.ndarray
    random_effects: Mapping[str, RandomEffectModel] = field(default_factory=dict)

    def score_breakdown(self, data: GameDataset) -> dict[str, np.ndarray]:
        """Margin of each coordinate per row (``global`` and each random effect)."""
        parts = {GLOBAL: data.global_features @ self.global_coefficients}
        for name, model in self.random_effects.items():
            parts[name] = model.score(data.random_effects[name])
        return parts

    def margins(self, data: GameDataset, coordinates: Sequence[str] | None = None) -> np.ndarray:
        """Total margin (offsets included) using ``coordinates`` (default: all)."""
        parts = self.score_breakdown(data)
        use = parts if coordinates is None else {k: parts[k] for k in coordinates}
        return data.row_offsets + sum(use.values())

    def predict(self, data: GameDataset, coordinates: Sequence[str] | None = None) -> np.ndarray:
        """Predicted means E[y] (probabilities for the logistic loss)."""
        return get_loss(self.loss).mean(self.margins(data, coordinates))


@dataclass(frozen=True)
class TrainingStep:
    """One coordinate update of coordinate descent and the validation metric after it."""

    iteration: int
    coordinate: str
    metric: str
    value: float


@dataclass(frozen=True)
class GameTrainingResult:
    """The best model on validation, and the history of every coordinate update."""

    model: GameModel
    history: list[TrainingStep]
    best_step: int


@dataclass(frozen=True)
class GlobalBlock:
    """Rows of the global coordinate's problem: sparse features, labels, weights and offsets."""

    features: sp.csr_matrix
    labels: np.ndarray
    weights: np.ndarray
    offsets: np.ndarray


def global_partial(block: GlobalBlock, beta: np.ndarray, loss: Loss) -> np.ndarray:
    """``[sum w loss, X' (w loss')]`` of one block's rows at ``beta``: a partial of the objective and its gradient.

    No BLAS reductions (their result depends on the thread count, which differs between a
    driver and a Spark executor): the same rows give the same bits in any process.
    """
    margins = block.offsets + block.features @ beta
    first, _ = loss.derivatives(block.labels, margins)
    value = np.sum(block.weights * loss.value(block.labels, margins))
    return np.concatenate([[value], block.features.T @ (block.weights * first)])


def fit_global_blocks(
    summed: Callable[[Callable[[GlobalBlock], np.ndarray]], np.ndarray],
    dim: int,
    spec: CoordinateSpec,
    loss: Loss,
    start: np.ndarray | None = None,
    max_iterations: int = 500,
    tolerance: float = 1e-8,
    on_iteration: Callable[[], None] | None = None,
) -> np.ndarray:
    """Minimize ``sum w loss(y, o + X beta) + 1/2 beta' diag(l2) beta`` with L-BFGS over rows in blocks.

    ``summed(partial)`` is the sum of ``partial(block)`` over every block of rows, so the
    data may live on disk (the refit reads its spilled chunks one at a time) or on Spark
    executors (:mod:`stream.refit.spark`), and the process holds one block plus the model.
    ``on_iteration`` is called after every L-BFGS iteration (a progress line counts them).
    """
    penalty = l2_precision_diagonal(dim, spec.l2, spec.intercept_l2, spec.intercept_column if dim else None)

    def value_and_gradient(beta: np.ndarray) -> tuple[float, np.ndarray]:
        total = summed(functools.partial(global_partial, beta=beta, loss=loss))
        return float(total[0]) + 0.5 * float(beta @ (penalty * beta)), total[1:] + penalty * beta

    from scipy.optimize import minimize  # here: ~0.3 s of import that the stages, which never fit it, skip at start

    result = minimize(
        value_and_gradient,
        np.zeros(dim) if start is None else start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iterations, "ftol": tolerance, "gtol": tolerance},
        callback=None if on_iteration is None else lambda _: on_iteration(),
    )
    if not result.success:
        log.warning("global L-BFGS stopped after %d iterations: %s", result.nit, result.message)
    return result.x


def fit_global(
    features: sp.csr_matrix,
    labels: np.ndarray,
    weights: np.ndarray,
    offsets: np.ndarray,
    spec: CoordinateSpec,
    loss: Loss,
    start: np.ndarray | None = None,
    max_iterations: int = 500,
    tolerance: float = 1e-8,
) -> np.ndarray:
    """:func:`fit_global_blocks` on rows held in memory."""
    block = GlobalBlock(features, labels, weights, offsets)
    return fit_global_blocks(
        lambda partial: partial(block), features.shape[1], spec, loss, start, max_iterations, tolerance
    )


def _buckets(counts: np.ndarray, max_cells: int) -> list[np.ndarray]:
    """Entity groups whose event counts are within 2x of each other, each at most ``max_cells`` events padded."""
    order = np.argsort(counts, kind="stable")
    level = np.floor(np.log2(np.maximum(counts[order], 1))).astype(int)
    groups = []
    for lv in np.unique(level):
        members = order[level == lv]
        n_max = int(counts[members].max())
        per_chunk = max(1, max_cells // max(n_max, 1))
        groups += [members[i : i + per_chunk] for i in range(0, members.size, per_chunk)]
    return groups


def fit_random_effect(
    data: RandomEffectData,
    labels: np.ndarray,
    weights: np.ndarray,
    offsets: np.ndarray,
    spec: CoordinateSpec,
    loss: Loss,
    start: RandomEffectModel | None = None,
    max_steps: int = 20,
    max_cells: int = 2_000_000,
) -> RandomEffectModel:
    """Fit every entity's ``l2``-regularized model on its rows, all entities in one solver call."""
    ids, codes = np.unique(data.entity_ids, return_inverse=True)
    n_entities, d = ids.size, data.features.shape[1]
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_entities)
    first_row = np.r_[0, np.cumsum(counts)[:-1]]
    means = np.zeros((n_entities, d))
    precisions = np.zeros((n_entities, d))
    warm = np.zeros((n_entities, d))
    if start is not None and len(start.entity_ids):
        pos, known = start.lookup(ids)
        warm[known] = start.means[pos[known]]
    for entities in _buckets(counts, max_cells // max(d, 1)):
        n_max = int(counts[entities].max())
        slot = np.arange(n_max)
        valid = slot[None, :] < counts[entities, None]
        rows = order[np.minimum(first_row[entities, None] + slot[None, :], len(order) - 1)]
        events = EntityEvents(
            features=data.features[rows],
            labels=labels[rows],
            offsets=offsets[rows],
            weights=np.where(valid, weights[rows], 0.0),
            mask=valid,
        )
        prior = l2_prior(entities.size, d, spec.l2, spec.intercept_l2, spec.intercept_column)
        update = newton_update(events, prior, loss, start=warm[entities], max_steps=max_steps)
        usable = update.usable
        means[entities[usable]] = update.mean[usable]
        precisions[entities] = np.where(usable[:, None], update.precision, prior.precision)
    return RandomEffectModel(entity_ids=ids, means=means, precisions=precisions)


def _validation_metric(loss: Loss, labels: np.ndarray, margins: np.ndarray) -> tuple[str, float, bool]:
    """Metric name, value and whether higher is better (AUC for logistic, RMSE otherwise)."""
    if loss.name == "logistic":
        return "auc", auc(labels, margins), True
    return "rmse", rmse(labels, loss.mean(margins)), False


def train_game(
    train: GameDataset,
    validation: GameDataset | None,
    coordinates: Mapping[str, CoordinateSpec],
    loss: str = "logistic",
    passes: int = 2,
    order: Sequence[str] | None = None,
    initial: GameModel | None = None,
    on_step: Callable[[TrainingStep], None] | None = None,
) -> GameTrainingResult:
    """Block coordinate descent over ``coordinates`` (``global`` and random-effect names).

    ``order`` is the update order within a pass (default: global first, then the random
    effects as given). With a validation set, the model after the best update is returned,
    and ``on_step`` is called with each update's validation metric as soon as it is known.
    """
    loss_fn = get_loss(loss)
    order = list(order or ([GLOBAL] if GLOBAL in coordinates else []) + [c for c in coordinates if c != GLOBAL])
    p = train.global_features.shape[1]
    model = initial or GameModel(loss, np.zeros(p), {})
    y, w, base = train.labels, train.row_weights, train.row_offsets
    parts = model.score_breakdown(train)
    parts = {c: parts.get(c, np.zeros(len(train))) for c in order}
    history: list[TrainingStep] = []
    best: tuple[float, int, GameModel] | None = None
    step = 0
    for iteration in range(passes):
        for coordinate in order:
            others = base + sum(v for k, v in parts.items() if k != coordinate)
            if coordinate == GLOBAL:
                beta = fit_global(
                    train.global_features, y, w, others, coordinates[GLOBAL], loss_fn, model.global_coefficients
                )
                model = replace(model, global_coefficients=beta)
                parts[GLOBAL] = train.global_features @ beta
            else:
                data = train.random_effects[coordinate]
                fitted = fit_random_effect(
                    data, y, w, others, coordinates[coordinate], loss_fn, start=model.random_effects.get(coordinate)
                )
                model = replace(model, random_effects={**model.random_effects, coordinate: fitted})
                parts[coordinate] = fitted.score(data)
            if validation is not None:
                name, value, higher_better = _validation_metric(loss_fn, validation.labels, model.margins(validation))
                history.append(TrainingStep(iteration, coordinate, name, value))
                if on_step is not None:
                    on_step(history[-1])
                key = value if higher_better else -value
                if best is None or key > best[0]:
                    best = (key, step, model)
                log.info("pass %d, %s: validation %s = %.5f", iteration, coordinate, name, value)
            step += 1
    if best is None:
        return GameTrainingResult(model, history, step - 1)
    return GameTrainingResult(best[2], history, best[1])


def select_l2(
    train: GameDataset,
    validation: GameDataset,
    coordinates: Mapping[str, CoordinateSpec],
    grid: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
    loss: str = "logistic",
    passes: int = 1,
) -> dict[str, CoordinateSpec]:
    """Choose each coordinate's ``l2`` from ``grid`` on ``validation``, one coordinate at a time.

    Greedy coordinate-wise search in update order: every candidate trains a full model
    on ``train`` with the others' current choices, and the one scoring best on
    ``validation`` is kept. Pass a validation split carved from training data, never the
    test split. Intercept penalties are left as given.
    """
    loss_fn = get_loss(loss)
    chosen = dict(coordinates)
    for name in list(coordinates):
        scores = {}
        for value in grid:
            trial = {**chosen, name: replace(chosen[name], l2=float(value))}
            model = train_game(train, None, trial, loss=loss, passes=passes).model
            _, metric, higher_better = _validation_metric(loss_fn, validation.labels, model.margins(validation))
            scores[value] = metric if higher_better else -metric
        best = max(scores, key=lambda value: scores[value])
        chosen[name] = replace(chosen[name], l2=float(best))
        log.info("selected %s l2=%s on validation (%s)", name, best, scores)
    return chosen
