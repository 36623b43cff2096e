"""A cumulative histogram fed whole arrays at a time, exported as a Prometheus histogram."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client.core import HistogramMetricFamily


class CumulativeHistogram:
    """Counts of observations per bucket (upper bounds), with their sum: one numpy call per batch, not per value."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self.sum = 0.0

    @property
    def count(self) -> int:
        """Observations so far."""
        return int(self.counts.sum())

    def observe_many(self, values: np.ndarray) -> None:
        """Add every finite value of ``values``."""
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size:
            self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
            self.sum += float(values.sum())

    def observe(self, value: float) -> None:
        """Add one value."""
        self.observe_many(np.array([value]))

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the ``q`` quantile (nan when empty; inf past the last bound)."""
        total = self.count
        if not total:
            return float("nan")
        index = int(np.searchsorted(np.cumsum(self.counts), q * total, side="left"))
        return float(self.bounds[index]) if index < len(self.bounds) else float("inf")

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        """Add this histogram as one labelled sample set of ``family``."""
        cumulative = np.cumsum(self.counts)
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cumulative[:-1])]
        buckets.append(("+Inf", int(cumulative[-1])))
        family.add_metric(list(labels), buckets, self.sum)


BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FRESHNESS_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
NEWTON_ITERATIONS_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50)


def batch_seconds_histogram() -> CumulativeHistogram:
    """Durations of micro-batches, 5 ms to 10 s."""
    return CumulativeHistogram(BATCH_SECONDS_BUCKETS)
