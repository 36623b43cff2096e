"""The metric families one scrape fills: every exported name, its help text and labels, in one place.

Stages and jobs add their own samples (``add_samples`` on their statistics), so the
collector needs to know no stage. Names follow Prometheus conventions: prefix
``glmix_``, base units (seconds, bytes), ``_total`` on counters, and no entity ids in
labels. :data:`METRIC_NAMES` lists every exported name (the dashboard test checks
against it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from stream.metrics.histogram import CumulativeHistogram

COUNTERS = {
    "glmix_records_consumed": ("Records a stage consumed from Kafka.", ["stage"]),
    "glmix_examples_emitted": ("Labeled examples the joiner emitted, by label.", ["label"]),
    "glmix_join_events": ("Join outcomes of impressions and interactions.", ["outcome"]),
    "glmix_dead_letters": ("Records sent to the dead-letter topic.", ["stage"]),
    "glmix_batches": ("Micro-batches processed.", ["stage"]),
    "glmix_busy_seconds": ("Time spent processing micro-batches.", ["stage"]),
    "glmix_replayed_events": (
        "Events skipped because they were already processed (replays after a restart).",
        ["stage"],
    ),
    "glmix_entity_updates": ("Per-entity models updated and published.", ["coordinate"]),
    "glmix_newton_failures": ("Entity updates rejected (non-finite or failed solves).", ["coordinate"]),
    "glmix_newton_unconverged": ("Entity updates that stopped at the Newton step limit.", ["coordinate"]),
    "glmix_restored_entities": ("Entity states restored from the coefficients topic.", ["coordinate"]),
    "glmix_restored_records": ("Changelog records read while restoring partition stores.", ["stage"]),
    "glmix_restore_seconds": ("Time spent restoring partition stores.", ["stage"]),
    "glmix_archive_files": ("Archive files written.", []),
    "glmix_stream_scoring_responses": ("Ranked responses written by the streaming scorer.", []),
    "glmix_consumer_rebalances": ("Consumer group rebalances seen by a client (librdkafka).", ["client"]),
    "glmix_input_records_skipped": (
        (
            "Records of an input partition deleted (by retention) before the stage read them: never processed. "
            "Raise the topic's retention.ms or add consumers."
        ),
        ["client", "topic", "partition"],
    ),
    "glmix_consumer_offset_resets": (
        (
            "Times a stage found its position moved past records deleted before it read them (auto.offset.reset, "
            "once or more, after the partition's log start passed the position)."
        ),
        ["client", "topic", "partition"],
    ),
    "glmix_refit_runs": ("Global refit runs by outcome.", ["status"]),
    "glmix_refused_commits": (
        (
            "Offset commits a consumer group rebalance refused (a normal event: the next owner "
            "replays from the last commit)."
        ),
        ["stage"],
    ),
    "glmix_outbox_recovered": (
        "Examples a restored joiner partition produced because a crash left them undelivered.",
        [],
    ),
    "glmix_unindexed_features": (
        ("Feature occurrences a coordinate's index could not place at join time (what the vocabulary writer counts)."),
        ["coordinate"],
    ),
    "glmix_widened_entities": (
        "Entity states that met a newer feature index and kept what they had learned.",
        ["coordinate"],
    ),
    "glmix_entity_resets": (
        "Entity states that did not go on from their stored version (never expected).",
        ["coordinate"],
    ),
    "glmix_vocabulary_admitted_features": (
        "Features the vocabulary writer appended to a coordinate's index.",
        ["coordinate"],
    ),
    "glmix_vocabulary_dropped_features": (
        "Features seen often enough that did not fit a coordinate at capacity.",
        ["coordinate"],
    ),
}
GAUGES = {
    "glmix_state_size_bytes": ("RocksDB's estimate of a stage's local state size.", ["stage"]),
    "glmix_consumer_lag_messages": (
        "Messages between a partition's high watermark and the consumer position.",
        ["client", "topic", "partition"],
    ),
    "glmix_consumer_retention_headroom_messages": (
        (
            "Messages between a partition's log start (the oldest it retains) and the consumer's committed offset: "
            "what retention may delete before the consumer loses records."
        ),
        ["client", "topic", "partition"],
    ),
    "glmix_progressive_auc": ("AUC of the last joined examples under the models current at join time.", ["variant"]),
    "glmix_progressive_log_loss": ("Log loss of the last joined examples, models at join time.", ["variant"]),
    "glmix_progressive_observed_expected": (
        ("Observed over expected positives of the last joined examples (interaction_type 'all' is the label)."),
        ["variant", "interaction_type"],
    ),
    "glmix_progressive_auc_by_history": (
        "AUC of the last joined examples by entity history (events the entity's model had absorbed at join time).",
        ["coordinate", "history", "variant"],
    ),
    "glmix_progressive_log_loss_by_history": (
        "Log loss of the last joined examples by entity history.",
        ["coordinate", "history", "variant"],
    ),
    "glmix_progressive_observed_expected_by_history": (
        "Observed over expected positives of the last joined examples by entity history.",
        ["coordinate", "history", "variant"],
    ),
    "glmix_progressive_examples": ("Joined examples in the progressive-validation window.", []),
    "glmix_progressive_observed_expected_by_segment": (
        (
            "Observed over expected positives of the full model per value of metrics.segment_by (top values, the rest "
            "as '(other)')."
        ),
        ["field", "value"],
    ),
    "glmix_refit_last_duration_seconds": ("Duration of the last global refit.", []),
    "glmix_feature_index_columns": (
        "Columns of each coordinate's feature index in the model the joiner uses.",
        ["coordinate"],
    ),
    "glmix_feature_index_version": ("Feature index version of the model the joiner uses.", []),
}
HISTOGRAMS = {
    "glmix_batch_duration_seconds": ("Duration of one micro-batch.", ["stage"]),
    "glmix_freshness_seconds": (
        "Label time of a positive example to its coefficients being published.",
        ["coordinate"],
    ),
    "glmix_newton_iterations": ("Newton iterations per entity update.", ["coordinate"]),
}
SERVICE_METRICS = ("glmix_scoring_requests_total", "glmix_scoring_latency_seconds", "glmix_scoring_candidates_total")
METRIC_NAMES = frozenset(
    [f"{name}_total" for name in COUNTERS]
    + list(GAUGES)
    + [f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")]
    + [f"{name}_{suffix}" for name in ("glmix_scoring_latency_seconds",) for suffix in ("bucket", "sum", "count")]
    + list(SERVICE_METRICS)
)


class MetricFamilies:
    """One scrape's families; sources add samples by metric name (unknown names raise KeyError)."""

    def __init__(self) -> None:
        self._counters = {
            name: CounterMetricFamily(name, doc, labels=labels) for name, (doc, labels) in COUNTERS.items()
        }
        self._gauges = {name: GaugeMetricFamily(name, doc, labels=labels) for name, (doc, labels) in GAUGES.items()}
        self._histograms = {
            name: HistogramMetricFamily(name, doc, labels=labels) for name, (doc, labels) in HISTOGRAMS.items()
        }

    def counter(self, name: str, labels: Sequence[str], value: float) -> None:
        """Add a counter sample."""
        self._counters[name].add_metric(list(labels), value)

    def gauge(self, name: str, labels: Sequence[str], value: float | None) -> None:
        """Add a gauge sample; a missing or non-finite value is left out (no sample beats a NaN)."""
        if value is not None and math.isfinite(value):
            self._gauges[name].add_metric(list(labels), value)

    def histogram(self, name: str, labels: Sequence[str], histogram: CumulativeHistogram) -> None:
        """Add a histogram's buckets, sum and count."""
        histogram.add_to(self._histograms[name], list(labels))

    def __iter__(self) -> Iterator[Metric]:
        yield from self._counters.values()
        yield from self._gauges.values()
        yield from self._histograms.values()


class SampleSource(Protocol):
    """Statistics that know their own samples: every stage's and the refit's."""

    def add_samples(self, stage: str, families: MetricFamilies) -> None:
        """Add this source's samples, labelled with ``stage`` where a metric has a stage label."""
