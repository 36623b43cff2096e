"""``glmix import photon`` and ``glmix export photon``: Photon-ML GAME models in and out of the model topics.

Import maps a GAME directory (:mod:`stream.codec.photon_game`) onto the configuration:
the one fixed effect becomes the global model (its index from the fixed effect's (name,
term) keys, in file order), each random-effect coordinate the configured coordinate of
the same name (its index from the union of its entities' keys, in first-seen order;
when they exceed ``max_features``, the keys the most entities carry are kept). The
global model goes out as version 1 through the bootstrap's publishing
(:func:`~stream.refit.first_models.publish_first_models`), so, like a bootstrap, an import
never replaces a published model: version n+1 with other indexes would give every
column of every published state a new meaning, and readers refuse such a version.
Every entity's coefficients go out first, as ``EntityModel`` version 1 on the partition
the updater's examples of that entity land on (librdkafka's default partitioner), so an
updater restores them as its states and streaming goes on from the batch model.
Photon-ML variances become the precision's diagonal; a column without one keeps the
coordinate's new-entity prior.

Export writes the newest global model and every coordinate's latest coefficients back in
the same layout: means by (name, term) over each index, variances from the precision
(the diagonal of its inverse), shards named by their feature bags joined with ``+``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.codec.photon import PhotonModel
from stream.codec.photon_game import (
    FIXED_EFFECT,
    TASK_TYPES,
    FixedEffect,
    GameModelFiles,
    RandomEffect,
    read_game_model,
    write_game_model,
)
from stream.config import CoordinateSettings, ModelSettings, Settings
from stream.errors import GlmixError
from stream.model.export import global_model_record, photon_key
from stream.model.features import INTERCEPT_KEY, FeatureIndex, FeatureKey
from stream.model.game import GLOBAL, GameModel
from stream.model.losses import get_loss
from stream.refit.first_models import FIRST_VERSION, publish_first_models, published_global_model
from stream.tables.models import precision_matrix
from stream.updaters.state_update import CoordinateMath

# librdkafka's partitioners that place a non-empty key at CRC-32(key) mod partitions (the default is the first).


class PhotonModelMismatchError(GlmixError):
    """A GAME model does not fit the configuration (a coordinate, id field, shard or task type differs); says which."""


class ExportError(GlmixError):
    """Nothing to export: no broker was given, or no global model is published."""


@dataclass(frozen=True)
class CoordinateImport:
    """One random-effect coordinate of an import: its index, and every entity's means and precision diagonal."""

    name: str
    topic: str
    shard: str
    index: FeatureIndex
    entity_ids: list[str]
    means: np.ndarray
    precisions: np.ndarray
    dropped_features: list[FeatureKey]

    def mapping(self) -> dict[str, Any]:
        """What ``--dry-run`` prints of this coordinate."""
        return {
            "topic": self.topic,
            "shard": self.shard,
            "entities": len(self.entity_ids),
            "features": self.index.dim,
            "dropped_features": len(self.dropped_features),
        }


@dataclass(frozen=True)
class PhotonImport:
    """A GAME model mapped onto the configuration: the global model record and each coordinate's entities."""

    record: dict[str, Any]
    coordinates: Mapping[str, CoordinateImport]
    fixed_effect: str | None

    def mapping(self) -> dict[str, Any]:
        """The mapping ``--dry-run`` prints: coordinate -> topic, entities, features."""
        return {
            "global": {
                "fixed_effect": self.fixed_effect,
                "features": len(self.record["features"]),
                "version": self.record["version"],
            },
            "coordinates": {name: c.mapping() for name, c in self.coordinates.items()},
        }


