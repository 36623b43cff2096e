"""The glmix command line: subcommands listed, the demo end to end, synthetic data to files."""

from __future__ import annotations

import json
import subprocess
import sys

import fastavro

from stream.cli import main


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "stream", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("broker", "produce", "compile", "demo", "run", "serve", "score", "refit", "evaluate"):
        assert command in out


def test_compile_readies_the_kernels_of_every_configured_coordinate(capsys):
    assert main(["compile", "--set", "model.coordinates.job.precision=diagonal", "--set", "model.loss=poisson"]) == 0
    assert "compiled kernels ready" in capsys.readouterr().out


def test_demo_runs_from_the_command_line_and_leaves_its_report(tmp_path, capsys):
    assert main(["demo", "--events", "1500", "--duration", "5s", "--refit-every", "3s",
                 "--report-dir", str(tmp_path / "report")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["examples"] == report["examples"] > 1000 and summary["http_scoring_ok"]
    assert all((tmp_path / "report" / "plots" / name).exists() for name in ("auc_over_time.png", "reliability.png"))


def test_produce_synthetic_to_files_writes_avro_and_truth(tmp_path, capsys):
    truth = tmp_path / "truth.json"
    assert main(["produce", "synthetic", "--seed", "3", "--requests", "50", "--to", "files",
                 "--output", str(tmp_path / "data"), "--truth", str(truth)]) == 0
    counts = json.loads(capsys.readouterr().out)
    with open(tmp_path / "data" / "impressions.avro", "rb") as fh:
        impressions = list(fastavro.reader(fh))
    assert len(impressions) == counts["impression"] >= 250
    assert set(json.loads(truth.read_text())) == {"global", "member", "job", "alice_annie"}


def test_produce_to_kafka_without_a_broker_fails_clearly(capsys):
    assert main(["produce", "synthetic", "--requests", "5"]) == 2
    assert "bootstrap_servers is empty" in capsys.readouterr().err


def _options_without_help(parser, path):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options_without_help(sub, [*path, name])
        elif not action.help and not isinstance(action, argparse._HelpAction):
            yield " ".join(path), action.option_strings or action.dest


def test_every_option_of_every_command_has_help_text():
    from stream.cli import build_parser

    assert list(_options_without_help(build_parser(), ["glmix"])) == []


def test_an_unreachable_broker_is_one_line_and_exit_code_2(capfd):
    assert main(["run", "joiner", "--bootstrap-servers", "127.0.0.1:1", "--set", "metrics.enabled=false"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["glmix: error: no Kafka broker answered at 127.0.0.1:1 within 10 s (Failed to get metadata: Local: "
                   "Broker transport failure)"]


def test_a_missing_input_file_is_one_line_and_exit_code_2(tmp_path, capfd):
    missing = tmp_path / "candidates.avro"
    assert main(["score", "--input", str(missing), "--output", str(tmp_path / "out.avro"),
                 "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert capfd.readouterr().err.strip() == f"glmix: error: option --input: no such file: {missing}"


def test_an_unwritable_output_is_one_line_and_exit_code_2(tmp_path, capfd):
    from stream.synthetic import World, WorldSpec, event_stream
    from stream.synthetic.sinks import write_avro_files

    write_avro_files(event_stream(World(WorldSpec(seed=1, members=5, jobs=5, requests=5))), tmp_path)
    (tmp_path / "report.json").mkdir()  # a directory where the report file should go
    assert main(["backtest", "--from", str(tmp_path / "impressions.avro"), str(tmp_path / "interactions.avro"),
                 "--report", str(tmp_path / "report.json")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("glmix: error: ") and "report.json" in err[0]


def test_serve_with_no_workers_fails_naming_the_setting(capfd):
    assert main(["serve", "--workers", "0", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "serving.workers" in err[0] and "must be >= 1, got 0" in err[0], err

