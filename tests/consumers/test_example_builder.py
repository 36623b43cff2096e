"""Examples built in one pass per batch carry the same features as each coordinate's FeatureIndex gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.codec import load_schema
from stream.codec.avro import SingleObjectCodec
from stream.codec.example_writer import check_labeled_example_schema
from stream.codec.exceptions import EncodeError
from stream.codec.feature_bags import encode_bags
from stream.codec.schemas import AvroSchema

from stream.config import load_settings
from stream.consumers.impressions import impression_rows
from stream.consumers.labeling import ExampleIndexer, unlabeled_records
from stream.config.settings import entity_of
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
    examples = unlabeled_records(impressions, model, settings.model)
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


def _reference_example(impression, model, settings, resolver):
    """What the per-record builder made of one impression before the batch writer (the writer's oracle)."""
    [indexed] = [resolver.index([impression["features"]], with_missed=True)]
    intercepts = resolver.intercepts()
    cols, vals = indexed.columns[0], indexed.values[0]
    if intercepts[0]:
        cols, vals = np.concatenate([[0], cols]), np.concatenate([[1.0], vals])
    keys, inverse = np.unique(cols, return_inverse=True)
    summed = np.bincount(inverse, weights=vals, minlength=len(keys))
    coordinates = {}
    for slot, (name, c) in enumerate(settings.model.coordinates.items(), start=1):
        dense = np.zeros((1, model.coordinate_indices[name].width), dtype="<f4")
        if intercepts[slot]:
            dense[:, 0] = 1.0
        np.add.at(dense, (indexed.rows[slot], indexed.columns[slot]), indexed.values[slot])
        coordinates[name] = {"entity_id": entity_of(impression, c.entity_field), "dense": dense[0].tobytes()}
    bags = {}
    for (bag, name, term), value in zip(indexed.missed.keys, indexed.missed.values.tolist()):
        bags.setdefault(bag, []).append({"name": name, "term": term, "value": value})
    return {
        "example_id": impression["impression_id"], "member_id": impression["member_id"],
        "item_id": impression["item_id"], "label": 0.0, "weight": 1.0, "offset": 0.0,
        "event_time": impression["event_time"], "label_time": impression["event_time"],
        "interaction_types": [], "scores": {}, "model_versions": {},
        "global_features": {"indices": keys.astype("<i4").tobytes(), "values": summed.astype("<f4").tobytes()},
        "coordinates": coordinates, "index_version": model.index_version,
        "random_bucket": impression["random_bucket"], "position": impression["position"],
        "context": impression["context"], "unindexed_features": encode_bags(bags),
    }  # fmt: skip


@pytest.mark.parametrize("entity_field", ["item_id", "context:surface"])
def test_the_batch_writer_gives_the_bytes_fastavro_gives_the_per_record_example(entity_field):
    settings = load_settings(
        overrides={"model.coordinates.member.max_features": "6", "model.coordinates.job.entity_field": entity_field}
    )
    impressions = [li.impression for li in labeled_impressions(World(WorldSpec(seed=5, members=6, jobs=9, requests=30)))]
    impressions[0]["features"]["job_title"] = impressions[0]["features"]["job_title"] * 2  # repeated features add up
    impressions[1]["member_id"] = "mémbre-☃"  # non-ASCII strings keep their bytes
    impressions[1]["context"] = {}
    impressions[2]["features"] = {}  # no features at all: intercepts only
    impressions[3]["features"]["job_title"] = []  # an empty bag
    impressions[4]["position"], impressions[4]["event_time"] = 2**31 - 1, 2**62  # extreme numbers
    impressions[5]["context"] = {"surface": "", "ключ": "значение"}
    table = GlobalModelTable(settings.model)
    table.apply([initial_global_model_record(impressions[:10], settings.model)])  # later ones have unseen features
    model = table.current
    codec = SingleObjectCodec(load_schema("LabeledExample"))
    resolver = FeatureResolver(model, settings.model)
    rows = impression_rows(impressions)
    got = ExampleIndexer(settings.model, codec).examples(rows, model)
    for impression, value in zip(impressions, got):
        assert value == codec.encode(_reference_example(impression, model, settings, resolver))
    assert any(codec.decode(v)["unindexed_features"] for v in got)  # missed features were packed


def test_the_writer_refuses_a_labeled_example_schema_it_does_not_know():
    plain = dict(load_schema("LabeledExample").plain)
    plain["fields"] = [f for f in plain["fields"] if f["name"] != "context"]
    with pytest.raises(EncodeError, match="does not know schema"):
        check_labeled_example_schema(AvroSchema.from_json(json.dumps(plain)))