def plan_import(settings: Settings, directory: str | Path) -> PhotonImport:
    """Read the GAME model in ``directory`` and map it onto ``settings``; refuse one that does not fit (no I/O to Kafka)."""
    game = read_game_model(directory)
    model = settings.model
    _check_task(game, model)
    if len(game.fixed_effects) > 1:
        names = ", ".join(f.name for f in game.fixed_effects)
        raise PhotonModelMismatchError(
            f"the model has {len(game.fixed_effects)} fixed effects ({names}); glmix has one"
        )
    fixed = game.fixed_effects[0] if game.fixed_effects else None
    if fixed is not None:
        _check_shard(f"fixed effect {fixed.name!r}", fixed.shard, model.global_feature_bags, model)
    for effect in game.random_effects:
        _check_random_effect(effect, settings)
    by_name = {effect.name: effect for effect in game.random_effects}
    coordinates = {name: _coordinate_import(settings, name, by_name.get(name)) for name in model.coordinates}
    global_index, coefficients = _global_coefficients(fixed, model)
    record = global_model_record(
        GameModel(model.loss, coefficients),
        global_index,
        {name: c.index for name, c in coordinates.items()},
        FIRST_VERSION,
        settings.refit.model_name,
    )
    return PhotonImport(record, coordinates, None if fixed is None else fixed.name)


def _check_task(game: GameModelFiles, model: ModelSettings) -> None:
    if game.loss != model.loss:
        raise PhotonModelMismatchError(
            f"the model is {game.model_type} ({game.loss} loss); configured model.loss = {model.loss}"
        )
    for effect in game.fixed_effects:
        _check_model_losses(effect.name, [effect.model], model.loss)
    for random in game.random_effects:
        _check_model_losses(random.name, random.models, model.loss)


def _check_model_losses(coordinate: str, models: Sequence[PhotonModel], loss: str) -> None:
    other = next((m for m in models if m.loss != loss), None)
    if other is not None:
        raise PhotonModelMismatchError(
            f"coordinate {coordinate!r}: model {other.model_id!r} is a {other.loss} model; configured model.loss = {loss}"
        )


def _check_random_effect(effect: RandomEffect, settings: Settings) -> None:
    """Refuse a random effect whose coordinate is not configured, or whose id field or shard differs.

    The id field (Photon-ML's random-effect type) may be the ``entity_field``, its key for
    ``context:<key>``, or the GAME input field ``game_input.ids`` names for the coordinate.
    """
    model = settings.model
    configured = model.coordinates.get(effect.name)
    if configured is None:
        raise PhotonModelMismatchError(
            f"random-effect coordinate {effect.name!r} is not configured (model.coordinates: "
            f"{', '.join(model.coordinates)})"
        )
    known = (
        configured.entity_field,
        configured.entity_field.removeprefix("context:"),
        settings.game_input.id_field(effect.name, configured),
    )
    if effect.entity_field not in known:
        raise PhotonModelMismatchError(
            f"random-effect coordinate {effect.name!r}: entity id field {effect.entity_field!r}, "
            f"configured entity_field = {configured.entity_field!r}"
        )
    _check_shard(f"random-effect coordinate {effect.name!r}", effect.shard, configured.feature_bags, model)


def _check_shard(what: str, shard: str, bags: Sequence[str], model: ModelSettings) -> None:
    """A shard named by feature bags (``a+b``, as export writes it) must be the configured bags.

    A shard of any other name is Photon-ML's own (its bags are defined in the training job's
    configuration, not in the model directory) and cannot be checked here.
    """
    known = set(model.global_feature_bags).union(*(c.feature_bags for c in model.coordinates.values()))
    named = shard.split("+")
    if set(named) <= known and set(named) != set(bags):
        raise PhotonModelMismatchError(
            f"{what}: feature shard {shard!r} is bags {', '.join(named)}; configured feature_bags = {', '.join(bags)}"
        )


def _global_coefficients(fixed: FixedEffect | None, model: ModelSettings) -> tuple[FeatureIndex, np.ndarray]:
    """The global index (the fixed effect's keys in file order) and its coefficients; no fixed effect: the intercept at 0."""
    if fixed is None:
        return FeatureIndex(model.global_feature_bags, version=FIRST_VERSION), np.zeros(1)
    keys = list(fixed.model.keys)
    index = FeatureIndex(
        model.global_feature_bags,
        [k for k in keys if k != INTERCEPT_KEY],
        intercept=INTERCEPT_KEY in keys,
        version=FIRST_VERSION,
    )
    columns = {key: column for column, key in enumerate(index.keys)}
    coefficients = np.zeros(index.dim)
    for key, mean in zip(keys, fixed.model.means):
        coefficients[columns[key]] = mean
    return index, coefficients


