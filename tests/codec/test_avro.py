"""Avro codecs: property-based round trips, schema evolution, malformed bytes, registry framing."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.codec import AvroSchema, DecodeError, EncodeError, SingleObjectCodec, decode_batch, load_schema, make_codec

text = st.text(max_size=12)
millis = st.integers(0, 2**41)
ntv = st.fixed_dictionaries({"name": text, "term": text, "value": st.floats(allow_nan=False, width=64)})
bags = st.dictionaries(text, st.lists(ntv, max_size=4), max_size=3)

impressions = st.fixed_dictionaries({
    "impression_id": text, "request_id": text, "member_id": text, "item_id": text,
    "position": st.integers(-(2**31), 2**31 - 1), "event_time": millis, "random_bucket": st.booleans(),
    "features": bags, "context": st.dictionaries(text, text, max_size=3),
})
interactions = st.fixed_dictionaries({
    "interaction_id": text, "impression_id": text, "member_id": text, "item_id": st.none() | text,
    "type": st.sampled_from(["UNKNOWN", "CLICK", "APPLY", "SAVE", "DISMISS", "SHARE"]), "event_time": millis,
})
packed = st.binary(max_size=64)
examples = st.fixed_dictionaries({
    "example_id": text, "member_id": text, "item_id": text, "label": st.floats(0, 1), "weight": st.floats(0, 10),
    "offset": st.floats(-5, 5), "event_time": millis, "label_time": millis,
    "interaction_types": st.lists(text, max_size=3), "scores": st.dictionaries(text, st.floats(-10, 10), max_size=3),
    "model_versions": st.dictionaries(text, st.integers(0, 2**40), max_size=3),
    "global_features": st.fixed_dictionaries({"indices": packed, "values": packed}),
    "coordinates": st.dictionaries(text, st.fixed_dictionaries({"entity_id": text, "dense": packed}), max_size=2),
    "index_version": st.integers(0, 2**40), "unindexed_features": st.one_of(st.none(), packed),
    "random_bucket": st.booleans(), "position": st.integers(-1, 100), "context": st.dictionaries(text, text, max_size=2),
})
doubles = st.lists(st.floats(allow_nan=False, width=64), max_size=8)
entity_models = st.fixed_dictionaries({
    "coordinate": text, "entity_id": text, "version": st.integers(0, 2**50), "means": doubles,
    "precision_kind": st.sampled_from(["DIAGONAL", "PACKED_UPPER"]), "precision": packed,
    "index_version": st.integers(0, 9), "source_partition": st.integers(-1, 99), "source_offset": st.integers(-1, 2**40),
    "event_count": st.integers(0, 2**40), "last_event_time": millis, "published_time": millis,
})
global_models = st.fixed_dictionaries({
    "model_name": text, "version": st.integers(0, 2**40), "loss": st.sampled_from(["logistic", "linear", "poisson"]),
    "features": st.lists(st.fixed_dictionaries({"name": text, "term": text}), max_size=5), "coefficients": doubles,
    "coordinate_indices": st.dictionaries(text, st.lists(st.fixed_dictionaries({"name": text, "term": text}), max_size=3), max_size=2),
    "index_version": st.integers(0, 9), "holdout_metrics": st.dictionaries(text, st.floats(0, 1), max_size=3),
    "created_time": millis,
})

CASES = {"Impression": impressions, "Interaction": interactions, "LabeledExample": examples,
         "EntityModel": entity_models, "GlobalModel": global_models}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("registry", ["", "mock://glmix-tests"], ids=["single-object", "schema-registry"])
def test_round_trip(name, registry):
    codec = make_codec(name, f"topic-{name}", registry_url=registry)

    @given(CASES[name])
    def check(record):
        assert codec.decode(codec.encode(record)) == record

    check()


def test_single_object_header_carries_the_schema_fingerprint():
    codec = make_codec("Interaction", "t")
    payload = codec.encode({"interaction_id": "i", "impression_id": "p", "member_id": "m", "item_id": None,
                            "type": "CLICK", "event_time": 1})
    assert payload[:2] == b"\xc3\x01"
    assert payload[2:10] == load_schema("Interaction").fingerprint


def _evolved_impression() -> AvroSchema:
    """A future Impression: a new field with a default, the context field dropped."""
    schema = json.loads(load_schema("Impression").to_json())
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "context"]
    schema["fields"].append({"name": "surface", "type": "string", "default": "feed"})
    return AvroSchema.from_json(schema)


def test_old_reader_reads_a_newer_writer_and_back():
    current, newer = load_schema("Impression"), _evolved_impression()
    record = {"impression_id": "i", "request_id": "r", "member_id": "m", "item_id": "j", "position": 2,
              "event_time": 5, "random_bucket": True, "features": {}}
    new_bytes = SingleObjectCodec(newer).encode({**record, "surface": "email"})
    old_reader = SingleObjectCodec(current, writer_schemas=[newer])
    assert old_reader.decode(new_bytes) == {**record, "context": {}}
    old_bytes = SingleObjectCodec(current).encode({**record, "context": {"k": "v"}})
    new_reader = SingleObjectCodec(newer, writer_schemas=[current])
    assert new_reader.decode(old_bytes) == {**record, "surface": "feed"}


def test_unknown_enum_symbols_read_as_unknown():
    schema = json.loads(load_schema("Interaction").to_json())
    schema["fields"][4]["type"]["symbols"].append("REPORT")
    newer = AvroSchema.from_json(schema)
    payload = SingleObjectCodec(newer).encode({"interaction_id": "i", "impression_id": "p", "member_id": "m",
                                               "item_id": None, "type": "REPORT", "event_time": 1})
    assert SingleObjectCodec(load_schema("Interaction"), [newer]).decode(payload)["type"] == "UNKNOWN"


@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_the_typed_error(data):
    codec = make_codec("Impression", "t")
    try:
        codec.decode(data)
    except DecodeError as exc:
        assert exc.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "header"),
        (b"\x00\x00\x00\x00\x01abc", "header"),
        (b"\xc3\x01" + b"\x00" * 8 + b"x", "unknown writer schema"),
    ],
)
def test_malformed_values_say_why(payload, reason):
    with pytest.raises(DecodeError, match=reason):
        make_codec("Impression", "t").decode(payload)


def test_truncated_and_padded_bodies_are_rejected():
    codec = make_codec("Interaction", "t")
    good = codec.encode({"interaction_id": "i", "impression_id": "p", "member_id": "m", "item_id": "j",
                         "type": "APPLY", "event_time": 9})
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        codec.decode(good[:-4])
    with pytest.raises(DecodeError, match="trailing bytes"):
        codec.decode(good + b"\x00")


def test_records_that_do_not_fit_the_schema_raise_encode_error():
    with pytest.raises(EncodeError):
        make_codec("Interaction", "t").encode({"interaction_id": "i"})


class StubMessage:
    """The slice of confluent_kafka.Message the batch decoder reads."""

    def __init__(self, value, error=None, offset=0):
        self._value, self._error, self._offset = value, error, offset

    def value(self):
        return self._value

    def error(self):
        return self._error

    def topic(self):
        return "t"

    def partition(self):
        return 0

    def offset(self):
        return self._offset


def test_decode_batch_separates_good_records_from_failures():
    codec = make_codec("Interaction", "t")
    good = codec.encode({"interaction_id": "i", "impression_id": "p", "member_id": "m", "item_id": None,
                         "type": "CLICK", "event_time": 3})
    batch = decode_batch(codec, [StubMessage(good, offset=0), StubMessage(b"junk", offset=1),
                                 StubMessage(None, offset=2), StubMessage(good, error="broker down", offset=3)])
    assert [r["interaction_id"] for r in batch.records] == ["i"]
    assert [m.offset() for m, _ in batch.failures] == [1, 2, 3]
    assert all(isinstance(e, DecodeError) and e.reason for _, e in batch.failures)


def test_nan_survives_encoding_for_the_pipeline_to_reject():
    codec = make_codec("EntityModel", "t")
    record = {"coordinate": "m", "entity_id": "e", "version": 1, "means": [math.nan], "precision_kind": "DIAGONAL",
              "precision": b"\x00" * 8}
    assert math.isnan(codec.decode(codec.encode(record))["means"][0])
