"""The global refit over archived examples: it improves holdout AUC, is gated, reruns safely, and goes live."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from contextlib import ExitStack

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.archive.files import ArchiveFiles, hour_of
from stream.codec import make_codec
from stream.codec.container import read_container
from stream.codec.photon import read_models
from stream.config import load_settings
from stream.kafka import producer_config
from stream.model.export import initial_global_model_record
from stream.refit.job import GlobalRefit, RefitError, unpublished_result
from stream.refit.spill import SpillDirectory
from stream.scoring.scorer import Scorer
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.synthetic.examples import joined_examples
from stream.synthetic.world import job_feature_keys, member_feature_keys
from stream.tables.follower import ModelFollower
from stream.tables.models import CoefficientTable, GlobalModelTable
from tests.helpers import assert_screen, glmix_on_a_terminal_and_piped, progress_done, wait_for

pytestmark = pytest.mark.kafka


def _settings(kafka_bootstrap, tmp_path, unique_name, **extra):
    return load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "kafka.group_prefix": unique_name, "state_dir": str(tmp_path),
        "topics.model_global": f"global-{unique_name}", "topics.coefficients_prefix": f"coef-{unique_name}-",
        "topics.partitions": "1", "refit.holdout_fraction": "0.25", **extra,
    })


def _truth_records(settings, world, record) -> dict[str, list[dict]]:
    """Every entity's true effect as EntityModel records (version 1) per coordinate."""
    records = {}
    for name, effects in (("member", world.truth.member_effects), ("job", world.truth.job_effects)):
        keys = [(k["name"], k["term"]) for k in record["coordinate_indices"][name]]
        d = settings.model.coordinates[name].max_features
        records[name] = [
            {"coordinate": name, "entity_id": entity, "version": 1,
             "means": [effect.get(key, 0.0) for key in keys] + [0.0] * (d - len(keys)),
             "precision_kind": "DIAGONAL", "precision": np.ones(d).tobytes(), "index_version": record["index_version"]}
            for entity, effect in effects.items()
        ]
    return records


def _publish(settings, record, truth) -> None:
    """Model v1 (zero global coefficients) and the true random effects, as the pipeline would have them."""
    producer = Producer(producer_config(settings.kafka))
    topic = settings.topics.model_global
    producer.produce(topic, key=b"glmix", value=make_codec("GlobalModel", topic).encode(record))
    for name, records in truth.items():
        codec = make_codec("EntityModel", settings.topics.coefficients(name))
        for r in records:
            producer.produce(settings.topics.coefficients(name), key=r["entity_id"].encode(), value=codec.encode(r))
    producer.flush()


def _archive(settings, labeled, record, truth=None) -> int:
    """The examples the joiner would have emitted (join-time scores from ``truth``) in the archive."""
    model = GlobalModelTable(settings.model)
    model.apply([record])
    tables = {}
    for name, records in (truth or {}).items():
        tables[name] = CoefficientTable(name, settings.model.coordinates[name].max_features)
        tables[name].apply(records)
    examples = joined_examples(labeled, model.current, settings.model, tables)
    files = ArchiveFiles(settings.archive_path)
    by_hour = defaultdict(list)
    for offset, example in enumerate(examples):
        by_hour[hour_of(example["event_time"])].append((offset, example))
    for hour, rows in by_hour.items():
        files.write(hour, 0, rows[0][0], rows[-1][0], [e for _, e in rows])
    return len(examples)


