"""The compiled scan of LabeledExample values for one coordinate, with fastavro as the oracle."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.codec import AvroSchema, DecodeError, SingleObjectCodec, load_schema
from stream.codec.avro import REGISTRY_MAGIC, SINGLE_OBJECT_MAGIC
from stream.codec.columnar import Status
from stream.codec.container import container_bodies
from stream.codec.labeled_example import rescanned, scan_bodies, scan_labeled
from stream.updaters.examples import ExampleReader, valid_entity_batches
from tests.codec.test_columnar import LONG_EDGES, STRICTER_THAN_FASTAVRO, ints, longs, text

SCHEMA = load_schema("LabeledExample")
CODEC = SingleObjectCodec(SCHEMA)
COORDINATE, DIM = "member", 3
doubles = st.one_of(st.floats(width=64), st.sampled_from([0.0, -0.0, 1e308, -1e-308, float("inf"), float("nan")]))
coordinate_names = st.one_of(st.sampled_from([COORDINATE, "job", "company", "membe", "member2", "é"]), text)
features = st.fixed_dictionaries({
    "entity_id": st.one_of(text, st.just("")),
    "dense": st.one_of(st.binary(max_size=20), st.binary(min_size=4 * DIM, max_size=4 * DIM)),
})
examples = st.fixed_dictionaries({
    "example_id": text, "member_id": text, "item_id": text,
    "label": doubles, "weight": doubles, "offset": doubles,
    "event_time": longs, "label_time": longs,
    "interaction_types": st.lists(text, max_size=4),
    "scores": st.dictionaries(coordinate_names, doubles, max_size=5),
    "model_versions": st.dictionaries(coordinate_names, longs, max_size=4),
    "global_features": st.fixed_dictionaries({"indices": st.binary(max_size=24), "values": st.binary(max_size=24)}),
    "coordinates": st.one_of(
        st.dictionaries(coordinate_names, features, max_size=3),
        st.dictionaries(coordinate_names, features, min_size=17, max_size=20),
    ),
    "index_version": st.one_of(st.sampled_from(LONG_EDGES), longs),
    "random_bucket": st.booleans(),
    "position": ints,
    "context": st.dictionaries(text, text, max_size=20),
    "unindexed_features": st.one_of(st.none(), st.binary(max_size=30)),
})


def scan(values: list[bytes | None]):
    return scan_labeled(values, SINGLE_OBJECT_MAGIC, [CODEC.header()], COORDINATE, DIM)


def expected_margin(record: dict[str, Any]) -> float:
    total = 0.0
    for name, value in record["scores"].items():  # wire order, as the updater sums them
        if name != COORDINATE:
            total += value
    return record["offset"] + total


def same(a: float, b: float) -> bool:
    return bool(np.array_equal(np.float64(a), np.float64(b), equal_nan=True))


def assert_row_is(columns, row: int, record: dict[str, Any]) -> None:
    assert columns.status[row] == Status.OK, columns.reason(row)
    for name in ("label", "weight"):
        assert same(getattr(columns, name)[row], record[name]), name
    assert same(columns.margin[row], expected_margin(record))
    assert columns.event_time[row] == record["event_time"] and columns.label_time[row] == record["label_time"]
    assert columns.index_version[row] == record["index_version"]
    assert same(columns.offset[row], record["offset"]) and columns.random_bucket[row] == record["random_bucket"]
    assert columns.example_ids(np.array([row])) == [record["example_id"]]
    assert columns.unindexed_features(np.array([row])) == [record["unindexed_features"]]
    for k, part in enumerate(("indices", "values")):
        at, length = (columns.global_indices, columns.global_values)[k][:, row]
        assert columns.data[at : at + length].tobytes() == record["global_features"][part]
    mine = record["coordinates"].get(COORDINATE)
    assert bool(columns.found[row]) == (mine is not None)
    if mine is not None:
        assert columns.entity_ids(np.array([row])) == [mine["entity_id"]]
        at, length = columns.dense[:, row]
        assert columns.data[at : at + length].tobytes() == mine["dense"]
        if len(mine["dense"]) == 4 * DIM:
            assert np.array_equal(columns.features(np.array([row]))[0], np.frombuffer(mine["dense"], "<f4"), equal_nan=True)


@settings(deadline=None)
@given(st.lists(examples, min_size=1, max_size=5))
def test_every_field_the_update_reads_equals_fastavro(records):
    values = [CODEC.encode(r) for r in records]
    columns = scan(values)
    for row, value in enumerate(values):
        assert_row_is(columns, row, CODEC.decode(value))


def _container(records: list[dict[str, Any]], schema: AvroSchema = SCHEMA) -> io.BytesIO:
    out = io.BytesIO()
    # Without logical types, so that fastavro, the oracle, reads extreme times as the ints they are.
    fastavro.writer(out, schema.plain, records, sync_interval=64)  # small blocks: several per file
    out.seek(0)
    return out


@settings(deadline=None)
@given(st.lists(examples, min_size=1, max_size=8))
def test_a_container_files_bodies_scan_back_to_back_as_fastavro_reads_them(records):
    blocks = list(container_bodies(_container(records), "LabeledExample"))
    columns = scan_bodies(b"".join(data for data, _ in blocks), sum(n for _, n in blocks), COORDINATE, DIM)
    decoded = list(fastavro.reader(_container(records)))
    assert len(columns) == len(decoded)
    for row, record in enumerate(decoded):
        assert_row_is(columns, row, record)
    again = rescanned(columns, "job", DIM)
    for row, record in enumerate(decoded):
        assert bool(again.found[row]) == ("job" in record["coordinates"])


def test_an_older_writer_schemas_container_is_resolved_and_scanned_like_the_shipped_one():
    plain = json.loads(SCHEMA.to_json())
    plain["fields"] = [f for f in plain["fields"] if f["name"] != "position"]  # the reader's default fills it
    older = AvroSchema.from_json(json.dumps(plain))
    record = {k: v for k, v in _record().items() if k != "position"}
    blocks = list(container_bodies(_container([record, record], older), "LabeledExample"))
    columns = scan_bodies(b"".join(data for data, _ in blocks), 2, COORDINATE, DIM)
    assert columns.ok.all() and columns.label.tolist() == [1.0, 1.0] and columns.margin.tolist() == [0.875, 0.875]


def test_a_body_that_does_not_scan_fails_the_bodies_after_it():
    body = CODEC.encode(_record())[len(CODEC.header()) :]
    columns = scan_bodies(body + body[:-3] + body, 3, COORDINATE, DIM)
    assert columns.status[0] == Status.OK and (columns.status[1:] != Status.OK).all()
    assert scan_bodies(body + body + b"\0", 2, COORDINATE, DIM).status.tolist() == [Status.OK, Status.TRAILING_BYTES]


def _agrees_with_fastavro(values: list[bytes]) -> None:
    columns = scan(values)
    for row, value in enumerate(values):
        try:
            record = CODEC.decode(value)
        except DecodeError:
            assert columns.status[row] != Status.OK, value
            continue
        if columns.status[row] == Status.OK:
            assert_row_is(columns, row, record)
        else:
            assert Status(int(columns.status[row])) in STRICTER_THAN_FASTAVRO, columns.reason(row)


@settings(deadline=None)
@given(examples, st.data())
def test_corrupted_values_get_a_status_wherever_fastavro_fails(record, data):
    good = CODEC.encode(record)
    value = bytearray(good)
    for _ in range(data.draw(st.integers(1, 3))):
        value[data.draw(st.integers(10, len(value) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(10, len(value)))
    _agrees_with_fastavro([bytes(value), bytes(value[:cut]), good, bytes(value) + b"\0"])


@settings(deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_random_bodies_get_a_status_wherever_fastavro_fails(bodies):
    _agrees_with_fastavro([CODEC.header() + body for body in bodies] + [bytes(b) for b in bodies])


def _record(**fields: Any) -> dict[str, Any]:
    record = {
        "example_id": "x", "member_id": "m1", "item_id": "j", "label": 1.0, "weight": 2.0, "offset": 0.5,
        "event_time": 10, "label_time": 20, "scores": {"global": 0.25, COORDINATE: 9.0, "job": 0.125},
        "global_features": {"indices": b"", "values": b""}, "index_version": 3,
        "coordinates": {COORDINATE: {"entity_id": "m1", "dense": np.arange(DIM, dtype="<f4").tobytes()}},
    }
    return {**record, **fields}


def test_a_bad_value_is_named_and_the_batch_goes_on():
    good = CODEC.encode(_record())
    values = [good, good[:-2], None, b"nope", CODEC.encode(_record(coordinates={})),
              CODEC.encode(_record(coordinates={COORDINATE: {"entity_id": "", "dense": b"\0" * 4 * DIM}})),
              CODEC.encode(_record(coordinates={COORDINATE: {"entity_id": "m2", "dense": b"\0" * 8}})),
              CODEC.encode(_record(weight=-1.0)), good]
    read = ExampleReader(CODEC, COORDINATE, DIM).read(values, np.arange(100, 100 + len(values)))
    reasons = dict(read.problems)
    assert read.rows.tolist() == [0, 7, 8]
    assert reasons[1] == "LabeledExample: truncated value in field 'context' at byte 119 of 119"
    assert reasons[2] == "LabeledExample: no value (a tombstone) at byte 0 of 0"
    assert reasons[3] == "LabeledExample: bad or missing framing header at byte 0 of 4"
    assert reasons[4] == "no features for coordinate 'member'"
    assert reasons[5] == "empty entity id for coordinate 'member'"
    assert reasons[6] == "coordinate 'member' has 2 features, expected 3"
    examples = read.examples
    assert examples.input_offsets.tolist() == [100, 107, 108]
    assert examples.offsets.tolist() == [0.5 + 0.25 + 0.125] * 3  # the fixed offset and the other coordinates' scores
    assert examples.features[0].tolist() == [0.0, 1.0, 2.0] and examples.entity_ids.tolist() == ["m1"] * 3
    [batch], invalid = valid_entity_batches(examples)
    assert invalid.tolist() == [1] and batch.mask.sum() == 2  # the negative weight


def test_other_writer_schemas_are_read_through_fastavro_and_framings_by_their_headers():
    plain = json.loads(SCHEMA.to_json())
    plain["fields"].append({"name": "extra", "type": "string", "default": ""})
    newer = AvroSchema.from_json(json.dumps(plain))
    writer = SingleObjectCodec(newer)
    reader_codec = SingleObjectCodec(SCHEMA, [newer])
    values = [writer.encode({**_record(), "extra": "e"}), CODEC.encode(_record()), writer.encode(_record())[:-1]]
    read = ExampleReader(reader_codec, COORDINATE, DIM).read(values, np.arange(3))
    assert read.rows.tolist() == [0, 1] and read.problems[0][0] == 2 and "truncated" in read.problems[0][1]
    assert read.examples.labels.tolist() == [1.0, 1.0] and read.examples.offsets.tolist() == [0.875, 0.875]
    # A framing is its header: a registry id of the shipped schema is scanned like the single-object header.
    registry = REGISTRY_MAGIC + (7).to_bytes(4, "big")
    body = CODEC.encode(_record())[len(CODEC.header()) :]
    columns = scan_labeled([registry + body, REGISTRY_MAGIC + (8).to_bytes(4, "big") + body], REGISTRY_MAGIC,
                           [registry], COORDINATE, DIM)
    assert columns.status.tolist() == [Status.OK, Status.UNKNOWN_WRITER_SCHEMA]


def test_a_repeated_map_key_is_a_bad_value():
    value = CODEC.encode(_record(scores={"aa": 1.0, "bb": 2.0}))
    repeated = value.replace(b"bb", b"aa")
    columns = scan([repeated])
    assert columns.status[0] == Status.DUPLICATE_MAP_KEY and "'scores'" in columns.reason(0)


@pytest.mark.parametrize("n", [0, 1])
def test_an_empty_or_one_value_batch(n):
    read = ExampleReader(CODEC, COORDINATE, DIM).read([CODEC.encode(_record())] * n, np.arange(n))
    assert len(read.examples) == n and read.problems == []
