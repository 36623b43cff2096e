"""The refit's gate: a candidate passes only when neither the full model nor the global model alone gets worse."""

from __future__ import annotations

import math

from stream.config import load_settings
from stream.refit.gate import gate

SETTINGS = load_settings(overrides={"refit.gate_tolerance": "0.002"}).refit


def test_a_candidate_that_helps_the_full_model_but_serves_new_entities_worse_is_refused():
    current = {"auc": 0.70, "global_only_auc": 0.65}
    decision = gate(current, {"auc": 0.72, "global_only_auc": 0.60}, SETTINGS)
    assert not decision.passed
    assert "global-only 0.60000 vs 0.65000" in decision.reason


def test_a_candidate_that_serves_new_entities_better_but_the_full_model_worse_is_refused():
    assert not gate({"auc": 0.70, "global_only_auc": 0.50}, {"auc": 0.69, "global_only_auc": 0.66}, SETTINGS).passed


def test_a_candidate_no_worse_in_both_views_passes_within_the_tolerance():
    decision = gate({"auc": 0.70, "global_only_auc": 0.65}, {"auc": 0.6985, "global_only_auc": 0.6490}, SETTINGS)
    assert decision.passed and "passes" in decision.reason


def test_a_zero_global_model_without_a_global_only_auc_lets_a_finite_candidate_through():
    assert gate({"auc": 0.70, "global_only_auc": math.nan}, {"auc": 0.70, "global_only_auc": 0.6}, SETTINGS).passed
    assert not gate({"auc": 0.70, "global_only_auc": 0.5}, {"auc": 0.70, "global_only_auc": math.nan}, SETTINGS).passed


def test_log_loss_is_judged_lower_is_better_in_both_views():
    settings = load_settings(overrides={"refit.gate_metric": "log_loss", "refit.gate_tolerance": "0.001"}).refit
    assert gate({"log_loss": 0.60, "global_only_log_loss": 0.65}, {"log_loss": 0.59, "global_only_log_loss": 0.64},
                settings).passed
    assert not gate({"log_loss": 0.60, "global_only_log_loss": 0.65},
                    {"log_loss": 0.59, "global_only_log_loss": 0.66}, settings).passed
