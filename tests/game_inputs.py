"""Photon-ML GAME input records of a ratings-like world, written as Photon-ML's integration tests lay theirs out.

Records as in Photon-ML's GAME integration data (``yahoo-music``): top-level ``userId`` and
``songId`` (ints), a union ``response``, three name–term–value bags ``features``,
``userFeatures``, ``songFeatures`` whose items have a nullable ``term``; here the
``artistId`` is in ``metadataMap`` (strings), and each record has a ``uid`` and a
``timestamp`` (epoch ms). The world is seeded, with true per-user (over song features),
per-song and per-artist (over user features) effects, as Photon-ML's tests configure them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fastavro
import numpy as np

FEATURE = {
    "type": "record",
    "name": "Feature",
    "namespace": "com.example.ratings",
    "fields": [
        {"name": "name", "type": "string"},
        {"name": "term", "type": ["null", "string"]},
        {"name": "value", "type": "double"},
    ],
}


def game_schema(offset: bool = False, response: bool = True) -> dict:
    """The ratings record schema (the Feature type defined once, then referenced by name, as Avro writers do)."""
    fields = [
        {"name": "uid", "type": ["null", "string"], "default": None},
        {"name": "userId", "type": "int"},
        {"name": "songId", "type": "int"},
        {"name": "timestamp", "type": "long"},
        {"name": "features", "type": {"type": "array", "items": FEATURE}},
        {"name": "userFeatures", "type": {"type": "array", "items": "com.example.ratings.Feature"}},
        {"name": "songFeatures", "type": {"type": "array", "items": "com.example.ratings.Feature"}},
        {"name": "metadataMap", "type": {"type": "map", "values": "string"}},
    ]
    if response:
        fields.insert(1, {"name": "response", "type": ["null", "double"]})
    if offset:
        fields.append({"name": "offset", "type": ["null", "double"], "default": None})
    return {"type": "record", "name": "RatingExample", "namespace": "com.example.ratings", "fields": fields}


CONFIG = """
[model]
loss = "{loss}"
global_feature_bags = ["features", "userFeatures", "songFeatures"]
global_l2 = 1.0

[model.coordinates.per-user]
entity_field = "context:userId"
feature_bags = ["songFeatures"]
max_features = 8
l2 = 1.0
intercept_l2 = 1.0

[model.coordinates.per-song]
entity_field = "context:songId"
feature_bags = ["userFeatures"]
max_features = 8
l2 = 1.0
intercept_l2 = 1.0

[model.coordinates.per-artist]
entity_field = "context:artistId"
feature_bags = ["userFeatures"]
max_features = 8
l2 = 1.0
intercept_l2 = 1.0
"""
COORDINATES = {"per-user": ("userId", "songFeatures"), "per-song": ("songId", "userFeatures"),
               "per-artist": ("artistId", "userFeatures")}


def write_config(path: Path, loss: str = "linear") -> Path:
    """The settings file mapping these records: bags and coordinates named as Photon-ML's tests name them."""
    path.write_text(CONFIG.format(loss=loss))
    return path


@dataclass
class RatingsWorld:
    """The records of the world as arrays: who rated what, the features, the responses."""

    users: np.ndarray
    songs: np.ndarray
    artists: np.ndarray
    genres: np.ndarray
    user_x: np.ndarray
    song_x: np.ndarray
    responses: np.ndarray
    times: np.ndarray

    def records(self, rows: np.ndarray, offsets: np.ndarray | None = None) -> list[dict]:
        """Photon-ML style records of ``rows`` (with ``offsets`` when given)."""
        out = []
        for n, i in enumerate(rows):
            record = {
                "uid": f"r{i}",
                "response": float(self.responses[i]),
                "userId": int(self.users[i]),
                "songId": int(self.songs[i]),
                "timestamp": int(self.times[i]),
                "features": [{"name": "genre", "term": str(self.genres[i]), "value": 1.0},
                             {"name": "popular", "term": None, "value": 1.0 if self.genres[i] < 2 else 0.5}],
                "userFeatures": [{"name": "u", "term": str(k), "value": float(v)} for k, v in enumerate(self.user_x[i])],
                "songFeatures": [{"name": "s", "term": str(k), "value": float(v)} for k, v in enumerate(self.song_x[i])],
                "metadataMap": {"artistId": f"a{self.artists[i]}"},
            }
            if offsets is not None:
                record["offset"] = float(offsets[n])
            out.append(record)
        return out


def ratings_world(seed: int = 5, users: int = 60, songs: int = 300, artists: int = 10, records: int = 6000,
                  loss: str = "linear") -> RatingsWorld:
    """A seeded world: global genre and feature effects plus per-user, per-song and per-artist effects."""
    rng = np.random.default_rng(seed)
    artist_of_song = rng.integers(artists, size=songs)
    genre_of_song = rng.integers(5, size=songs)
    user_features, song_features = rng.normal(size=(users, 3)), rng.normal(size=(songs, 3))
    w_genre, w_user, w_song = rng.normal(scale=0.5, size=5), rng.normal(scale=0.5, size=3), rng.normal(scale=0.5, size=3)
    alpha = rng.normal(scale=0.8, size=(users, 4))
    beta = rng.normal(scale=0.8, size=(songs, 4))
    gamma = rng.normal(scale=0.8, size=(artists, 4))
    u, s = rng.integers(users, size=records), rng.integers(songs, size=records)
    a, g = artist_of_song[s], genre_of_song[s]
    ux, sx = user_features[u], song_features[s]
    ones = np.ones((records, 1))
    margin = (w_genre[g] + ux @ w_user + sx @ w_song
              + np.einsum("nd,nd->n", alpha[u], np.hstack([ones, sx]))
              + np.einsum("nd,nd->n", beta[s], np.hstack([ones, ux]))
              + np.einsum("nd,nd->n", gamma[a], np.hstack([ones, ux])))
    if loss == "linear":
        responses = margin + rng.normal(scale=0.3, size=records)
    else:
        responses = (rng.random(records) < 1 / (1 + np.exp(-margin))).astype(float)
    times = 1_700_000_000_000 + np.sort(rng.integers(0, 3_600_000, size=records))
    return RatingsWorld(u, s, a, g, ux, sx, responses, times)


def write_records(path: Path, records: list[dict], schema: dict | None = None) -> Path:
    """``records`` as an Avro container file of ``schema`` (default: the ratings schema)."""
    with open(path, "wb") as out:
        fastavro.writer(out, fastavro.parse_schema(schema or game_schema()), records)
    return path
