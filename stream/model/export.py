"""Saving fitted models with their feature indices: GlobalModel records and Photon-ML models.

A model is only meaningful with the index that maps its columns to (name, term), so
every export carries the keys: the ``GlobalModel`` Avro record holds the global index and
each random-effect coordinate's index; Photon-ML ``BayesianLinearModelAvro`` models name
every coefficient by (name, term), with variances from the posterior precisions.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from stream.codec.photon import INTERCEPT_NAME, PhotonModel
from stream.config import CoordinateSettings, ModelSettings
from stream.errors import InvalidValueError
from stream.model.dataset import build_dataset
from stream.model.features import INTERCEPT_KEY, FeatureIndex, FeatureKey, feature_counts
from stream.model.game import GLOBAL, CoordinateSpec, GameModel, RandomEffectModel, fit_global
from stream.model.losses import get_loss
from stream.model.transforms import FeatureTransforms


def photon_key(key: tuple[str, str]) -> tuple[str, str]:
    """The Photon-ML name of a feature key (the intercept is ``(INTERCEPT)`` there too, with an empty term)."""
    return (INTERCEPT_NAME, "") if key == INTERCEPT_KEY else key


def global_model_record(
    model: GameModel,
    global_index: FeatureIndex,
    coordinate_indices: Mapping[str, FeatureIndex],
    version: int,
    model_name: str = "glmix",
    holdout_metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The ``GlobalModel`` record of ``model``'s global coordinate, with every coordinate's index."""
    if len(model.global_coefficients) != global_index.dim:
        raise InvalidValueError(
            f"{len(model.global_coefficients)} global coefficients but the index has {global_index.dim} columns"
        )
    if not np.isfinite(model.global_coefficients).all():
        raise InvalidValueError("refusing to export non-finite global coefficients")
    return {
        "model_name": model_name,
        "version": int(version),
        "loss": model.loss,
        "features": global_index.to_record(),
        "coefficients": [float(c) for c in model.global_coefficients],
        "coordinate_indices": {name: index.to_record() for name, index in coordinate_indices.items()},
        "index_version": int(global_index.version),
        "holdout_metrics": dict(holdout_metrics or {}),
        "created_time": int(time.time() * 1000),
    }


def photon_models(
    model: GameModel, global_index: FeatureIndex, coordinate_indices: Mapping[str, FeatureIndex]
) -> Iterator[PhotonModel]:
    """The global model (id ``global``) then every entity (id ``<coordinate>:<entity>``) as Photon-ML models."""
    keys = [photon_key(k) for k in global_index.keys]
    yield PhotonModel(GLOBAL, keys, list(map(float, model.global_coefficients)), None, model.loss)
    for name, effect in model.random_effects.items():
        yield from _entity_models(name, effect, coordinate_indices[name], model.loss)


def _entity_models(name: str, effect: RandomEffectModel, index: FeatureIndex, loss: str) -> Iterator[PhotonModel]:
    dim = index.dim
    keys = [photon_key(k) for k in index.keys]
    with np.errstate(divide="ignore"):
        variances = np.where(effect.precisions[:, :dim] > 0, 1.0 / effect.precisions[:, :dim], np.inf)
    for entity, means, var in zip(effect.entity_ids, effect.means[:, :dim], variances):
        yield PhotonModel(f"{name}:{entity}", keys, means.tolist(), var.tolist(), loss)


def index_counts(impressions: Iterable[Mapping[str, Any]], model: ModelSettings) -> dict[str, Counter[FeatureKey]]:
    """Per coordinate (``global`` and each random effect), how often each (transformed) feature occurs in ``impressions``.

    What the first indexes are ranked by; counts of parts of a history add up
    (:func:`stream.refit.spark` counts on executors).
    """
    bags = FeatureTransforms.from_settings(model).apply_rows([imp["features"] for imp in impressions])
    coordinates = {GLOBAL: model.global_feature_bags, **{n: c.feature_bags for n, c in model.coordinates.items()}}
    return {name: feature_counts(bags, bag_names) for name, bag_names in coordinates.items()}


