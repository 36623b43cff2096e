"""The Prometheus collector of a glmix process: every stage's counters, read at scrape time.

Stages count what they do in plain attributes (``JoinerStats``, ``UpdaterStats``, ...);
this collector turns them into metric families when Prometheus scrapes, so the hot path
never touches a metrics library. Names follow Prometheus conventions: prefix ``glmix_``,
base units (seconds, bytes), ``_total`` on counters, and no entity ids in labels.
:data:`METRIC_NAMES` lists every exported name (the dashboard test checks against it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from stream.archive.archiver import ArchiveStats
from stream.consumers.joiner import JoinerStats
from stream.metrics.kafka_statistics import KafkaStatistics
from stream.refit.job import RefitStats
from stream.runtime.stats import StageStats
from stream.scoring.streaming import StreamingScorerStats
from stream.updaters.updater import UpdaterStats

log = logging.getLogger(__name__)

COUNTERS = {
    "glmix_records_consumed": ("Records a stage consumed from Kafka.", ["stage"]),
    "glmix_examples_emitted": ("Labeled examples the joiner emitted, by label.", ["label"]),
    "glmix_join_events": ("Join outcomes of impressions and interactions.", ["outcome"]),
    "glmix_dead_letters": ("Records sent to the dead-letter topic.", ["stage"]),
    "glmix_batches": ("Micro-batches processed.", ["stage"]),
    "glmix_busy_seconds": ("Time spent processing micro-batches.", ["stage"]),
    "glmix_replayed_events": ("Events skipped because they were already processed (replays after a restart).", ["stage"]),
    "glmix_entity_updates": ("Per-entity models updated and published.", ["coordinate"]),
    "glmix_newton_failures": ("Entity updates rejected (non-finite or failed solves).", ["coordinate"]),
    "glmix_newton_unconverged": ("Entity updates that stopped at the Newton step limit.", ["coordinate"]),
    "glmix_restored_entities": ("Entity states restored from the coefficients topic.", ["coordinate"]),
    "glmix_restore_seconds": ("Time spent restoring partition stores.", ["coordinate"]),
    "glmix_archive_files": ("Archive files written.", []),
    "glmix_stream_scoring_responses": ("Ranked responses written by the streaming scorer.", []),
    "glmix_consumer_rebalances": ("Consumer group rebalances seen by a client (librdkafka).", ["client"]),
    "glmix_refit_runs": ("Global refit runs by outcome.", ["status"]),
    "glmix_refused_commits": ("Offset commits a consumer group rebalance refused (a normal event: the next owner "
                              "replays from the last commit).", ["stage"]),
    "glmix_unindexed_features": ("Feature occurrences a coordinate's index could not place at join time "
                                 "(what the vocabulary writer counts).", ["coordinate"]),
    "glmix_widened_entities": ("Entity states that met a newer feature index and kept what they had learned.",
                               ["coordinate"]),
    "glmix_entity_resets": ("Entity states that did not go on from their stored version (never expected).",
                            ["coordinate"]),
    "glmix_vocabulary_admitted_features": ("Features the vocabulary writer appended to a coordinate's index.",
                                           ["coordinate"]),
    "glmix_vocabulary_dropped_features": ("Features seen often enough that did not fit a coordinate at capacity.",
                                          ["coordinate"]),
}
GAUGES = {
    "glmix_state_size_bytes": ("RocksDB's estimate of a stage's local state size.", ["stage"]),
    "glmix_consumer_lag_messages": ("Messages between a partition's high watermark and the consumer position.",
                                    ["client", "topic", "partition"]),
    "glmix_progressive_auc": ("AUC of the last joined examples under the models current at join time.", ["variant"]),
    "glmix_progressive_log_loss": ("Log loss of the last joined examples, models at join time.", ["variant"]),
    "glmix_progressive_observed_expected": ("Observed over expected positives of the last joined examples "
                                            "(interaction_type 'all' is the label).", ["variant", "interaction_type"]),
    "glmix_progressive_examples": ("Joined examples in the progressive-validation window.", []),
    "glmix_progressive_observed_expected_by_segment": (
        "Observed over expected positives of the full model per value of metrics.segment_by (top values, the rest "
        "as '(other)').", ["field", "value"]),
    "glmix_refit_last_duration_seconds": ("Duration of the last global refit.", []),
    "glmix_feature_index_columns": ("Columns of each coordinate's feature index in the model the joiner uses.",
                                    ["coordinate"]),
    "glmix_feature_index_version": ("Feature index version of the model the joiner uses.", []),
}
HISTOGRAMS = {
    "glmix_batch_duration_seconds": ("Duration of one micro-batch.", ["stage"]),
    "glmix_freshness_seconds": ("Label time of a positive example to its coefficients being published.", ["coordinate"]),
    "glmix_newton_iterations": ("Newton iterations per entity update.", ["coordinate"]),
}
SERVICE_METRICS = ("glmix_scoring_requests_total", "glmix_scoring_latency_seconds", "glmix_scoring_candidates_total")
METRIC_NAMES = frozenset(
    [f"{name}_total" for name in COUNTERS] + list(GAUGES)
    + [f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")]
    + [f"{name}_{suffix}" for name in ("glmix_scoring_latency_seconds",) for suffix in ("bucket", "sum", "count")]
    + list(SERVICE_METRICS)
)


class PipelineCollector(Collector):
    """Metric families of the given stages' stats (by stage name), Kafka statistics and refit stats."""

    def __init__(self, stats: Mapping[str, object], state_sizes: Mapping[str, object] | None = None,
                 statistics: KafkaStatistics | None = None, refit: RefitStats | None = None) -> None:
        self._stats = stats
        self._state_sizes = state_sizes or {}
        self._statistics = statistics
        self._refit = refit

    def collect(self) -> Iterator[Metric]:
        """One family per metric name, filled from the current counters."""
        counters = {name: CounterMetricFamily(name, doc, labels=labels) for name, (doc, labels) in COUNTERS.items()}
        gauges = {name: GaugeMetricFamily(name, doc, labels=labels) for name, (doc, labels) in GAUGES.items()}
        histograms = {name: HistogramMetricFamily(name, doc, labels=labels) for name, (doc, labels) in HISTOGRAMS.items()}
        for stage, stats in self._stats.items():
            if isinstance(stats, StageStats):
                counters["glmix_refused_commits"].add_metric([stage], stats.refused_commits)
            if isinstance(stats, JoinerStats):
                _joiner(stage, stats, counters, gauges, histograms)
            elif isinstance(stats, UpdaterStats):
                _updater(stage, stats, counters, histograms)
            elif isinstance(stats, ArchiveStats):
                counters["glmix_records_consumed"].add_metric([stage], stats.archived + stats.skipped_replays)
                counters["glmix_dead_letters"].add_metric([stage], stats.dead_lettered)
                counters["glmix_batches"].add_metric([stage], stats.batches)
                counters["glmix_replayed_events"].add_metric([stage], stats.skipped_replays)
                counters["glmix_archive_files"].add_metric([], stats.files_written)
            elif isinstance(stats, StreamingScorerStats):
                counters["glmix_records_consumed"].add_metric([stage], stats.requests)
                counters["glmix_dead_letters"].add_metric([stage], stats.dead_lettered)
                counters["glmix_stream_scoring_responses"].add_metric([], stats.responses)
        for stage, source in self._state_sizes.items():
            try:
                gauges["glmix_state_size_bytes"].add_metric([stage], float(source.state_size_bytes()))
            except Exception as exc:  # a store closing during a rebalance must not break the scrape
                log.debug("state size of %s unavailable: %s", stage, exc)
        if self._statistics is not None:
            for client in self._statistics.latest():
                counters["glmix_consumer_rebalances"].add_metric([client.client], client.rebalances)
                for (topic, partition), lag in client.lag.items():
                    gauges["glmix_consumer_lag_messages"].add_metric([client.client, topic, str(partition)], lag)
        if self._refit is not None:
            r = self._refit
            for status, count in (("published", r.published), ("refused", r.refused), ("unchanged", r.unchanged),
                                  ("skipped", r.skipped)):
                counters["glmix_refit_runs"].add_metric([status], count)
            gauges["glmix_refit_last_duration_seconds"].add_metric([], r.last_seconds)
            for coordinate, count in r.admitted_features.items():
                counters["glmix_vocabulary_admitted_features"].add_metric([coordinate], count)
            for coordinate, count in r.dropped_features.items():
                counters["glmix_vocabulary_dropped_features"].add_metric([coordinate], count)
        yield from counters.values()
        yield from gauges.values()
        yield from histograms.values()