def _coordinate_index(
    name: str, settings: CoordinateSettings, models: Sequence[PhotonModel]
) -> tuple[FeatureIndex, list[FeatureKey]]:
    """The union of the entities' keys in first-seen order, cut to ``max_features`` by how many entities carry each."""
    carried: Counter[FeatureKey] = Counter(key for m in models for key in dict.fromkeys(m.keys))
    if INTERCEPT_KEY in carried and not settings.intercept:
        raise PhotonModelMismatchError(
            f"random-effect coordinate {name!r}: the model has an intercept; configured intercept = false"
        )
    ordered = [key for key in carried if key != INTERCEPT_KEY]
    room = settings.max_features - int(settings.intercept)
    kept = set(sorted(ordered, key=lambda k: (-carried[k], k))[:room])
    index = FeatureIndex(
        settings.feature_bags,
        [k for k in ordered if k in kept],
        intercept=settings.intercept,
        capacity=settings.max_features,
        version=FIRST_VERSION,
    )
    return index, [k for k in ordered if k not in kept]


def _coordinate_import(settings: Settings, name: str, effect: RandomEffect | None) -> CoordinateImport:
    """One coordinate's index and entity arrays (no entities when the model has no random effect of that name)."""
    configured = settings.model.coordinates[name]
    models = [] if effect is None else list(effect.models)
    twice = next((entity for entity, n in Counter(m.model_id for m in models).items() if n > 1), None)
    if twice is not None:
        raise PhotonModelMismatchError(f"random-effect coordinate {name!r}: entity {twice!r} has more than one model")
    index, dropped = _coordinate_index(name, configured, models)
    prior = CoordinateMath.of(configured, get_loss(settings.model.loss)).new_entity_precision
    means = np.zeros((len(models), configured.max_features))
    precisions = np.tile(prior, (len(models), 1))
    columns = {key: column for column, key in enumerate(index.keys)}
    for row, model in enumerate(models):
        for position, key in enumerate(model.keys):
            column = columns.get(key)
            if column is None:
                continue
            means[row, column] = model.means[position]
            if model.variances is not None and 0 < model.variances[position] < np.inf:
                precisions[row, column] = 1.0 / model.variances[position]
    bad = np.flatnonzero(~np.isfinite(means).all(axis=1))
    if len(bad):
        raise PhotonModelMismatchError(f"coordinate {name!r}: entity {models[bad[0]].model_id!r} has non-finite means")
    return CoordinateImport(
        name,
        settings.topics.coefficients(name),
        "" if effect is None else effect.shard,
        index,
        [m.model_id for m in models],
        means,
        precisions,
        dropped,
    )


def publish_import(settings: Settings, plan: PhotonImport) -> None:
    """Publish every coordinate's entities, then the global model as version 1 (refused when a model is published)."""
    publish_first_models(
        settings,
        plan.record,
        {name: (c.entity_ids, c.means, c.precisions) for name, c in plan.coordinates.items()},
        "import",
    )


def export_game_model(settings: Settings, output: str | Path) -> dict[str, Any]:
    """Write the newest global model and every coordinate's latest coefficients to ``output`` in the GAME layout."""
    if not settings.kafka.bootstrap_servers:
        raise ExportError("glmix export photon reads the models from Kafka: give --bootstrap-servers")
    model = published_global_model(settings, "export")
    if model is None:
        raise ExportError(f"no global model on {settings.topics.model_global} to export")
    entities = {}
    for name in settings.model.coordinates:
        records = latest_entity_models(settings, name)
        entities[name] = (
            [r["entity_id"] for r in records],
            [r["means"] for r in records],
            [_variances(r) for r in records],
        )
    game = game_model_files(settings, model.coefficients, model.global_index, model.coordinate_indices, entities)
    write_game_model(output, game, optimization_configurations(settings))
    return {
        "output": str(output),
        "global_version": model.version,
        "coordinates": {effect.name: len(effect.models) for effect in game.random_effects},
    }


