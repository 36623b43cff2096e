"""glmix backtest and glmix tune: replays of event logs (files, topic ranges, GAME input) through the live code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.backtest.replay import Backtest, BacktestError, BacktestOptions
from stream.cli import main
from stream.codec.container import read_container
from stream.config import load_settings
from stream.evaluation.progressive import collect, progressive_report
from stream.event_log import EventLog
from stream.model.losses import get_loss
from stream.synthetic import World, WorldSpec, event_stream
from stream.synthetic.sinks import write_avro_files
from tests.backtest.worlds import backtest_settings

def _without_timing(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("seconds", "events_per_s")}


def test_a_log_joined_once_and_learned_from_under_other_priors_reports_what_a_whole_replay_reports(tmp_path):
    write_avro_files(event_stream(World(WorldSpec(seed=11, members=60, jobs=120, requests=600,
                                                  mean_request_gap_ms=200, attribution_window_ms=60_000))), tmp_path)
    log = EventLog.from_paths([tmp_path / "impressions.avro", tmp_path / "interactions.avro"])
    options = BacktestOptions(latency_ms=2000)
    defaults = backtest_settings()
    joined = Backtest(defaults, options).joined(log.events)
    for settings in (defaults, backtest_settings(**{"model.coordinates.member.l2": "1",
                                                    "model.coordinates.job.forgetting": "0.95",
                                                    "model.coordinates.job.precision": "diagonal",
                                                    "model.global_l2": "10"})):
        whole = Backtest(settings, options).run(log.events)
        learned = Backtest(settings, options).run_joined(joined)
        assert _without_timing(learned.report) == _without_timing(whole.report)
        assert learned.examples == whole.examples and len(whole.examples) > 1000
        # the report comes from the emitted batches' columns; the same report from the records, as `glmix evaluate`
        coordinates = list(settings.model.coordinates)
        from_records = progressive_report(collect(whole.examples, coordinates), get_loss(settings.model.loss),
                                          options.windows, history_edges=settings.metrics.history_edges)
        assert {key: whole.report[key] for key in from_records} == from_records
    with pytest.raises(BacktestError, match="join alike"):  # a join setting, or another latency, joins differently
        Backtest(backtest_settings(**{"joiner.attribution_window_ms": "30000"}), options).run_joined(joined)
    with pytest.raises(BacktestError, match="join alike"):
        Backtest(defaults, BacktestOptions(latency_ms=1000)).run_joined(joined)
    with pytest.raises(BacktestError, match="without refits"):
        Backtest(defaults, BacktestOptions(refit_every_ms=60_000)).joined(log.events)


def test_an_unreadable_event_log_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["backtest", "--from", str(tmp_path / "missing.avro")]) == 2
    assert capsys.readouterr().err.strip() == f"glmix: error: {tmp_path / 'missing.avro'}: no such file"
    (tmp_path / "text.avro").write_text("not avro")
    assert main(["backtest", "--from", str(tmp_path / "text.avro")]) == 2
    assert "not an Avro container file" in capsys.readouterr().err


def test_tune_chooses_on_the_validation_period_and_beats_the_defaults_after_it(tmp_path, capsys):
    world = World(WorldSpec(seed=8, members=150, jobs=1000, requests=2500, emerging_terms=10, mean_request_gap_ms=200,
                            attribution_window_ms=60_000))
    write_avro_files(event_stream(world), tmp_path)
    settings = ["--set", "joiner.bootstrap_impressions=1000", "--set", "joiner.attribution_window_ms=60000",
                "--set", "joiner.allowed_lateness_ms=60000",  # and untuned penalties, l2 = 1 for both (the old defaults)
                "--set", "model.coordinates.member.l2=1", "--set", "model.coordinates.job.l2=1"]
    assert main(["tune", "--from", str(tmp_path / "impressions.avro"), str(tmp_path / "interactions.avro"),
                 "--latency", "5s", *settings]) == 0  # 5 s micro-batches: a fifth of the 1 s default's, half its time
    out = capsys.readouterr().out
    summary = json.loads(out[: out.rindex("}") + 1])
    print(f"\ntune: {summary}")
    assert summary["trials"] == 17 and summary["chosen"]  # 8 per coordinate; the global L2 needs refits
    assert summary["validation_auc"]["tuned"] > summary["validation_auc"]["defaults"] + 0.002
    assert summary["evaluation_auc"]["tuned"] >= summary["evaluation_auc"]["defaults"]
    toml = out[out.rindex("}") + 1:]
    for key, value in summary["chosen"].items():
        table, _, name = key.rpartition(".")
        assert f"[{table}]" in toml and f"{name} = {value!r}" in toml.replace('"', "'")
    split = summary["split_event_time_ms"]
    impressions = sorted(r["event_time"] for r in read_container(tmp_path / "impressions.avro", "Impression"))
    assert impressions[int(0.7 * (len(impressions) - 1))] == split


@pytest.mark.kafka
def test_a_backtest_of_a_topic_range_equals_the_backtest_of_the_same_events_from_files(
        kafka_bootstrap, tmp_path, unique_name, capsys):
    from confluent_kafka import Producer

    from stream.kafka.clients import producer_config
    from stream.synthetic.sinks import event_topics_and_codecs, produce_to_kafka

    world = World(WorldSpec(seed=9, members=60, jobs=80, requests=500, mean_request_gap_ms=200,
                            attribution_window_ms=60_000, malformed_rate=0.0))
    events = list(event_stream(world))
    times = sorted(e.record["event_time"] for e in events)
    since, until = times[len(times) // 5], times[4 * len(times) // 5]  # a range inside the log, both ends cut
    settings_args = ["--set", "joiner.bootstrap_impressions=300", "--set", "joiner.attribution_window_ms=60000",
                     "--set", "joiner.allowed_lateness_ms=60000"]
    topic_args = ["--bootstrap-servers", kafka_bootstrap, "--set", f"topics.impressions=imp-{unique_name}",
                  "--set", f"topics.interactions=int-{unique_name}", "--set", f"kafka.group_prefix={unique_name}"]
    settings = load_settings(overrides={"kafka.bootstrap_servers": kafka_bootstrap,
                                        "topics.impressions": f"imp-{unique_name}",
                                        "topics.interactions": f"int-{unique_name}"})
    producer = Producer(producer_config(settings.kafka))
    produce_to_kafka(events, producer, *event_topics_and_codecs(settings))
    write_avro_files([e for e in events if since <= e.record["event_time"] < until], tmp_path)

    assert main(["backtest", "--from-topics", "--since", str(since), "--until", str(until), "--latency", "1s",
                 *settings_args, *topic_args]) == 0
    from_topics = json.loads(capsys.readouterr().out)
    assert main(["backtest", "--from", str(tmp_path / "impressions.avro"), str(tmp_path / "interactions.avro"),
                 "--latency", "1s", *settings_args]) == 0
    from_files = json.loads(capsys.readouterr().out)
    in_range = sum(since <= t < until for t in times)
    assert from_topics["events"] == from_files["events"] == in_range
    for key in ("examples", "variants", "join", "micro_batches"):
        assert from_topics[key] == from_files[key], key

    assert main(["backtest", "--from-topics", "--latency", "1s", *topic_args]) == 2
    assert capsys.readouterr().err.strip() == "glmix: error: option --since: --from-topics needs the first event time of the range"


def test_a_backtest_of_game_input_equals_the_backtest_of_the_same_impressions_and_clicks(tmp_path, capsys):
    """GAME records with an event time replay as an impression each and, for a response of 1, a click at that time."""
    from stream.codec.container import write_container
    from tests.game_inputs import ratings_world, write_config, write_records

    world = ratings_world(seed=8, loss="logistic", records=1000)
    records = world.records(np.arange(1000))
    write_records(tmp_path / "game.avro", records)
    config = ["--config", str(write_config(tmp_path / "glmix.toml", "logistic")),
              "--set", "joiner.attribution_window_ms=2000", "--set", "joiner.allowed_lateness_ms=0",
              "--set", "joiner.bootstrap_impressions=300", "--latency", "20s"]
    assert main(["backtest", "--from", str(tmp_path / "game.avro"), "--set", "game_input.event_time=timestamp",
                 *config]) == 0
    from_game = json.loads(capsys.readouterr().out)

    impressions, clicks = [], []
    for n, r in enumerate(records):
        uid = f"game-input-{n}"
        impressions.append({
            "impression_id": uid, "request_id": uid, "member_id": uid, "item_id": uid, "position": 0,
            "event_time": r["timestamp"], "random_bucket": False,
            "features": {bag: [{**f, "term": f["term"] or ""} for f in r[bag]]
                         for bag in ("features", "userFeatures", "songFeatures")},
            "context": {"userId": str(r["userId"]), "songId": str(r["songId"]),
                        "artistId": r["metadataMap"]["artistId"]}})
        if r["response"] == 1.0:
            clicks.append({"interaction_id": f"{uid}:response", "impression_id": uid, "member_id": uid,
                           "item_id": uid, "type": "CLICK", "event_time": r["timestamp"]})
    write_container(tmp_path / "impressions.avro", "Impression", impressions)
    write_container(tmp_path / "interactions.avro", "Interaction", clicks)
    assert main(["backtest", "--from", str(tmp_path / "impressions.avro"), str(tmp_path / "interactions.avro"),
                 *config]) == 0
    from_events = json.loads(capsys.readouterr().out)
    for report in (from_game, from_events):
        for timing in ("seconds", "events_per_s"):
            report.pop(timing)
    assert from_game == from_events
    assert from_game["join"]["impressions"] == 1000 and from_game["join"]["interactions"] == len(clicks)
    closed = int(np.sum(world.times + 2000 <= world.times.max()))  # windows still open when the log ends are not
    assert from_game["examples"] == closed
    assert from_game["variants"]["global+per-user+per-song+per-artist"]["auc"] > 0.6


def test_game_input_without_an_event_time_setting_is_refused_by_a_backtest(tmp_path, capsys):
    from tests.game_inputs import ratings_world, write_config, write_records

    world = ratings_world(records=10, loss="logistic")
    write_records(tmp_path / "game.avro", world.records(np.arange(10)))
    assert main(["backtest", "--config", str(write_config(tmp_path / "glmix.toml", "logistic")),
                 "--from", str(tmp_path / "game.avro")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["glmix: error: GAME input records are replayed by their event time: set game_input.event_time to "
                   "the field that holds it"]


def test_a_response_no_interaction_type_gives_is_refused_by_a_backtest(tmp_path, capsys):
    from tests.game_inputs import ratings_world, write_config, write_records

    world = ratings_world(records=10, loss="linear")
    write_records(tmp_path / "game.avro", world.records(np.arange(10)))
    assert main(["backtest", "--config", str(write_config(tmp_path / "glmix.toml", "linear")),
                 "--from", str(tmp_path / "game.avro"), "--set", "game_input.event_time=timestamp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"game.avro: a response of {world.responses[0]:g} has no interaction type" in err[0]
