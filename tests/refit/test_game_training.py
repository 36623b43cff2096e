"""``glmix train``: batch GAME on Photon-ML GAME input files, three random effects, against train_game called directly."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from stream.cli import main
from stream.codec.photon_game import read_game_model
from stream.model.game import CoordinateSpec, GameDataset, RandomEffectData, train_game
from tests.game_inputs import COORDINATES, game_schema, ratings_world, write_config, write_records

INTERCEPT = ("(INTERCEPT)", "")


def _files(tmp_path: Path, loss: str, seed: int = 5, records: int = 6000, offsets: np.ndarray | None = None):
    world = ratings_world(seed=seed, loss=loss, records=records)
    cut = int(0.8 * records)
    schema = game_schema(offset=offsets is not None)
    train = write_records(tmp_path / "train.avro",
                          world.records(np.arange(cut), None if offsets is None else offsets[:cut]), schema)
    validate = write_records(tmp_path / "validate.avro",
                             world.records(np.arange(cut, records), None if offsets is None else offsets[cut:]), schema)
    return world, train, validate


def _printed(out: str) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in out.strip().splitlines()]
    return lines[:-1], lines[-1]


def _direct_dataset(world, rows: np.ndarray, global_keys: list, coordinate_keys: dict, offsets: np.ndarray) -> GameDataset:
    """The records' dataset built straight from the world's arrays, columns in the order the model files list them."""
    column = {key: i for i, key in enumerate(global_keys)}
    data, indices, indptr = [], [], [0]
    for i in rows:
        features = {INTERCEPT: 1.0, ("genre", str(world.genres[i])): 1.0,
                    ("popular", ""): 1.0 if world.genres[i] < 2 else 0.5,
                    **{("u", str(k)): v for k, v in enumerate(world.user_x[i])},
                    **{("s", str(k)): v for k, v in enumerate(world.song_x[i])}}
        for key, value in features.items():
            indices.append(column[key])
            data.append(value)
        indptr.append(len(indices))
    effects = {}
    ids = {"per-user": world.users[rows].astype(str), "per-song": world.songs[rows].astype(str),
           "per-artist": np.array([f"a{a}" for a in world.artists[rows]])}
    for name, (_, bag) in COORDINATES.items():
        keys = coordinate_keys[name]
        source, prefix = (world.song_x, "s") if bag == "songFeatures" else (world.user_x, "u")
        dense = np.zeros((len(rows), 8))
        dense[:, keys.index(INTERCEPT)] = 1.0
        for k in range(source.shape[1]):
            dense[:, keys.index((prefix, str(k)))] = source[rows, k]
        effects[name] = RandomEffectData(ids[name], dense)
    return GameDataset(sp.csr_matrix((data, indices, indptr), shape=(len(rows), len(global_keys))),
                       world.responses[rows], effects, offsets=offsets[rows])


def test_glmix_train_lowers_validation_rmse_with_every_coordinate_and_matches_train_game(tmp_path, capsys):
    offsets = np.random.default_rng(9).normal(scale=0.5, size=6000)  # a prior model's scores, as Photon-ML takes them
    world, train, validate = _files(tmp_path, "linear", offsets=offsets)
    config = write_config(tmp_path / "glmix.toml", "linear")
    assert main(["train", "--config", str(config), "--from", str(train), "--validate", str(validate),
                 "--output", str(tmp_path / "model"), "--passes", "2"]) == 0
    steps, summary = _printed(capsys.readouterr().out)
    first_pass = [s for s in steps if s["pass"] == 0]
    assert [s["coordinate"] for s in first_pass] == ["global", "per-user", "per-song", "per-artist"]
    rmse = [s["validation_rmse"] for s in first_pass]
    assert all(later < earlier for earlier, later in zip(rmse, rmse[1:])), rmse
    assert summary["train_records"] == 4800 and summary["validation_records"] == 1200
    assert summary["coordinates"]["per-artist"] == {"entities": 10, "features": 4}

    # the same problem built from the world's arrays and given to train_game directly
    game = read_game_model(tmp_path / "model")
    assert game.model_type == "LINEAR_REGRESSION"
    (fixed,) = game.fixed_effects
    effects = {effect.name: effect for effect in game.random_effects}
    assert {name: (e.entity_field, e.shard) for name, e in effects.items()} == COORDINATES
    keys = {name: list(effect.models[0].keys) for name, effect in effects.items()}
    specs = {"global": CoordinateSpec(1.0, 0.0, 0), **{name: CoordinateSpec(1.0, 1.0, 0) for name in COORDINATES}}
    direct = train_game(_direct_dataset(world, np.arange(4800), list(fixed.model.keys), keys, offsets),
                        _direct_dataset(world, np.arange(4800, 6000), list(fixed.model.keys), keys, offsets),
                        specs, loss="linear", passes=2)
    np.testing.assert_allclose([s["validation_rmse"] for s in steps], [h.value for h in direct.history], atol=1e-9)
    assert summary["best"]["validation_rmse"] == pytest.approx(direct.history[direct.best_step].value, abs=1e-9)
    np.testing.assert_allclose(fixed.model.means, direct.model.global_coefficients, atol=1e-9)
    for name, effect in effects.items():
        fitted = direct.model.random_effects[name]
        assert sorted(m.model_id for m in effect.models) == sorted(fitted.entity_ids.tolist())
        rows = {entity: row for row, entity in enumerate(fitted.entity_ids)}
        for model in effect.models:
            np.testing.assert_allclose(model.means, fitted.means[rows[model.model_id], : len(keys[name])], atol=1e-9)
            np.testing.assert_allclose(model.variances, 1 / fitted.precisions[rows[model.model_id], : len(keys[name])],
                                       rtol=1e-9)


def test_glmix_train_logistic_raises_validation_auc_with_every_coordinate(tmp_path, capsys):
    _, train, validate = _files(tmp_path, "logistic", seed=6)
    config = write_config(tmp_path / "glmix.toml", "linear")  # --loss overrides model.loss
    assert main(["train", "--config", str(config), "--loss", "logistic", "--from", str(train),
                 "--validate", str(validate), "--passes", "1", "--output", str(tmp_path / "model")]) == 0
    steps, summary = _printed(capsys.readouterr().out)
    auc = [s["validation_auc"] for s in steps]
    assert [s["coordinate"] for s in steps] == ["global", "per-user", "per-song", "per-artist"]
    assert all(later > earlier for earlier, later in zip(auc, auc[1:])), auc
    assert summary["loss"] == "logistic" and summary["best"] == steps[-1]
    assert read_game_model(tmp_path / "model").loss == "logistic"


def test_an_existing_output_is_refused_before_training(tmp_path, capsys):
    _, train, _ = _files(tmp_path, "linear", records=50)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model-metadata.json").write_text("{}")
    assert main(["train", "--config", str(write_config(tmp_path / "glmix.toml")), "--from", str(train),
                 "--output", str(tmp_path / "model")]) == 2
    captured = capsys.readouterr()
    assert "exists and is not an empty directory" in captured.err and captured.out == ""


def _stderr_of_a_terminal(args: list[str]) -> str:
    """What a real ``glmix train`` process writes to its stderr when that is a terminal (a pty)."""
    command = [sys.executable, "-m", "stream", "train", *args, "--set", "log_level=WARNING"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        assert ready, "glmix train wrote nothing to its terminal for 120 s"
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0
    return b"".join(chunks).decode()


def test_progress_goes_to_a_terminal_only(tmp_path, capsys):
    _, train, validate = _files(tmp_path, "linear", records=300)
    args = ["--config", str(write_config(tmp_path / "glmix.toml")), "--from", str(train), "--validate", str(validate),
            "--passes", "1"]
    assert "reading GAME input: 300 records" in _stderr_of_a_terminal(args)
    assert main(["train", *args]) == 0  # stderr is captured here, not a terminal
    captured = capsys.readouterr()
    assert "reading GAME input" not in captured.err and '"train_records": 240' in captured.out
