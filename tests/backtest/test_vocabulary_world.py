"""The backtest on the world whose vocabulary arrives over time: a growing index against a frozen one, and refits
that help the full model without costing the global model alone (a file of its own: it is the suite's longest)."""

from __future__ import annotations

import pytest

from stream.backtest.replay import Backtest, BacktestOptions, BacktestResult
from tests.backtest.worlds import assert_refits_help_and_global_only_holds, backtest_settings, eight_refits

@pytest.fixture(scope="module")
def emerging_with_refits(emerging_log) -> BacktestResult:
    return Backtest(backtest_settings(), eight_refits(emerging_log)).run(emerging_log.events)


def test_a_growing_vocabulary_beats_a_frozen_one_and_resets_nobody(emerging_log, emerging_with_refits):
    grown = emerging_with_refits.report
    frozen = Backtest(backtest_settings(**{"refit.grow_vocabulary": "false"}), eight_refits(emerging_log)).run(
        emerging_log.events).report
    full = "global+member+job"
    print(f"\nfull-model progressive AUC: growing {grown['variants'][full]['auc']:.4f}, "
          f"frozen {frozen['variants'][full]['auc']:.4f}; columns {grown['vocabulary'][0]['columns']} -> "
          f"{grown['vocabulary'][-1]['columns']}")
    assert grown["variants"][full]["auc"] > frozen["variants"][full]["auc"] + 0.005
    last = grown["windows"][-1]["variants"][full]["auc"]
    assert last > frozen["windows"][-1]["variants"][full]["auc"] + 0.01  # the gap grows as the new terms spread
    assert grown["vocabulary"][-1]["index_version"] > 1 and frozen["vocabulary"][-1]["index_version"] == 1
    for name in ("member", "job"):
        assert grown["vocabulary"][-1]["columns"][name] > grown["vocabulary"][0]["columns"][name]
        assert grown["widened_entities"][name] > 0 and grown["reset_entities"][name] == 0
    assert grown["examples"] == frozen["examples"]


def test_refits_help_the_full_model_and_never_cost_global_only_quality_on_the_vocabulary_world(
        emerging_log, emerging_with_refits):
    without = Backtest(backtest_settings(), BacktestOptions(latency_ms=1000)).run(emerging_log.events)
    assert_refits_help_and_global_only_holds(without, emerging_with_refits)
