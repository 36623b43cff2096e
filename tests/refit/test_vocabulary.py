"""The vocabulary writer: counting what the joiner could not index, admitting it, growing indexes in place."""

from __future__ import annotations

import logging

import numpy as np

from stream.codec.feature_bags import decode_bags
from stream.config import load_settings
from stream.codec import SingleObjectCodec, load_schema
from stream.consumers.example_builder import add_scores
from stream.consumers.impressions import impression_rows
from stream.consumers.labeling import ExampleIndexer
from stream.model.export import initial_global_model_record
from stream.refit.vocabulary import VocabularyCounter, growable_coordinates
from stream.tables.models import GlobalModel, GlobalModelTable

SETTINGS = load_settings(overrides={"model.coordinates.member.max_features": "4"})


def _impression(i: int, member_skills: list[str], job_title: str) -> dict:
    return {"impression_id": f"i{i}", "request_id": f"r{i}", "member_id": f"m{i % 3}", "item_id": f"j{i % 5}",
            "position": 0, "event_time": i,
            "features": {"member_skills": [{"name": "member_skill", "term": s, "value": 1.0} for s in member_skills],
                         "job_title": [{"name": "job_title", "term": job_title, "value": 1.0}]}}


def _model(impressions: list[dict]) -> GlobalModel:
    table = GlobalModelTable(SETTINGS.model)
    table.apply([initial_global_model_record(impressions, SETTINGS.model)])
    return table.current


def _examples(model: GlobalModel, impressions: list[dict], counts: dict | None = None) -> list[dict]:
    """The joiner's unlabeled examples of ``impressions``; ``counts`` gains what the indexes could not place."""
    codec = SingleObjectCodec(load_schema("LabeledExample"))
    indexer = ExampleIndexer(SETTINGS.model, codec)
    encoded = indexer.examples([row for row in impression_rows(impressions) if not isinstance(row, str)], model)
    if counts is not None:
        counts.update(indexer.unindexed_features)
    return [codec.decode(value) for value in encoded]


def unindexed(records: list[dict]) -> list[bytes | None]:
    return [r.get("unindexed_features") for r in records]


def test_the_joiner_packs_and_counts_what_each_index_could_not_place():
    model = _model([_impression(0, ["python"], "nurse")])
    counts: dict[str, int] = {}
    [known, new] = _examples(model, [_impression(1, ["python"], "nurse"), _impression(2, ["python", "sql"], "chef")],
                             counts)
    assert known["unindexed_features"] is None
    assert decode_bags(new["unindexed_features"]) == {
        "member_skills": [{"name": "member_skill", "term": "sql", "value": 1.0}],
        "job_title": [{"name": "job_title", "term": "chef", "value": 1.0}]}
    # sql feeds the global and the job coordinate; chef the global and the member coordinate.
    assert counts == {"global": 2, "member": 1, "job": 1}


def test_growth_admits_by_count_most_frequent_first_up_to_capacity_and_fits_in_place(caplog):
    model = _model([_impression(0, ["python"], "nurse")])
    titles = ["chef"] * 6 + ["pilot"] * 8 + ["baker"] * 5 + ["rare"] * 2
    impressions = [_impression(i + 1, ["python"], t) for i, t in enumerate(titles)]
    records = _examples(model, impressions)
    counter = VocabularyCounter(model, growable_coordinates(SETTINGS.model, grow_global=True))
    lengths, columns, values = counter.global_columns(unindexed(records), np.ones(len(records), dtype=bool))
    assert lengths.tolist() == [1] * len(records) and values.tolist() == [1.0] * len(records)
    assert counter.counts["member"] == {("job_title", "pilot"): 8, ("job_title", "chef"): 6, ("job_title", "baker"): 5,
                                        ("job_title", "rare"): 2}
    assert "job" not in counter.counts or not counter.counts["job"]
    with caplog.at_level(logging.WARNING, logger="stream.refit.vocabulary"):
        growth = counter.grow(min_count=5)
    grown = growth.model
    assert grown.index_version == model.index_version + 1 and grown.extends(model)
    # member: capacity 4 = intercept + nurse + two more, the most frequent first; baker did not fit.
    assert grown.coordinate_indices["member"].keys[2:] == [("job_title", "pilot"), ("job_title", "chef")]
    assert growth.admitted["member"] == 2 and growth.dropped["member"] == 1
    assert [r.getMessage() for r in caplog.records if "capacity" in r.getMessage()] == [
        "vocabulary: coordinate member is at its capacity of 4 columns: 1 features seen >= 5 times were not admitted "
        "(most frequent: job_title=baker)"]
    # global: unbounded, so pilot, chef, baker; rare (2 < 5) is not admitted.
    assert grown.global_index.keys[model.global_index.dim:] == [("job_title", "pilot"), ("job_title", "chef"),
                                                                ("job_title", "baker")]
    assert growth.admitted["global"] == 3 and growth.dropped["global"] == 0
    assert np.array_equal(grown.coefficients[: model.global_index.dim], model.coefficients)
    assert not grown.coefficients[model.global_index.dim:].any()
    # Each provisional column lands on its admitted column, or nowhere.
    landed = growth.provisional_columns[columns - model.global_index.dim]
    expected = {"pilot": grown.global_index.column("job_title", "pilot"), "chef": grown.global_index.column("job_title", "chef"),
                "baker": grown.global_index.column("job_title", "baker"), "rare": -1}
    assert landed.tolist() == [expected[t] for t in titles]


