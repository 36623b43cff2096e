"""What the refit makes of archived examples, batch by batch: the usable rows of its train and holdout splits.

One function, :func:`split_records`, for every engine: the local refit calls it on the
batches it scans from the archive (:meth:`stream.archive.files.ArchiveFiles.scanned`),
Spark executors on those of the files they read (:mod:`stream.refit.spark`). Every step is row by row (offsets, validity, the split by
event time, the sample), except that the vocabulary counter gives new global features
provisional columns in the order it meets them; the columns they end in do not depend on
that order (:mod:`stream.refit.vocabulary`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream.codec.labeled_example import LabeledColumns, rescanned
from stream.config import RefitSettings
from stream.consumers.example_builder import join_time_scores
from stream.model.game import GLOBAL
from stream.model.losses import Loss
from stream.refit.examples import RowBatch
from stream.refit.vocabulary import VocabularyCounter
from stream.tables.models import CoefficientTable, EntityTable, GlobalModel
from stream.tables.stored_table import StoredCoefficientTable

_HASH_SCALE = float(2**64)


@dataclass(frozen=True)
class RefitWindow:
    """The training window ``[start_ms, holdout_ms)`` and the holdout ``[holdout_ms, end_ms)``."""

    start_ms: int
    holdout_ms: int
    end_ms: int


def current_offsets(
    examples: LabeledColumns, rows: np.ndarray, model: GlobalModel, tables: Mapping[str, EntityTable]
) -> np.ndarray:
    """The fixed offsets of ``rows`` plus every random effect's margin under ``tables`` (the current coefficients)."""
    global_lengths, global_columns, global_values, _ = examples.global_features(rows)
    global_coo = (
        np.repeat(np.arange(len(rows)), global_lengths),
        global_columns.astype(np.int64),
        global_values.astype(np.float64),
    )
    coordinates = {}
    for name, table in tables.items():
        scanned = rescanned(examples, name, table.dim)
        present = scanned.found[rows]
        ids = scanned.entity_ids(rows)
        coordinates[name] = (scanned.features(rows), [i if p else "" for i, p in zip(ids, present)], present)
    scores = join_time_scores(len(rows), global_coo, coordinates, model, tables)
    others = np.zeros(len(rows))
    for k, name in enumerate(scores.names):
        if name != GLOBAL:
            others = others + scores.scores[:, k]
    return examples.offset[rows] + others


def with_rows(
    first: tuple[np.ndarray, np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two sets of per-row (lengths, columns, values) of the same rows as one, each row's entries together."""
    (len_a, col_a, val_a), (len_b, col_b, val_b) = first, second
    if not len(col_b):
        return first
    rows = np.concatenate([np.repeat(np.arange(len(len_a)), len_a), np.repeat(np.arange(len(len_b)), len_b)])
    order = np.argsort(rows, kind="stable")
    return (
        len_a + len_b,
        np.concatenate([col_a, col_b])[order],
        np.concatenate([val_a.astype(np.float32), val_b.astype(np.float32)])[order],
    )


def sample_uniform(example_ids: Sequence[str]) -> np.ndarray:
    """A number in [0, 1) per example id, the same in every process and run (a hash, not a random draw)."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(e.encode(), digest_size=8).digest(), "little") / _HASH_SCALE
            for e in example_ids
        ]
    )


def split_records(
    examples: LabeledColumns,
    model: GlobalModel,
    tables: Mapping[str, CoefficientTable | StoredCoefficientTable],
    window: RefitWindow,
    refit: RefitSettings,
    loss: Loss,
    vocabulary: VocabularyCounter,
) -> tuple[RowBatch, RowBatch, int]:
    """The training and holdout rows of ``examples`` (archived, scanned) in ``window``, and how many were dropped.

    Indexes only append columns, so examples of every index version up to ``model``'s are
    used; each example's unindexed global features get the columns ``vocabulary`` gives
    them (and are counted on the training rows). Training negatives are kept at
    ``refit.negative_sample_rate`` with weight ``1 / rate``.
    """
    event_times = examples.event_time
    in_window = examples.ok & (event_times >= window.start_ms) & (event_times < window.end_ms)
    rows = np.flatnonzero(in_window & (examples.index_version <= model.index_version))
    dropped = int(in_window.sum()) - len(rows)
    times = event_times[rows]
    offsets = examples.margin[rows]
    fixed = examples.offset[rows]
    if refit.offsets == "current":
        offsets = np.where(times < window.holdout_ms, current_offsets(examples, rows, model, tables), offsets)
    labels = examples.label[rows]
    weights = examples.weight[rows]
    lengths, indices, values, malformed = examples.global_features(rows)
    feature_rows = np.repeat(np.arange(len(rows)), lengths)
    bad_rows = feature_rows[(indices < 0) | (indices >= model.global_index.dim) | ~np.isfinite(values)]
    ok = np.isfinite(offsets) & np.isfinite(labels) & np.isfinite(weights) & (weights >= 0) & ~malformed
    ok &= loss.valid_labels(labels)
    ok[bad_rows] = False
    dropped += int((~ok).sum())
    trainable = ok & (times < window.holdout_ms)
    unindexed = vocabulary.global_columns(examples.unindexed_features(rows), trainable)
    lengths, indices, values = with_rows((lengths, indices, values), unindexed)
    if refit.training_examples == "random_bucket":
        trainable &= examples.random_bucket[rows]
    train_weights = weights
    if refit.negative_sample_rate < 1.0:
        negative = trainable & (labels == 0)
        kept = np.zeros(len(rows), dtype=bool)
        kept[negative] = sample_uniform(examples.example_ids(rows[negative])) < refit.negative_sample_rate
        trainable &= ~negative | kept
        train_weights = np.where(negative, weights / refit.negative_sample_rate, weights)
    splits = []
    for rows_in, w in ((trainable, train_weights), (ok & (times >= window.holdout_ms), weights)):
        keep = np.repeat(rows_in, lengths)
        splits.append(
            RowBatch(
                labels[rows_in],
                w[rows_in],
                offsets[rows_in],
                fixed[rows_in],
                times[rows_in],
                lengths[rows_in],
                indices[keep],
                values[keep],
            )
        )
    return splits[0], splits[1], dropped
