"""What the backtest tests share: their settings, the worlds they replay, and the refit-quality check."""

from __future__ import annotations

import itertools

import numpy as np

from stream.event_log import EventLog
from stream.backtest.replay import BacktestOptions, BacktestResult
from stream.config import load_settings
from stream.model.metrics import auc
from stream.synthetic import World, WorldSpec, event_stream
from stream.synthetic.sinks import write_avro_files


def emerging_world_log(directory, requests: int = 6000) -> EventLog:
    """A world whose vocabulary arrives over time: new skills and companies, many jobs with few impressions each."""
    world = World(
        WorldSpec(seed=5, members=300, jobs=3000, requests=requests, emerging_terms=20, mean_request_gap_ms=200)
    )
    write_avro_files(event_stream(world), directory)
    return EventLog.from_paths([directory / "impressions.avro", directory / "interactions.avro"])


def backtest_settings(**extra: str):
    return load_settings(overrides={
        "joiner.bootstrap_impressions": "1000", "joiner.attribution_window_ms": "60000",
        "joiner.allowed_lateness_ms": "60000", "refit.min_examples": "100",
        "model.coordinates.member.max_features": "64", "model.coordinates.job.max_features": "64",
        "model.coordinates.member.l2": "10", "model.coordinates.job.l2": "10", **extra})


RATINGS_JOIN = {"joiner.attribution_window_ms": "2000", "joiner.allowed_lateness_ms": "0"}  # a rating is its label

def eight_refits(log: EventLog) -> BacktestOptions:
    span = log.events[-1].record["event_time"] - log.events[0].record["event_time"]
    return BacktestOptions(latency_ms=1000, refit_every_ms=span // 8)


def _hanley_mcneil_se(auc_value: float, positives: int, negatives: int) -> float:
    """The standard error of an AUC (Hanley & McNeil, 1982)."""
    q1, q2 = auc_value / (2 - auc_value), 2 * auc_value**2 / (1 + auc_value)
    variance = (auc_value * (1 - auc_value) + (positives - 1) * (q1 - auc_value**2)
                + (negatives - 1) * (q2 - auc_value**2)) / (positives * negatives)
    return float(np.sqrt(variance))


def _global_only_windows(result: BacktestResult, windows: int = 8) -> list[tuple[float, float]]:
    """Global-only AUC and its standard error in equal-count windows of the examples after the first refit."""
    first = result.report["refits"][0]["at_event_time"]
    rows = sorted((e for e in result.examples if e["event_time"] > first), key=lambda e: e["event_time"])
    out = []
    for part in np.array_split(np.arange(len(rows)), windows):
        labels = np.array([rows[i]["label"] > 0 for i in part])
        margins = np.array([rows[i]["scores"]["global"] + rows[i]["offset"] for i in part])
        value = auc(labels, margins)
        out.append((value, _hanley_mcneil_se(value, int(labels.sum()), int((~labels).sum()))))
    return out


def assert_refits_help_and_global_only_holds(without: BacktestResult, with_refits: BacktestResult) -> None:
    full = "global+member+job"
    report = with_refits.report
    assert any(r["status"] == "published" for r in report["refits"]), report["refits"]
    assert report["variants"][full]["auc"] >= without.report["variants"][full]["auc"]
    windows = _global_only_windows(with_refits)
    print("\nglobal-only AUC by window after the first refit: " + " ".join(f"{a:.3f}+-{se:.3f}" for a, se in windows))
    assert windows[-1][0] > 0.6, "the published global model must stand on its own"
    for (before, se_before), (after, se_after) in itertools.pairwise(windows):
        noise = 3 * np.hypot(se_before, se_after)  # 3 standard errors of the difference of two windows
        assert after >= before - noise, f"global-only AUC fell {before:.3f} -> {after:.3f} (noise {noise:.3f})"
