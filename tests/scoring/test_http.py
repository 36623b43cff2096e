"""The scoring HTTP service over a real socket: answers, clear 4xx errors, limits, and no 5xx for any body."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.config import ServingSettings, load_settings
from stream.model.export import initial_global_model_record
from stream.scoring.http import OPENAPI, BackgroundServer, ScoringService, build_app, openapi_spec
from stream.scoring.scorer import Scorer
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.tables.models import CoefficientTable, GlobalModelTable

MEMBER_BAGS = ("member_title", "member_skills", "member_seniority", "member_location")


def _request(server: BackgroundServer, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"{server.url}{path}", data=body, headers={"Content-Type": "application/json"},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def world():
    labeled = labeled_impressions(World(WorldSpec(seed=9, members=10, jobs=10, requests=20)))
    return [li.impression for li in labeled]


@pytest.fixture(scope="module")
def server(world):
    model_settings = load_settings().model
    record = initial_global_model_record(world, model_settings)
    record["coefficients"] = np.random.default_rng(0).normal(size=len(record["coefficients"])).tolist()
    global_models = GlobalModelTable(model_settings)
    global_models.apply([record])
    tables = {n: CoefficientTable(n, c.max_features) for n, c in model_settings.coordinates.items()}
    tables["member"].apply([{"entity_id": world[0]["member_id"], "version": 7,
                             "means": [0.3] * model_settings.coordinates["member"].max_features}])
    limits = ServingSettings(max_candidates=50, max_features_per_bag=20, max_body_bytes=64 * 1024, refresh_ms=20)
    refreshes = []
    service = ScoringService(Scorer(model_settings, global_models, tables), limits, lambda: refreshes.append(1), lambda: True)
    running = BackgroundServer(build_app(service))
    running.refreshes = refreshes
    running.scorer = service.scorer
    running.limits = limits
    yield running
    running.close()


def _body(impressions) -> dict:
    first = impressions[0]
    return {
        "member_id": first["member_id"],
        "member_features": {b: v for b, v in first["features"].items() if b in MEMBER_BAGS},
        "candidates": [{"item_id": i["item_id"], "features": {b: v for b, v in i["features"].items() if b not in MEMBER_BAGS}}
                       for i in impressions],
    }


def test_scores_come_back_with_their_breakdown(server, world):
    status, raw = _request(server, "/v1/score", json.dumps({**_body(world[:5]), "top_k": 3}).encode())
    assert status == 200, raw
    candidates = json.loads(raw)["candidates"]
    assert len(candidates) == 3
    assert [c["margin"] for c in candidates] == sorted((c["margin"] for c in candidates), reverse=True)
    for c in candidates:
        assert c["margin"] == pytest.approx(sum(c["breakdown"].values()))
        assert c["versions"]["member"] == 7 and c["versions"]["global"] == 1
    assert server.refreshes, "the models were never refreshed"


def test_candidates_named_by_id_use_the_item_catalog(server, world):
    body = _body(world[:4])
    server.scorer.register_items({c["item_id"]: c["features"] for c in body["candidates"][:3]})
    by_id = {**body, "candidates": [{"item_id": c["item_id"]} for c in body["candidates"]]}
    listed, named = (json.loads(_request(server, "/v1/score", json.dumps(b).encode())[1])["candidates"] for b in (body, by_id))
    assert [c["margin"] for c in named[:3]] == pytest.approx([c["margin"] for c in listed[:3]])
    assert named[3]["margin"] != pytest.approx(listed[3]["margin"])  # not in the catalog: scored without item features


def test_term_and_value_default_to_empty_and_one(server, world):
    body = _body(world[:3])
    implicit = json.loads(json.dumps(body))
    for candidate in implicit["candidates"]:
        for items in candidate["features"].values():
            for item in items:
                if item.get("value") == 1.0:
                    del item["value"]
                if item.get("term") == "":
                    del item["term"]
    assert implicit != body
    scored = [json.loads(_request(server, "/v1/score", json.dumps(b).encode())[1])["candidates"] for b in (body, implicit)]
    assert [c["margin"] for c in scored[0]] == pytest.approx([c["margin"] for c in scored[1]])


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"{not json", 400, None),
    (b"NaN", 400, None),
    (b"[]", 400, "$"),
    (json.dumps({"member_id": "", "candidates": [{"item_id": "j"}]}).encode(), 400, "$.member_id"),
    (json.dumps({"member_id": "m", "candidates": []}).encode(), 400, "$.candidates"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j"}] * 51}).encode(), 413, "$.candidates"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j", "features": {"job_title": [
        {"name": "title", "value": 1e300}]}}]}).encode(), 400, "$.candidates[0].features.job_title[0].value"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j", "features": {"job_title": [
        {"name": "title", "value": 1}, {"name": "", "value": 1}]}}]}).encode(), 400, "$.candidates[0].features.job_title[1].name"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j", "features": {"job_title": [
        {"name": "title", "term": None}]}}]}).encode(), 400, "$.candidates[0].features.job_title[0].term"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j", "features": {"job_title": [
        {"name": "title", "value": True}]}}]}).encode(), 400, "$.candidates[0].features.job_title[0].value"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j", "features": {"job_title": [["title"]]}}]}).encode(),
     400, "$.candidates[0].features.job_title[0]"),
    (json.dumps({"member_id": "m", "member_features": {"member_title": [{"name": "t", "value": "1"}]},
                 "candidates": [{"item_id": "j"}]}).encode(), 400, "$.member_features.member_title[0].value"),
    (json.dumps({"member_id": "m", "member_features": {"member_title": {"name": "t"}},
                 "candidates": [{"item_id": "j"}]}).encode(), 400, "$.member_features.member_title"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j"}, {"item_id": "k", "features": {"job_title": [
        {"name": "title"}] * 21}}]}).encode(), 413, "$.candidates[1].features.job_title"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j"}, {"item_id": "k", "features": []}]}).encode(), 400,
     "$.candidates[1].features"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j"}, {"item_id": "k" * 257}]}).encode(), 400,
     "$.candidates[1].item_id"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j"}], "top_k": 0}).encode(), 400, "$.top_k"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j"}], "extra": 1}).encode(), 400, "$.extra"),
    (b"{" + b" " * (70 * 1024) + b"}", 413, None),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j"}], "exploration": {"policy": "ucb"}}).encode(), 400,
     "$.exploration"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j"}], "context": ""}).encode(), 400, "$.context"),
    (json.dumps({"member_id": "m", "candidates": [{"item_id": "j"}], "context": []}).encode(), 400, "$.context"),
])
def test_bad_requests_get_a_clear_4xx(server, body, status, field):
    got, raw = _request(server, "/v1/score", body)
    assert got == status, raw
    answer = json.loads(raw)
    assert answer["error"] and answer.get("field") == field


def test_health_readiness_metrics_and_the_openapi_spec(server):
    assert _request(server, "/healthz")[0] == 200
    assert _request(server, "/readyz")[0] == 200
    status, raw = _request(server, "/openapi.json")
    assert status == 200 and json.loads(raw) == openapi_spec(server.limits) and "/v1/score" in OPENAPI["paths"]
    status, raw = _request(server, "/metrics")
    assert status == 200 and b"glmix_scoring_requests_total" in raw and b"glmix_scoring_latency_seconds_bucket" in raw


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
feature = st.fixed_dictionaries({"name": json_values | st.text(max_size=6), "term": json_values | st.text(max_size=4),
                                 "value": json_values | st.floats()})
near_valid = st.fixed_dictionaries({
    "member_id": json_values | st.text(max_size=10),
    "candidates": st.lists(st.fixed_dictionaries({"item_id": json_values | st.text(min_size=1, max_size=5),
                                                  "features": st.dictionaries(st.text(max_size=8), st.lists(feature, max_size=3),
                                                                              max_size=3) | json_values}),
                           max_size=4) | json_values,
}, optional={"member_features": st.dictionaries(st.text(max_size=8), st.lists(feature, max_size=3), max_size=3) | json_values,
             "top_k": json_values, "context": json_values})


@settings(deadline=None)
@given(body=near_valid | json_values | st.binary(max_size=64).map(lambda b: {"raw": b.hex()}))
def test_no_request_body_gets_a_5xx(server, body):
    status, raw = _request(server, "/v1/score", json.dumps(body, allow_nan=True).encode())
    assert status < 500, raw


def test_an_optional_field_given_as_null_is_as_if_left_out(server, world):
    body = _body(world[:3])
    left_out = {"member_id": body["member_id"], "candidates": [{"item_id": body["candidates"][0]["item_id"]},
                                                               *body["candidates"][1:]]}
    nulls = {**left_out, "member_features": None, "context": None, "top_k": None, "exploration": None,
             "candidates": [{**left_out["candidates"][0], "features": None}, *left_out["candidates"][1:]]}
    (status, raw), (status_nulls, raw_nulls) = (_request(server, "/v1/score", json.dumps(b).encode())
                                                for b in (left_out, nulls))
    assert status == status_nulls == 200, raw_nulls
    assert json.loads(raw_nulls) == json.loads(raw)


def _request_schema(spec: dict) -> dict:
    return spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]


def test_the_served_spec_is_the_servers_own():
    """Its limits are the maxItems; a server without exploration allows exploration only as null."""
    fields = _request_schema(openapi_spec(ServingSettings(max_candidates=7, max_features_per_bag=3)))
    assert fields["candidates"]["maxItems"] == 7
    assert fields["member_features"]["additionalProperties"]["maxItems"] == 3
    assert fields["candidates"]["items"]["properties"]["features"]["additionalProperties"]["maxItems"] == 3
    assert fields["exploration"]["enum"] == [None] and fields["exploration"]["nullable"]
    packaged = _request_schema(OPENAPI)
    assert _request_schema(openapi_spec(ServingSettings(exploration=True)))["exploration"] == packaged["exploration"]
    assert packaged["candidates"]["maxItems"] == 1000 and "enum" not in packaged["exploration"]  # left as it was


def test_an_exploration_request_is_checked_when_the_server_explores():
    from stream.scoring.requests import InvalidRequest, parse_score_request
    from stream.scoring.scorer import Exploration

    limits = ServingSettings(exploration=True)
    body = {"member_id": "m", "candidates": [{"item_id": "j"}], "exploration": {"policy": "thompson", "seed": 3}}
    assert parse_score_request(body, limits).exploration == Exploration("thompson", 3, 1.0)
    for bad, field in (({"policy": "greedy"}, "$.exploration"), ({"policy": "ucb", "seed": -1}, "$.exploration.seed"),
                       ({"policy": "ucb", "width": "wide"}, "$.exploration.width"),
                       ({"policy": "ucb", "width": 1001}, "$.exploration.width"), ([], "$.exploration")):
        with pytest.raises(InvalidRequest) as error:
            parse_score_request({**body, "exploration": bad}, limits)
        assert error.value.field == field


@settings(deadline=None)
@given(body=near_valid, explores=st.booleans())
def test_the_structs_refuse_exactly_what_the_explanation_names(body, explores):
    """One pass decides (msgspec's Structs); a refused body's problem is named by walking it: both must agree, so
    every 4xx names its field in the API's own words (a msgspec path would read ``$.candidates[0].features[...]``)."""
    from stream.scoring.requests import InvalidRequest, _explain, decode_score_request

    limits = ServingSettings(max_candidates=3, max_features_per_bag=2, exploration=explores)
    raw = json.dumps(body).encode()
    try:
        decode_score_request(raw, limits)
        refused = None
    except InvalidRequest as exc:
        refused = exc
    try:
        _explain(msgspec.json.decode(raw), limits)
        explained = None
    except InvalidRequest as exc:
        explained = exc
    except msgspec.DecodeError:  # not JSON to the server's parser (a lone surrogate): refused as such
        assert refused is not None and refused.field is None
        return
    assert (refused is None) == (explained is None), (refused, explained)
    if refused is not None:
        assert explained is not None and (refused.field, refused.status) == (explained.field, explained.status)
