"""Stored examples read and labeled as a batch: byte for byte what encoding the labeled records gives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.codec import DecodeError, SingleObjectCodec, load_schema, make_codec
from stream.codec.stored_example import scan_stored, splice_labels

from .test_avro import examples, millis, text

SCHEMA = load_schema("LabeledExample")
STORED = SingleObjectCodec(SCHEMA)
HEADER = len(STORED.header())

labels = st.fixed_dictionaries({
    "label": st.floats(allow_nan=False, width=64), "label_time": st.integers(-(2**62), 2**62),
    "symbols": st.lists(text, max_size=4, unique=True), "types": st.integers(0, 15),
    "scores": st.dictionaries(text, st.tuples(st.floats(-1e300, 1e300), st.integers(-(2**62), 2**62)), max_size=4),
})


def unlabeled(example: dict) -> dict:
    return dict(example, label=0.0, label_time=example["event_time"], interaction_types=[], scores={}, model_versions={})


def spliced(records: list[dict], drawn: list[dict], header: bytes = STORED.header()) -> list[bytes]:
    """The splice of ``drawn`` labels into ``records`` (one symbol list and one score-name list for the batch)."""
    symbols, names = drawn[0]["symbols"], list(drawn[0]["scores"])
    stored = scan_stored([STORED.encode(r) for r in records], HEADER, list(records[0]["coordinates"]))
    return splice_labels(
        stored, header, np.array([d["label"] for d in drawn]), np.array([d["label_time"] for d in drawn]),
        np.array([d["types"] for d in drawn]), symbols, names,
        np.array([[d["scores"].get(k, (0.0, 0))[0] for k in names] for d in drawn]).reshape(len(drawn), len(names)),
        np.array([[d["scores"].get(k, (0.0, 0))[1] for k in names] for d in drawn], dtype=np.int64).reshape(
            len(drawn), len(names)),
    )  # fmt: skip


def labeled(record: dict, label: dict, symbols: list[str], names: list[str]) -> dict:
    return dict(
        record, label=label["label"], label_time=label["label_time"],
        interaction_types=[s for code, s in enumerate(symbols) if label["types"] >> code & 1],
        scores={k: label["scores"].get(k, (0.0, 0))[0] for k in names},
        model_versions={k: label["scores"].get(k, (0.0, 0))[1] for k in names},
    )  # fmt: skip


@settings(max_examples=40)
@given(examples, st.lists(labels, min_size=1, max_size=3))
def test_spliced_values_are_the_encodings_of_the_labeled_records(example, drawn) -> None:
    records = [unlabeled(example)] * len(drawn)
    symbols, names = drawn[0]["symbols"], list(drawn[0]["scores"])
    for value, label in zip(spliced(records, drawn), drawn):
        assert value == STORED.encode(labeled(records[0], label, symbols, names))


@settings(max_examples=40)
@given(examples, millis, st.lists(st.tuples(st.integers(0, 2**31 - 1), st.floats(width=32, allow_nan=False)), max_size=5))
def test_every_field_the_joiner_reads_is_found(example, event_time, features) -> None:
    packed = {"indices": np.array([c for c, _ in features], "<i4").tobytes(),
              "values": np.array([v for _, v in features], "<f4").tobytes()}  # fmt: skip
    record = unlabeled(dict(example, event_time=event_time, global_features=packed))
    stored = scan_stored([STORED.encode(record)], HEADER, list(record["coordinates"]))
    [example_id, member_id] = [stored.strings(stored.ids[:, f])[0].decode() for f in (0, 1)]
    assert (example_id, member_id, int(stored.event_time[0])) == (record["example_id"], record["member_id"], event_time)
    assert (stored.weights()[0], stored.offsets()[0]) == (record["weight"], record["offset"])
    rows, columns, values = stored.global_rows()
    assert rows.tolist() == [0] * len(features) and columns.tolist() == [c for c, _ in features]
    assert values.astype("<f4").tobytes() == packed["values"]
    for c, (name, features) in enumerate(record["coordinates"].items()):
        assert stored.strings(stored.entity_ids[:, c])[0].decode() == features["entity_id"]


def test_a_stored_value_that_already_has_scores_or_other_coordinates_is_refused() -> None:
    example = unlabeled({
        "example_id": "i", "member_id": "m", "item_id": "j", "weight": 1.0, "offset": 0.0, "event_time": 5,
        "global_features": {"indices": b"", "values": b""},
        "coordinates": {"member": {"entity_id": "m", "dense": b"\0\0\0\0"}},
    })
    with pytest.raises(DecodeError, match="already has"):
        scan_stored([STORED.encode(dict(example, scores={"global": 1.0}))], HEADER, ["member"])
    with pytest.raises(DecodeError, match="other coordinates"):
        scan_stored([STORED.encode(example)], HEADER, ["job"])
    with pytest.raises(DecodeError, match="truncated"):
        scan_stored([STORED.encode(example)[:-12]], HEADER, ["member"])


def test_the_examples_topics_write_the_stored_schema() -> None:
    """The joiner splices only into topics whose codec writes the join state's schema; today that is every one."""
    assert make_codec("LabeledExample", "examples").schema.fingerprint == STORED.schema.fingerprint
