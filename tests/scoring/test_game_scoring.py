"""GAME models and GAME input end to end on a broker: import, ``glmix score --format photon``, export, re-import;
``glmix train``'s model and ``glmix bootstrap``'s from the same GAME input score as their files say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream.cli import main
from stream.codec.container import read_container, write_container
from stream.codec.photon_game import read_game_model
from stream.model.metrics import rmse
from tests.game_inputs import COORDINATES, game_schema, ratings_world, write_config, write_records

PHOTON_LINEAR = "com.linkedin.photon.ml.supervised.regression.LinearRegressionModel"
INTERCEPT = ("(INTERCEPT)", "")
GLOBAL_KEYS = [INTERCEPT, *[("genre", str(g)) for g in range(5)], ("popular", ""),
               *[("u", str(k)) for k in range(3)], *[("s", str(k)) for k in range(3)]]
USER_KEYS = [INTERCEPT, *[("u", str(k)) for k in range(3)]]
SONG_KEYS = [INTERCEPT, *[("s", str(k)) for k in range(3)]]


def _args(kafka_bootstrap: str, config: Path, name: str) -> list[str]:
    topics = {"kafka.group_prefix": name, "topics.model_global": f"global-{name}",
              "topics.coefficients_prefix": f"coef-{name}-", "topics.examples_prefix": f"by-{name}-",
              "topics.examples_by_member": f"by-member-{name}", "topics.examples_by_job": f"by-job-{name}",
              "topics.partitions": "3"}
    sets = [item for key, value in topics.items() for item in ("--set", f"{key}={value}")]
    return ["--config", str(config), "--bootstrap-servers", kafka_bootstrap, *sets]


def _ntv(pairs) -> list[dict]:
    return [{"name": n, "term": t, "value": float(v)} for (n, t), v in pairs]


def _photon_model(root: Path, world, seed: int = 11) -> tuple[dict, dict]:
    """A GAME model in Photon-ML's layout (its own coefficients): metadata without optimization configs, a
    modelClass and no lossFunction, Spark's part files and _SUCCESS; most users, songs and artists have a model."""
    rng = np.random.default_rng(seed)
    fixed = dict(zip(GLOBAL_KEYS, rng.normal(size=len(GLOBAL_KEYS))))
    (root / "fixed-effect" / "global" / "coefficients").mkdir(parents=True)
    (root / "fixed-effect" / "global" / "id-info").write_text("globalShard\n")
    write_container(root / "fixed-effect" / "global" / "coefficients" / "part-00000.avro", "BayesianLinearModelAvro",
                    [{"modelId": "fixed-effect", "modelClass": PHOTON_LINEAR, "lossFunction": "",
                      "means": _ntv(fixed.items()), "variances": None}])
    entities = {"per-user": sorted(set(world.users.astype(str)))[:-3],
                "per-song": sorted(set(world.songs.astype(str)))[:-20],
                "per-artist": sorted({f"a{a}" for a in world.artists})[:-1]}
    random = {}
    for name, (id_field, bag) in COORDINATES.items():
        keys = SONG_KEYS if bag == "songFeatures" else USER_KEYS
        directory = root / "random-effect" / name
        (directory / "coefficients").mkdir(parents=True)
        (directory / "id-info").write_text(f"{id_field}\n{'songShard' if bag == 'songFeatures' else 'userShard'}\n")
        random[name] = {e: dict(zip(keys, rng.normal(size=len(keys)))) for e in entities[name]}
        records = [{"modelId": e, "modelClass": PHOTON_LINEAR, "lossFunction": "", "means": _ntv(c.items()),
                    "variances": _ntv((k, v) for k, v in zip(c, rng.uniform(0.1, 1.0, size=len(c))))}
                   for e, c in random[name].items()]
        for part, chunk in enumerate((records[: len(records) // 2], records[len(records) // 2:])):
            write_container(directory / "coefficients" / f"part-{part:05d}.avro", "BayesianLinearModelAvro", chunk)
        (directory / "coefficients" / "_SUCCESS").write_text("")
    (root / "model-metadata.json").write_text(json.dumps({"modelType": "LINEAR_REGRESSION", "modelName": "ratings"}))
    return fixed, random


def _expected(records: list[dict], fixed: dict, random: dict) -> np.ndarray:
    """Each record's score as the coefficients imply: x.w + the entities' z.alpha (0 for unknown ones) + offset."""
    scores = []
    for r in records:
        bags = {bag: {(f["name"], f["term"] or ""): f["value"] for f in r[bag]}
                for bag in ("features", "userFeatures", "songFeatures")}
        x = {INTERCEPT: 1.0, **bags["features"], **bags["userFeatures"], **bags["songFeatures"]}
        score = sum(value * fixed.get(key, 0.0) for key, value in x.items()) + (r.get("offset") or 0.0)
        ids = {"userId": str(r["userId"]), "songId": str(r["songId"]), "artistId": r["metadataMap"]["artistId"]}
        for name, (id_field, bag) in COORDINATES.items():
            coefficients = random[name].get(ids[id_field], {})
            z = {INTERCEPT: 1.0, **bags[bag]}
            score += sum(value * coefficients.get(key, 0.0) for key, value in z.items())
        scores.append(score)
    return np.array(scores)


def _score(args: list[str], inputs: list[Path], output: Path, capsys) -> tuple[dict, list[dict]]:
    assert main(["score", *args, "--input", *map(str, inputs), "--output", str(output), "--format", "photon",
                 "--timeout", "60"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return printed, list(read_container(output, "ScoringResultAvro"))


def _coefficients(directory: Path) -> tuple[dict, dict]:
    """A GAME model directory's coefficients by (name, term): the fixed effect, and every entity per coordinate."""
    game = read_game_model(directory)
    (fixed,) = game.fixed_effects
    return (dict(zip(fixed.model.keys, fixed.model.means)),
            {e.name: {m.model_id: dict(zip(m.keys, m.means)) for m in e.models} for e in game.random_effects})


def test_photon_model_imported_scores_game_input_as_its_files_say_and_exports_back(
        kafka_bootstrap, unique_name, tmp_path, capsys):
    world = ratings_world(seed=3, records=400)
    fixed, random = _photon_model(tmp_path / "photon", world)
    rng = np.random.default_rng(2)
    records = world.records(np.arange(400), offsets=rng.normal(size=400))
    for record in records[::7]:
        record["response"] = None  # scoring takes records without a response; they are not evaluated
    inputs = [write_records(tmp_path / "part-0.avro", records[:250], game_schema(offset=True)),
              write_records(tmp_path / "part-1.avro", records[250:], game_schema(offset=True))]
    config = write_config(tmp_path / "glmix.toml", "linear")
    args = _args(kafka_bootstrap, config, unique_name)
    assert main(["import", "photon", "--model", str(tmp_path / "photon"), *args]) == 0
    capsys.readouterr()

    printed, results = _score(args, inputs, tmp_path / "scores.avro", capsys)
    expected = _expected(records, fixed, random)
    scores = np.array([r["predictionScore"] for r in results])
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)
    labeled = np.array([r["response"] is not None for r in records])
    assert printed["scored"] == 400 and printed["labeled"] == int(labeled.sum())
    responses = np.array([r["response"] for r in records if r["response"] is not None])
    assert printed["rmse"] == pytest.approx(rmse(responses, expected[labeled]), abs=1e-12)
    first, unlabeled = results[0], results[7]
    assert (first["uid"], first["label"], first["weight"], first["modelId"]) == ("r0", records[0]["response"], 1.0,
                                                                                 "glmix")
    assert first["metadataMap"] == {"userId": str(records[0]["userId"]), "songId": str(records[0]["songId"]),
                                    "artistId": records[0]["metadataMap"]["artistId"], "uid": "r0"}
    assert unlabeled["label"] is None and unlabeled["uid"] == "r7"

    # exported, a random-effect entity's coefficients are the file's; imported again, the scores are the same
    assert main(["export", "photon", "--output", str(tmp_path / "out"), *args]) == 0
    exported_fixed, exported = _coefficients(tmp_path / "out")
    assert exported_fixed == fixed
    some_user = next(iter(random["per-user"]))
    assert exported["per-user"][some_user] == random["per-user"][some_user]
    for name in COORDINATES:
        assert exported[name] == random[name]
    again = _args(kafka_bootstrap, config, f"{unique_name}b")
    assert main(["import", "photon", "--model", str(tmp_path / "out"), *again]) == 0
    capsys.readouterr()
    _, rescored = _score(again, inputs, tmp_path / "rescored.avro", capsys)
    np.testing.assert_allclose([r["predictionScore"] for r in rescored], scores, rtol=0, atol=1e-12)


def test_trained_model_and_bootstrapped_model_score_as_the_trained_files_say(
        kafka_bootstrap, unique_name, tmp_path, capsys):
    world = ratings_world(seed=4, records=1500)
    train = write_records(tmp_path / "train.avro", world.records(np.arange(1200)))
    validate = write_records(tmp_path / "validate.avro", world.records(np.arange(1200, 1500)))
    config = write_config(tmp_path / "glmix.toml", "linear")

    # glmix train (validated) -> glmix import photon -> glmix score: the margins of the files, train's RMSE
    assert main(["train", "--config", str(config), "--from", str(train), "--validate", str(validate),
                 "--output", str(tmp_path / "validated")]) == 0
    best = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["best"]
    args = _args(kafka_bootstrap, config, unique_name)
    assert main(["import", "photon", "--model", str(tmp_path / "validated"), *args]) == 0
    capsys.readouterr()
    printed, results = _score(args, [validate], tmp_path / "scores.avro", capsys)
    records = list(world.records(np.arange(1200, 1500)))
    np.testing.assert_allclose([r["predictionScore"] for r in results],
                               _expected(records, *_coefficients(tmp_path / "validated")), rtol=0, atol=1e-12)
    assert printed["rmse"] == pytest.approx(best["validation_rmse"], abs=1e-12)

    # glmix bootstrap from the same GAME input publishes the global model and the random effects glmix train writes
    assert main(["train", "--config", str(config), "--from", str(train), "--output", str(tmp_path / "trained")]) == 0
    capsys.readouterr()
    other = _args(kafka_bootstrap, config, f"{unique_name}b")
    assert main(["bootstrap", "--from", str(train), *other]) == 0
    bootstrapped = json.loads(capsys.readouterr().out)
    assert bootstrapped["game_records"] == 1200
    assert bootstrapped["entities"] == {"per-user": 60, "per-song": len(set(world.songs[:1200])), "per-artist": 10}
    _, results = _score(other, [validate], tmp_path / "bootstrapped.avro", capsys)
    np.testing.assert_allclose([r["predictionScore"] for r in results],
                               _expected(records, *_coefficients(tmp_path / "trained")), rtol=0, atol=1e-12)
