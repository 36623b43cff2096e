"""Feature transforms: each kind by hand, the spline as an interpolation, and identical features on every path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.config import ConfigError, ServingSettings, TransformSettings, load_settings
from stream.consumers.example_builder import add_scores
from stream.consumers.labeling import unlabeled_records
from stream.model.dataset import build_dataset
from stream.model.export import initial_global_model_record
from stream.model.game import GameModel, RandomEffectModel
from stream.model.transforms import FeatureTransforms
from stream.scoring.requests import decode_score_request
from stream.scoring.scorer import Scorer
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.tables.indexing import FeatureResolver
from stream.tables.models import CoefficientTable, GlobalModelTable


def _ntv(name: str, value: float, term: str = "") -> dict:
    return {"name": name, "term": term, "value": value}


def test_each_kind_by_hand():
    transforms = FeatureTransforms({
        "views": TransformSettings(kind="log"),
        "saves": TransformSettings(kind="indicator"),
        "age": TransformSettings(kind="bucketize", boundaries=(18.0, 30.5)),
        "tenure": TransformSettings(kind="spline", boundaries=(0.0, 2.0, 10.0)),
        "fit": TransformSettings(kind="product", inputs=("skill", "need"), bag="cross"),
    })
    out = transforms.apply({
        "a": [_ntv("views", math.e - 1), _ntv("saves", 0.0), _ntv("saves", 3.0, "x"), _ntv("age", 30.5),
              _ntv("tenure", 4.0), _ntv("skill", 2.0, "py"), _ntv("other", 7.0)],
        "b": [_ntv("age", 5.0, "m"), _ntv("tenure", 99.0), _ntv("need", 3.0, "py"), _ntv("need", 0.5)],
    })
    assert out["a"] == [
        _ntv("views", pytest.approx(1.0)), _ntv("saves", 1.0, "x"), _ntv("age", 1.0, "[30.5,inf)"),
        _ntv("tenure", 0.75, "2"), _ntv("tenure", 0.25, "10"), _ntv("skill", 2.0, "py"), _ntv("other", 7.0),
    ]
    assert out["b"][:2] == [_ntv("age", 1.0, "m|[-inf,18)"), _ntv("tenure", 1.0, "10")]
    assert out["cross"] == [_ntv("fit", 6.0, "py*py"), _ntv("fit", 1.0, "py")]


def test_no_transforms_pass_rows_through_untouched():
    rows = [{"a": [_ntv("x", 2.0)]}]
    assert FeatureTransforms({}).apply_rows(rows) is rows


@given(st.floats(-50, 50, allow_nan=False), st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=6, unique=True))
def test_spline_weights_interpolate_the_clamped_value(value, knots):
    knots = sorted(knots)
    if min(b - a for a, b in zip(knots, knots[1:])) < 1e-6:
        return
    transforms = FeatureTransforms({"v": TransformSettings(kind="spline", boundaries=tuple(knots))})
    features = transforms.apply({"bag": [_ntv("v", value)]})["bag"]
    weights = np.array([f["value"] for f in features])
    where = np.array([knots[[repr(int(k)) if float(k).is_integer() else repr(float(k)) for k in knots].index(f["term"])]
                      for f in features])
    assert weights.sum() == pytest.approx(1.0)
    assert (weights > 0).all() and len(features) <= 2
    assert weights @ where == pytest.approx(min(max(value, knots[0]), knots[-1]), abs=1e-9)


def test_bad_transform_settings_name_the_key():
    with pytest.raises(ConfigError, match="model.transforms.age.boundaries"):
        load_settings(overrides={"model.transforms.age.kind": "bucketize", "model.transforms.age.boundaries": "5,1"})
    with pytest.raises(ConfigError, match="model.transforms.fit.inputs"):
        load_settings(overrides={"model.transforms.fit.kind": "product", "model.transforms.fit.inputs": "a",
                                 "model.transforms.fit.bag": "job_title"})
    with pytest.raises(ConfigError, match="model.transforms.v.kind"):
        load_settings(overrides={"model.transforms.v.kind": "sqrt"})


TRANSFORMED = {
    "model.transforms.member_seniority.kind": "spline",
    "model.transforms.member_seniority.boundaries": "0,0.5,1",
    "model.transforms.job_seniority.kind": "bucketize",
    "model.transforms.job_seniority.boundaries": "0.3,0.6",
    "model.transforms.job_company.kind": "log",
    "model.transforms.seniority_gap.kind": "product",
    "model.transforms.seniority_gap.inputs": "member_seniority,job_seniority",
    "model.transforms.seniority_gap.bag": "job_seniority",
}
MEMBER_BAGS = ("member_title", "member_skills", "member_seniority", "member_location")


def test_joiner_scorer_and_batch_trainer_see_identical_features():
    """One impression through the joiner's indexing, the scorer's, and the batch dataset builder gives one margin."""
    settings = load_settings(overrides=TRANSFORMED)
    impressions = [li.impression for li in labeled_impressions(World(WorldSpec(seed=3, members=15, jobs=12, requests=40)))]
    record = initial_global_model_record(impressions, settings.model)
    rng = np.random.default_rng(1)
    record["coefficients"] = rng.normal(size=len(record["coefficients"])).tolist()
    global_models = GlobalModelTable(settings.model)
    global_models.apply([record])
    model = global_models.current
    assert ("job_seniority", "[0.3,0.6)") in model.global_index.keys
    assert ("member_seniority", "0.5") in model.coordinate_indices["job"].keys
    assert any(name == "seniority_gap" for name, _ in model.coordinate_indices["member"].keys)

    tables, effects = {}, {}
    for name, field in (("member", "member_id"), ("job", "item_id")):
        d = settings.model.coordinates[name].max_features
        ids = sorted({imp[field] for imp in impressions})
        means = rng.normal(size=(len(ids), d))
        tables[name] = CoefficientTable(name, d)
        tables[name].apply([{"entity_id": e, "version": 2, "means": m.tolist()} for e, m in zip(ids, means)])
        effects[name] = RandomEffectModel(np.array(ids), means, np.ones_like(means))

    joined = unlabeled_records(impressions, model, settings.model)
    add_scores(joined, model, tables)
    data = build_dataset(impressions, np.zeros(len(impressions)), model.global_index,
                         {"member": ("member_id", model.coordinate_indices["member"]),
                          "job": ("item_id", model.coordinate_indices["job"])},
                         transforms=FeatureTransforms.from_settings(settings.model))
    batch = GameModel("logistic", model.coefficients, effects).score_breakdown(data)
    scorer = Scorer(settings.model, global_models, tables)
    for i, imp in enumerate(impressions):
        member = {b: v for b, v in imp["features"].items() if b in MEMBER_BAGS}
        item = {b: v for b, v in imp["features"].items() if b not in MEMBER_BAGS}
        [scored] = scorer.score(imp["member_id"], member, [{"item_id": imp["item_id"], "features": item}])
        body = {"member_id": imp["member_id"], "member_features": member,
                "candidates": [{"item_id": imp["item_id"], "features": item}]}
        request = decode_score_request(json.dumps(body).encode(), ServingSettings())  # the HTTP service's Structs
        [served] = scorer.score(request.member_id, request.member_features, request.candidates)
        for name in ("global", "member", "job"):
            assert joined[i]["scores"][name] == pytest.approx(batch[name][i], abs=1e-4)  # float32 on the wire
            assert scored.breakdown[name] == pytest.approx(batch[name][i], abs=1e-9)
            assert served.breakdown[name] == scored.breakdown[name]
