"""When the next periodic refit runs: one rule for the ``glmix refit --every`` service and the backtest's replay."""

from __future__ import annotations


def next_refit_due(due: float, every: float, now: float, *, skipped: bool, retry: float) -> float:
    """The time of the next refit, in the unit of the arguments (seconds live, event-time ms in a replay).

    Refits keep a fixed rate (``--every 1h`` refits on the hour whatever a refit takes; one
    that ran past due times is followed at the next one still ahead). A refit skipped for
    want of examples tries again ``retry`` later (the archive's roll interval: when new
    examples can be there), so a deployment started without ``glmix bootstrap`` gets a
    fitted global model soon after it has the examples, not a period later.
    """
    if skipped:
        return now + min(retry, every)
    missed = max(0, int((now - due) // every))
    return due + (missed + 1) * every
