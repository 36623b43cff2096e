"""The event log read from container files: every body decoded into columns in one compiled pass, the same events
as fastavro reads, invalid records counted and left out, an undecodable body named in one line."""

from __future__ import annotations

import math

import pytest

from stream.codec import SingleObjectCodec, load_schema
from stream.codec.container import read_container, write_container_bodies
from stream.event_log import EventLog, EventLogError, replay_key


def _body(schema: str, record: dict) -> bytes:
    codec = SingleObjectCodec(load_schema(schema))
    return codec.encode(record)[len(codec.header()) :]


def _impression(i: int, t: int, **fields) -> dict:
    record = {
        "impression_id": f"imp-{i}", "request_id": f"req-{i // 3}", "member_id": f"m{i % 4}", "item_id": f"j{i % 5}",
        "position": i % 3, "event_time": t, "random_bucket": i % 7 == 0,
        "features": {"job": [{"name": "title", "term": f"t{i % 6}", "value": 1.0}], "ctx": []},
        "context": {"surface": "feed"},
    }  # fmt: skip
    record.update(fields)
    return record


def _interaction(i: int, t: int, **fields) -> dict:
    record = {"interaction_id": f"int-{i}", "impression_id": f"imp-{i}", "member_id": f"m{i % 4}",
              "item_id": f"j{i % 5}", "type": "APPLY", "event_time": t}  # fmt: skip
    record.update(fields)
    return record


def _write(path, schema: str, records: list[dict]) -> None:
    with open(path, "wb") as out:
        write_container_bodies(out, schema, [_body(schema, r) for r in records])


def test_the_log_holds_what_fastavro_reads_in_replay_order_without_the_invalid_records(tmp_path):
    impressions = [_impression(i, 1_000 + (37 * i) % 500) for i in range(300)]
    impressions[5] = _impression(5, 1_100, member_id="")  # the live joiner dead-letters these three
    impressions[6] = _impression(6, 1_100, features={"job": [{"name": "x", "term": "", "value": math.nan}]})
    interactions = [_interaction(i, 1_000 + (37 * i) % 500 + 20) for i in range(0, 300, 4)]
    interactions[3] = _interaction(12, 1_300, impression_id="")
    _write(tmp_path / "impressions.avro", "Impression", impressions)
    _write(tmp_path / "interactions.avro", "Interaction", interactions)

    log = EventLog.from_paths([tmp_path / "impressions.avro", tmp_path / "interactions.avro"])

    assert log.invalid == 3
    read = {"impression": list(read_container(tmp_path / "impressions.avro", "Impression")),
            "interaction": list(read_container(tmp_path / "interactions.avro", "Interaction"))}  # fmt: skip
    kept = [(kind, r) for kind, records in read.items() for r in records
            if r["impression_id"] and r["member_id"] and not any(
                not math.isfinite(f["value"]) for bag in r.get("features", {}).values() for f in bag)]  # fmt: skip
    expected = sorted(kept, key=lambda item: replay_key(item[0], item[1]["event_time"]))
    assert [(e.kind, e.record["impression_id"], e.record["event_time"]) for e in log.events] == [
        (kind, r["impression_id"], r["event_time"]) for kind, r in expected
    ]
    assert [e.full_record() for e in log.events] == [r for _, r in expected]
    assert {e.record["type"] for e in log.events if e.kind == "interaction"} == {"APPLY"}


@pytest.mark.parametrize("schema", ["Impression", "Interaction"])
def test_a_body_that_does_not_decode_ends_the_read_in_one_line_naming_the_file_and_record(tmp_path, schema):
    make = _impression if schema == "Impression" else _interaction
    bodies = [_body(schema, make(i, 1_000 + i)) for i in range(10)]
    bodies[7] = b"\xff" * 11  # the first string's length: a varint past 64 bits
    path = tmp_path / f"{schema}.avro"
    with open(path, "wb") as out:
        write_container_bodies(out, schema, bodies)

    with pytest.raises(EventLogError) as failed:
        EventLog.from_paths([path])

    message = str(failed.value)
    assert message.startswith(f"{path}: record 7 of 10 cannot be decoded: io.glmix.{schema}: varint longer than 64")
    assert "\n" not in message
