"""Record checks beyond the schema: each bad record gets a reason, valid ones none."""

import math

from stream.codec.validation import impression_problem, interaction_problem

GOOD = {"impression_id": "i", "request_id": "r", "member_id": "m", "item_id": "j", "position": 0, "event_time": 1,
        "features": {"job_title": [{"name": "job_title", "term": "nurse", "value": 1.0}]}}


def test_valid_records_have_no_problem():
    assert impression_problem(GOOD) is None
    assert interaction_problem({"impression_id": "i", "member_id": "m"}) is None


def test_each_problem_is_named():
    assert impression_problem({**GOOD, "member_id": ""}) == "Impression has an empty member_id"
    bad = {**GOOD, "features": {"job_title": [{"name": "job_title", "term": "nurse", "value": math.inf}]}}
    assert impression_problem(bad) == "Impression feature job_title/job_title:nurse is inf"
    first_bad = {**GOOD, "features": {"a": [{"name": "x", "term": "", "value": 1.0}],
                                      "b": [{"name": "y", "term": "t", "value": math.nan},
                                            {"name": "z", "term": "", "value": -math.inf}]}}
    assert impression_problem(first_bad) == "Impression feature b/y:t is nan"  # the first one, in wire order
    assert impression_problem({**GOOD, "impression_id": "", "item_id": ""}) == "Impression has an empty impression_id"
    assert interaction_problem({"impression_id": "", "member_id": "m"}) == "Interaction has an empty impression_id"


def test_decoded_interactions_match_fastavro_and_the_record_rule_and_bad_values_get_a_reason():
    from stream.codec import make_codec
    from stream.consumers.impressions import interaction_decoder, join_fields

    codec = make_codec("Interaction", "interactions")
    records = [{"interaction_id": f"c{i}", "impression_id": "" if i == 3 else f"i{i}", "member_id": "" if i == 5 else "mé",
                "item_id": None if i % 2 else "j", "type": ["UNKNOWN", "CLICK", "APPLY", "SAVE"][i % 4],
                "event_time": 1_700_000_000_000 + i} for i in range(8)]
    good = codec.encode(records[1])
    values = [codec.encode(r) for r in records] + [b"garbage", good[:-2], good + b"\x00"]
    rows = interaction_decoder(codec).decode(values)
    for record, row in zip(records, rows):
        problem = interaction_problem(record)
        if problem is not None:
            assert row == problem
        else:
            assert not isinstance(row, str) and row.batch.record(row.row) == codec.decode(codec.encode(record))
            assert join_fields([row]) == [{k: record[k] for k in ("impression_id", "event_time", "type")}]
    assert [r for r in rows[:8] if isinstance(r, str)] == ["Interaction has an empty impression_id",
                                                           "Interaction has an empty member_id"]
    assert all(isinstance(r, str) and r.startswith("io.glmix.Interaction: ") for r in rows[8:]), rows[8:]
