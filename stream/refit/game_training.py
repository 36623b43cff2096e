"""Batch GAME on Photon-ML GAME input files: ``glmix train``, and ``glmix bootstrap --from`` GAME files.

The records are read by the mapping in the settings (:mod:`stream.codec.game_input`);
the first indexes come from the training records by the bootstrap's rule (every
feature of the global bags, most frequent first; each random-effect index up to its
``max_features``); the model is fitted by :func:`stream.model.game.train_game`, block
coordinate descent over the global coordinate and every configured random effect, with
the penalties of the settings (``model.global_l2`` with the intercept unpenalized; each
coordinate's ``l2`` and ``intercept_l2``). With validation records, every coordinate
update is scored on them (AUC for the logistic loss, RMSE otherwise) and the best model
is kept, as ``train_game`` does.

A trained model is written in Photon-ML's GAME layout (which ``glmix import photon``
reads back exactly), or published as the first model and every entity's coefficients
(``glmix bootstrap``), through the import's own publishing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.codec.game_input import GameInputError, GameInputMapping, GameRows, read_game_rows
from stream.codec.photon_game import GameModelFiles
from stream.config import Settings
from stream.model.dataset import build_dataset
from stream.model.export import global_coordinate_spec, global_model_record, indexes_from_history, random_effect_spec
from stream.model.features import FeatureIndex
from stream.model.game import (
    GLOBAL,
    CoordinateSpec,
    GameDataset,
    GameTrainingResult,
    RandomEffectModel,
    TrainingStep,
    train_game,
)
from stream.model.losses import get_loss
from stream.model.transforms import FeatureTransforms
from stream.progress import Progress
from stream.refit.first_models import FIRST_VERSION
from stream.refit.game_models import CoordinateImport, PhotonImport, game_model_files


@dataclass(frozen=True)
class TrainedGame:
    """A fitted GAME model with the indexes its columns refer to."""

    result: GameTrainingResult
    global_index: FeatureIndex
    coordinate_indices: Mapping[str, FeatureIndex]


def read_training_rows(settings: Settings, paths: Sequence[str | Path], progress: Progress | None = None) -> GameRows:
    """The GAME input records of ``paths`` with their responses, each checked to be a label of ``model.loss``."""
    rows = read_game_rows(
        paths,
        GameInputMapping.of(settings),
        require_response=True,
        valid_labels=get_loss(settings.model.loss).valid_labels,
        progress=progress,
    )
    if not len(rows):
        raise GameInputError(f"{', '.join(map(str, paths))}: no records")
    return rows


def coordinate_specs(settings: Settings) -> dict[str, CoordinateSpec]:
    """Every coordinate's penalty, the global one first (the update order of coordinate descent)."""
    specs = {GLOBAL: global_coordinate_spec(settings.model)}
    specs.update({name: random_effect_spec(c) for name, c in settings.model.coordinates.items()})
    return specs


def game_dataset(
    settings: Settings, rows: GameRows, global_index: FeatureIndex, coordinate_indices: Mapping[str, FeatureIndex]
) -> GameDataset:
    """``rows`` over the given indexes, with their weights and offsets (what :func:`train_game` trains and scores)."""
    model = settings.model
    return build_dataset(
        rows.rows,
        rows.labels,
        global_index,
        {name: (c.entity_field, coordinate_indices[name]) for name, c in model.coordinates.items()},
        weights=rows.weight_array,
        transforms=FeatureTransforms.from_settings(model),
        offsets=rows.offset_array,
    )


def train_rows(
    settings: Settings,
    train: GameRows,
    validation: GameRows | None,
    passes: int,
    on_step: Callable[[TrainingStep], None] | None = None,
) -> TrainedGame:
    """Fit the configured GAME model on ``train``; with ``validation``, keep the best coordinate update on it."""
    global_index, indices = indexes_from_history(train.rows, settings.model, FIRST_VERSION)
    result = train_game(
        game_dataset(settings, train, global_index, indices),
        None if validation is None else game_dataset(settings, validation, global_index, indices),
        coordinate_specs(settings),
        loss=settings.model.loss,
        passes=passes,
        on_step=on_step,
    )
    return TrainedGame(result, global_index, indices)


def trained_game_files(settings: Settings, trained: TrainedGame) -> GameModelFiles:
    """The trained model in Photon-ML's GAME layout: every entity of every coordinate, variances = 1 / precision."""
    model = trained.result.model
    entities = {}
    for name, effect in model.random_effects.items():
        with np.errstate(divide="ignore"):
            variances = np.where(effect.precisions > 0, 1.0 / effect.precisions, np.inf)
        entities[name] = (effect.entity_ids.tolist(), list(effect.means), list(variances))
    return game_model_files(
        settings, model.global_coefficients, trained.global_index, trained.coordinate_indices, entities
    )


def trained_import(settings: Settings, trained: TrainedGame) -> PhotonImport:
    """The trained model as an import: the global model record (version 1) and every entity's means and precisions.

    A coordinate the best model on validation does not have yet (it was best before that
    coordinate's first update) goes out without entities."""
    model = trained.result.model
    record = global_model_record(
        model, trained.global_index, trained.coordinate_indices, FIRST_VERSION, settings.refit.model_name
    )
    coordinates = {}
    for name, configured in settings.model.coordinates.items():
        width = configured.max_features
        effect = model.random_effects.get(
            name, RandomEffectModel(np.zeros(0, dtype=str), np.zeros((0, width)), np.zeros((0, width)))
        )
        coordinates[name] = CoordinateImport(
            name,
            settings.topics.coefficients(name),
            "+".join(configured.feature_bags),
            trained.coordinate_indices[name],
            [str(e) for e in effect.entity_ids],
            effect.means,
            effect.precisions,
            [],
        )
    return PhotonImport(record, coordinates, GLOBAL)


def step_json(step: TrainingStep) -> dict[str, Any]:
    """One coordinate update as ``glmix train`` prints it."""
    return {"pass": step.iteration, "coordinate": step.coordinate, f"validation_{step.metric}": step.value}
