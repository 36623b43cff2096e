"""Deterministic replays of an event log through the live join and update code (``glmix backtest``, ``glmix tune``)."""