def indexes_from_counts(
    counts: Mapping[str, Mapping[FeatureKey, int]], model: ModelSettings, version: int = 1
) -> tuple[FeatureIndex, dict[str, FeatureIndex]]:
    """The global and every coordinate's index over the features :func:`index_counts` counted, most frequent first."""
    global_index = FeatureIndex.from_counts(counts[GLOBAL], model.global_feature_bags, version=version)
    indices = {
        name: FeatureIndex.from_counts(
            counts[name], c.feature_bags, intercept=c.intercept, capacity=c.max_features, version=version
        )
        for name, c in model.coordinates.items()
    }
    return global_index, indices


def record_from_counts(
    counts: Mapping[str, Mapping[FeatureKey, int]], model: ModelSettings, version: int = 1, model_name: str = "glmix"
) -> dict[str, Any]:
    """A first ``GlobalModel`` with zero coefficients over the indexes :func:`index_counts` ranks."""
    global_index, indices = indexes_from_counts(counts, model, version)
    empty = GameModel(model.loss, np.zeros(global_index.dim))
    return global_model_record(empty, global_index, indices, version, model_name)


def initial_global_model_record(
    impressions: list[Mapping[str, Any]], model: ModelSettings, version: int = 1, model_name: str = "glmix"
) -> dict[str, Any]:
    """A first ``GlobalModel``: zero coefficients over indexes of the most frequent (transformed) features in ``impressions``.

    This lets a fresh deployment start streaming before any refit: random effects learn
    from the first events, and the periodic refit replaces the global coefficients.
    """
    return record_from_counts(index_counts(impressions, model), model, version, model_name)


def indexes_from_history(
    impressions: Sequence[Mapping[str, Any]], model: ModelSettings, version: int = 1
) -> tuple[FeatureIndex, dict[str, FeatureIndex]]:
    """The first global and coordinate indexes: every (transformed) feature of ``impressions`` the coordinate reads,
    most frequent first, each random-effect index up to its ``max_features``."""
    return indexes_from_counts(index_counts(impressions, model), model, version)


def global_coordinate_spec(model: ModelSettings, intercept: bool = True) -> CoordinateSpec:
    """The global coordinate's penalty in a batch fit: ``model.global_l2`` on every feature, none on the intercept."""
    return CoordinateSpec(l2=model.global_l2, intercept_l2=0.0, intercept_column=0 if intercept else None)


def random_effect_spec(coordinate: CoordinateSettings) -> CoordinateSpec:
    """A random-effect coordinate's penalty in a batch fit (its new-entity prior): ``l2``, and ``intercept_l2`` on
    the intercept."""
    return CoordinateSpec(
        l2=coordinate.l2,
        intercept_l2=coordinate.intercept_l2,
        intercept_column=0 if coordinate.intercept else None,
    )


def fitted_global_model_record(
    impressions: list[Mapping[str, Any]],
    labels: np.ndarray,
    model: ModelSettings,
    version: int = 1,
    model_name: str = "glmix",
    index_from: list[Mapping[str, Any]] | None = None,
    weights: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
) -> dict[str, Any]:
    """A first ``GlobalModel`` fitted on labeled history: indexes from ``impressions``, then L-BFGS on their labels.

    The batch model a team starts streaming from when it has history (``model.global_l2``
    on every feature, the intercept unpenalized, as the refit does). ``index_from``
    (default: ``impressions``) are the impressions the indexes are built from, when
    more impressions than the labeled ones are known. ``weights`` and ``offsets``
    (default 1 and 0) are per impression, as Photon-ML training data carries them.
    """
    record = initial_global_model_record(impressions if index_from is None else index_from, model, version, model_name)
    index = FeatureIndex.from_record(record["features"], model.global_feature_bags, version=version)
    labels = np.asarray(labels, dtype=np.float64)
    data = build_dataset(impressions, labels, index, {}, transforms=FeatureTransforms.from_settings(model))
    record["coefficients"] = fit_global(
        data.global_features,
        labels,
        np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64),
        np.zeros(len(labels)) if offsets is None else np.asarray(offsets, dtype=np.float64),
        global_coordinate_spec(model),
        get_loss(model.loss),
    ).tolist()
    return record