def test_refit_improves_holdout_auc_publishes_reruns_safely_and_refuses_a_worse_model(
        kafka_bootstrap, tmp_path, unique_name, caplog):
    settings = _settings(kafka_bootstrap, tmp_path, unique_name)
    world = World(WorldSpec(seed=11, members=120, jobs=60, requests=3000))
    labeled = labeled_impressions(world)
    record = initial_global_model_record([li.impression for li in labeled], settings.model)
    truth = _truth_records(settings, world, record)
    _publish(settings, record, truth)
    archived = _archive(settings, labeled, record, truth)
    follower = ModelFollower(settings, kafka_bootstrap, client_id=f"{unique_name}-scorer")
    follower.catch_up()
    assert follower.global_model.current.version == 1

    refit = GlobalRefit(settings, kafka_bootstrap)
    result = refit.run_once()
    assert result.status == "published" and result.version == 2, result
    assert result.train_examples + result.holdout_examples == archived and result.dropped_examples == 0
    assert result.candidate_metrics["auc"] > result.current_metrics["auc"] + 0.05
    assert result.candidate_metrics["log_loss"] < result.current_metrics["log_loss"]

    # The model files: the GlobalModel record and the Photon-ML model with its variances.
    [saved] = list(read_container(result.files[0], "GlobalModel"))
    assert saved["version"] == 2 and saved["holdout_metrics"]["holdout_auc"] == pytest.approx(result.candidate_metrics["auc"])
    [photon] = list(read_models(result.files[1]))
    assert len(photon.means) == len(saved["coefficients"]) and all(v > 0 for v in photon.variances)
    learned = dict(zip([(f["name"], f["term"]) for f in saved["features"]], saved["coefficients"]))
    shared = [k for k in world.truth.global_coefficients if k in learned]
    truth = np.array([world.truth.global_coefficients[k] for k in shared])
    assert np.corrcoef(truth, [learned[k] for k in shared])[0, 1] > 0.8

    # A running scorer takes version 2 without a restart.
    scorer = Scorer.following(settings.model, follower)
    wait_for(lambda: (follower.refresh(0.2), follower.global_model.current.version == 2)[1], what="version 2")
    imp = labeled[0].impression
    [scored] = scorer.score(imp["member_id"], {}, [{"item_id": imp["item_id"], "features": imp["features"]}])
    assert scored.versions["global"] == 2 and scored.versions["member"] == 1 and scored.versions["job"] == 1

    # A rerun over the same window reaches the same coefficients and publishes nothing.
    again = refit.run_once()
    assert again.status == "unchanged", again
    assert again.current_version == 2 and refit.stats.published == 1

    # A model trained on shuffled labels is refused, counted and logged; version 2 stays.
    rng = np.random.default_rng(0)
    with SpillDirectory() as spill, ExitStack() as scope, caplog.at_level(logging.WARNING, logger="stream.refit.job"):
        inputs = refit.prepare(scope)
        shuffled = spill.split("shuffled", inputs.train.dim, 10_000)
        for block in inputs.train.blocks():
            x = block.features
            shuffled.add(rng.permutation(np.asarray(block.labels)), np.asarray(block.weights), np.asarray(block.offsets),
                         np.asarray(block.offsets), np.zeros(x.shape[0], dtype=np.int64), np.diff(x.indptr), x.indices,
                         x.data)
        shuffled.flush()
        worse = refit.fit(shuffled, np.zeros(inputs.train.dim))
        outcome = unpublished_result(inputs)
        decision = refit.decide(outcome, inputs.model, {"residual": worse}, shuffled, inputs.holdout)
    assert not decision.passed and outcome.status == "refused" and refit.stats.refused == 1
    assert outcome.candidate_metrics["auc"] < outcome.current_metrics["auc"] - 0.002
    assert any("refused" in r.getMessage() for r in caplog.records)
    follower.refresh(0.5)
    assert follower.global_model.current.version == 2
    follower.close()


def test_glmix_refit_shows_progress_on_a_terminal_and_nothing_when_piped(kafka_broker, kafka_bootstrap, tmp_path,
                                                                       unique_name):
    if kafka_broker.kind == "mock":
        pytest.skip("process-level test: it runs once, on the broker-process tier (the mock adds nothing here)")
    sets = {"kafka.group_prefix": unique_name, "state_dir": str(tmp_path), "topics.model_global": f"global-{unique_name}",
            "topics.coefficients_prefix": f"coef-{unique_name}-", "topics.partitions": "1",
            "refit.holdout_fraction": "0.25", "log_level": "ERROR"}
    settings = load_settings(overrides={"kafka.bootstrap_servers": kafka_bootstrap, **sets})
    world = World(WorldSpec(seed=11, members=60, jobs=30, requests=800))
    labeled = labeled_impressions(world)
    record = initial_global_model_record([li.impression for li in labeled], settings.model)
    truth = _truth_records(settings, world, record)
    _publish(settings, record, truth)
    archived = _archive(settings, labeled, record, truth)
    refit = ["refit", "--bootstrap-servers", kafka_bootstrap, *(a for k, v in sets.items() for a in ("--set", f"{k}={v}"))]
    # One after the other (the piped run first): two refits publishing at once would race for version 2.
    screen, piped_err, piped_out = glmix_on_a_terminal_and_piped(refit, concurrently=False)
    assert piped_err == ""  # piped: not one byte more than before there was a progress line
    read, _, _ = assert_screen(screen, [progress_done("refit: reading the archive", "examples"),
                                        progress_done("refit: fitting residual", "L-BFGS iterations"),
                                        progress_done("refit: fitting standalone", "L-BFGS iterations")])
    result = json.loads(piped_out)
    assert read == archived == result["train_examples"] + result["holdout_examples"] and result["status"] == "published"


def test_refit_without_an_archive_or_a_model_says_what_to_do(kafka_bootstrap, tmp_path, unique_name):
    settings = _settings(kafka_bootstrap, tmp_path, unique_name)
    with pytest.raises(RefitError, match="glmix run archive"):
        GlobalRefit(settings, kafka_bootstrap).run_once()
    world = World(WorldSpec(seed=1, members=10, jobs=10, requests=20))
    labeled = labeled_impressions(world)
    _archive(settings, labeled, initial_global_model_record([li.impression for li in labeled], settings.model))
    with pytest.raises(RefitError, match="no global model"):
        GlobalRefit(settings, kafka_bootstrap).run_once()