def _finite(value: float) -> bool:
    return value is not None and math.isfinite(value)


def _joiner(stage: str, stats: JoinerStats, counters: dict, gauges: dict, histograms: dict) -> None:
    join = stats.join
    counters["glmix_records_consumed"].add_metric([stage], join.impressions + join.interactions + stats.dead_lettered)
    counters["glmix_examples_emitted"].add_metric(["positive"], stats.positives)
    counters["glmix_examples_emitted"].add_metric(["negative"], stats.negatives)
    for outcome in join.__dataclass_fields__:
        if outcome not in ("impressions", "interactions"):
            counters["glmix_join_events"].add_metric([outcome], getattr(join, outcome))
    counters["glmix_join_events"].add_metric(["orphan_interactions"], stats.orphans)
    counters["glmix_dead_letters"].add_metric([stage], stats.dead_lettered)
    counters["glmix_batches"].add_metric([stage], stats.batches)
    counters["glmix_busy_seconds"].add_metric([stage], stats.busy_seconds)
    counters["glmix_replayed_events"].add_metric([stage], stats.replayed)
    if stats.indexing is not None:
        for coordinate, count in stats.indexing.unindexed_features.items():
            counters["glmix_unindexed_features"].add_metric([coordinate], count)
        for coordinate, columns in stats.indexing.index_columns.items():
            gauges["glmix_feature_index_columns"].add_metric([coordinate], columns)
        if stats.indexing.index_columns:
            gauges["glmix_feature_index_version"].add_metric([], stats.indexing.index_version)
    stats.batch_seconds.add_to(histograms["glmix_batch_duration_seconds"], [stage])
    if stats.progressive is not None and stats.progressive.size:
        gauges["glmix_progressive_examples"].add_metric([], stats.progressive.size)
        for variant, quality in stats.progressive.quality().items():
            for key, value in quality.items():
                if not _finite(value):
                    continue
                if key == "auc":
                    gauges["glmix_progressive_auc"].add_metric([variant], value)
                elif key == "log_loss":
                    gauges["glmix_progressive_log_loss"].add_metric([variant], value)
                else:
                    kind = key.partition(":")[2] or "all"
                    gauges["glmix_progressive_observed_expected"].add_metric([variant, kind], value)
        for segment, value in stats.progressive.observed_expected_by_segment().items():
            if _finite(value):
                gauges["glmix_progressive_observed_expected_by_segment"].add_metric(
                    [stats.progressive.segment_by, segment], value)


