"""Exported models carry their feature keys: GlobalModel records and Photon-ML model files."""

import numpy as np
import pytest

from stream.codec import make_codec
from stream.codec.photon import INTERCEPT_NAME, read_models, write_models
from stream.model import FeatureIndex, GameModel, RandomEffectModel
from stream.model.export import global_model_record, photon_models


@pytest.fixture
def fitted():
    global_index = FeatureIndex(["b"], keys=[("skill", "python"), ("skill", "sql")])
    member_index = FeatureIndex(["j"], keys=[("title", "nurse")], capacity=4)
    effect = RandomEffectModel(np.array(["m1", "m2"]), np.array([[0.5, -1.0, 0, 0], [0.1, 2.0, 0, 0]]),
                               np.array([[4.0, 2.0, 1.0, 1.0], [1.0, 0.5, 1.0, 1.0]]))
    model = GameModel("logistic", np.array([-1.2, 0.3, 0.4]), {"member": effect})
    return model, global_index, {"member": member_index}


def test_global_model_record_round_trips_through_avro(fitted):
    model, global_index, indices = fitted
    record = global_model_record(model, global_index, indices, version=3, holdout_metrics={"auc": 0.8})
    codec = make_codec("GlobalModel", "glmix.model.global")
    decoded = codec.decode(codec.encode(record))
    rebuilt = FeatureIndex.from_record(decoded["features"], ["b"])
    assert rebuilt.keys == global_index.keys
    assert decoded["coefficients"] == [-1.2, 0.3, 0.4]
    assert FeatureIndex.from_record(decoded["coordinate_indices"]["member"], ["j"]).keys == indices["member"].keys


def test_non_finite_coefficients_are_never_exported(fitted):
    model, global_index, indices = fitted
    bad = GameModel("logistic", np.array([np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="non-finite"):
        global_model_record(bad, global_index, indices, version=1)


def test_photon_export_names_every_coefficient_and_variance(fitted, tmp_path):
    model, global_index, indices = fitted
    path = tmp_path / "models.avro"
    assert write_models(path, photon_models(model, global_index, indices)) == 3
    models = {m.model_id: m for m in read_models(path)}
    assert models["global"].keys[0] == (INTERCEPT_NAME, "")
    assert models["member:m1"].keys == [(INTERCEPT_NAME, ""), ("title", "nurse")]
    assert models["member:m1"].means == [0.5, -1.0]
    assert models["member:m2"].variances == [1.0, 2.0]
