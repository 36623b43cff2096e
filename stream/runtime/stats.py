"""Counters every stage keeps, whatever its batch function does."""

from __future__ import annotations

from dataclasses import dataclass, field

from stream.metrics.families import MetricFamilies
from stream.metrics.histogram import CumulativeHistogram, batch_seconds_histogram


@dataclass
class StageStats:
    """Micro-batches, dead letters, refused commits, busy time, restores and skips of one stage since it started.

    ``skipped_records`` and ``offset_resets`` are by input (topic, partition): offsets
    deleted before the stage read them, and how many times that happened
    (:mod:`stream.runtime.retention`).

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
    skipped_records: dict[tuple[str, int], int] = field(default_factory=dict)
    offset_resets: dict[tuple[str, int], int] = field(default_factory=dict)

    def consumed(self) -> int:
        """Records consumed from Kafka (each stage says what it counts)."""
        return 0

    def replayed(self) -> int:
        """Records skipped as already processed."""
        return 0

    def skipped(self) -> int:
        """Records deleted before this stage read them, over every input partition."""
        return sum(self.skipped_records.values())

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
        for (topic, partition), records in list(self.skipped_records.items()):  # the stage thread may add partitions
            families.counter("glmix_input_records_skipped", [stage, topic, str(partition)], records)
        for (topic, partition), resets in list(self.offset_resets.items()):
            families.counter("glmix_consumer_offset_resets", [stage, topic, str(partition)], resets)
