"""``glmix evaluate movielens`` on a small synthetic directory in ml-100k's file format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.cli import main
from stream.evaluation.movielens import MovieLensFormatError, load_movielens, run_movielens

OCCUPATIONS = ["artist", "doctor", "engineer", "student", "writer"]


def write_ml100k_like(directory, seed=0, users=120, items=90, ratings=9000):
    """Users, movies and ratings drawn from a GLMix-like truth, written as u.user/u.item/u.data."""
    rng = np.random.default_rng(seed)
    user_rows, item_rows = [], []
    for u in range(1, users + 1):
        user_rows.append(f"{u}|{rng.integers(18, 70)}|{'M' if rng.random() < 0.6 else 'F'}|{rng.choice(OCCUPATIONS)}|94{u:03d}")
    genres = rng.random((items, 19)) < 0.15
    for i in range(1, items + 1):
        year = rng.integers(1930, 1999)
        date = f"01-Jan-{year}" if i % 17 else ""  # a few movies have no release date, as in ml-100k
        item_rows.append(f"{i}|Movie {i} ({year})|{date}||http://example.invalid/{i}|" + "|".join(str(int(g)) for g in genres[i - 1]))
    taste = rng.normal(0, 1.2, size=(users, 19))
    quality = rng.normal(0, 1.0, size=items)
    lines = []
    for _ in range(ratings):
        u, i = rng.integers(users), rng.integers(items)
        margin = 0.3 + taste[u] @ genres[i] + quality[i]
        rating = 5 if rng.random() < 1 / (1 + np.exp(-margin)) else 2
        lines.append(f"{u + 1}\t{i + 1}\t{rating}\t{881250949 + _}")
    (directory / "u.user").write_text("\n".join(user_rows) + "\n", encoding="latin-1")
    (directory / "u.item").write_text("\n".join(item_rows) + "\n", encoding="latin-1")
    (directory / "u.data").write_text("\n".join(lines) + "\n", encoding="latin-1")


def test_each_coordinate_adds_auc_on_glmix_like_data(tmp_path):
    write_ml100k_like(tmp_path)
    result = run_movielens(tmp_path, seed=0, passes=2)
    assert result["rows"] == 9000 and result["test_rows"] == 1800
    assert result["auc_global"] < result["auc_global_user"] < result["auc_global_user_movie"]
    assert result["auc_global_user_movie"] > result["auc_global"] + 0.05


def test_cli_prints_the_three_aucs(tmp_path, capsys):
    write_ml100k_like(tmp_path, ratings=3000)
    assert main(["evaluate", "movielens", "--path", str(tmp_path), "--tune"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"auc_global", "auc_global_user", "auc_global_user_movie"} <= printed.keys()
    assert set(printed["l2"]) == {"global", "per-user", "per-movie"}


def test_missing_files_raise_a_clear_error(tmp_path):
    with pytest.raises(MovieLensFormatError, match="u.user not found"):
        load_movielens(tmp_path)
    assert main(["evaluate", "movielens", "--path", str(tmp_path)]) == 2
