"""The refit's gate: a candidate passes only when neither the full model nor the global model alone gets worse."""

from __future__ import annotations

import math

from stream.config import load_settings
from stream.refit.gate import choose_trial, gate

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


def test_a_refused_candidate_is_published_at_the_longest_step_towards_it_that_passes(tmp_path):
    """Random effects that already explain the signal make a full step of a new global model double-count it; the
    refit backtracks towards the current coefficients and publishes the longest step the gate lets through."""
    import numpy as np

    from stream.model.export import initial_global_model_record
    from stream.refit.job import GlobalRefit, RefitResult
    from stream.refit.spill import SpillDirectory
    from stream.tables.models import GlobalModelTable

    settings = load_settings(overrides={"refit.output_dir": str(tmp_path), "refit.gate_tolerance": "0.002"})
    impressions = [{"features": {"job_title": [{"name": "job_title", "term": "nurse", "value": 1.0}]}}]
    table = GlobalModelTable(settings.model)
    table.apply([initial_global_model_record(impressions, settings.model, version=1)])
    model = table.current
    dim = model.global_index.dim
    rng = np.random.default_rng(4)
    n = 40_000
    labels = (rng.random(n) < 0.5).astype(float)
    signal = 2 * labels - 1
    random_effects = 2 * signal + rng.normal(0, 1, n)  # what the random effects already know
    feature = signal + rng.normal(0, 2, n)  # a weak, noisy global feature
    published: list[dict] = []
    refit = GlobalRefit(settings, publish=published.append)
    with SpillDirectory() as spill:
        splits = {name: spill.split(name, dim, 100_000) for name in ("train", "holdout")}
        for split in splits.values():
            split.add(labels, np.ones(n), random_effects, np.zeros(n), np.zeros(n, dtype=np.int64),
                      np.ones(n, dtype=np.int64), np.ones(n, dtype=np.int32), feature)
            split.flush()
        candidate = np.zeros(dim)
        candidate[1] = 1.0
        outcome = RefitResult("skipped", model.version)
        decision = refit.decide(outcome, model, {"residual": candidate}, splits["train"], splits["holdout"])
    assert decision.passed and outcome.status == "published" and outcome.step == 0.25, outcome.gate
    assert outcome.candidates["residual"]["auc"] < outcome.current_metrics["auc"] - 0.002  # the full step is refused
    assert outcome.candidates["residual*0.5"]["auc"] < outcome.current_metrics["auc"] - 0.002
    assert published[0]["coefficients"][1] == 0.25 and published[0]["version"] == 2


def _decisions(trials: dict[tuple[str, float], tuple[float, float]]) -> dict:
    current = {"auc": 0.70, "global_only_auc": 0.55}
    return {t: gate(current, {"auc": full, "global_only_auc": alone}, SETTINGS) for t, (full, alone) in trials.items()}


def test_a_full_model_tie_within_the_tolerance_goes_to_the_candidate_better_alone():
    decisions = _decisions({("residual", 1.0): (0.7110, 0.57), ("standalone", 1.0): (0.7100, 0.62)})
    assert choose_trial(decisions) == ("standalone", 1.0)


def test_a_full_model_lead_beyond_the_tolerance_wins_over_a_better_global_model_alone():
    decisions = _decisions({("residual", 1.0): (0.7200, 0.57), ("standalone", 1.0): (0.7100, 0.62)})
    assert choose_trial(decisions) == ("residual", 1.0)


def test_the_longest_passing_step_is_chosen_before_any_metric():
    decisions = _decisions({("residual", 1.0): (0.69, 0.57), ("residual", 0.5): (0.7005, 0.56),
                            ("standalone", 0.5): (0.7001, 0.58), ("standalone", 0.25): (0.73, 0.60)})
    assert choose_trial(decisions) == ("standalone", 0.5)
