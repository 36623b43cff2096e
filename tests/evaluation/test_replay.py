"""Replay on random-bucket impressions: a hand-computed example, the true model beats a random one, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.cli import main
from stream.codec import make_codec
from stream.config import load_settings
from stream.evaluation.replay import model_ranks, replay
from stream.kafka import producer_config
from stream.model.export import initial_global_model_record
from stream.synthetic import World, WorldSpec, event_stream, labeled_impressions
from stream.synthetic.sinks import write_avro_files


def test_matched_impressions_by_hand():
    # request a: served x@0 y@1 z@2, model ranks y, x, z -> x and y swap, z matches at 2 (clicked).
    # request b: served u@0 v@1, model ranks u, v -> both match; u clicked at position 0.
    requests = np.array(["a", "a", "a", "b", "b"])
    positions = np.array([0, 1, 2, 0, 1])
    labels = np.array([1, 0, 1, 1, 0])
    scores = np.array([0.5, 0.9, 0.1, 3.0, 2.0])
    assert model_ranks(requests, scores).tolist() == [1, 0, 2, 0, 1]
    result = replay(requests, positions, labels, scores)
    assert (result.requests, result.matched_impressions, result.matched_interactions) == (2, 3, 2.0)
    assert (result.position1_matches, result.position1_interactions) == (1, 1.0)
    assert result.matched_rate == pytest.approx(2 / 3) and result.position1_rate == 1.0
    weights = {0: 1.0, 1: 1 / np.log2(3), 2: 0.5}  # matches: z@2 (clicked), u@0 (clicked), v@1
    assert result.discounted_rate == pytest.approx((weights[2] + weights[0]) / (weights[2] + weights[0] + weights[1]))


def test_ties_keep_the_served_order_and_no_match_is_nan():
    result = replay(np.array(["r", "r"]), np.array([1, 0]), np.array([0, 0]), np.array([1.0, 1.0]))
    assert result.matched_impressions == 0 and np.isnan(result.matched_rate)


def test_the_true_model_replays_above_a_random_policy():
    world = World(WorldSpec(seed=4, members=80, jobs=60, requests=4000, random_bucket_rate=1.0))
    labeled = labeled_impressions(world)
    requests = np.array([li.impression["request_id"] for li in labeled])
    positions = np.array([li.impression["position"] for li in labeled])
    clicks = np.array([li.clicked for li in labeled], dtype=float)
    truth = replay(requests, positions, clicks, np.array([li.true_margin for li in labeled]))
    rng = np.random.default_rng(0)
    randoms = [replay(requests, positions, clicks, rng.random(len(labeled))) for _ in range(5)]
    assert truth.position1_rate > max(r.position1_rate for r in randoms) + 0.05
    assert truth.discounted_rate > max(r.discounted_rate for r in randoms) + 0.02
    assert min(r.matched_impressions for r in randoms) > 0.15 * len(labeled)  # about one slot in five matches


@pytest.mark.kafka
def test_glmix_evaluate_replay_scores_files_with_the_published_model(kafka_bootstrap, tmp_path, unique_name, capsys):
    settings = load_settings(overrides={"kafka.bootstrap_servers": kafka_bootstrap,
                                        "topics.model_global": f"global-{unique_name}",
                                        "topics.coefficients_prefix": f"coef-{unique_name}-"})
    world = World(WorldSpec(seed=9, members=30, jobs=20, requests=300, random_bucket_rate=0.5))
    labeled = labeled_impressions(world)
    record = initial_global_model_record([li.impression for li in labeled], settings.model)
    record["coefficients"] = np.random.default_rng(2).normal(size=len(record["coefficients"])).tolist()
    producer = Producer(producer_config(settings.kafka))
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    producer.flush()
    write_avro_files(event_stream(world, labeled), tmp_path)
    code = main(["evaluate", "replay", "--impressions", str(tmp_path / "impressions.avro"),
                 "--interactions", str(tmp_path / "interactions.avro"), "--bootstrap-servers", kafka_bootstrap,
                 "--set", f"topics.model_global={settings.topics.model_global}",
                 "--set", f"topics.coefficients_prefix={settings.topics.coefficients_prefix}"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    bucket = {li.impression["request_id"] for li in labeled if li.impression["random_bucket"]}
    assert out["model"]["requests"] == out["random"]["requests"] == len(bucket)
    assert out["model"]["matched_impressions"] > 0 and out["random"]["matched_impressions"] > 0
