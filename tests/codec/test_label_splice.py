"""Splicing a label into a stored LabeledExample: byte for byte what encoding the labeled record gives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.codec import AvroSchema, DecodeError, EncodeError, SingleObjectCodec, load_schema, make_codec
from stream.codec.label_splice import LabelSplicer

from .test_avro import examples, millis, text

SCHEMA = load_schema("LabeledExample")
STORED = SingleObjectCodec(SCHEMA)
HEADER = len(STORED.header())

labels = st.fixed_dictionaries({
    "label": st.floats(allow_nan=False, width=64), "label_time": st.integers(-(2**62), 2**62),
    "interaction_types": st.lists(text, max_size=4), "scores": st.dictionaries(text, st.floats(-1e300, 1e300), max_size=4),
    "model_versions": st.dictionaries(text, st.integers(-(2**62), 2**62), max_size=4),
})


def unlabeled(example: dict) -> dict:
    return dict(example, label=0.0, label_time=example["event_time"], interaction_types=[], scores={}, model_versions={})


@given(examples, labels)
def test_spliced_value_is_the_encoding_of_the_labeled_record(example, label) -> None:
    stored = STORED.encode(unlabeled(example))
    labeled = dict(unlabeled(example), **label)
    assert STORED.header() + LabelSplicer(SCHEMA).body(stored, HEADER, labeled) == STORED.encode(labeled)


@given(examples, millis)
def test_event_times_of_every_varint_length_splice(example, event_time) -> None:
    record = unlabeled(dict(example, event_time=event_time))
    labeled = dict(record, label=1.0, label_time=event_time + 1, interaction_types=["CLICK"], scores={"global": 0.5})
    body = LabelSplicer(SCHEMA).body(STORED.encode(record), HEADER, labeled)
    assert STORED.decode(STORED.header() + body) == dict(labeled, model_versions={})


def test_a_stored_value_that_already_has_scores_is_refused() -> None:
    example = unlabeled({
        "example_id": "i", "member_id": "m", "item_id": "j", "weight": 1.0, "offset": 0.0, "event_time": 5,
        "global_features": {"indices": b"", "values": b""}, "coordinates": {},
    })
    stored = STORED.encode(dict(example, scores={"global": 1.0}))
    with pytest.raises(DecodeError, match="already has"):
        LabelSplicer(SCHEMA).body(stored, HEADER, dict(example, label=1.0))


def test_a_schema_with_another_field_order_is_refused() -> None:
    reordered = dict(SCHEMA.plain)
    fields = list(reordered["fields"])
    fields[3], fields[4] = fields[4], fields[3]
    other = AvroSchema.from_json({k: v for k, v in dict(reordered, fields=fields).items() if not k.startswith("__")})
    with pytest.raises(EncodeError, match="not the LabeledExample order"):
        LabelSplicer(other)


def test_the_examples_topics_write_the_stored_schema() -> None:
    """The joiner splices only into topics whose codec writes the join state's schema; today that is every one."""
    assert make_codec("LabeledExample", "examples").schema.fingerprint == LabelSplicer(SCHEMA).fingerprint
