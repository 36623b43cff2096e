"""Photon-ML GAME input records read by the [game_input] mapping: Photon-ML's own field conventions, and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.cli import main
from stream.codec.game_input import GameInputError, GameInputMapping, read_game_rows
from stream.config import ConfigError, load_settings
from tests.game_inputs import game_schema, ratings_world, write_config, write_records


def _settings(tmp_path, loss="linear", **overrides):
    return load_settings(write_config(tmp_path / "glmix.toml", loss), overrides=overrides)


def test_records_read_as_photon_reads_them(tmp_path):
    """Top-level int ids become strings, an id in metadataMap is found there, a null term is '', defaults fill in."""
    world = ratings_world(records=5)
    path = write_records(tmp_path / "in.avro", world.records(np.arange(5)))
    rows = read_game_rows([path], GameInputMapping.of(_settings(tmp_path)))
    assert len(rows) == 5
    first = rows.rows[0]
    assert first["context"] == {"userId": str(world.users[0]), "songId": str(world.songs[0]),
                                "artistId": f"a{world.artists[0]}"}
    assert (first["member_id"], first["item_id"], first["impression_id"]) == ("", "", "r0")
    assert first["features"]["features"] == [{"name": "genre", "term": str(world.genres[0]), "value": 1.0},
                                             {"name": "popular", "term": "", "value": 1.0 if world.genres[0] < 2 else 0.5}]
    assert [f["value"] for f in first["features"]["userFeatures"]] == world.user_x[0].tolist()
    assert set(first["features"]) == {"features", "userFeatures", "songFeatures"}
    np.testing.assert_array_equal(rows.labels, world.responses[:5])
    assert rows.weights == [1.0] * 5 and rows.offsets == [0.0] * 5 and rows.event_times == []
    assert rows.uids == [f"r{i}" for i in range(5)]
    assert GameInputMapping.of(_settings(tmp_path)).id_tags(first) == {
        "userId": str(world.users[0]), "songId": str(world.songs[0]), "artistId": f"a{world.artists[0]}"}


def test_the_mapping_renames_bags_ids_and_fields(tmp_path):
    """The default member/job model read from ratings records: bags and ids mapped, response/uid/offset renamed."""
    schema = {"type": "record", "name": "Rated", "fields": [
        {"name": "rating", "type": "float"},
        {"name": "key", "type": "long"},
        {"name": "bias", "type": ["null", "double"]},
        {"name": "ids", "type": ["null", {"type": "map", "values": "string"}]},
        {"name": "userFeatures", "type": {"type": "array", "items": {"type": "record", "name": "F", "fields": [
            {"name": "name", "type": "string"}, {"name": "value", "type": ["float", "double"]}]}}},
        {"name": "songFeatures", "type": ["null", {"type": "array", "items": "F"}]},
    ]}
    records = [{"rating": 4.0, "key": 17, "bias": 0.25, "ids": {"userId": "u1", "songId": "s9"},
                "userFeatures": [{"name": "age", "value": 0.5}], "songFeatures": None}]
    path = write_records(tmp_path / "in.avro", records, schema)
    bags = {f"game_input.bags.{bag}": "userFeatures" for bag in ("member_title", "member_skills", "member_seniority",
                                                                 "member_location")}
    bags.update({f"game_input.bags.{bag}": "songFeatures" for bag in ("job_title", "job_skills", "job_company",
                                                                     "job_seniority")})
    settings = load_settings(overrides={
        **bags, "game_input.ids.member": "userId", "game_input.ids.job": "songId", "game_input.response": "rating",
        "game_input.uid": "key", "game_input.offset": "bias", "game_input.metadata_map": "ids", "model.loss": "linear"})
    rows = read_game_rows([path], GameInputMapping.of(settings))
    (row,) = rows.rows
    assert (row["member_id"], row["item_id"], row["impression_id"]) == ("u1", "s9", "17")
    assert row["features"]["member_skills"] == [{"name": "age", "term": "", "value": 0.5}]
    assert row["features"]["job_title"] == []
    assert (rows.responses, rows.offsets) == ([4.0], [0.25])


@pytest.mark.parametrize("schema_change, named", [
    (lambda fields: [f for f in fields if f["name"] != "response"], "no field 'response' (the response, game_input.response)"),
    (lambda fields: [f for f in fields if f["name"] != "songFeatures"],
     "no field 'songFeatures' (model bag 'songFeatures', game_input.bags.songFeatures)"),
    (lambda fields: [f for f in fields if f["name"] != "metadataMap"],
     "no field 'artistId' and no 'metadataMap' map to find it in (coordinate 'per-artist''s entity id"),
    (lambda fields: [f if f["name"] != "response" else {"name": "response", "type": "string"} for f in fields],
     "field 'response' is string, not int or long or float or double"),
    (lambda fields: [f if f["name"] != "userFeatures" else {"name": "userFeatures", "type": {"type": "map", "values": "double"}}
                     for f in fields], "field 'userFeatures' is map, not an array of name-term-value records"),
    (lambda fields: [f if f["name"] != "songFeatures" else {"name": "songFeatures", "type": {"type": "array", "items": {
        "type": "record", "name": "Bare", "fields": [{"name": "name", "type": "string"}]}}} for f in fields],
     "the items of field 'songFeatures' have no int or long or float or double 'value'"),
], ids=["no-response", "no-bag", "no-id-nor-map", "string-response", "map-bag", "valueless-items"])
def test_glmix_train_refuses_a_schema_without_a_configured_field_in_one_line(tmp_path, capsys, schema_change, named):
    schema = game_schema()
    schema["fields"] = schema_change(schema["fields"])
    world = ratings_world(records=3)
    records = world.records(np.arange(3))
    if any(f["name"] == "response" and f["type"] == "string" for f in schema["fields"]):
        records = [{**r, "response": "4"} for r in records]
    if any(f["name"] == "userFeatures" and f["type"]["type"] == "map" for f in schema["fields"]):
        records = [{**r, "userFeatures": {"u0": 1.0}} for r in records]
    if any(f["name"] == "songFeatures" and f["type"]["items"] != "com.example.ratings.Feature" for f in schema["fields"]):
        records = [{**r, "songFeatures": [{"name": "s"}]} for r in records]
    path = write_records(tmp_path / "bad.avro", records, schema)
    assert main(["train", "--config", str(write_config(tmp_path / "glmix.toml")), "--from", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"glmix: error: {path}: ") and named in err[0], err


def test_a_record_without_its_id_or_response_is_refused_naming_the_record(tmp_path):
    world = ratings_world(records=3)
    records = world.records(np.arange(3))
    records[2]["metadataMap"] = {}
    mapping = GameInputMapping.of(_settings(tmp_path))
    with pytest.raises(GameInputError, match=r"in\.avro: record 2: no id 'artistId' at top level or in 'metadataMap'"):
        read_game_rows([write_records(tmp_path / "in.avro", records)], mapping)
    records = world.records(np.arange(3))
    records[1]["response"] = None
    path = write_records(tmp_path / "null.avro", records)
    with pytest.raises(GameInputError, match=r"null\.avro: record 1: 'response' is null"):
        read_game_rows([path], mapping)
    scoring = read_game_rows([path], mapping, require_response=False)  # scoring takes records without a response
    assert math.isnan(scoring.responses[1]) and scoring.has_responses.tolist() == [True, False, True]


def test_a_response_the_loss_cannot_take_is_refused(tmp_path, capsys):
    world = ratings_world(records=4)  # linear responses given to a logistic model
    path = write_records(tmp_path / "ratings.avro", world.records(np.arange(4)))
    assert main(["train", "--config", str(write_config(tmp_path / "glmix.toml", "logistic")), "--from", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}: record 0: response {world.responses[0]} is not a label of the model's loss" in err


def test_event_times_from_a_field_a_logical_timestamp_or_the_map(tmp_path):
    world = ratings_world(records=3)
    records = world.records(np.arange(3))
    mapping = GameInputMapping.of(_settings(tmp_path, **{"game_input.event_time": "timestamp"}))
    rows = read_game_rows([write_records(tmp_path / "a.avro", records)], mapping, require_time=True)
    assert rows.event_times == world.times[:3].tolist()
    schema = game_schema()
    schema["fields"] = [f if f["name"] != "timestamp" else {"name": "timestamp", "type": {
        "type": "long", "logicalType": "timestamp-millis"}} for f in schema["fields"]]
    rows = read_game_rows([write_records(tmp_path / "b.avro", records, schema)], mapping, require_time=True)
    assert rows.event_times == world.times[:3].tolist()
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "timestamp"]
    in_map = [{**{k: v for k, v in r.items() if k != "timestamp"},
               "metadataMap": {**r["metadataMap"], "timestamp": str(r["timestamp"])}} for r in records]
    rows = read_game_rows([write_records(tmp_path / "c.avro", in_map, schema)], mapping, require_time=True)
    assert rows.event_times == world.times[:3].tolist()
    with pytest.raises(GameInputError, match="set game_input.event_time"):
        read_game_rows([tmp_path / "a.avro"], GameInputMapping.of(_settings(tmp_path)), require_time=True)


def test_mapping_keys_must_name_the_models_bags_and_coordinates(tmp_path):
    with pytest.raises(ConfigError, match="game_input.ids.per-album': is not a configured coordinate"):
        _settings(tmp_path, **{"game_input.ids.per-album": "albumId"})
    with pytest.raises(ConfigError, match="game_input.bags.albumFeatures': is not a bag of the model"):
        _settings(tmp_path, **{"game_input.bags.albumFeatures": "x"})


def test_a_file_that_is_not_avro_is_one_line(tmp_path):
    path = tmp_path / "junk.avro"
    path.write_bytes(b"not avro")
    with pytest.raises(GameInputError, match="junk.avro: not an Avro container file"):
        read_game_rows([path], GameInputMapping.of(_settings(tmp_path)))
