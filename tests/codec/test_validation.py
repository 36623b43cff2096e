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
