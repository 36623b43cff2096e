"""Photon-ML GAME model directories: read as Photon-ML writes them, written so that they read back the same."""

import json

import pytest

from stream.codec.container import write_container
from stream.codec import DecodeError
from stream.codec.photon import PhotonModel
from stream.codec.photon_game import (
    FixedEffect,
    GameLayoutError,
    GameModelFiles,
    RandomEffect,
    read_game_model,
    write_game_model,
)

PHOTON_LINEAR = "com.linkedin.photon.ml.supervised.regression.LinearRegressionModel"


def _ntv(pairs):
    return [{"name": n, "term": t, "value": v} for (n, t), v in pairs]


def _photon_directory(root):
    """A model laid out as Photon-ML's ModelProcessingUtils saves one (its older metadata form, Spark's part files)."""
    (root / "fixed-effect" / "global" / "coefficients").mkdir(parents=True)
    (root / "fixed-effect" / "global" / "id-info").write_text("globalShard\n")
    write_container(root / "fixed-effect" / "global" / "coefficients" / "part-00000.avro", "BayesianLinearModelAvro", [
        {"modelId": "fixed-effect", "modelClass": PHOTON_LINEAR, "lossFunction": "",
         "means": _ntv([(("(INTERCEPT)", ""), 0.5), (("genre", "rock"), -0.25)]), "variances": None},
    ])
    songs = root / "random-effect" / "songId-songShard"
    (songs / "coefficients").mkdir(parents=True)
    (songs / "id-info").write_text("songId\nsongShard\n")
    for part, song in enumerate(("s1", "s2")):
        write_container(songs / "coefficients" / f"part-{part:05d}.avro", "BayesianLinearModelAvro", [
            {"modelId": song, "modelClass": PHOTON_LINEAR, "lossFunction": "",
             "means": _ntv([(("(INTERCEPT)", ""), 1.0 + part)]), "variances": _ntv([(("(INTERCEPT)", ""), 0.5)])},
        ])
    (songs / "coefficients" / "_SUCCESS").write_text("")
    (root / "model-metadata.json").write_text(json.dumps({
        "modelType": "LINEAR_REGRESSION", "modelName": "fake",
        "fixedEffectOptimizationConfigurations": {"configurations": "fixed-effect", "values": []},
    }, indent=2))


def test_reads_a_directory_in_photons_layout(tmp_path):
    _photon_directory(tmp_path)
    game = read_game_model(tmp_path)
    assert (game.model_type, game.loss) == ("LINEAR_REGRESSION", "linear")
    (fixed,) = game.fixed_effects
    assert (fixed.name, fixed.shard, fixed.model.model_id, fixed.model.loss) == (
        "global", "globalShard", "fixed-effect", "linear")
    assert list(zip(fixed.model.keys, fixed.model.means)) == [(("(INTERCEPT)", ""), 0.5), (("genre", "rock"), -0.25)]
    (songs,) = game.random_effects
    assert (songs.name, songs.entity_field, songs.shard) == ("songId-songShard", "songId", "songShard")
    assert [(m.model_id, list(m.means), m.variances) for m in songs.models] == [("s1", [1.0], [0.5]), ("s2", [2.0], [0.5])]


def test_written_model_reads_back_and_keeps_photons_file_names(tmp_path):
    models = [PhotonModel(f"m{i}", [("(INTERCEPT)", ""), ("skill", "go")], [0.1 * i, -1.0 / 3], [1.0, 2.0], "poisson")
              for i in range(5)]
    game = GameModelFiles(
        "POISSON_REGRESSION",
        [FixedEffect("global", "a+b", PhotonModel("fixed-effect", [("x", "")], [2.5], None, "poisson"))],
        [RandomEffect("member", "member_id", "b", models)],
    )
    write_game_model(tmp_path / "model", game, {"member": {"regularizationWeight": 3.0}}, records_per_file=2)
    root = tmp_path / "model"
    assert sorted(p.name for p in (root / "random-effect" / "member" / "coefficients").iterdir()) == [
        "part-00000.avro", "part-00001.avro", "part-00002.avro"]
    assert (root / "random-effect" / "member" / "id-info").read_text().splitlines() == ["member_id", "b"]
    metadata = json.loads((root / "model-metadata.json").read_text())
    assert metadata["modelType"] == "POISSON_REGRESSION"
    assert metadata["optimizationConfigurations"]["values"] == [
        {"name": "global", "configuration": {}}, {"name": "member", "configuration": {"regularizationWeight": 3.0}}]
    assert read_game_model(root) == game
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the staging directory is gone


def test_never_writes_over_a_model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model-metadata.json").write_text("{}")
    game = GameModelFiles("LINEAR_REGRESSION", [], [RandomEffect("member", "member_id", "b", [])])
    with pytest.raises(GameLayoutError, match="not an empty directory"):
        write_game_model(tmp_path / "model", game, {})


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "random-effect" / "songId-songShard" / "id-info").write_text("songId\n"), "expected 2 line"),
    (lambda root: (root / "model-metadata.json").unlink(), "model-metadata.json: missing"),
    (lambda root: (root / "model-metadata.json").write_text('{"modelType": "HINGE"}'), None),
])
def test_a_damaged_directory_is_refused_naming_the_file(tmp_path, damage, message):
    _photon_directory(tmp_path)
    damage(tmp_path)
    if message is None:  # an unknown task type is found when the loss is asked for
        with pytest.raises(GameLayoutError, match="modelType 'HINGE'"):
            read_game_model(tmp_path).loss
    else:
        with pytest.raises(GameLayoutError, match=message):
            read_game_model(tmp_path)


@pytest.mark.parametrize("task_type, model_class, loss", [
    ("LOGISTIC_REGRESSION", "com.linkedin.photon.ml.supervised.classification.LogisticRegressionModel", "logistic"),
    ("LINEAR_REGRESSION", "com.linkedin.photon.ml.supervised.regression.LinearRegressionModel", "linear"),
    ("POISSON_REGRESSION", "com.linkedin.photon.ml.supervised.regression.PoissonRegressionModel", "poisson"),
    ("SMOOTHED_HINGE_LOSS_LINEAR_SVM",
     "com.linkedin.photon.ml.supervised.classification.SmoothedHingeLossLinearSVMModel", None),
])
def test_each_of_photons_task_types_gives_its_loss_from_the_metadata_and_from_the_model_class(
        tmp_path, task_type, model_class, loss):
    """Photon-ML's four TaskTypes: the loss comes from modelType and, where lossFunction is empty, from modelClass
    alone; the smoothed-hinge SVM has no loss here and is refused naming it, both ways."""
    _photon_directory(tmp_path)
    metadata = tmp_path / "model-metadata.json"
    metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "modelType": task_type}))
    record = {"modelId": "m", "modelClass": model_class, "lossFunction": "", "means": [], "variances": None}
    if loss is None:
        with pytest.raises(GameLayoutError, match=task_type):
            read_game_model(tmp_path).loss
        with pytest.raises(DecodeError, match="SmoothedHingeLossLinearSVMModel"):
            PhotonModel.from_record(record)
    else:
        assert read_game_model(tmp_path).loss == loss
        assert PhotonModel.from_record(record).loss == loss
