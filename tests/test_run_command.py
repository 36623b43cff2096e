"""``glmix run``: stages as their own processes, stopped cleanly by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from stream.cli import main
from tests.helpers import wait_for


def test_run_updater_needs_a_known_coordinate(capsys):
    assert main(["run", "updater", "--bootstrap-servers", "localhost:1"]) == 2
    assert "--coordinate" in capsys.readouterr().err
    assert main(["run", "updater", "--coordinate", "company", "--bootstrap-servers", "localhost:1"]) == 2
    assert "unknown coordinates ['company']" in capsys.readouterr().err


@pytest.mark.kafka
def test_run_all_stops_cleanly_on_sigterm(kafka_bootstrap, tmp_path, unique_name):
    log = tmp_path / "run.log"
    args = [sys.executable, "-m", "stream", "run", "all", "--bootstrap-servers", kafka_bootstrap,
            "--set", f"state_dir={tmp_path / 'state'}", "--set", f"kafka.group_prefix=run-{unique_name}",
            "--set", f"topics.impressions=imp-{unique_name}", "--set", f"topics.interactions=int-{unique_name}",
            "--set", f"topics.examples_by_member=exm-{unique_name}", "--set", f"topics.examples_by_job=exj-{unique_name}"]
    with log.open("w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            state = tmp_path / "state"
            wait_for(lambda: (state / "updater-member").is_dir() and (state / "joiner").is_dir(), timeout_s=60,
                     what="the stages to open their partition stores")
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    text = log.read_text()
    assert text.count("released partitions") >= 2, text[-2000:]
    assert (tmp_path / "state" / "updater-member").is_dir() and (tmp_path / "state" / "joiner").is_dir()
