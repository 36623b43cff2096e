"""Photon-ML container files: round trips that keep Photon-ML's record and field names."""

import fastavro
import pytest

from stream.codec import DecodeError
from stream.codec.photon import (
    INTERCEPT_NAME,
    PhotonModel,
    read_models,
    read_training_examples,
    write_models,
    write_training_examples,
)

EXAMPLES = [
    {"uid": "imp-1", "label": 1.0, "features": [{"name": "job_skill", "term": "python", "value": 1.0}],
     "metadataMap": {"member_id": "m1", "item_id": "j1"}, "weight": 2.0, "offset": -0.5},
    {"uid": None, "label": 0.0, "features": [], "metadataMap": None, "weight": None, "offset": None},
]


def test_training_examples_round_trip_with_photon_names(tmp_path):
    path = tmp_path / "train.avro"
    assert write_training_examples(path, EXAMPLES) == 2
    assert list(read_training_examples(path)) == EXAMPLES
    with open(path, "rb") as fh:
        schema = fastavro.reader(fh).writer_schema
    assert schema["name"] == "com.linkedin.photon.avro.generated.TrainingExampleAvro"
    assert [f["name"] for f in schema["fields"]] == ["uid", "label", "features", "metadataMap", "weight", "offset"]


def test_models_round_trip_with_photon_names(tmp_path):
    path = tmp_path / "models.avro"
    models = [
        PhotonModel("global", [(INTERCEPT_NAME, ""), ("job_skill", "python")], [-1.5, 0.25], [0.1, 0.02], "logistic"),
        PhotonModel("m1", [("job_title", "engineer")], [0.7], None, "poisson"),
    ]
    assert write_models(path, models) == 2
    assert [(m.model_id, list(m.keys), list(m.means), m.variances, m.loss) for m in read_models(path)] == [
        ("global", [(INTERCEPT_NAME, ""), ("job_skill", "python")], [-1.5, 0.25], [0.1, 0.02], "logistic"),
        ("m1", [("job_title", "engineer")], [0.7], None, "poisson"),
    ]
    with open(path, "rb") as fh:
        record = next(iter(fastavro.reader(fh)))
    assert record["lossFunction"] == "com.linkedin.photon.ml.function.glm.LogisticLossFunction"
    assert record["modelClass"].endswith("LogisticRegressionModel")
    assert record["means"][0] == {"name": "(INTERCEPT)", "term": "", "value": -1.5}


def test_a_file_that_is_not_avro_raises_decode_error(tmp_path):
    path = tmp_path / "junk.avro"
    path.write_bytes(b"not an avro file at all")
    with pytest.raises(DecodeError, match="not a readable"):
        list(read_models(path))


def _record(**fields) -> dict:
    return {"modelId": "fixed", "means": [{"name": "x", "term": "", "value": 0.5}], "variances": None,
            "lossFunction": None, "modelClass": None, **fields}


def test_a_game_model_file_says_its_loss_in_model_class_alone():
    """Photon-ML's GAME coefficient files leave lossFunction empty: modelClass decides, by its simple name."""
    linear = _record(modelClass="com.linkedin.photon.ml.supervised.regression.LinearRegressionModel", lossFunction="")
    assert PhotonModel.from_record(linear).loss == "linear"
    poisson = _record(modelClass="org.example.PoissonRegressionModel")
    assert PhotonModel.from_record(poisson).loss == "poisson"
    assert PhotonModel.from_record(_record()).loss == "logistic"


def test_an_unknown_model_class_is_refused_naming_it():
    with pytest.raises(DecodeError, match="SmoothedHingeLossLinearSVMModel"):
        PhotonModel.from_record(_record(modelClass="com.linkedin.photon.ml.SmoothedHingeLossLinearSVMModel"))
