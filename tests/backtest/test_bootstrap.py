"""glmix bootstrap: a first model from history (event logs or Photon-ML training examples), published once."""

from __future__ import annotations

import json

import pytest

from stream.cli import main
from stream.codec.container import read_container
from stream.config import load_settings
from stream.event_log import EventLog
from stream.refit.game_models import latest_entity_models
from stream.synthetic import World, WorldSpec, event_stream
from stream.synthetic.sinks import write_avro_files
from stream.tables.follower import ModelFollower
from tests.backtest.worlds import backtest_settings, emerging_world_log

@pytest.mark.kafka
def test_bootstrap_publishes_a_first_model_once_and_the_backtest_starts_from_its_file(
        kafka_bootstrap, tmp_path, unique_name, capsys):
    world = World(WorldSpec(seed=6, members=150, jobs=600, requests=2000, mean_request_gap_ms=200,
                            attribution_window_ms=60_000))  # runs on both brokers: a small world keeps it quick
    write_avro_files(event_stream(world), tmp_path)
    history = EventLog.from_paths([tmp_path / "impressions.avro", tmp_path / "interactions.avro"])
    paths = [str(p) for p in history.sources]
    model_file = tmp_path / "model.avro"
    windows = ["--set", "joiner.attribution_window_ms=60000", "--set", "joiner.allowed_lateness_ms=60000"]
    args = ["--bootstrap-servers", kafka_bootstrap, "--set", f"topics.model_global=global-{unique_name}",
            "--set", f"kafka.group_prefix={unique_name}", "--set", f"topics.coefficients_prefix=coef-{unique_name}-",
            "--set", f"topics.examples_by_member=by-member-{unique_name}",  # the defaults may exist with other
            "--set", f"topics.examples_by_job=by-job-{unique_name}", *windows]  # partition counts on this broker
    assert main(["bootstrap", "--from", *paths, "--output", str(model_file), *args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == len(history) and summary["published_to"] == f"global-{unique_name}"
    # Every entity of the history got its first coefficients, published where the updaters restore them from.
    coefficients = load_settings(overrides={"kafka.bootstrap_servers": kafka_bootstrap,
                                            "topics.coefficients_prefix": f"coef-{unique_name}-",
                                            "kafka.group_prefix": unique_name})
    for name in ("member", "job"):
        published = latest_entity_models(coefficients, name)
        assert len(published) == summary["entities"][name] > 50, name
        assert any(abs(m) > 0.05 for r in published for m in r["means"]), name
    [record] = list(read_container(model_file, "GlobalModel"))
    assert record["version"] == 1 and any(c != 0.0 for c in record["coefficients"][1:])
    settings = load_settings(overrides={"kafka.bootstrap_servers": kafka_bootstrap,
                                        "topics.model_global": f"global-{unique_name}"})
    follower = ModelFollower(settings, kafka_bootstrap, client_id=f"{unique_name}-check")
    follower.catch_up()
    assert follower.global_model.current.version == 1
    assert follower.global_model.current.global_index.dim == len(record["features"])
    follower.close()

    assert main(["bootstrap", "--from", *paths, *args]) == 2  # a model is there: never replaced
    assert "already holds global model version 1" in capsys.readouterr().err

    report_file = tmp_path / "report.json"
    assert main(["backtest", "--from", *paths, "--model", str(model_file), "--latency", "5s",
                 "--report", str(report_file), *windows]) == 0
    report = json.loads(report_file.read_text())
    assert report["vocabulary"][0]["columns"]["global"] == len(record["features"])
    assert report["examples"] > 0.6 * sum(e.kind == "impression" for e in history)
    assert report["latency_ms"] == 5000 and report["events_per_s"] > 0


def _photon_records(events, labels: dict[str, float]) -> list[dict]:
    """Each labeled impression as Photon-ML writes training data: one flat feature list, ids in metadataMap."""
    records, seen = [], set()
    for event in events:
        imp = event.full_record()  # the event log's record holds the join's fields; the row has the rest
        if event.kind != "impression" or imp["impression_id"] not in labels or imp["impression_id"] in seen:
            continue  # duplicates (the world re-sends some impressions) are one example, as the join makes them
        seen.add(imp["impression_id"])
        features = [{"name": "(INTERCEPT)", "term": "", "value": 1.0}, {"name": "browser", "term": "x", "value": 1.0}]
        features += [dict(f) for bag in imp["features"].values() for f in bag]
        records.append({"uid": imp["impression_id"], "label": labels[imp["impression_id"]], "features": features,
                        "metadataMap": {"memberId": imp["member_id"], "jobId": imp["item_id"]},
                        "weight": None, "offset": None})
    return records


def test_bootstrap_from_photon_training_examples_fits_what_the_same_labeled_impressions_give(
        tmp_path, capsys):
    from stream.codec.photon import write_training_examples
    from stream.model.export import fitted_global_model_record
    from stream.refit.bootstrap import labels_of_history

    settings = backtest_settings()
    history = emerging_world_log(tmp_path / "history", requests=2000)
    events = history.events
    labels = labels_of_history(settings, events)
    photon = tmp_path / "train.avro"
    write_training_examples(photon, _photon_records(events, labels))
    rules = ["--photon-bag", "member_skill=member_skills", "--photon-bag", "job_s*=job_skills"]
    overrides = ["--set", "model.coordinates.member.max_features=64", "--set", "model.coordinates.job.max_features=64"]
    assert main(["bootstrap", "--from", str(photon), *rules, *overrides, "--output", str(tmp_path / "m.avro"),
                 "--no-publish"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["photon_records"] == len(labels) and summary["unmapped_features"] == {"browser": len(labels)}
    [record] = list(read_container(tmp_path / "m.avro", "GlobalModel"))

    labeled: dict[str, dict] = {}
    for e in events:
        if e.kind == "impression" and e.record["impression_id"] in labels:
            labeled.setdefault(e.record["impression_id"], e.full_record())
    labeled = list(labeled.values())
    expected = fitted_global_model_record(labeled, [labels[i["impression_id"]] for i in labeled], settings.model)
    assert record["features"] == expected["features"]
    assert record["coordinate_indices"] == expected["coordinate_indices"]
    assert record["coefficients"] == pytest.approx(expected["coefficients"], abs=1e-6)

    assert main(["bootstrap", "--from", str(photon), "--no-publish"]) == 0  # no rules: the skills are left out
    assert set(json.loads(capsys.readouterr().out)["unmapped_features"]) == {"browser", "member_skill", "job_skill"}
    assert main(["bootstrap", "--from", str(photon), "--photon-bag", "*=nowhere", "--no-publish"]) == 2
    assert capsys.readouterr().err.startswith("glmix: error: option --photon-bag: 'nowhere' is not a feature bag")
    unknown_only = tmp_path / "browser.avro"
    write_training_examples(unknown_only, [{"uid": "u1", "label": 1.0, "features": [
        {"name": "browser", "term": "x", "value": 1.0}], "metadataMap": None, "weight": None, "offset": None}])
    assert main(["bootstrap", "--from", str(unknown_only), "--no-publish"]) == 2
    assert "no Photon-ML feature maps to a feature bag of the model (most frequent names: browser)" in (
        capsys.readouterr().err)
    assert main(["bootstrap", "--from", str(photon), *history.sources[:1], "--no-publish"]) == 2
    assert "give one kind of history: event files, Photon-ML TrainingExampleAvro files or GAME input files" in (
        capsys.readouterr().err)
