"""Record checks beyond the schema: each bad record gets a reason, valid ones none."""

import math

from stream.codec.validation import impression_problem, interaction_problem

GOOD = {"impression_id": "i", "member_id": "m", "item_id": "j",
        "features": {"job_title": [{"name": "job_title", "term": "nurse", "value": 1.0}]}}


def test_valid_records_have_no_problem():
    assert impression_problem(GOOD) is None
    assert interaction_problem({"impression_id": "i", "member_id": "m"}) is None


def test_each_problem_is_named():
    assert impression_problem({**GOOD, "member_id": ""}) == "Impression has an empty member_id"
    bad = {**GOOD, "features": {"job_title": [{"name": "job_title", "term": "nurse", "value": math.inf}]}}
    assert impression_problem(bad) == "Impression feature job_title/job_title:nurse is inf"
    assert interaction_problem({"impression_id": "", "member_id": "m"}) == "Interaction has an empty impression_id"
