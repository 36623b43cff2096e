"""Score a member against candidate items with the current GLMix model, coordinate by coordinate.

    margin = global + member + job (+ any other coordinate),   probability = the loss's mean (link^-1)

Each candidate gets its per-coordinate margins and the model versions they came from —
interpretability is a GLMix selling point — and an entity without a model contributes 0.
Features are name–term–value bags: the member's bags apply to every candidate, each
candidate adds its own. All candidates' features are indexed in one compiled pass (the
joiner's lookup, :mod:`stream.tables.hash_index`); the scoring itself is one sparse
product per coordinate for all candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from stream.codec.columnar.bags import field_values
from stream.config import ModelSettings
from stream.config.settings import entity_of
from stream.errors import GlmixError, InvalidValueError
from stream.gc_pause import cyclic_gc_paused
from stream.model.game import GLOBAL
from stream.model.losses import get_loss
from stream.model.uncertainty import covariance, thompson_samples
from stream.tables.follower import ModelFollower
from stream.tables.hash_index import model_indexer
from stream.tables.indexing import FeatureResolver, IndexedRows, ItemRows
from stream.tables.models import EntityTable, GlobalModel, GlobalModelTable

Bags = Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class Exploration:
    """How to explore: ``thompson`` scores with one posterior draw per entity and request;
    ``ucb`` adds ``width`` standard deviations of the random effects' margin (breakdown key
    ``exploration``). ``seed`` makes the draws reproducible. Entities without a posterior do
    not explore."""

    policy: Literal["thompson", "ucb"]
    seed: int | None = None
    width: float = 1.0

    def __post_init__(self) -> None:
        if self.policy not in ("thompson", "ucb"):
            raise InvalidValueError(f"exploration policy must be 'thompson' or 'ucb', got {self.policy!r}")
        if not (math.isfinite(self.width) and self.width >= 0):
            raise InvalidValueError(f"exploration width must be a finite number >= 0, got {self.width!r}")


EXPLORATION = "exploration"


class ModelNotReadyError(GlmixError):
    """No global model (and so no feature index) has been published yet."""


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's score: total margin, the link's mean, and where the margin came from."""

    item_id: str
    margin: float
    probability: float
    breakdown: Mapping[str, float]
    versions: Mapping[str, int]


