"""The columnar decoder against fastavro, the oracle: property tests, garbage, schema changes, framing."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.codec import AvroSchema, DecodeError, SingleObjectCodec, load_schema
from stream.codec.avro import SINGLE_OBJECT_MAGIC
from stream.codec.columnar import (
    ColumnarDecoder,
    Status,
    UnsupportedSchemaError,
    decode_fallback,
    feature_hash,
)

IMPRESSION = load_schema("Impression")
CODEC = SingleObjectCodec(IMPRESSION)
DECODER = ColumnarDecoder.single_object(IMPRESSION)
# Where the columnar decoder follows the Avro specification and fastavro is lenient: fastavro reads an
# out-of-range int, a boolean byte of 2, a varint past 64 bits, and keeps the last of repeated map keys.
STRICTER_THAN_FASTAVRO = {Status.INT_OUT_OF_RANGE, Status.BAD_BOOLEAN, Status.BAD_VARINT, Status.DUPLICATE_MAP_KEY}

LONG_EDGES = [0, 1, -1, 63, -64, 64, -65, 8191, -8192, 2**31 - 1, -(2**31), 2**31, 2**62, -(2**62) - 1, 2**63 - 1, -(2**63)]
text = st.one_of(st.text(max_size=12), st.text(min_size=60, max_size=200))
longs = st.one_of(st.sampled_from(LONG_EDGES), st.integers(-(2**63), 2**63 - 1))
ints = st.one_of(st.sampled_from([0, -1, 2**31 - 1, -(2**31), 63, -64]), st.integers(-(2**31), 2**31 - 1))
ntv = st.fixed_dictionaries({"name": text, "term": text, "value": st.floats(width=64)})
bags = st.one_of(
    st.dictionaries(text, st.lists(ntv, max_size=5), max_size=4),
    st.dictionaries(text, st.lists(ntv, min_size=30, max_size=60), min_size=1, max_size=2),
    st.dictionaries(st.text(max_size=4), st.lists(ntv, max_size=1), min_size=17, max_size=24),
)


def impression_records(features: st.SearchStrategy, contexts: int) -> st.SearchStrategy:
    """Impression records with ``features`` for their bags and up to ``contexts`` context entries."""
    return st.fixed_dictionaries({
        "impression_id": text, "request_id": text, "member_id": text, "item_id": text,
        "position": ints, "event_time": longs, "random_bucket": st.booleans(),
        "features": features, "context": st.dictionaries(text, text, max_size=contexts),
    })


impressions = impression_records(bags, 20)


def bits(value: Any) -> Any:
    """``value`` with every float replaced by its IEEE bytes, so NaN compares equal to itself."""
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, dict):
        return {k: bits(v) for k, v in value.items()}
    if isinstance(value, list):
        return [bits(v) for v in value]
    return value


def fnv1a_reference(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


def assert_same_as_fastavro(decoder: ColumnarDecoder, codec: SingleObjectCodec, values: list[bytes]) -> None:
    batch = decoder.decode(values)
    assert batch.status.tolist() == [Status.OK] * len(values), [batch.reason(i) for i in range(len(values))]
    for i, value in enumerate(values):
        assert bits(batch.record(i)) == bits(codec.decode(value))


@settings(deadline=None)
@given(st.lists(impressions, min_size=1, max_size=6))
def test_every_field_equals_fastavro(records):
    values = [CODEC.encode(r) for r in records]
    assert_same_as_fastavro(DECODER, CODEC, values)
    batch = DECODER.decode(values)
    features = batch.columns["features"]
    for e in range(len(features.values)):
        bag, name, term = (
            batch.data[int(o) : int(o) + int(n)]
            for o, n in ((features.bag_offsets[e], features.bag_lengths[e]), (features.name_offsets[e], features.name_lengths[e]),
                         (features.term_offsets[e], features.term_lengths[e]))
        )
        assert int(features.hashes[e]) == fnv1a_reference(bag + b"\xff" + name + b"\xff" + term)
    assert features.row_offsets[-1] == sum(sum(len(b) for b in r["features"].values()) for r in records)
    assert batch.columns["position"].values.dtype == np.int32
    assert batch.columns["random_bucket"].values.dtype == np.bool_


def test_feature_hash_is_fnv1a_64_with_separators():
    assert fnv1a_reference(b"a") == 0xAF63DC4C8601EC8C  # the published FNV-1a 64 test vector
    assert feature_hash("member_skills", "skill", "python") == fnv1a_reference(b"member_skills\xffskill\xffpython")
    assert feature_hash("ab", "", "c") != feature_hash("a", "b", "c")


def test_strings_stay_in_the_batch_buffer_until_asked():
    values = [CODEC.encode(r) for r in (_record(member_id="m1"), _record(member_id="mémbre"))]
    batch = DECODER.decode(values)
    members = batch.columns["member_id"]
    second = int(members.offsets[1])
    assert batch.data[second : second + int(members.lengths[1])] == "mémbre".encode()
    assert second > len(values[0])  # an offset into the whole batch, not into the value
    assert [members.value(0), members.value(1)] == ["m1", "mémbre"]


def _record(**fields: Any) -> dict[str, Any]:
    record = {
        "impression_id": "imp-1", "request_id": "req-1", "member_id": "m1", "item_id": "j1", "position": 3,
        "event_time": 1_767_225_601_369, "random_bucket": True,
        "features": {"member_skills": [{"name": "skill", "term": "python", "value": 1.0},
                                       {"name": "skill", "term": "sql", "value": 0.5}], "empty": []},
        "context": {"surface": "feed", "device": "ios"},
    }
    record.update(fields)
    return record


def _replace(value: bytes, old: bytes, new: bytes) -> bytes:
    assert value.count(old) == 1
    return value.replace(old, new)


GOOD = CODEC.encode(_record())
BOOLEAN_AT = GOOD.index(b"\x04\x1amember_skills") - 1  # random_bucket, then the features map's first block
BAD_VALUES = {
    "truncated": (GOOD[:-3], Status.TRUNCATED, "context"),
    "trailing bytes": (GOOD + b"\x00", Status.TRAILING_BYTES, None),
    "bad UTF-8 in an id": (_replace(GOOD, b"\x0aimp-1", b"\x0aimp\xff1"), Status.BAD_UTF8, "impression_id"),
    "surrogate in a term": (_replace(GOOD, b"\x0cpython", b"\x0cpy\xed\xa0\x80n"), Status.BAD_UTF8, "features"),
    "overlong in a map key": (_replace(GOOD, b"\x0cdevice", b"\x0cde\xc0\xafce"), Status.BAD_UTF8, "context"),
    "negative string length": (_replace(GOOD, b"\x0aimp-1", b"\x09imp-1"), Status.NEGATIVE_LENGTH, "impression_id"),
    "boolean byte 2": (GOOD[:BOOLEAN_AT] + b"\x02" + GOOD[BOOLEAN_AT + 1 :], Status.BAD_BOOLEAN, "random_bucket"),
    "repeated map key": (_replace(GOOD, b"\x0cdevice", b"\x0esurface"), Status.DUPLICATE_MAP_KEY, "context"),
    "unknown writer fingerprint": (SINGLE_OBJECT_MAGIC + b"\x00" * 8 + GOOD[10:], Status.UNKNOWN_WRITER_SCHEMA, None),
    "wrong magic": (b"\xc3\x02" + GOOD[2:], Status.BAD_HEADER, None),
    "too short for a header": (GOOD[:7], Status.BAD_HEADER, None),
    "empty": (b"", Status.BAD_HEADER, None),
    "tombstone": (None, Status.MISSING_VALUE, None),
}


def test_hand_made_values_mean_what_the_tests_say():
    assert GOOD[BOOLEAN_AT] == 1
    assert _replace(GOOD, b"\x0cdevice", b"\x0esurface").count(b"\x0esurface") == 2


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_bad_value_gets_its_status_and_reason_and_the_batch_goes_on(case):
    bad, status, field = BAD_VALUES[case]
    others = [CODEC.encode(_record(member_id=f"m{i}", features={"b": [{"name": "n", "term": str(i), "value": i}]}))
              for i in range(3)]
    batch = DECODER.decode([others[0], bad, others[1], others[2]])
    assert batch.status.tolist() == [Status.OK, status, Status.OK, Status.OK]
    reason = batch.reason(1)
    assert reason is not None and reason.startswith("io.glmix.Impression: ") and "\n" not in reason
    if field is not None:
        assert f"field {field!r}" in reason
    assert batch.failures() == [(1, reason)]
    for row, value in zip((0, 2, 3), others):
        assert bits(batch.record(row)) == bits(CODEC.decode(value))
    assert batch.columns["features"].row_offsets.tolist() == [0, 1, 1, 2, 3]
    if bad is not None and status not in STRICTER_THAN_FASTAVRO:
        with pytest.raises(DecodeError):
            CODEC.decode(bad)


def test_unknown_writers_fall_back_to_fastavro_with_its_verdict():
    newer = _schema_with_fields([{"name": "surface", "type": "string", "default": ""}], drop=["context"])
    newer_codec = SingleObjectCodec(newer)
    reader_codec = SingleObjectCodec(IMPRESSION, writer_schemas=[newer])
    from_newer = newer_codec.encode({**_record(), "surface": "feed"})
    unknown = SINGLE_OBJECT_MAGIC + b"\x01" * 8 + GOOD[10:]
    values = [GOOD, from_newer, unknown]
    decoder = ColumnarDecoder.single_object(IMPRESSION, writer_schemas=[newer])  # lacks context: not compiled
    batch = decoder.decode(values)
    assert decoder.writer_count == 1
    assert batch.status.tolist() == [Status.OK, Status.UNKNOWN_WRITER_SCHEMA, Status.UNKNOWN_WRITER_SCHEMA]
    fallback = decode_fallback(reader_codec, values, batch)
    assert fallback.records == {1: reader_codec.decode(from_newer)}
    assert list(fallback.failures) == [2] and "unknown writer schema fingerprint" in fallback.failures[2]


def _schema_with_fields(extra: list[dict[str, Any]], drop: tuple[str, ...] | list[str] = (), name: str = "Impression") -> AvroSchema:
    definition = json.loads(IMPRESSION.to_json())
    definition["name"] = name
    definition["fields"] = [f for f in definition["fields"] if f["name"] not in drop] + extra
    return AvroSchema.from_json(definition)


EXTRA_FIELDS = [
    {"name": "campaign", "type": ["null", "string"], "default": None},
    {"name": "bid", "type": ["double", "null"], "default": 0.0},
    {"name": "slot", "type": ["null", "long"], "default": None},
    {"name": "surface", "type": {"type": "enum", "name": "Surface", "symbols": ["FEED", "SEARCH", "EMAIL"]}},
    {"name": "score", "type": "float"},
    {"name": "token", "type": "bytes"},
]
EXTENDED = _schema_with_fields(EXTRA_FIELDS)
EXTENDED_CODEC = SingleObjectCodec(EXTENDED)
EXTENDED_DECODER = ColumnarDecoder.single_object(EXTENDED)
extended = impressions.flatmap(lambda record: st.fixed_dictionaries({
    **{k: st.just(v) for k, v in record.items()},
    "campaign": st.none() | text, "bid": st.none() | st.floats(width=64), "slot": st.none() | longs,
    "surface": st.sampled_from(["FEED", "SEARCH", "EMAIL"]), "score": st.floats(width=32), "token": st.binary(max_size=40),
}))


@settings(deadline=None)
@given(st.lists(extended, min_size=1, max_size=4))
def test_a_field_added_to_the_schema_is_decoded_from_the_schema(records):
    assert_same_as_fastavro(EXTENDED_DECODER, EXTENDED_CODEC, [EXTENDED_CODEC.encode(r) for r in records])


def test_optional_fields_have_a_presence_mask_and_bad_union_index_a_status():
    base = {**_record(), "bid": None, "slot": 7, "surface": "SEARCH", "score": 0.5, "token": b"\x00\xff"}
    values = [EXTENDED_CODEC.encode({**base, "campaign": None}), EXTENDED_CODEC.encode({**base, "campaign": "c"})]
    batch = EXTENDED_DECODER.decode(values)
    assert batch.columns["campaign"].present.tolist() == [False, True]
    assert batch.columns["bid"].present.tolist() == [False, False]
    assert batch.columns["surface"].values.tolist() == [1, 1]
    bad = EXTENDED_CODEC.encode({**base, "campaign": "c"})
    body_end = bad.rindex(b"\x02\x02c")  # campaign: branch 1, then the 1-char string
    batch = EXTENDED_DECODER.decode([bad[:body_end] + b"\x04" + bad[body_end + 1 :]])
    assert batch.status[0] == Status.BAD_UNION_INDEX and "'campaign'" in batch.reason(0)


def test_a_writer_with_an_extra_field_is_compiled_and_the_field_dropped():
    newer = _schema_with_fields([{"name": "surface", "type": "string", "default": ""}])
    value = SingleObjectCodec(newer).encode({**_record(), "surface": "feed"})
    decoder = ColumnarDecoder.single_object(IMPRESSION, writer_schemas=[newer])
    batch = decoder.decode([value])
    assert decoder.writer_count == 2 and batch.status[0] == Status.OK
    assert batch.record(0) == SingleObjectCodec(IMPRESSION, writer_schemas=[newer]).decode(value)


@pytest.mark.parametrize("avro_type", [{"type": "array", "items": "string"}, ["null", "string", "long"],
                                       {"type": "map", "values": "long"}, {"type": "fixed", "name": "F", "size": 4}])
def test_a_field_type_without_an_op_fails_loudly_when_the_decoder_is_built(avro_type):
    schema = _schema_with_fields([{"name": "novel", "type": avro_type}])
    with pytest.raises(UnsupportedSchemaError, match=r"Impression\.novel"):
        ColumnarDecoder.single_object(schema)


def test_negative_block_counts_are_read_as_the_specification_says():
    body = GOOD[10:]
    context = b"\x04\x0esurface\x08feed\x0cdevice\x06ios\x00"
    assert body.endswith(context)
    blocked = b"\x03\x22\x0esurface\x08feed\x0cdevice\x06ios\x00"  # count -2, then the block's size in bytes
    value = GOOD[: len(GOOD) - len(context)] + blocked
    batch = DECODER.decode([value])
    assert batch.status[0] == Status.OK and batch.record(0) == CODEC.decode(value)


def test_registry_framing():
    decoder = ColumnarDecoder.registry(IMPRESSION, {7: IMPRESSION})
    body = GOOD[10:]
    batch = decoder.decode([b"\x00\x00\x00\x00\x07" + body, b"\x00\x00\x00\x00\x08" + body, b"\x01" + body])
    assert batch.status.tolist() == [Status.OK, Status.UNKNOWN_WRITER_SCHEMA, Status.BAD_HEADER]
    assert batch.record(0) == CODEC.decode(GOOD)


def test_an_empty_batch():
    batch = DECODER.decode([])
    assert len(batch) == 0 and batch.columns["features"].row_offsets.tolist() == [0]


def _agrees_with_fastavro(values: list[bytes]) -> None:
    batch = DECODER.decode(values)
    for i, value in enumerate(values):
        try:
            expected = CODEC.decode(value)
        except DecodeError:
            assert batch.status[i] != Status.OK, value
            continue
        if batch.status[i] == Status.OK:
            assert bits(batch.record(i)) == bits(expected)
        else:
            assert Status(int(batch.status[i])) in STRICTER_THAN_FASTAVRO, batch.reason(i)


@settings(deadline=None)
@given(impressions, st.data())
def test_corrupted_values_get_a_status_wherever_fastavro_fails(record, data):
    value = bytearray(CODEC.encode(record))
    for _ in range(data.draw(st.integers(1, 3))):
        value[data.draw(st.integers(10, len(value) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(10, len(value)))
    _agrees_with_fastavro([bytes(value), bytes(value[:cut]), GOOD])


@settings(deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_random_bodies_get_a_status_wherever_fastavro_fails(bodies):
    _agrees_with_fastavro([GOOD[:10] + body for body in bodies] + [bytes(b) for b in bodies])


BODIES = ColumnarDecoder.bodies(IMPRESSION)
# Bodies back to back need varied lengths (short and long strings, empty and full bags), not the long bags above.
small_impressions = impression_records(st.dictionaries(text, st.lists(ntv, max_size=5), max_size=4), 4)


def _bare_body(record: dict[str, Any]) -> bytes:
    return CODEC.encode(record)[len(CODEC.header()) :]


@settings(deadline=None)
@given(st.lists(small_impressions, min_size=2, max_size=5))
def test_bodies_back_to_back_are_found_and_decoded_as_fastavro_reads_each(records):
    """A container block's bodies have no lengths: the sequential mode finds each end by decoding the body."""
    bodies = [_bare_body(r) for r in records]
    batch = BODIES.decode_bodies(b"".join(bodies), len(bodies))
    assert batch.status.tolist() == [Status.OK] * len(bodies), batch.failures()
    assert np.diff(batch.starts).tolist() == [len(b) for b in bodies]
    for i, record in enumerate(records):
        assert bits(batch.record(i)) == bits(CODEC.decode(CODEC.header() + bodies[i]))


@settings(deadline=None)
@given(st.lists(small_impressions, min_size=2, max_size=5), st.data())
def test_after_a_body_that_does_not_decode_every_later_body_fails_and_nothing_before(records, data):
    bodies = [_bare_body(r) for r in records]
    broken = data.draw(st.integers(0, len(bodies) - 1))
    bodies[broken] = b"\xff" * 11  # the impression id's length: a varint past 64 bits
    batch = BODIES.decode_bodies(b"".join(bodies), len(bodies))
    assert np.flatnonzero(batch.status != Status.OK).tolist() == list(range(broken, len(bodies)))
    assert batch.status[broken] == Status.BAD_VARINT and "field 'impression_id'" in batch.reason(broken)
    assert all(batch.status[i] == Status.AFTER_UNDECODABLE for i in range(broken + 1, len(bodies)))
    for i in range(broken):
        assert bits(batch.record(i)) == bits(CODEC.decode(CODEC.header() + bodies[i]))


def test_bytes_after_the_last_body_fail_the_last_one():
    good = _bare_body(_record())
    batch = BODIES.decode_bodies(good + good + b"\x00", 2)
    assert batch.status.tolist() == [Status.OK, Status.TRAILING_BYTES]
    assert "trailing bytes" in batch.reason(1)