def test_current_offsets_come_from_the_published_coefficients_on_either_table(kafka_bootstrap, tmp_path, unique_name):
    """With the true effects both published and recorded at join time, both offset sources must agree row by row."""
    world = World(WorldSpec(seed=5, members=40, jobs=30, requests=400))
    labeled = labeled_impressions(world)
    offsets = {}
    for source, table in (("join_time", "memory"), ("current", "memory"), ("current", "rocksdb")):
        settings = _settings(kafka_bootstrap, tmp_path / f"{source}-{table}", f"{unique_name}-{source}-{table}",
                             **{"refit.offsets": source, "serving.table": table})
        record = initial_global_model_record([li.impression for li in labeled], settings.model)
        truth = _truth_records(settings, world, record)
        _publish(settings, record, truth)
        _archive(settings, labeled, record, truth)
        with ExitStack() as scope:
            inputs = GlobalRefit(settings, kafka_bootstrap).prepare(scope)
            offsets[(source, table)] = inputs.train.column("offsets")
    reference = offsets[("join_time", "memory")]
    assert np.abs(reference).max() > 0.5
    for key, got in offsets.items():
        assert got == pytest.approx(reference, abs=1e-4), key  # float32 features on the wire


def test_a_vocabulary_frozen_at_24_impressions_grows_and_its_new_global_features_are_fitted(
        kafka_bootstrap, tmp_path, unique_name):
    """The user report: indexes from the first micro-batch of 24 impressions; one refit admits what came later."""
    settings = _settings(kafka_bootstrap, tmp_path, unique_name)
    world = World(WorldSpec(seed=11, members=120, jobs=60, requests=3000))
    labeled = labeled_impressions(world)
    record = initial_global_model_record([li.impression for li in labeled[:24]], settings.model)
    _publish(settings, record, {})
    _archive(settings, labeled, record)
    first = GlobalModelTable(settings.model)
    first.apply([record])
    before = first.current

    result = GlobalRefit(settings, kafka_bootstrap).run_once()
    assert result.status == "published" and result.version == 2 and result.index_version == 2, result
    assert result.admitted_features["global"] > 0
    assert result.candidate_metrics["auc"] > result.current_metrics["auc"] + 0.02

    follower = ModelFollower(settings, kafka_bootstrap, client_id=f"{unique_name}-scorer")
    wait_for(lambda: (follower.refresh(0.2), follower.global_model.current.version == 2)[1], what="version 2")
    grown = follower.global_model.current
    follower.close()
    assert grown.extends(before) and grown.index_version == 2
    # Every feature of the world is frequent, so each index now holds all of them that fit.
    for name, keys in (("member", job_feature_keys()), ("job", member_feature_keys())):
        index = grown.coordinate_indices[name]
        assert index.dim == before.coordinate_indices[name].dim + result.admitted_features[name]
        assert index.dim == min(index.capacity, 1 + len(keys))
    assert grown.global_index.dim == 1 + len(job_feature_keys()) + len(member_feature_keys())
    new_keys = grown.global_index.keys[before.global_index.dim:]
    learned = dict(zip(grown.global_index.keys, grown.coefficients))
    strong = [k for k in new_keys if abs(world.truth.global_coefficients.get(k, 0.0)) > 0.3]
    assert strong and all(abs(learned[k]) > 0.05 for k in strong)
    true, fitted = zip(*[(world.truth.global_coefficients[k], learned[k]) for k in new_keys])
    assert np.corrcoef(true, fitted)[0, 1] > 0.7


def test_a_random_bucket_refit_trains_on_exactly_the_random_bucket_examples(kafka_bootstrap, tmp_path, unique_name):
    settings = _settings(kafka_bootstrap, tmp_path, unique_name, **{"refit.training_examples": "random_bucket",
                                                                   "refit.min_examples": "20"})
    world = World(WorldSpec(seed=12, members=60, jobs=40, requests=1500, random_bucket_rate=0.2))
    labeled = labeled_impressions(world)
    record = initial_global_model_record([li.impression for li in labeled], settings.model)
    _publish(settings, record, {})
    _archive(settings, labeled, record)
    refit = GlobalRefit(settings, kafka_bootstrap)
    with ExitStack() as scope:
        inputs = refit.prepare(scope)
        holdout_from = inputs.window.holdout_ms
    result = refit.run_once()
    in_training = [li for li in labeled if li.impression["event_time"] < holdout_from]
    assert result.train_examples == sum(li.impression["random_bucket"] for li in in_training) > 0
    assert result.holdout_examples == len(labeled) - len(in_training)
