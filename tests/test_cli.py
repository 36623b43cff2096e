"""The glmix command line: subcommands listed, the demo's round trip, synthetic data to files."""

from __future__ import annotations

import json
import subprocess
import sys

import fastavro

from stream.cli import main


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "stream", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("broker", "produce", "demo", "run", "serve", "score", "evaluate"):
        assert command in out


def test_demo_reads_back_everything_it_produced(capsys):
    assert main(["demo", "--requests", "300"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    produced = report["produced"]["impression"] + report["produced"]["interaction"]
    assert sum(report["decoded"].values()) + report["undecodable"] == produced
    assert report["undecodable"] > 0  # the demo's world includes undecodable values
    assert report["undecodable"] + report["invalid_after_decode"] == report["produced"]["malformed"]


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
