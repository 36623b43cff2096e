"""Progressive validation of the last N joined examples, for the live quality metrics.

The joiner scores every example with the models current at join time, before anyone
learns from it. Keeping the last ``capacity`` labels and per-variant margins in a ring
buffer gives AUC, log loss and observed/expected of global-only, +member, +job, ... at
scrape time, without keeping every example. The same by entity history: per coordinate,
how many events the entity's model had absorbed when the joiner scored the example (0: a
member or job the random effects do not know yet), in the buckets of
``metrics.history_edges``. (Offline reports count the earlier examples of the trace
instead; the two differ by what the update loop had not absorbed yet.)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from stream.evaluation.progressive import (
    HISTORY_EDGES,
    history_bucket_names,
    history_buckets,
    segment_value,
    top_segments,
    variant_margins,
    variant_names,
)
from stream.metrics.families import MetricFamilies
from stream.model.losses import Loss
from stream.model.metrics import auc, log_loss, observed_expected


def _quality(labels: np.ndarray, margins: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """AUC, log loss and observed/expected of some examples (nan for none)."""
    if not len(labels):
        return {"auc": float("nan"), "log_loss": float("nan"), "observed_expected": float("nan")}
    return {
        "auc": auc(labels > 0, margins),
        "log_loss": log_loss(labels, probabilities),
        "observed_expected": observed_expected(labels, probabilities),
    }


class ProgressiveWindow:
    """Labels, interaction types and cumulative margins of the most recent examples."""

    def __init__(
        self,
        coordinates: Sequence[str],
        loss: Loss,
        interaction_types: Sequence[str],
        capacity: int = 20_000,
        segment_by: str = "",
        segment_values: int = 20,
        history_edges: Sequence[int] = HISTORY_EDGES,
    ) -> None:
        self.coordinates = list(coordinates)
        self.variants = variant_names(self.coordinates)
        self.loss = loss
        self.types = list(interaction_types)
        self.capacity = capacity
        self._labels = np.zeros(capacity)
        self._margins = np.zeros((capacity, len(self.variants)))
        self._has_type = np.zeros((capacity, len(self.types)), dtype=bool)
        self.segment_by = segment_by
        self.segment_values = segment_values
        self._segments = np.full(capacity, "", dtype=object)
        self.history_edges = tuple(history_edges)
        self._history = np.zeros((capacity, len(self.coordinates)), dtype=np.int64)
        self._next = 0
        self.size = 0
        self._lock = threading.Lock()  # the joiner adds while a scrape or the demo reads

    def add(self, examples: Sequence[Mapping]) -> None:
        """Append emitted example records (their ``label``, ``scores``, ``offset`` and ``interaction_types``)."""
        if not examples:
            return
        examples = examples[-self.capacity :]
        self.add_columns(
            np.array([e["label"] for e in examples], dtype=np.float64),
            variant_margins(examples, self.coordinates),
            np.array([[t in e["interaction_types"] for t in self.types] for e in examples], dtype=bool),
            np.array([[e.get("entity_history", {}).get(c, 0) for c in self.coordinates] for e in examples]),
            [segment_value(e, self.segment_by) for e in examples] if self.segment_by else None,
        )

    def add_columns(
        self,
        labels: np.ndarray,
        margins: np.ndarray,
        has_type: np.ndarray,
        history: np.ndarray,
        segments: Sequence[str] | None = None,
    ) -> None:
        """Append N emitted examples as columns: labels, (N, variants) margins, (N, types), (N, coordinates) history."""
        n = min(len(labels), self.capacity)
        if n == 0:
            return
        with self._lock:
            slots = (self._next + np.arange(n)) % self.capacity
            self._labels[slots] = labels[-n:]
            self._margins[slots] = margins[-n:]
            self._has_type[slots] = has_type[-n:].reshape(n, len(self.types))
            self._history[slots] = history[-n:].reshape(n, len(self.coordinates))
            if segments is not None:
                self._segments[slots] = list(segments)[-n:]
            self._next = (self._next + n) % self.capacity
            self.size = min(self.size + n, self.capacity)

    def quality(self) -> dict[str, dict[str, float]]:
        """Per variant: ``auc``, ``log_loss``, ``observed_expected`` and ``observed_expected:<TYPE>`` (nan when undefined)."""
        with self._lock:
            size = self.size
            y, margins, has_type = self._labels[:size].copy(), self._margins[:size].copy(), self._has_type[:size].copy()
        out: dict[str, dict[str, float]] = {}
        for i, name in enumerate(self.variants):
            m = margins[:, i]
            p = self.loss.mean(m) if size else m
            values = _quality(y, m, p)
            expected = float(p.sum()) if size else 0.0
            for j, kind in enumerate(self.types):
                observed = float(has_type[:, j].sum())
                values[f"observed_expected:{kind}"] = observed / expected if expected > 0 else float("nan")
            out[name] = values
        return out

    def quality_by_history(self) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
        """Per (coordinate, history bucket) and variant: ``auc``, ``log_loss``, ``observed_expected`` (nan: undefined)."""
        with self._lock:
            size = self.size
            y, margins, history = self._labels[:size].copy(), self._margins[:size].copy(), self._history[:size].copy()
        names = history_bucket_names(self.history_edges)
        out: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
        for c, coordinate in enumerate(self.coordinates):
            buckets = history_buckets(history[:, c], self.history_edges)
            for b, name in enumerate(names):
                rows = buckets == b
                if not rows.any():
                    continue
                out[(coordinate, name)] = {
                    variant: _quality(y[rows], margins[rows, i], self.loss.mean(margins[rows, i]))
                    for i, variant in enumerate(self.variants)
                }
        return out

    def observed_expected_by_segment(self) -> dict[str, float]:
        """Observed/expected of the full model per value of ``segment_by`` (top values, the rest as ``(other)``)."""
        if not self.segment_by:
            return {}
        with self._lock:
            size = self.size
            y, m, segments = self._labels[:size].copy(), self._margins[:size, -1].copy(), self._segments[:size].copy()
        if not size:
            return {}
        p = self.loss.mean(m)
        grouped = top_segments(segments, self.segment_values)
        return {value: observed_expected(y[grouped == value], p[grouped == value]) for value in set(grouped.tolist())}

    def add_samples(self, families: MetricFamilies) -> None:
        """The window's size, AUC, log loss and observed/expected per variant (and per segment) as gauges."""
        families.gauge("glmix_progressive_examples", [], self.size)
        for variant, quality in self.quality().items():
            for key, value in quality.items():
                if key == "auc":
                    families.gauge("glmix_progressive_auc", [variant], value)
                elif key == "log_loss":
                    families.gauge("glmix_progressive_log_loss", [variant], value)
                else:
                    families.gauge(
                        "glmix_progressive_observed_expected", [variant, key.partition(":")[2] or "all"], value
                    )
        for (coordinate, bucket), variants in self.quality_by_history().items():
            for variant, quality in variants.items():
                for key, value in quality.items():
                    families.gauge(f"glmix_progressive_{key}_by_history", [coordinate, bucket, variant], value)
        for segment, value in self.observed_expected_by_segment().items():
            families.gauge("glmix_progressive_observed_expected_by_segment", [self.segment_by, segment], value)
