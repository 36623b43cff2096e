"""Photon-ML interop: ``TrainingExampleAvro`` and ``BayesianLinearModelAvro`` container files.

These let a team hand training data to Photon-ML (GAME on Spark) and read its models
back. Field names and types are Photon-ML's own; records are plain dicts in that shape.
Photon-ML names the intercept ``(INTERCEPT)`` with an empty term.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.codec.container import read_container, write_container
from stream.codec.exceptions import DecodeError, EncodeError

INTERCEPT_NAME = "(INTERCEPT)"

PHOTON_LOSS_FUNCTIONS = {
    "logistic": "com.linkedin.photon.ml.function.glm.LogisticLossFunction",
    "linear": "com.linkedin.photon.ml.function.glm.SquaredLossFunction",
    "poisson": "com.linkedin.photon.ml.function.glm.PoissonLossFunction",
}
PHOTON_MODEL_CLASSES = {
    "logistic": "com.linkedin.photon.ml.supervised.classification.LogisticRegressionModel",
    "linear": "com.linkedin.photon.ml.supervised.regression.LinearRegressionModel",
    "poisson": "com.linkedin.photon.ml.supervised.regression.PoissonRegressionModel",
}


@dataclass(frozen=True)
class PhotonModel:
    """One Photon-ML linear model: coefficients by (name, term), with optional variances."""

    model_id: str
    keys: Sequence[tuple[str, str]]
    means: Sequence[float]
    variances: Sequence[float] | None = None
    loss: str = "logistic"

    def to_record(self) -> dict[str, Any]:
        """The ``BayesianLinearModelAvro`` record of this model."""
        if len(self.keys) != len(self.means) or (self.variances is not None and len(self.variances) != len(self.keys)):
            raise EncodeError(f"model {self.model_id!r}: keys, means and variances differ in length")
        return {
            "modelId": self.model_id,
            "modelClass": PHOTON_MODEL_CLASSES.get(self.loss),
            "means": _ntv(self.keys, self.means),
            "variances": None if self.variances is None else _ntv(self.keys, self.variances),
            "lossFunction": PHOTON_LOSS_FUNCTIONS.get(self.loss),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PhotonModel:
        """Read a ``BayesianLinearModelAvro`` record; variances are matched by (name, term)."""
        keys = [(m["name"], m["term"]) for m in record["means"]]
        variances = None
        if record.get("variances") is not None:
            by_key = {(v["name"], v["term"]): float(v["value"]) for v in record["variances"]}
            variances = [by_key.get(k, 0.0) for k in keys]
        return cls(
            model_id=record["modelId"],
            keys=keys,
            means=[float(m["value"]) for m in record["means"]],
            variances=variances,
            loss=_loss_of(record),
        )


def _loss_of(record: Mapping[str, Any]) -> str:
    """The loss a Photon model record names: ``lossFunction`` when set, else its ``modelClass``.

    Photon-ML's GAME model files leave ``lossFunction`` empty and say what the model is
    in ``modelClass`` alone; classes are matched by their simple name, so a model written
    under another package of the same class reads the same. Neither set: logistic, as
    records of this project's first versions were written.
    """
    function = record.get("lossFunction") or ""
    by_function = {v: k for k, v in PHOTON_LOSS_FUNCTIONS.items()}
    if function:
        if function not in by_function:
            raise DecodeError(f"model {record['modelId']}: unknown Photon lossFunction {function!r}")
        return by_function[function]
    model_class = record.get("modelClass") or ""
    if not model_class:
        return "logistic"
    by_class = {v.rsplit(".", 1)[-1]: k for k, v in PHOTON_MODEL_CLASSES.items()}
    simple = model_class.rsplit(".", 1)[-1]
    if simple not in by_class:
        known = ", ".join(sorted(by_class))
        raise DecodeError(f"model {record['modelId']}: unknown Photon modelClass {model_class!r} (known: {known})")
    return by_class[simple]


def _ntv(keys: Sequence[tuple[str, str]], values: Sequence[float]) -> list[dict[str, Any]]:
    return [{"name": name, "term": term, "value": float(value)} for (name, term), value in zip(keys, values)]


def write_training_examples(path: str | Path, examples: Iterable[Mapping[str, Any]], codec: str = "deflate") -> int:
    """Write ``TrainingExampleAvro`` records to an Avro container file; returns the count."""
    return write_container(path, "TrainingExampleAvro", examples, codec)


def read_training_examples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream ``TrainingExampleAvro`` records from a container file written here or by Photon-ML."""
    return read_container(path, "TrainingExampleAvro")


def write_models(path: str | Path, models: Iterable[PhotonModel], codec: str = "deflate") -> int:
    """Write models as ``BayesianLinearModelAvro`` records; returns the count."""
    return write_container(path, "BayesianLinearModelAvro", (m.to_record() for m in models), codec)


def read_models(path: str | Path) -> Iterator[PhotonModel]:
    """Stream models from a ``BayesianLinearModelAvro`` container file."""
    return (PhotonModel.from_record(r) for r in read_container(path, "BayesianLinearModelAvro"))
