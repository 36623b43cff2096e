"""Turns impression-like records (ids + feature bags) into a :class:`GameDataset`.

The feature index of every coordinate decides the columns; records carry their entity
ids in fields (``member_id``, ``item_id``) or context keys (``context:<key>``), as the
coordinate settings name them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream.config.settings import entity_of
from stream.model.features import FeatureIndex
from stream.model.game import GameDataset, RandomEffectData
from stream.model.transforms import FeatureTransforms


def build_dataset(
    records: Sequence[Mapping[str, Any]],
    labels: np.ndarray,
    global_index: FeatureIndex,
    coordinates: Mapping[str, tuple[str, FeatureIndex]],
    weights: np.ndarray | None = None,
    transforms: FeatureTransforms | None = None,
    offsets: np.ndarray | None = None,
) -> GameDataset:
    """Index ``records``' feature bags (after ``transforms``) for the global coordinate and each ``(entity_field, index)``.

    ``weights`` and ``offsets`` are per record (default 1 and 0)."""
    bags: Sequence[Mapping[str, Sequence[Any]]] = [r["features"] for r in records]
    if transforms is not None:
        bags = transforms.apply_rows(bags)
    effects = {
        name: RandomEffectData(
            entity_ids=np.array([entity_of(r, field) for r in records]),
            features=index.dense_rows(bags, admit=False),
        )
        for name, (field, index) in coordinates.items()
    }
    return GameDataset(
        global_features=global_index.sparse_rows(bags),
        labels=np.asarray(labels, dtype=np.float64),
        random_effects=effects,
        weights=weights,
        offsets=offsets,
    )
