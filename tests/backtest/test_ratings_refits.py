"""Refits inside a backtest on the ratings-like world: they help the full model, never cost the global model alone,
and leave a deployment's archive and model directory as they were."""

from __future__ import annotations

import pytest

from stream.backtest.replay import Backtest, BacktestOptions
from stream.event_log import EventLog
from stream.synthetic import World, event_stream, ratings_like
from stream.synthetic.sinks import write_avro_files
from tests.backtest.worlds import (
    RATINGS_JOIN,
    assert_refits_help_and_global_only_holds,
    backtest_settings,
    eight_refits,
)

def test_refits_help_the_full_model_and_never_cost_global_only_quality_on_the_ratings_like_world(tmp_path):
    write_avro_files(event_stream(World(ratings_like(requests=12_000))), tmp_path)
    log = EventLog.from_paths([tmp_path / "impressions.avro", tmp_path / "interactions.avro"])
    settings = backtest_settings(**RATINGS_JOIN)
    without = Backtest(settings, BacktestOptions(latency_ms=1000)).run(log.events)
    with_refits = Backtest(settings, eight_refits(log)).run(log.events)
    assert_refits_help_and_global_only_holds(without, with_refits)
    assert {r["candidate"] for r in with_refits.report["refits"]} <= {"residual", "standalone"}


def test_a_backtest_neither_writes_into_nor_refits_on_the_configured_archive(tmp_path):
    """With a deployment's configuration, a replay's refits see only the replayed events (an archive's examples may
    come from after them), and the archive and model directory stay as they were."""
    write_avro_files(event_stream(World(ratings_like(requests=3_000))), tmp_path / "log")
    log = EventLog.from_paths([tmp_path / "log" / "impressions.avro", tmp_path / "log" / "interactions.avro"])
    settings = backtest_settings(**RATINGS_JOIN, **{"archive.path": str(tmp_path / "archive"),
                                            "refit.output_dir": str(tmp_path / "models")})
    first, second = (Backtest(settings, eight_refits(log)).run(log.events) for _ in range(2))
    assert first.report["refits"] and first.report["refits"] == second.report["refits"]
    assert not (tmp_path / "archive").exists() and not (tmp_path / "models").exists()
