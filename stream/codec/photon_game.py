"""Photon-ML GAME model directories: the layout Photon-ML's ``ModelProcessingUtils`` saves and loads.

A GAME model directory holds, as Photon-ML writes it::

    model-metadata.json                    {"modelType": "LOGISTIC_REGRESSION", "optimizationConfigurations": ...}
    fixed-effect/<coordinate>/id-info      one line: the coordinate's feature shard
    fixed-effect/<coordinate>/coefficients/part-00000.avro
                                           one BayesianLinearModelAvro record (modelId "fixed-effect")
    random-effect/<coordinate>/id-info     two lines: the random-effect type (the entity id field), the feature shard
    random-effect/<coordinate>/coefficients/part-*.avro
                                           one BayesianLinearModelAvro record per entity, modelId = the entity id

Coordinates are the directories found, as Photon-ML's loader lists them; of the
metadata, only ``modelType`` (Photon-ML's task type) is read, as Photon-ML reads it. This
module knows the files and nothing of Kafka or of this project's configuration: the
mapping onto a deployment lives in :mod:`stream.refit.game_models`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.codec.exceptions import CodecError
from stream.codec.photon import PhotonModel, read_models, write_models

FIXED_EFFECT = "fixed-effect"
RANDOM_EFFECT = "random-effect"
COEFFICIENTS = "coefficients"
ID_INFO = "id-info"
METADATA_FILE = "model-metadata.json"
# Photon-ML's TaskType of each loss.
TASK_TYPES = {"logistic": "LOGISTIC_REGRESSION", "linear": "LINEAR_REGRESSION", "poisson": "POISSON_REGRESSION"}
RECORDS_PER_FILE = 100_000


class GameLayoutError(CodecError):
    """A directory is not a Photon-ML GAME model (or cannot be written as one); the message names the file and why."""


@dataclass(frozen=True)
class FixedEffect:
    """One fixed-effect coordinate: its name, its feature shard and its one model."""

    name: str
    shard: str
    model: PhotonModel


@dataclass(frozen=True)
class RandomEffect:
    """One random-effect coordinate: its name, the entity id field (Photon-ML's random-effect type), its shard, its models.

    ``models`` holds one model per entity, whose ``model_id`` is the entity id.
    """

    name: str
    entity_field: str
    shard: str
    models: Sequence[PhotonModel]


@dataclass(frozen=True)
class GameModelFiles:
    """What a GAME model directory holds: Photon-ML's task type and every coordinate."""

    model_type: str
    fixed_effects: Sequence[FixedEffect]
    random_effects: Sequence[RandomEffect]

    @property
    def loss(self) -> str:
        """This project's name of the model's loss (``logistic``, ``linear``, ``poisson``), from ``modelType``."""
        by_type = {task: loss for loss, task in TASK_TYPES.items()}
        if self.model_type not in by_type:
            raise GameLayoutError(
                f"{METADATA_FILE}: modelType {self.model_type!r} is not one of {', '.join(sorted(by_type))}"
            )
        return by_type[self.model_type]


def read_game_model(directory: str | Path) -> GameModelFiles:
    """Every coordinate of the GAME model in ``directory`` (written by Photon-ML or by :func:`write_game_model`)."""
    root = Path(directory)
    if not root.is_dir():
        raise GameLayoutError(f"{root}: no such directory")
    fixed = [_read_fixed_effect(path) for path in _coordinate_dirs(root / FIXED_EFFECT)]
    random = [_read_random_effect(path) for path in _coordinate_dirs(root / RANDOM_EFFECT)]
    if not fixed and not random:
        raise GameLayoutError(f"{root}: neither {FIXED_EFFECT}/ nor {RANDOM_EFFECT}/ holds a coordinate")
    return GameModelFiles(_model_type(root / METADATA_FILE), fixed, random)


def _model_type(path: Path) -> str:
    """``modelType`` of the metadata file (Photon-ML reads nothing else of it either)."""
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise GameLayoutError(f"{path}: missing (a GAME model names its task type there)") from None
    except json.JSONDecodeError as exc:
        raise GameLayoutError(f"{path}: not JSON ({exc})") from exc
    model_type = metadata.get("modelType") if isinstance(metadata, dict) else None
    if not isinstance(model_type, str):
        raise GameLayoutError(f"{path}: no modelType")
    return model_type


def _coordinate_dirs(parent: Path) -> list[Path]:
    """The coordinate directories under ``fixed-effect/`` or ``random-effect/`` (none when it is absent)."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _id_info(directory: Path, lines: int) -> list[str]:
    """The ``lines`` non-empty lines of a coordinate's ``id-info`` file."""
    path = directory / ID_INFO
    try:
        found = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise GameLayoutError(f"{path}: missing") from None
    if len(found) != lines:
        raise GameLayoutError(f"{path}: expected {lines} line(s), found {len(found)}")
    return found


def _coefficient_files(directory: Path) -> list[Path]:
    """The Avro part files of a coordinate's ``coefficients/`` directory (Spark's ``_SUCCESS`` and hidden files left out)."""
    path = directory / COEFFICIENTS
    if not path.is_dir():
        raise GameLayoutError(f"{path}: missing")
    return sorted(p for p in path.iterdir() if p.suffix == ".avro" and not p.name.startswith((".", "_")))


def _read_fixed_effect(directory: Path) -> FixedEffect:
    (shard,) = _id_info(directory, 1)
    models = [model for path in _coefficient_files(directory) for model in read_models(path)]
    if len(models) != 1:
        raise GameLayoutError(f"{directory / COEFFICIENTS}: a fixed effect has one model, found {len(models)}")
    return FixedEffect(directory.name, shard, models[0])


def _read_random_effect(directory: Path) -> RandomEffect:
    entity_field, shard = _id_info(directory, 2)
    models = [model for path in _coefficient_files(directory) for model in read_models(path)]
    return RandomEffect(directory.name, entity_field, shard, models)


def write_game_model(
    directory: str | Path,
    model: GameModelFiles,
    configurations: Mapping[str, Mapping[str, Any]],
    records_per_file: int = RECORDS_PER_FILE,
) -> None:
    """Write ``model`` in Photon-ML's GAME layout; ``configurations`` are each coordinate's optimization configuration.

    The directory must not exist or be empty (Photon-ML does not overwrite a model either).
    It is written beside its final path and renamed into place, so a reader never sees
    half a model. Random effects go ``records_per_file`` entities to a part file.
    """
    target = Path(directory)
    check_writable(target)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_metadata(staging, model, configurations)
        for fixed in model.fixed_effects:
            coordinate = staging / FIXED_EFFECT / fixed.name
            _write_id_info(coordinate, [fixed.shard])
            write_models(coordinate / COEFFICIENTS / "part-00000.avro", [fixed.model])
        for random in model.random_effects:
            coordinate = staging / RANDOM_EFFECT / random.name
            _write_id_info(coordinate, [random.entity_field, random.shard])
            for number, chunk in enumerate(_chunks(random.models, records_per_file)):
                write_models(coordinate / COEFFICIENTS / f"part-{number:05d}.avro", chunk)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_writable(directory: str | Path) -> None:
    """Refuse a model directory that exists and is not empty: a model is never written over another."""
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise GameLayoutError(f"{target}: exists and is not an empty directory; a model is never written over another")


def _write_metadata(root: Path, model: GameModelFiles, configurations: Mapping[str, Mapping[str, Any]]) -> None:
    """``model-metadata.json`` as Photon-ML writes it: the task type and each coordinate's optimization configuration."""
    names = [c.name for c in model.fixed_effects] + [c.name for c in model.random_effects]
    metadata = {
        "modelType": model.model_type,
        "optimizationConfigurations": {
            "values": [{"name": name, "configuration": dict(configurations.get(name, {}))} for name in names]
        },
    }
    root.mkdir(parents=True)
    (root / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def _write_id_info(directory: Path, lines: Sequence[str]) -> None:
    (directory / COEFFICIENTS).mkdir(parents=True)
    (directory / ID_INFO).write_text("".join(f"{line}\n" for line in lines))


def _chunks(models: Sequence[PhotonModel], size: int) -> Iterator[Sequence[PhotonModel]]:
    """``models`` in slices of ``size``; an empty coordinate still gets its (empty) first part file."""
    yield models[:size]
    for start in range(size, len(models), size):
        yield models[start : start + size]