class Scorer:
    """Scores candidates with the newest global model and coefficients in its tables.

    The tables are read at every call, so a :class:`~stream.tables.follower.ModelFollower`
    refreshing them (``Scorer.following(follower)``) makes new versions count at once.
    """

    def __init__(
        self, model: ModelSettings, global_models: GlobalModelTable, tables: Mapping[str, EntityTable]
    ) -> None:
        self._settings = model
        self._loss = get_loss(model.loss)
        self.global_models = global_models
        self.tables = tables
        self._features: ModelFeatures | None = None
        self._catalog: dict[str, Bags] = {}

    @classmethod
    def following(cls, model: ModelSettings, follower: ModelFollower) -> Scorer:
        """A scorer over the tables a follower keeps current (and its items, when it follows them)."""
        scorer = cls(model, follower.global_model, follower.tables)
        follower.on_items(scorer.register_items)
        return scorer

    def register_items(self, items: Mapping[str, Bags]) -> None:
        """Features of items, used for every candidate given without ``features`` (a server-side item catalog).

        Each item's features are indexed once per model version instead of once per
        request: for 1000 candidates this removes most of the scoring time, which is
        otherwise spent reading thousands of name–term–value features in Python.
        """
        self._catalog.update(items)
        if self._features is not None:
            self._features.items.forget(items)

    def _own_features(
        self, features: ModelFeatures, item_ids: Sequence[str], row_features: Sequence[Bags | None], shared: Bags | None
    ) -> tuple[IndexedRows, Bags | None]:
        """Each row's own indexed features (its ``features``, else its item's catalog entry) and the shared bags left."""
        from_catalog = [f is None and i in self._catalog for i, f in zip(item_ids, row_features)]
        row_bags = [
            self._catalog[i] if cataloged else (f or {})
            for i, f, cataloged in zip(item_ids, row_features, from_catalog)
        ]
        if shared and features.combines_features:  # a product may pair a shared feature with a row's own
            return features.index([_merged_bags(shared, bags) for bags in row_bags]), None
        if not any(from_catalog):
            return features.index(row_bags), shared
        listed = np.flatnonzero(~np.array(from_catalog))
        cataloged = np.flatnonzero(from_catalog)
        parts = [(cataloged, features.items.indexed([item_ids[int(i)] for i in cataloged], self._catalog))]
        if len(listed):
            parts.append((listed, features.index([row_bags[i] for i in listed])))
        return IndexedRows.merged(parts), shared

    def _model_features(self, model: GlobalModel) -> ModelFeatures:
        if self._features is None or self._features.version != model.version:
            self._features = ModelFeatures(model, self._settings)
        return self._features

    def rows_breakdown(
        self,
        rows: Sequence[Mapping[str, Any]],
        shared_features: Bags | None = None,
        exploration: Exploration | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Margins and versions of rows that each name their entities (``member_id``, ``item_id``, ``context``)
        and carry their ``features``; ``shared_features`` count for every row."""

        def entity_ids(field: str) -> list[str]:
            return [entity_of(r, field) for r in rows] if field.startswith("context:") else [r[field] for r in rows]

        item_ids = list(field_values(rows, "item_id", None))
        return self._breakdown(
            entity_ids, item_ids, list(field_values(rows, "features", None)), shared_features, exploration
        )

    def _breakdown(
        self,
        entity_ids: Callable[[str], Sequence[str]],
        item_ids: Sequence[str],
        row_features: Sequence[Bags | None],
        shared_features: Bags | None,
        exploration: Exploration | None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Margins and versions of rows: ``entity_ids(field)`` are the rows' ids of a coordinate's entity field,
        or one id that is every row's (a request's member: its coefficients are looked up once, not per candidate)."""
        model = self.global_models.current
        if model is None:
            raise ModelNotReadyError("no global model has been published yet")
        features = self._model_features(model)
        n = len(item_ids)
        own, shared_features = self._own_features(features, item_ids, row_features, shared_features)
        shared = features.index([shared_features or {}])
        intercepts = features.intercepts
        margins = {
            GLOBAL: _margins(
                np.broadcast_to(model.coefficients, (1, len(model.coefficients))), shared, own, 0, intercepts[0], n
            )
        }
        versions = {GLOBAL: np.full(n, model.version, dtype=np.int64)}
        rng = np.random.default_rng(exploration.seed) if exploration is not None else None
        variance = np.zeros(n)
        for slot, name in enumerate(self._settings.coordinates, start=1):
            ids = entity_ids(self._settings.coordinates[name].entity_field)
            if exploration is not None and len(ids) != n:  # draws and variances are per row
                ids = [ids[0]] * n
            means, versions[name] = self.tables[name].lookup(ids)
            if len(ids) != n:  # one entity for every row (the member): (1, d) means count for all of them
                versions[name] = np.repeat(versions[name], n)
            if exploration is not None:
                unique, inverse = np.unique(np.array(ids, dtype=object).astype(str), return_inverse=True)
                entity_means, precisions, known = self.tables[name].posteriors(list(unique))
                if exploration.policy == "thompson":
                    drawn = entity_means.copy()
                    if known.any():
                        assert rng is not None
                        drawn[known] = thompson_samples(entity_means[known], precisions[known], rng)
                    means = drawn[inverse]
                else:
                    dense = _dense(shared, own, slot, intercepts[slot], n, means.shape[1])
                    covariances = np.zeros_like(precisions)
                    if known.any():
                        covariances[known] = covariance(precisions[known])
                    variance += np.einsum("nd,nde,ne->n", dense, covariances[inverse], dense)
            margins[name] = _margins(means, shared, own, slot, intercepts[slot], n)
        if exploration is not None and exploration.policy == "ucb":
            margins[EXPLORATION] = exploration.width * np.sqrt(np.maximum(variance, 0.0))
        return margins, versions

    def mean(self, margins: np.ndarray) -> np.ndarray:
        """The model's mean for each margin (probabilities for the logistic loss)."""
        return self._loss.mean(margins)

    def score(
        self,
        member_id: str,
        member_features: Bags,
        candidates: Sequence[Mapping[str, Any]],
        context: Mapping[str, str] | None = None,
        top_k: int | None = None,
        exploration: Exploration | None = None,
    ) -> list[CandidateScore]:
        """Every candidate (``{"item_id": ..., "features": bags}``) scored; best first and cut to ``top_k`` if given.

        A candidate without ``features`` uses its item's :meth:`register_items` features (none if unregistered).
        """
        if not candidates:
            return []
        item_ids = list(field_values(candidates, "item_id", None))
        constant = {"member_id": member_id, "context": dict(context or {})}

        def entity_ids(field: str) -> Sequence[str]:
            return item_ids if field == "item_id" else [entity_of(constant, field)]

        features = list(field_values(candidates, "features", None))
        with cyclic_gc_paused():  # the rows are freed before the collector is back, so it never scans them
            margins, versions = self._breakdown(entity_ids, item_ids, features, member_features, exploration)
        total: np.ndarray = sum(margins.values(), np.zeros(len(candidates)))
        probability = self._loss.mean(total)
        order = np.argsort(-total, kind="stable") if top_k is not None else np.arange(len(candidates))
        if top_k is not None:
            order = order[:top_k]
        return [
            CandidateScore(
                item_id=str(item_ids[i]),
                margin=float(total[i]),
                probability=float(probability[i]),
                breakdown={name: float(m[i]) for name, m in margins.items()},
                versions={name: int(v[i]) for name, v in versions.items()},
            )
            for i in order
        ]


class ModelFeatures:
    """How the scorer indexes features under one global model version, and the catalog items' rows indexed so.

    The compiled lookup the joiner uses, or the resolver when the spec has transforms
    (:func:`~stream.tables.hash_index.model_indexer`, the joiner's choice too).
    """

    def __init__(self, model: GlobalModel, settings: ModelSettings) -> None:
        self.version = model.version
        indexer = model_indexer(model, settings)
        self.index: Callable[[Sequence[Bags]], IndexedRows] = indexer.index
        self.combines_features = isinstance(indexer, FeatureResolver) and indexer.combines_features
        indexes = [model.global_index] + [model.coordinate_indices[c] for c in settings.coordinates]
        self.intercepts = [index.intercept for index in indexes]
        self.items = ItemRows(len(indexes), self.index)


def _merged_bags(shared: Bags, own: Bags) -> dict[str, list[Any]]:
    merged = {bag: list(items) for bag, items in shared.items()}
    for bag, items in own.items():
        merged[bag] = [*merged.get(bag, ()), *items]
    return merged


def _margins(
    coefficients: np.ndarray, shared: IndexedRows, own: IndexedRows, slot: int, intercept: bool, n: int
) -> np.ndarray:
    """(N,) margins of one coordinate: ``coefficients`` is (N, d) per candidate, or (1, d) for all of them."""
    per_row = coefficients.shape[0] > 1
    total = coefficients[:, shared.columns[slot]] @ shared.values[slot]
    rows, columns = own.rows[slot], own.columns[slot]
    picked = coefficients[rows, columns] if per_row else coefficients[0, columns]
    total = total + np.bincount(rows, weights=own.values[slot] * picked, minlength=n)
    if intercept:
        total = total + coefficients[:, 0]
    return np.broadcast_to(total, (n,)).copy()


def _dense(shared: IndexedRows, own: IndexedRows, slot: int, intercept: bool, n: int, dim: int) -> np.ndarray:
    """(N, dim) features of one coordinate: the shared bags in every row plus each row's own."""
    features = np.zeros((n, dim))
    np.add.at(features, (slice(None), shared.columns[slot]), shared.values[slot])  # type: ignore[arg-type]
    np.add.at(features, (own.rows[slot], own.columns[slot]), own.values[slot])
    if intercept:
        features[:, 0] += 1.0
    return features
