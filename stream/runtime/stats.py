"""Counters every stage keeps, whatever its batch function does."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StageStats:
    """Micro-batches, dead letters and commits a rebalance refused, of one stage since it started.

    Each stage's own statistics extend this with what it alone counts; the metrics
    collector exports these fields the same way for every stage.
    """

    batches: int = 0
    dead_lettered: int = 0
    refused_commits: int = 0
