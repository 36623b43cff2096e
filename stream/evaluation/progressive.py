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

from stream.errors import InvalidValueError
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


def cumulative_margins(scores: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N, variants) margins from (N, 1 + coordinates) join-time scores: the offset plus global, then each coordinate."""
    return np.cumsum(scores, axis=1) + offsets[:, None]


def _scores(examples: Sequence[Mapping[str, Any]], coordinates: Sequence[str]) -> np.ndarray:
    """(N, 1 + coordinates) join-time scores of records, global first (0 where a record has none)."""
    scores = np.array([[e["scores"].get(c, 0.0) for c in (GLOBAL, *coordinates)] for e in examples])
    return scores.reshape(len(examples), len(coordinates) + 1)


def variant_margins(examples: Sequence[Mapping[str, Any]], coordinates: Sequence[str]) -> np.ndarray:
    """(N, variants) margins: the offset plus global, then plus each coordinate's join-time score in turn."""
    offsets = np.array([e["offset"] for e in examples], dtype=np.float64)
    return cumulative_margins(_scores(examples, coordinates), offsets)


@dataclass(frozen=True)
class TraceColumns:
    """Per example, in any order, what a progressive trace is made of: the fields :func:`collect` reads from records.

    A backtest builds them from its emitted batches' arrays, so its report needs no record per example.
    ``scores`` (N, 1 + coordinates) holds each example's join-time margin of the global model,
    then of each coordinate; ``type_bits`` its interaction types as bits of ``type_symbols``;
    ``entity_ids``, per coordinate (in order), the entity the example belongs to.
    """

    event_times: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    offsets: np.ndarray
    member_ids: np.ndarray
    type_bits: np.ndarray
    type_symbols: tuple[str, ...]
    scores: np.ndarray
    entity_ids: dict[str, np.ndarray]
    segments: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def of_records(
        cls, examples: Iterable[Mapping[str, Any]], coordinates: Sequence[str], by: str | None = None
    ) -> TraceColumns:
        """The columns of ``LabeledExample`` records, with each one's ``by`` segment if given."""
        rows = list(examples)
        symbols = tuple(sorted({t for e in rows for t in e["interaction_types"]}))
        code = {symbol: j for j, symbol in enumerate(symbols)}
        return cls(
            event_times=np.array([e["event_time"] for e in rows], dtype=np.int64),
            labels=np.array([e["label"] for e in rows], dtype=np.float64),
            weights=np.array([e["weight"] for e in rows], dtype=np.float64),
            offsets=np.array([e["offset"] for e in rows], dtype=np.float64),
            member_ids=np.array([e["member_id"] for e in rows]),
            type_bits=np.array([sum(1 << code[t] for t in set(e["interaction_types"])) for e in rows], dtype=np.int64),
            type_symbols=symbols,
            scores=_scores(rows, coordinates),
            entity_ids={
                c: np.array([e["coordinates"].get(c, {}).get("entity_id", "") for e in rows]) for c in coordinates
            },
            segments=None if by is None else np.array([segment_value(e, by) for e in rows], dtype=object),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[TraceColumns]) -> TraceColumns:
        """The examples of ``parts`` (at least one; all of the same coordinates and type symbols), in order."""
        first = parts[0]
        if any(p.type_symbols != first.type_symbols or list(p.entity_ids) != list(first.entity_ids) for p in parts):
            raise InvalidValueError(
                "trace columns of different interaction types or coordinates cannot be concatenated"
            )
        segments = None if first.segments is None else np.concatenate([p.segments for p in parts])
        return cls(
            event_times=np.concatenate([p.event_times for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            weights=np.concatenate([p.weights for p in parts]),
            offsets=np.concatenate([p.offsets for p in parts]),
            member_ids=np.concatenate([p.member_ids for p in parts]),
            type_bits=np.concatenate([p.type_bits for p in parts]),
            type_symbols=first.type_symbols,
            scores=np.concatenate([p.scores for p in parts]),
            entity_ids={c: np.concatenate([p.entity_ids[c] for p in parts]) for c in first.entity_ids},
            segments=segments,
        )

    def take(self, rows: np.ndarray) -> TraceColumns:
        """The examples at ``rows`` (indexes or a boolean mask)."""
        return TraceColumns(
            event_times=self.event_times[rows],
            labels=self.labels[rows],
            weights=self.weights[rows],
            offsets=self.offsets[rows],
            member_ids=self.member_ids[rows],
            type_bits=self.type_bits[rows],
            type_symbols=self.type_symbols,
            scores=self.scores[rows],
            entity_ids={c: ids[rows] for c, ids in self.entity_ids.items()},
            segments=None if self.segments is None else self.segments[rows],
        )

    def trace(self) -> ProgressiveTrace:
        """The trace of these examples in event-time order (ties as given), each entity's history counted in it."""
        order = np.argsort(self.event_times, kind="stable")
        bits = self.type_bits[order]
        types = {}
        for j, symbol in sorted(enumerate(self.type_symbols), key=lambda item: item[1]):
            mask = (bits >> j) & 1 == 1
            if mask.any():
                types[symbol] = mask
        margins = cumulative_margins(self.scores[order], self.offsets[order])
        return ProgressiveTrace(
            event_times=self.event_times[order],
            labels=self.labels[order],
            weights=self.weights[order],
            member_ids=self.member_ids[order],
            types=types,
            margins={name: margins[:, i] for i, name in enumerate(variant_names(list(self.entity_ids)))},
            segments=None if self.segments is None else self.segments[order],
            history={c: earlier_occurrences(ids[order]) for c, ids in self.entity_ids.items()},
        )


def collect(
    examples: Iterable[Mapping[str, Any]], coordinates: Sequence[str], by: str | None = None
) -> ProgressiveTrace:
    """The trace of ``examples`` (any order; sorted by event time here), with each one's ``by`` segment if given."""
    return TraceColumns.of_records(examples, coordinates, by).trace()


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
