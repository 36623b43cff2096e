"""The MovieLens-100K protocol as LinkedIn's GDMix published it, on a user's own copy of ml-100k.

Label: rating > 3. Split: random 80/20 (seeded). Global features: age/100, gender,
occupation one-hot, 19 genres, release year/2000. Per-user coordinate over the movie
features; per-movie coordinate over the user features. L2 = 1, intercepts unregularized.
Published test AUC: 0.6237 global only, 0.7058 with per-user, 0.7599 with per-movie.

The data set's license forbids redistribution, so it is never shipped or committed:
point ``glmix evaluate movielens --path`` at a directory holding ``u.data``, ``u.user``
and ``u.item``. With ``tune=True``, each coordinate's L2 is chosen from a small grid
on a validation split carved out of the training data (never the test split).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from stream.errors import GlmixError
from stream.model.game import GLOBAL, CoordinateSpec, GameDataset, RandomEffectData, select_l2, train_game
from stream.model.metrics import auc

log = logging.getLogger(__name__)

GENRES = 19
USER, MOVIE = "per-user", "per-movie"
L2_GRID = (0.1, 1.0, 10.0, 100.0)


class MovieLensFormatError(GlmixError):
    """A MovieLens file is missing or not in the ml-100k format; the message names the file and line."""


@dataclass(frozen=True)
class MovieLensData:
    """Ratings with user and movie feature matrices, rows aligned with ``users``/``movies``."""

    users: np.ndarray
    movies: np.ndarray
    labels: np.ndarray
    user_features: dict[int, np.ndarray]
    movie_features: dict[int, np.ndarray]


def _lines(path: Path) -> list[list[str]]:
    if not path.exists():
        raise MovieLensFormatError(f"{path} not found (expected the ml-100k files u.data, u.user, u.item)")
    sep = "\t" if path.name == "u.data" else "|"
    return [line.split(sep) for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]


def load_movielens(directory: Path) -> MovieLensData:
    """Read ``u.data``, ``u.user`` and ``u.item`` into labels and feature vectors."""
    users_raw = _lines(directory / "u.user")
    occupations = sorted({row[3] for row in users_raw if len(row) >= 4})
    user_features: dict[int, np.ndarray] = {}
    for n, row in enumerate(users_raw, 1):
        try:
            uid, age, gender, occupation = int(row[0]), float(row[1]), row[2], row[3]
        except (IndexError, ValueError) as exc:
            raise MovieLensFormatError(f"u.user line {n}: {exc}") from None
        onehot = np.zeros(len(occupations))
        onehot[occupations.index(occupation)] = 1.0
        user_features[uid] = np.r_[age / 100.0, float(gender == "M"), onehot]
    movie_features: dict[int, np.ndarray] = {}
    years: dict[int, float] = {}
    for n, row in enumerate(_lines(directory / "u.item"), 1):
        try:
            mid = int(row[0])
            genres = np.array([float(g) for g in row[-GENRES:]])
        except (IndexError, ValueError) as exc:
            raise MovieLensFormatError(f"u.item line {n}: {exc}") from None
        date = row[2].strip()
        if date[-4:].isdigit():
            years[mid] = float(date[-4:])
        movie_features[mid] = genres
    default_year = float(np.median(list(years.values()))) if years else 2000.0
    movie_features = {m: np.r_[g, years.get(m, default_year) / 2000.0] for m, g in movie_features.items()}
    ratings = _lines(directory / "u.data")
    try:
        table = np.array([[int(r[0]), int(r[1]), float(r[2])] for r in ratings])
    except (IndexError, ValueError) as exc:
        raise MovieLensFormatError(f"u.data: {exc}") from None
    return MovieLensData(
        users=table[:, 0].astype(int),
        movies=table[:, 1].astype(int),
        labels=(table[:, 2] > 3).astype(float),
        user_features=user_features,
        movie_features=movie_features,
    )


def _dataset(data: MovieLensData, rows: np.ndarray) -> GameDataset:
    """Global = [1, user features, movie features]; per-user over [1, movie]; per-movie over [1, user]."""
    user_x = np.array([data.user_features[u] for u in data.users[rows]])
    movie_x = np.array([data.movie_features[m] for m in data.movies[rows]])
    ones = np.ones((rows.size, 1))
    return GameDataset(
        global_features=sp.csr_matrix(np.hstack([ones, user_x, movie_x])),
        labels=data.labels[rows],
        random_effects={
            USER: RandomEffectData(data.users[rows], np.hstack([ones, movie_x])),
            MOVIE: RandomEffectData(data.movies[rows], np.hstack([ones, user_x])),
        },
    )


def _specs(l2: dict[str, float]) -> dict[str, CoordinateSpec]:
    return {name: CoordinateSpec(l2=value, intercept_l2=0.0) for name, value in l2.items()}


def _tune(data: MovieLensData, train_rows: np.ndarray, rng: np.random.Generator, default_l2: float) -> dict[str, float]:
    """Per-coordinate L2 chosen on a validation split of the training rows (never the test rows)."""
    shuffled = rng.permutation(train_rows)
    cut = int(0.875 * shuffled.size)
    specs = select_l2(
        _dataset(data, shuffled[:cut]),
        _dataset(data, shuffled[cut:]),
        _specs({GLOBAL: default_l2, USER: default_l2, MOVIE: default_l2}),
        grid=L2_GRID,
    )
    return {name: spec.l2 for name, spec in specs.items()}


def run_movielens(directory: Path, seed: int = 0, l2: float = 1.0, passes: int = 2, tune: bool = False) -> dict:
    """Run the protocol; returns the three staged test AUCs and the final coordinate-descent AUC."""
    data = load_movielens(directory)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(data.labels.size)
    cut = int(0.8 * rows.size)
    train_rows, test_rows = rows[:cut], rows[cut:]
    train, test = _dataset(data, train_rows), _dataset(data, test_rows)
    penalties = _tune(data, train_rows, rng, l2) if tune else {GLOBAL: l2, USER: l2, MOVIE: l2}
    staged = train_game(train, None, _specs(penalties), passes=1).model
    final = train_game(train, None, _specs(penalties), passes=passes).model if passes > 1 else staged
    return {
        "rows": int(data.labels.size),
        "train_rows": int(train_rows.size),
        "test_rows": int(test_rows.size),
        "l2": penalties,
        "auc_global": auc(test.labels, staged.margins(test, [GLOBAL])),
        "auc_global_user": auc(test.labels, staged.margins(test, [GLOBAL, USER])),
        "auc_global_user_movie": auc(test.labels, staged.margins(test)),
        f"auc_after_{passes}_passes": auc(test.labels, final.margins(test)),
        "published": {"auc_global": 0.6237, "auc_global_user": 0.7058, "auc_global_user_movie": 0.7599},
    }
