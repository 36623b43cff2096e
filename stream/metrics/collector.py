"""The Prometheus collector of a glmix process: every stage's counters, read at scrape time.

Stages count what they do in plain attributes (``JoinerStats``, ``UpdaterStats``, ...)
and know their own samples (``add_samples``); this collector asks them when Prometheus
scrapes, so the hot path never touches a metrics library and this module imports no
stage. Metric names, help texts and labels live in :mod:`stream.metrics.families`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from stream.metrics.families import METRIC_NAMES, MetricFamilies, SampleSource
from stream.metrics.kafka_statistics import KafkaStatistics

log = logging.getLogger(__name__)

__all__ = ["METRIC_NAMES", "PipelineCollector"]


class StateSize(Protocol):
    """Anything that can say how big its local state is (a stage runner)."""

    def state_size_bytes(self) -> int:
        """RocksDB's estimate."""


class PipelineCollector(Collector):
    """Metric families of the given stages' stats (by stage name), Kafka statistics and refit stats."""

    def __init__(
        self,
        stats: Mapping[str, SampleSource],
        state_sizes: Mapping[str, StateSize] | None = None,
        statistics: KafkaStatistics | None = None,
        refit: SampleSource | None = None,
    ) -> None:
        self._stats = stats
        self._state_sizes = state_sizes or {}
        self._statistics = statistics
        self._refit = refit

    def collect(self) -> Iterator[Metric]:
        """One family per metric name, filled from the current counters."""
        families = MetricFamilies()
        for stage, stats in self._stats.items():
            stats.add_samples(stage, families)
        for stage, source in self._state_sizes.items():
            try:
                families.gauge("glmix_state_size_bytes", [stage], float(source.state_size_bytes()))
            except Exception as exc:  # noqa: BLE001 - a store closing during a rebalance must not break the scrape
                log.debug("state size of %s unavailable: %s", stage, exc)
        if self._statistics is not None:
            for client in self._statistics.latest():
                families.counter("glmix_consumer_rebalances", [client.client], client.rebalances)
                for (topic, partition), lag in client.lag.items():
                    families.gauge("glmix_consumer_lag_messages", [client.client, topic, str(partition)], lag)
                for (topic, partition), headroom in client.headroom.items():
                    families.gauge(
                        "glmix_consumer_retention_headroom_messages", [client.client, topic, str(partition)], headroom
                    )
        if self._refit is not None:
            self._refit.add_samples("refit", families)
        yield from families
