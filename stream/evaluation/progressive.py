"""Progressive validation of the live pipeline from its labeled examples (predict, then update).

The joiner scores every example with the models current at join time — before any
updater has absorbed it — and records each coordinate's margin. So the archived (or
streamed) examples already hold an honest predict-then-update trace, and this module only
reads it: for global-only, then adding each random-effect coordinate in turn, it reports
AUC, log loss, per-member AUC, observed/expected overall and per interaction type, the
same over consecutive time windows, and a reliability (calibration) table.

Observed/expected per interaction type T is ``#examples with a T interaction / sum of
predicted probabilities``: with one label type it is the calibration of that type; for a
type implied by the label (an apply after a click) it shows its share of the expected.

The same quality by **entity history** (how many earlier examples of the trace the
example's member, job, ... had: buckets 0, 1-4, 5-19, 20+ by default) shows cold start:
the first bucket is scored by the global model alone, and is where a recommender wins or
loses new users (DESIGN §9).

The same quality per segment (``by``: ``member_id``, ``item_id``, ``random_bucket``,
``position`` or ``context:<key>``, such as the activity type of the served item) shows
where a model is miscalibrated: the feed-relevance practice of judging every model by
observed/expected per activity type.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.model.game import GLOBAL
from stream.model.losses import Loss
from stream.model.metrics import auc, grouped_auc, log_loss, observed_expected

OTHER = "(other)"
HISTORY_EDGES = (1, 5, 20)


def earlier_occurrences(entity_ids: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same id (0 for an entity's first example)."""
    if not len(entity_ids):
        return np.zeros(0, dtype=np.int64)
    _, groups = np.unique(entity_ids, return_inverse=True)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    counts = np.empty(len(order), dtype=np.int64)
    counts[order] = np.arange(len(order)) - run_start
    return counts


def history_bucket_names(edges: Sequence[int] = HISTORY_EDGES) -> list[str]:
    """``0``, ``1-4``, ``5-19``, ``20+`` for the default edges: bucket i holds counts in ``[edges[i-1], edges[i])``."""
    bounds = [0, *edges]
    names = [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(bounds)]
    return [*names, f"{bounds[-1]}+"]


def history_buckets(counts: np.ndarray, edges: Sequence[int] = HISTORY_EDGES) -> np.ndarray:
    """The bucket index (into :func:`history_bucket_names`) of each history count."""
    return np.searchsorted(np.asarray(edges), counts, side="right")


def segment_value(example: Mapping[str, Any], field: str) -> str:
    """The value of ``field`` (see :func:`stream.config.settings.is_segment_field`) in one labeled example, as a string."""
    if field.startswith("context:"):
        return (example.get("context") or {}).get(field[len("context:") :], "")
    value = example.get(field)
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class ProgressiveTrace:
    """Per example: event time, label, weight, member, interaction types, each variant's margin and entity history.

    ``history`` holds, per coordinate, how many earlier examples of the trace the
    example's entity of that coordinate had.
    """

    event_times: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    member_ids: np.ndarray
    types: dict[str, np.ndarray]
    margins: dict[str, np.ndarray]
    segments: np.ndarray | None = None
    history: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def variant_names(coordinates: Sequence[str]) -> list[str]:
    """``global``, ``global+member``, ``global+member+job``, ... (each adds one coordinate)."""
    return ["+".join([GLOBAL, *coordinates[:i]]) for i in range(len(coordinates) + 1)]


def variant_margins(examples: Sequence[Mapping[str, Any]], coordinates: Sequence[str]) -> np.ndarray:
    """(N, variants) margins: the offset plus global, then plus each coordinate's join-time score in turn."""
    scores = np.array([[e["scores"].get(c, 0.0) for c in (GLOBAL, *coordinates)] for e in examples])
    scores = scores.reshape(len(examples), len(coordinates) + 1)
    return np.cumsum(scores, axis=1) + np.array([e["offset"] for e in examples], dtype=np.float64)[:, None]


def collect(examples: Iterable[dict], coordinates: Sequence[str], by: str | None = None) -> ProgressiveTrace:
    """The trace of ``examples`` (any order; sorted by event time here), with each one's ``by`` segment if given."""
    rows = list(examples)
    rows.sort(key=lambda e: e["event_time"])
    cumulative = variant_margins(rows, coordinates)
    all_types = sorted({t for e in rows for t in e["interaction_types"]})
    return ProgressiveTrace(
        event_times=np.array([e["event_time"] for e in rows], dtype=np.int64),
        labels=np.array([e["label"] for e in rows], dtype=np.float64),
        weights=np.array([e["weight"] for e in rows], dtype=np.float64),
        member_ids=np.array([e["member_id"] for e in rows]),
        types={t: np.array([t in e["interaction_types"] for e in rows]) for t in all_types},
        margins={name: cumulative[:, i] for i, name in enumerate(variant_names(coordinates))},
        segments=None if by is None else np.array([segment_value(e, by) for e in rows], dtype=object),
        history={
            c: earlier_occurrences(np.array([e["coordinates"].get(c, {}).get("entity_id", "") for e in rows]))
            for c in coordinates
        },
    )


