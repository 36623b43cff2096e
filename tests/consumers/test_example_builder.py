"""Examples built in one pass per batch carry the same features as each coordinate's FeatureIndex gives."""

from __future__ import annotations

import numpy as np

from stream.config import load_settings
from stream.consumers.example_builder import unlabeled_examples
from stream.model.export import initial_global_model_record
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.tables.indexing import FeatureResolver
from stream.tables.models import GlobalModelTable


def test_batch_indexing_matches_the_feature_indexes():
    settings = load_settings(overrides={"model.coordinates.member.max_features": "6"})  # some features get dropped
    impressions = [li.impression for li in labeled_impressions(World(WorldSpec(seed=12, members=8, jobs=8, requests=15)))]
    impressions[0]["features"]["job_title"] = impressions[0]["features"]["job_title"] * 2  # a repeated feature adds up
    table = GlobalModelTable(settings.model)
    table.apply([initial_global_model_record(impressions[:20], settings.model)])  # later impressions have unseen features
    model = table.current
    examples = unlabeled_examples(impressions, model, FeatureResolver(model, settings.model), settings.model)
    expected_global = model.global_index.sparse_rows([i["features"] for i in impressions]).toarray()
    for impression, example, want in zip(impressions, examples, expected_global):
        got = np.zeros(model.global_index.dim)
        np.add.at(got, np.frombuffer(example["global_features"]["indices"], dtype="<i4"),
                  np.frombuffer(example["global_features"]["values"], dtype="<f4"))
        assert np.allclose(got, want)
        for name, field in (("member", "member_id"), ("job", "item_id")):
            dense = np.frombuffer(example["coordinates"][name]["dense"], dtype="<f4")
            assert np.allclose(dense, model.coordinate_indices[name].dense(impression["features"], admit=False))
            assert example["coordinates"][name]["entity_id"] == impression[field]
        assert example["example_id"] == impression["impression_id"] and example["label"] == 0.0
