"""Streaming scoring over the kafka_bootstrap broker: requests in, ranked responses out, bad requests dead-lettered."""

from __future__ import annotations

import time

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.codec import make_codec
from stream.config import load_settings
from stream.kafka import producer_config
from stream.model.export import initial_global_model_record
from stream.runtime.runner import StageRunner
from stream.scoring.streaming import StreamingScorer
from stream.synthetic import World, WorldSpec, labeled_impressions
from tests.helpers import read_topic

pytestmark = pytest.mark.kafka
MEMBER_BAGS = ("member_title", "member_skills", "member_seniority", "member_location")


def test_requests_are_answered_ranked_and_bad_ones_dead_lettered(kafka_bootstrap, unique_name):
    settings = load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "kafka.group_prefix": unique_name,
        **{f"topics.{t}": f"{t}-{unique_name}" for t in ("model_global", "score_requests", "score_results", "dead_letter")},
        "topics.coefficients_prefix": f"coef-{unique_name}-"})
    impressions = [li.impression for li in labeled_impressions(World(WorldSpec(seed=3, members=6, jobs=8, requests=6)))]
    record = initial_global_model_record(impressions, settings.model)
    record["coefficients"] = np.random.default_rng(2).normal(size=len(record["coefficients"])).tolist()
    producer = Producer(producer_config(settings.kafka))
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    producer.flush()
    first = impressions[0]
    request = {
        "request_id": "r1", "member_id": first["member_id"],
        "member_features": {b: v for b, v in first["features"].items() if b in MEMBER_BAGS},
        "candidates": [{"item_id": i["item_id"], "features": {b: v for b, v in i["features"].items() if b not in MEMBER_BAGS}}
                       for i in impressions[:6]],
        "top_k": 4,
    }
    codec = make_codec("ScoreRequest", settings.topics.score_requests)
    for key, value in ((b"r1", codec.encode(request)), (b"bad", b"not avro"),
                       (b"r2", codec.encode({**request, "request_id": "r2", "member_id": ""}))):
        producer.produce(settings.topics.score_requests, key=key, value=value)
    producer.flush()

    scorer = StageRunner(StreamingScorer(settings, batch_time_ms=100), settings)
    try:
        deadline = time.monotonic() + 60
        while scorer.stats.requests < 3:
            assert time.monotonic() < deadline, scorer.stats
            scorer.step()
        expected = scorer.stage.scorer.score(request["member_id"], request["member_features"], request["candidates"], top_k=4)
    finally:
        scorer.close()
    responses = [make_codec("ScoreResponse", settings.topics.score_results).decode(m.value())
                 for m in read_topic(kafka_bootstrap, settings.topics.score_results)]
    assert [r["request_id"] for r in responses] == ["r1"]
    results = responses[0]["results"]
    assert [r["item_id"] for r in results] == [s.item_id for s in expected]
    assert [r["rank"] for r in results] == [0, 1, 2, 3]
    assert [r["margin"] for r in results] == pytest.approx([s.margin for s in expected])
    dead = read_topic(kafka_bootstrap, settings.topics.dead_letter)
    reasons = sorted(dict(m.headers())["error"].decode() for m in dead)
    assert len(reasons) == 2 and any("member_id" in r for r in reasons)