def _safe(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _quality(trace: ProgressiveTrace, rows: np.ndarray, loss: Loss) -> dict[str, dict]:
    y, w = trace.labels[rows], trace.weights[rows]
    both_classes = bool(len(y)) and (y > 0).any() and (y <= 0).any()
    out = {}
    for name, margins in trace.margins.items():
        m = margins[rows]
        p = loss.mean(m)
        out[name] = {
            "auc": _safe(auc(y > 0, m, w)) if both_classes else None,
            "log_loss": _safe(log_loss(y, p, w)) if len(y) else None,
            "per_member_auc": _safe(grouped_auc(y > 0, m, trace.member_ids[rows])) if both_classes else None,
            "observed_expected": _safe(observed_expected(y, p, w)) if len(y) else None,
            "observed_expected_by_type": {
                t: _safe(np.sum(w * mask[rows]) / np.sum(w * p)) if len(y) else None for t, mask in trace.types.items()
            },
        }
    return out


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> list[dict]:
    """Mean predicted vs observed rate in equal-width probability bins (empty bins left out)."""
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            table.append(
                {
                    "bin_low": b / bins,
                    "bin_high": (b + 1) / bins,
                    "predicted": float(probabilities[inside].mean()),
                    "observed": float(labels[inside].mean()),
                    "examples": int(inside.sum()),
                }
            )
    return table


def progressive_report(
    trace: ProgressiveTrace,
    loss: Loss,
    windows: int = 10,
    top: int = 10,
    history_edges: Sequence[int] = HISTORY_EDGES,
) -> dict:
    """The whole report: overall quality per variant, per time window, per entity history, calibration, segments."""
    n = len(trace)
    everything = np.arange(n)
    report: dict = {"examples": n, "variants": _quality(trace, everything, loss), "windows": []}
    if n:
        start, end = int(trace.event_times[0]), int(trace.event_times[-1]) + 1
        edges = np.linspace(start, end, windows + 1).astype(np.int64)
        bounds = np.searchsorted(trace.event_times, edges)
        for lo, hi, a, b in zip(edges[:-1], edges[1:], bounds[:-1], bounds[1:]):
            if b > a:
                report["windows"].append(
                    {
                        "start_ms": int(lo),
                        "end_ms": int(hi),
                        "examples": int(b - a),
                        "variants": _quality(trace, np.arange(a, b), loss),
                    }
                )
    report["entity_history"] = history_quality(trace, loss, history_edges)
    report["calibration"] = {name: reliability(trace.labels > 0, loss.mean(m)) for name, m in trace.margins.items()}
    if trace.segments is not None:
        report["segments"] = segment_quality(trace, loss, top)
    return report


def history_quality(trace: ProgressiveTrace, loss: Loss, edges: Sequence[int] = HISTORY_EDGES) -> dict[str, list]:
    """Per coordinate, quality per history bucket of its entity (``0``: the entity's first example)."""
    names = history_bucket_names(edges)
    out: dict[str, list] = {}
    for coordinate, counts in trace.history.items():
        buckets = history_buckets(counts, edges)
        out[coordinate] = [
            {"history": name, "examples": int((buckets == b).sum()), "variants": _quality(trace, rows, loss)}
            for b, name in enumerate(names)
            if len(rows := np.flatnonzero(buckets == b))
        ]
    return out


def top_segments(values: np.ndarray, top: int) -> np.ndarray:
    """``values`` with every value outside the ``top`` most frequent replaced by ``(other)`` (bounded cardinality)."""
    text = [str(v) for v in values]
    kinds, counts = np.unique(text, return_counts=True)
    kept = {str(k) for k in kinds[np.argsort(-counts, kind="stable")[:top]]}
    return np.array([v if v in kept else OTHER for v in text], dtype=object)


def segment_quality(trace: ProgressiveTrace, loss: Loss, top: int = 10) -> list[dict]:
    """Quality per segment value, most examples first; values past the ``top`` most frequent are one ``(other)`` row."""
    if trace.segments is None:
        return []
    grouped = top_segments(trace.segments, top)
    out = []
    for value in sorted(set(grouped.tolist()), key=lambda v: (v == OTHER, -int((grouped == v).sum()), v)):
        rows = np.flatnonzero(grouped == value)
        out.append({"value": value, "examples": len(rows), "variants": _quality(trace, rows, loss)})
    return out