def _updater(coordinate: str, stats: UpdaterStats, counters: dict, histograms: dict) -> None:
    stage = f"updater-{coordinate}"
    counters["glmix_records_consumed"].add_metric([stage], stats.examples + stats.dead_lettered)
    counters["glmix_dead_letters"].add_metric([stage], stats.dead_lettered)
    counters["glmix_batches"].add_metric([stage], stats.batches)
    counters["glmix_busy_seconds"].add_metric([stage], stats.busy_seconds)
    counters["glmix_replayed_events"].add_metric([stage], stats.replayed_events)
    counters["glmix_entity_updates"].add_metric([coordinate], stats.entity_updates)
    counters["glmix_newton_failures"].add_metric([coordinate], stats.failed_updates)
    counters["glmix_newton_unconverged"].add_metric([coordinate], stats.unconverged_updates)
    counters["glmix_restored_entities"].add_metric([coordinate], stats.restored_entities)
    counters["glmix_restore_seconds"].add_metric([coordinate], stats.restore_seconds)
    counters["glmix_widened_entities"].add_metric([coordinate], stats.widened_entities)
    counters["glmix_entity_resets"].add_metric([coordinate], stats.reset_entities)
    stats.batch_seconds.add_to(histograms["glmix_batch_duration_seconds"], [stage])
    stats.freshness_seconds.add_to(histograms["glmix_freshness_seconds"], [coordinate])
    stats.newton_iterations.add_to(histograms["glmix_newton_iterations"], [coordinate])
