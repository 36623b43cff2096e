"""The refit schedule shared by ``glmix refit --every`` and the backtest (pure arithmetic, no broker)."""

from __future__ import annotations

from stream.refit.schedule import next_refit_due


def test_refits_keep_a_fixed_rate_whatever_a_refit_takes():
    assert next_refit_due(100.0, 6.0, 102.0, skipped=False, retry=1.0) == 106.0  # a 2 s refit: 106, not 108
    assert next_refit_due(100.0, 6.0, 100.0, skipped=False, retry=1.0) == 106.0


def test_a_refit_that_ran_past_due_times_is_followed_at_the_next_one_ahead():
    assert next_refit_due(100.0, 6.0, 113.0, skipped=False, retry=1.0) == 118.0


def test_a_skipped_refit_tries_again_a_roll_interval_later_never_later_than_the_period():
    assert next_refit_due(100.0, 3600.0, 100.5, skipped=True, retry=60.0) == 160.5
    assert next_refit_due(100.0, 6.0, 100.5, skipped=True, retry=60.0) == 106.5
