"""The GLMix math core: losses, the per-entity Newton update (compiled, many entities per call), priors, uncertainty,
feature indexing, the batch GAME trainer and quality metrics."""

from stream.model.features import INTERCEPT_KEY, FeatureIndex
from stream.model.game import (
    GLOBAL,
    CoordinateSpec,
    GameDataset,
    GameModel,
    GameTrainingResult,
    RandomEffectData,
    RandomEffectModel,
    fit_global,
    fit_random_effect,
    select_l2,
    train_game,
)
from stream.model.losses import LinearLoss, LogisticLoss, Loss, PoissonLoss, get_loss
from stream.model.newton import EntityEvents, EntityUpdate, GaussianPrior, UpdateStatus, newton_update, objective
from stream.model.priors import forgetting_prior, l2_precision_diagonal, l2_prior

__all__ = [
    "GLOBAL",
    "INTERCEPT_KEY",
    "CoordinateSpec",
    "EntityEvents",
    "EntityUpdate",
    "FeatureIndex",
    "GameDataset",
    "GameModel",
    "GameTrainingResult",
    "GaussianPrior",
    "LinearLoss",
    "LogisticLoss",
    "Loss",
    "PoissonLoss",
    "RandomEffectData",
    "RandomEffectModel",
    "UpdateStatus",
    "fit_global",
    "fit_random_effect",
    "forgetting_prior",
    "get_loss",
    "l2_precision_diagonal",
    "l2_prior",
    "newton_update",
    "objective",
    "select_l2",
    "train_game",
]