def game_model_files(
    settings: Settings,
    coefficients: np.ndarray,
    global_index: FeatureIndex,
    coordinate_indices: Mapping[str, FeatureIndex],
    entities: Mapping[str, tuple[Sequence[str], Sequence[Sequence[float]], Sequence[Sequence[float] | None]]],
) -> GameModelFiles:
    """A model as GAME files: the global coefficients over ``global_index``, and per coordinate its entities'
    ``(ids, means, variances)`` over its index (entries past the index's columns are left out; a coordinate
    ``entities`` does not name is written without entities).

    Each random effect's ``id-info`` names the field its ids are read from in GAME input
    (Photon-ML's random-effect type: ``game_input.ids``, by default the ``entity_field``
    or its ``context:`` key); each shard is named by its bags joined with ``+``.
    """
    loss = settings.model.loss
    fixed = FixedEffect(
        GLOBAL,
        "+".join(settings.model.global_feature_bags),
        PhotonModel(
            FIXED_EFFECT, [photon_key(k) for k in global_index.keys], [float(c) for c in coefficients], None, loss
        ),
    )
    random = []
    for name, configured in settings.model.coordinates.items():
        index = coordinate_indices[name]
        keys = [photon_key(k) for k in index.keys]
        ids, means, variances = entities.get(name, ([], [], []))
        models = [
            PhotonModel(
                str(entity),
                keys,
                [float(m) for m in mean[: index.dim]],
                None if variance is None else [float(v) for v in variance[: index.dim]],
                loss,
            )
            for entity, mean, variance in zip(ids, means, variances)
        ]
        random.append(
            RandomEffect(
                name, settings.game_input.id_field(name, configured), "+".join(configured.feature_bags), models
            )
        )
    return GameModelFiles(TASK_TYPES[loss], [fixed], random)


def latest_entity_models(settings: Settings, coordinate: str) -> list[dict[str, Any]]:
    """The highest-version ``EntityModel`` of every entity on ``coordinate``'s coefficients topic, by entity id."""
    from stream.codec import make_codec
    from stream.kafka.topic_reader import TopicReader

    topic = settings.topics.coefficients(coordinate)
    reader = TopicReader(
        settings.kafka,
        topic,
        make_codec("EntityModel", topic, settings.kafka.schema_registry_url, settings.kafka.schema_registry),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=settings.kafka.group_id(f"export-{coordinate}"),
    )
    latest: dict[str, dict[str, Any]] = {}
    try:
        for batch in reader.read_to_end(stall_timeout_s=60):
            for record in batch.records:
                held = latest.get(record["entity_id"])
                if record["coordinate"] == coordinate and (held is None or record["version"] > held["version"]):
                    latest[record["entity_id"]] = record
    finally:
        reader.close()
    return [latest[entity] for entity in sorted(latest)]


def _variances(record: Mapping[str, Any]) -> list[float] | None:
    """An entity's variances from its precision (the diagonal of its inverse), None when it has no precision."""
    dim = len(record["means"])
    matrix = precision_matrix(record["precision_kind"], record["precision"], dim)
    if matrix is None:
        return None
    with np.errstate(divide="ignore"):
        diagonal = 1.0 / np.diag(matrix) if record["precision_kind"] == "DIAGONAL" else np.diag(np.linalg.inv(matrix))
    return [float(v) for v in diagonal]


def optimization_configurations(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each coordinate's optimization configuration in Photon-ML's metadata form (L2 weights, Newton or L-BFGS)."""
    l2 = {"regularizationType": "L2", "elasticNetParam": None}
    configurations: dict[str, dict[str, Any]] = {
        GLOBAL: {
            "optimizerConfig": {
                "optimizerType": "LBFGS",
                "maximumIterations": settings.refit.max_iterations,
                "tolerance": 1e-9,
            },
            "regularizationContext": l2,
            "regularizationWeight": settings.model.global_l2,
            "downSamplingRate": 1.0,
        }
    }
    for name, c in settings.model.coordinates.items():
        configurations[name] = {
            "optimizerConfig": {
                "optimizerType": "TRON",
                "maximumIterations": c.newton_steps,
                "tolerance": c.gradient_tolerance,
            },
            "regularizationContext": l2,
            "regularizationWeight": c.l2,
        }
    return configurations
