"""Counters every stage keeps, whatever its batch function does."""

from __future__ import annotations

from dataclasses import dataclass, field

from stream.metrics.families import MetricFamilies
from stream.metrics.histogram import CumulativeHistogram, batch_seconds_histogram


@dataclass
class StageStats:
    """Micro-batches, dead letters, refused commits, busy time and restores of one stage since it started.

    Each stage's own statistics extend this with what it alone counts; the metrics
    collector exports these fields the same way for every stage.
    """

    batches: int = 0
    dead_lettered: int = 0
    refused_commits: int = 0
    busy_seconds: float = 0.0
    batch_seconds: CumulativeHistogram = field(default_factory=batch_seconds_histogram)
    restored_records: int = 0
    restore_seconds: float = 0.0

    def consumed(self) -> int:
        """Records consumed from Kafka (each stage says what it counts)."""
        return 0

    def replayed(self) -> int:
        """Records skipped as already processed."""
        return 0

    def add_samples(self, stage: str, families: MetricFamilies) -> None:
        """The samples every stage exports; stages extend this with their own."""
        families.counter("glmix_records_consumed", [stage], self.consumed())
        families.counter("glmix_replayed_events", [stage], self.replayed())
        families.counter("glmix_dead_letters", [stage], self.dead_lettered)
        families.counter("glmix_batches", [stage], self.batches)
        families.counter("glmix_busy_seconds", [stage], self.busy_seconds)
        families.counter("glmix_refused_commits", [stage], self.refused_commits)
        families.counter("glmix_restored_records", [stage], self.restored_records)
        families.counter("glmix_restore_seconds", [stage], self.restore_seconds)
        families.histogram("glmix_batch_duration_seconds", [stage], self.batch_seconds)
