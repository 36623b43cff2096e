"""The scorer: the math core's scores for the same coefficients, a breakdown per coordinate, live updates from Kafka."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.codec import make_codec
from stream.config import ServingSettings, load_settings
from stream.kafka import producer_config
from stream.model.dataset import build_dataset
from stream.model.export import initial_global_model_record
from stream.model.game import GameModel, RandomEffectModel
from stream.scoring.requests import decode_score_request
from stream.scoring.scorer import ModelNotReadyError, Scorer
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.tables.follower import ModelFollower
from stream.tables.models import CoefficientTable, GlobalModelTable
from tests.helpers import wait_for

MEMBER_BAGS = ("member_title", "member_skills", "member_seniority", "member_location")


def _world_and_model(settings, seed: int = 5):
    labeled = labeled_impressions(World(WorldSpec(seed=seed, members=20, jobs=15, requests=60)))
    record = initial_global_model_record([li.impression for li in labeled], settings.model)
    rng = np.random.default_rng(seed)
    record["coefficients"] = rng.normal(size=len(record["coefficients"])).tolist()
    return labeled, record


def _split(impression):
    member = {b: v for b, v in impression["features"].items() if b in MEMBER_BAGS}
    item = {b: v for b, v in impression["features"].items() if b not in MEMBER_BAGS}
    return member, {"item_id": impression["item_id"], "features": item}


def test_scores_equal_the_math_cores_for_the_same_coefficients():
    settings = load_settings()
    labeled, record = _world_and_model(settings)
    global_models = GlobalModelTable(settings.model)
    global_models.apply([record])
    model = global_models.current
    rng = np.random.default_rng(0)
    tables, effects = {}, {}
    for name, field in (("member", "member_id"), ("job", "item_id")):
        d = settings.model.coordinates[name].max_features
        ids = sorted({li.impression[field] for li in labeled})[:-2]  # two entities have no model: they score 0
        means = rng.normal(size=(len(ids), d))
        tables[name] = CoefficientTable(name, d)
        tables[name].apply([{"entity_id": e, "version": 3, "means": m.tolist()} for e, m in zip(ids, means)])
        effects[name] = RandomEffectModel(np.array(ids), means, np.ones_like(means))
    scorer = Scorer(settings.model, global_models, tables)

    impressions = [li.impression for li in labeled]
    data = build_dataset(impressions, np.zeros(len(impressions)), model.global_index,
                         {"member": ("member_id", model.coordinate_indices["member"]),
                          "job": ("item_id", model.coordinate_indices["job"])})
    expected = GameModel("logistic", model.coefficients, effects).score_breakdown(data)
    for i, impression in enumerate(impressions):
        member_features, candidate = _split(impression)
        [scored] = scorer.score(impression["member_id"], member_features, [candidate])
        for name in ("global", "member", "job"):
            assert scored.breakdown[name] == pytest.approx(expected[name][i], abs=1e-9)
        assert scored.probability == pytest.approx(1 / (1 + np.exp(-scored.margin)))
    unknown = sorted({li.impression["member_id"] for li in labeled})[-1]
    member_features, candidate = _split(next(li.impression for li in labeled if li.impression["member_id"] == unknown))
    [scored] = scorer.score(unknown, member_features, [candidate])
    assert scored.breakdown["member"] == 0.0 and scored.versions["member"] == 0 and scored.versions["global"] == 1
    by_member: dict[str, list[int]] = {}
    for i, impression in enumerate(impressions):
        by_member.setdefault(impression["member_id"], []).append(i)
    limits = ServingSettings(max_candidates=len(impressions))
    for member, rows in by_member.items():  # one request per member, as the HTTP service decodes it: the member's
        member_features = _split(impressions[rows[0]])[0]  # coefficients are looked up once for all candidates
        body = {"member_id": member, "member_features": member_features,
                "candidates": [_split(impressions[i])[1] for i in rows]}
        request = decode_score_request(json.dumps(body).encode(), limits)
        scored = scorer.score(request.member_id, request.member_features, request.candidates)
        assert [s.item_id for s in scored] == [impressions[i]["item_id"] for i in rows]
        for s, i in zip(scored, rows):
            for name in ("global", "member", "job"):
                assert s.breakdown[name] == pytest.approx(expected[name][i], abs=1e-9)
            assert s.versions["member"] == tables["member"].version(member) and s.versions["job"] == tables["job"].version(s.item_id)


def test_top_k_ranks_by_margin_and_an_empty_model_is_an_error():
    settings = load_settings()
    labeled, record = _world_and_model(settings, seed=6)
    global_models = GlobalModelTable(settings.model)
    tables = {n: CoefficientTable(n, c.max_features) for n, c in settings.model.coordinates.items()}
    scorer = Scorer(settings.model, global_models, tables)
    member_features, _ = _split(labeled[0].impression)
    candidates = [_split(li.impression)[1] for li in labeled[:10]]
    with pytest.raises(ModelNotReadyError):
        scorer.score("m", member_features, candidates)
    global_models.apply([record])
    everything = scorer.score("m", member_features, candidates)
    best = scorer.score("m", member_features, candidates, top_k=3)
    assert [s.item_id for s in best] == [s.item_id for s in sorted(everything, key=lambda s: -s.margin)[:3]]
    assert scorer.score("m", member_features, []) == []


def test_registered_item_features_score_like_features_in_the_request():
    settings = load_settings()
    labeled, record = _world_and_model(settings, seed=8)
    global_models = GlobalModelTable(settings.model)
    global_models.apply([record])
    rng = np.random.default_rng(1)
    tables = {}
    for name, field in (("member", "member_id"), ("job", "item_id")):
        d = settings.model.coordinates[name].max_features
        ids = sorted({li.impression[field] for li in labeled})
        tables[name] = CoefficientTable(name, d)
        tables[name].apply([{"entity_id": e, "version": 1, "means": rng.normal(size=d).tolist()} for e in ids])
    scorer = Scorer(settings.model, global_models, tables)
    member_features, _ = _split(labeled[0].impression)
    candidates = list({c["item_id"]: c for c in (_split(li.impression)[1] for li in labeled)}.values())[:12]
    listed = scorer.score("m", member_features, candidates)
    scorer.register_items({c["item_id"]: c["features"] for c in candidates[:8]})
    mixed = [{"item_id": c["item_id"]} if i < 8 else c for i, c in enumerate(candidates)]  # 8 from the catalog
    for _ in range(2):  # the second call reads the already indexed items
        assert [s.margin for s in scorer.score("m", member_features, mixed)] == pytest.approx([s.margin for s in listed])
    scorer.register_items({candidates[0]["item_id"]: candidates[5]["features"]})  # new features replace the old
    [changed] = scorer.score("m", member_features, mixed[:1])
    [expected] = scorer.score("m", member_features, [{"item_id": candidates[0]["item_id"], "features": candidates[5]["features"]}])
    assert changed.margin == pytest.approx(expected.margin) and changed.margin != pytest.approx(listed[0].margin)
    global_models.apply([dict(record, version=2, coefficients=(-np.asarray(record["coefficients"])).tolist())])
    assert [s.breakdown["global"] for s in scorer.score("m", member_features, mixed[1:8])] == pytest.approx(
        [s.breakdown["global"] for s in scorer.score("m", member_features, candidates[1:8])])
    [unknown] = scorer.score("m", member_features, [{"item_id": "never-registered"}])
    assert unknown.versions["job"] == 0


@pytest.mark.kafka
@pytest.mark.parametrize("table", ["memory", "rocksdb"])
def test_a_published_coefficient_is_used_soon_and_stale_versions_are_ignored(kafka_bootstrap, unique_name, table,
                                                                              tmp_path):
    settings = load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "topics.model_global": f"global-{unique_name}",
        "topics.coefficients_prefix": f"coef-{unique_name}-", "serving.table": table, "state_dir": str(tmp_path)})
    labeled, record = _world_and_model(settings, seed=7)
    producer = Producer(producer_config(settings.kafka))
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    entity_codec = make_codec("EntityModel", settings.topics.coefficients("member"))
    impression = labeled[0].impression
    member_features, candidate = _split(impression)
    d = settings.model.coordinates["member"].max_features

    def publish(version: int, value: float) -> None:
        producer.produce(settings.topics.coefficients("member"), key=impression["member_id"].encode(),
                         value=entity_codec.encode({"coordinate": "member", "entity_id": impression["member_id"],
                                                    "version": version, "means": [value] * d,
                                                    "precision_kind": "PACKED_UPPER", "precision": b""}))
        producer.flush()

    publish(2, 0.5)
    follower = ModelFollower(settings, kafka_bootstrap, f"scorer-{unique_name}")
    try:
        follower.catch_up(timeout_s=30)
        assert follower.ready
        scorer = Scorer.following(settings.model, follower)
        [first] = scorer.score(impression["member_id"], member_features, [candidate])
        assert first.versions["member"] == 2 and first.breakdown["member"] != 0.0
        publish(5, -0.5)
        publish(4, 9.0)  # stale: must not replace version 5

        def member_version() -> int:
            follower.refresh(timeout_s=0.1)
            return scorer.score(impression["member_id"], member_features, [candidate])[0].versions["member"] == 5

        wait_for(member_version, timeout_s=30, what="version 5 of the member's coefficients to reach the scorer")
        [latest] = scorer.score(impression["member_id"], member_features, [candidate])
        assert latest.breakdown["member"] == pytest.approx(-first.breakdown["member"])
        time.sleep(0.5)
        follower.refresh(timeout_s=0.2)
        assert scorer.score(impression["member_id"], member_features, [candidate])[0].versions["member"] == 5
    finally:
        follower.close()


@pytest.mark.kafka
def test_the_scorer_follows_item_features_published_to_the_items_topic(kafka_bootstrap, unique_name):
    settings = load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "topics.model_global": f"global-{unique_name}",
        "topics.coefficients_prefix": f"coef-{unique_name}-", "topics.items": f"items-{unique_name}"})
    labeled, record = _world_and_model(settings, seed=12)
    producer = Producer(producer_config(settings.kafka))
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    codec = make_codec("ItemFeatures", settings.topics.items)
    member_features, first = _split(labeled[0].impression)
    _, second = _split(next(li.impression for li in labeled if li.impression["item_id"] != first["item_id"]))

    def publish(version: int, features: dict) -> None:
        producer.produce(settings.topics.items, key=first["item_id"].encode(),
                         value=codec.encode({"item_id": first["item_id"], "version": version, "features": features}))
        producer.flush()

    publish(1, first["features"])
    follower = ModelFollower(settings, kafka_bootstrap, f"scorer-{unique_name}", follow_items=True)
    try:
        follower.catch_up(timeout_s=30)
        scorer = Scorer.following(settings.model, follower)
        [named] = scorer.score("m", member_features, [{"item_id": first["item_id"]}])
        [listed] = scorer.score("m", member_features, [first])
        assert named.margin == pytest.approx(listed.margin)
        publish(3, second["features"])
        publish(2, first["features"])  # stale: must not replace version 3
        [expected] = scorer.score("m", member_features, [{"item_id": first["item_id"], "features": second["features"]}])

        def uses_version_3() -> bool:
            follower.refresh(timeout_s=0.1)
            return follower.items[first["item_id"]][0] == 3
        wait_for(uses_version_3, timeout_s=30, what="version 3 of the item's features")
        follower.refresh(timeout_s=0.5)
        [named] = scorer.score("m", member_features, [{"item_id": first["item_id"]}])
        assert named.margin == pytest.approx(expected.margin) and named.margin != pytest.approx(listed.margin)
    finally:
        follower.close()
