"""Offline scoring: a container file of impressions in, scores out (ours or Photon-ML's format), equal to the API's."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from stream.codec.container import read_container, write_container
from stream.config import load_settings
from stream.model.export import initial_global_model_record
from stream.progress import Progress
from stream.scoring.offline import score_file
from stream.scoring.scorer import Scorer
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.tables.models import CoefficientTable, GlobalModelTable
from tests.helpers import assert_screen, glmix_on_a_terminal_and_piped, progress_done


@pytest.fixture
def scorer_and_impressions():
    settings = load_settings()
    impressions = [li.impression for li in labeled_impressions(World(WorldSpec(seed=4, members=12, jobs=9, requests=40)))]
    record = initial_global_model_record(impressions, settings.model)
    rng = np.random.default_rng(1)
    record["coefficients"] = rng.normal(size=len(record["coefficients"])).tolist()
    global_models = GlobalModelTable(settings.model)
    global_models.apply([record])
    tables = {n: CoefficientTable(n, c.max_features) for n, c in settings.model.coordinates.items()}
    for name, field in (("member", "member_id"), ("job", "item_id")):
        ids = sorted({i[field] for i in impressions})
        tables[name].apply([{"entity_id": e, "version": 2, "means": rng.normal(size=32).tolist()} for e in ids])
    return Scorer(settings.model, global_models, tables), impressions


def test_offline_scores_equal_the_api_scores(tmp_path, scorer_and_impressions):
    scorer, impressions = scorer_and_impressions
    write_container(tmp_path / "candidates.avro", "Impression", impressions)
    progress_out = io.StringIO()
    count = score_file(scorer, tmp_path / "candidates.avro", tmp_path / "scores.avro", batch_size=64,
                       progress=Progress("scoring", out=progress_out, every_s=0.0, terminal=True))
    assert count == len(impressions)
    scores = list(read_container(tmp_path / "scores.avro", "ScoredCandidate"))
    assert [s["request_id"] for s in scores] == [i["impression_id"] for i in impressions]
    for impression, scored in zip(impressions, scores):
        [expected] = scorer.score(impression["member_id"], {}, [{"item_id": impression["item_id"],
                                                                 "features": impression["features"]}])
        assert scored["margin"] == pytest.approx(expected.margin, abs=1e-9)
        assert scored["breakdown"] == pytest.approx(dict(expected.breakdown), abs=1e-9)
        assert scored["versions"] == dict(expected.versions)
    assert f"{len(impressions):,} records" in progress_out.getvalue()


def test_photon_scoring_results_carry_uid_and_score(tmp_path, scorer_and_impressions):
    scorer, impressions = scorer_and_impressions
    write_container(tmp_path / "candidates.avro", "Impression", impressions[:20])
    score_file(scorer, tmp_path / "candidates.avro", tmp_path / "photon.avro", fmt="photon")
    results = list(read_container(tmp_path / "photon.avro", "ScoringResultAvro"))
    ours = list(read_container(tmp_path / "candidates.avro", "Impression"))
    assert [r["uid"] for r in results] == [i["impression_id"] for i in ours]
    assert all(r["modelId"] == "glmix" and np.isfinite(r["predictionScore"]) for r in results)
    assert results[0]["metadataMap"] == {"member_id": ours[0]["member_id"], "item_id": ours[0]["item_id"]}


def _model_on_kafka(tmp_path, kafka_bootstrap: str, unique_name: str) -> list[str]:
    """A global model on a topic of its own and 50 candidates in a file; the score command reading them."""
    from confluent_kafka import Producer

    from stream.codec import make_codec
    from stream.kafka import producer_config

    topic = f"global-{unique_name}"
    settings = load_settings(overrides={"kafka.bootstrap_servers": kafka_bootstrap})
    impressions = [li.impression for li in labeled_impressions(World(WorldSpec(seed=8, members=5, jobs=5, requests=10)))]
    record = initial_global_model_record(impressions, settings.model)
    record["coefficients"] = [0.1] * len(record["coefficients"])
    producer = Producer(producer_config(settings.kafka))
    producer.produce(topic, key=b"glmix", value=make_codec("GlobalModel", topic).encode(record))
    producer.flush()
    write_container(tmp_path / "in.avro", "Impression", impressions)
    return ["score", "--bootstrap-servers", kafka_bootstrap, "--set", f"topics.model_global={topic}",
            "--set", f"topics.coefficients_prefix=coef-{unique_name}-", "--input", str(tmp_path / "in.avro"),
            "--timeout", "60"]


@pytest.mark.kafka
def test_glmix_score_reads_the_models_from_kafka(tmp_path, kafka_bootstrap, unique_name, capsys):
    from stream.cli import main

    score = _model_on_kafka(tmp_path, kafka_bootstrap, unique_name)
    assert main([*score, "--output", str(tmp_path / "out.avro"), "--format", "photon"]) == 0
    assert '"scored": 50' in capsys.readouterr().out
    results = list(read_container(tmp_path / "out.avro", "ScoringResultAvro"))
    assert len(results) == 50 and all(r["predictionScore"] != 0.0 for r in results)


def test_glmix_score_shows_progress_on_a_terminal_and_nothing_when_piped(tmp_path, kafka_broker, kafka_bootstrap,
                                                                         unique_name):
    if kafka_broker.kind == "mock":
        pytest.skip("process-level test: it runs once, on the broker-process tier (the mock adds nothing here)")
    score = [*_model_on_kafka(tmp_path, kafka_bootstrap, unique_name), "--set", "log_level=ERROR"]
    screen, piped_err, piped_out = glmix_on_a_terminal_and_piped([*score, "--output", str(tmp_path / "shown.avro")],
                                                                 [*score, "--output", str(tmp_path / "piped.avro")])
    assert piped_err == ""  # piped: not one byte more than before there was a progress line
    [scored] = assert_screen(screen, [progress_done(f"scoring {tmp_path / 'in.avro'}", "records")])
    assert scored == json.loads(piped_out)["scored"] == 50
