"""backtest, tune and bootstrap, run as real glmix processes: a progress line on a terminal, nothing when piped."""

from __future__ import annotations

import json

import pytest

from stream.event_log import EventLog
from stream.consumers.labeling import IMPRESSION
from stream.synthetic import World, WorldSpec, event_stream
from stream.synthetic.sinks import write_avro_files
from tests.helpers import assert_screen, glmix_on_a_terminal_and_piped, progress_done

SETTINGS = ["--set", "joiner.bootstrap_impressions=300", "--set", "joiner.attribution_window_ms=60000",
            "--set", "joiner.allowed_lateness_ms=60000", "--set", "log_level=ERROR"]
READ = progress_done("reading the event log", "records")


@pytest.fixture(scope="module")
def small_log(tmp_path_factory) -> list[str]:
    directory = tmp_path_factory.mktemp("small")
    write_avro_files(event_stream(World(WorldSpec(seed=3, members=40, jobs=60, requests=400, mean_request_gap_ms=200,
                                                  attribution_window_ms=60_000))), directory)
    return [str(directory / "impressions.avro"), str(directory / "interactions.avro")]


def test_backtest_counts_every_event_read_and_replayed(small_log):
    screen, piped_err, piped_out = glmix_on_a_terminal_and_piped(["backtest", "--from", *small_log, *SETTINGS])
    assert piped_err == ""  # piped: not one byte more than before there was a progress line
    read, replayed = assert_screen(screen, [READ, progress_done("backtest", "events")])
    report = json.loads(piped_out)
    assert read == report["events"] + report["invalid_events"] and replayed == report["events"]


def test_tune_counts_the_events_of_every_trial_on_one_line(small_log):
    screen, piped_err, piped_out = glmix_on_a_terminal_and_piped(["tune", "--from", *small_log, *SETTINGS])
    assert piped_err == ""
    read, replayed = assert_screen(screen, [READ, progress_done("tune", "events")])
    summary = json.loads(piped_out[: piped_out.index("\n}") + 2])
    events = EventLog.from_paths(small_log).events
    validation = sum(e.record["event_time"] < summary["split_event_time_ms"] for e in events)
    assert read == len(events) and replayed == summary["trials"] * validation + 2 * len(events)


def test_bootstrap_counts_the_events_it_labels(small_log):
    screen, piped_err, piped_out = glmix_on_a_terminal_and_piped(["bootstrap", "--from", *small_log, "--no-publish",
                                                                  *SETTINGS])
    assert piped_err == ""
    read, labeled = assert_screen(screen, [READ, progress_done("bootstrap: labeling the history", "events")])
    summary = json.loads(piped_out)
    assert read == labeled == summary["events"] and sum(e.kind == IMPRESSION for e in EventLog.from_paths(small_log))