def test_examples_of_an_older_index_use_the_columns_a_later_version_gave_their_features():
    model = _model([_impression(0, ["python"], "nurse")])
    older = _examples(model, [_impression(i, ["python"], "chef") for i in range(6)])
    counter = VocabularyCounter(model, ["global"])
    counter.global_columns(unindexed(older), np.ones(6, dtype=bool))
    grown = counter.grow(min_count=5).model
    again = VocabularyCounter(grown, ["global"])
    lengths, columns, _ = again.global_columns(unindexed(older), np.ones(6, dtype=bool))
    assert columns.tolist() == [grown.global_index.column("job_title", "chef")] * 6 and not again.counts["global"]
    assert not again.grow(min_count=5).grew


def test_frozen_coordinates_are_neither_counted_nor_grown():
    frozen = load_settings(overrides={"model.coordinates.member.unseen_features": "drop"})
    assert growable_coordinates(frozen.model, grow_global=False) == ["job"]


def test_joiner_updaters_and_scorer_give_the_same_margins_across_a_version_change():
    from stream.model.game import GLOBAL
    from stream.scoring.scorer import Scorer
    from stream.synthetic import World, WorldSpec, labeled_impressions
    from stream.synthetic.examples import joined_examples
    from stream.tables.models import CoefficientTable
    from stream.codec import make_codec
    from stream.updaters.examples import ExampleReader

    settings = load_settings()
    labeled = labeled_impressions(World(WorldSpec(seed=9, members=40, jobs=30, requests=200)))
    record = initial_global_model_record([li.impression for li in labeled[:24]], settings.model)
    rng = np.random.default_rng(0)
    record["coefficients"] = rng.normal(size=len(record["coefficients"])).tolist()
    v1 = GlobalModelTable(settings.model)
    v1.apply([record])
    counter = VocabularyCounter(v1.current, growable_coordinates(settings.model, grow_global=True))
    history = joined_examples(labeled, v1.current, settings.model)
    counter.global_columns(unindexed(history), np.ones(len(history), dtype=bool))
    growth = counter.grow(min_count=1)
    assert growth.grew
    v2 = GlobalModelTable(settings.model)
    v2.current = growth.model
    # Every entity's coefficients as a state of index version 1 holds them: learned columns, the rest at the prior mean 0.
    tables = {}
    for name, coordinate in settings.model.coordinates.items():
        tables[name] = CoefficientTable(name, coordinate.max_features)
        used = v1.current.coordinate_indices[name].dim
        field = coordinate.entity_field
        tables[name].apply({"entity_id": e, "version": 1,
                            "means": np.concatenate([rng.normal(size=used), np.zeros(coordinate.max_features - used)])}
                           for e in {li.impression[field] for li in labeled})
    shown = labeled[100:160]
    rows = [li.impression for li in shown]
    joined_v1 = joined_examples(shown, v1.current, settings.model, tables)  # indexed and scored under version 1
    joined_v2 = joined_examples(shown, v2.current, settings.model, tables)  # indexed and scored under version 2
    rescored = joined_examples(shown, v1.current, settings.model)           # indexed under 1, scored under 2
    add_scores(rescored, v2.current, tables)
    for name in [GLOBAL, *settings.model.coordinates]:
        by_v1 = np.array([e["scores"][name] for e in joined_v1])
        assert np.abs(by_v1).max() > 0.1, name
        for other in (joined_v2, rescored):
            assert np.allclose([e["scores"][name] for e in other], by_v1, rtol=1e-5, atol=1e-6), name
        if name != GLOBAL:
            dim = settings.model.coordinates[name].max_features
            for examples in (joined_v1, joined_v2):  # what an updater computes: features . the entity's mean
                codec = make_codec("LabeledExample", "examples")
                read = ExampleReader(codec, name, dim).read([codec.encode(e) for e in examples], np.arange(len(examples)))
                assert not read.problems
                arrays = read.examples
                means, _ = tables[name].lookup(list(arrays.entity_ids))
                assert np.allclose(np.einsum("nd,nd->n", arrays.features, means), by_v1, rtol=1e-5, atol=1e-6)
    for model in (v1, v2):
        margins, _ = Scorer(settings.model, model, tables).rows_breakdown(rows)
        for name, values in margins.items():
            assert np.allclose(values, [e["scores"][name] for e in joined_v1], rtol=1e-5, atol=1e-6), name
