"""Offline scoring: a container file of candidates in, a container file of scores out (``glmix score``).

The throughput path of the GLMix slides: score every (member, item) pair offline and
push the results to a key-value store. Input records are ``Impression``s (ids, feature
bags, context); output is ``ScoredCandidate`` (margin, probability, per-coordinate
breakdown and versions) or Photon-ML's ``ScoringResultAvro``. Photon-ML GAME input
records (:mod:`stream.codec.game_input`) are scored into ``ScoringResultAvro`` as
Photon-ML's scoring driver scores them, with its evaluation when they carry a response.
Records stream through in batches, so memory stays bounded whatever the file size;
progress goes to stderr.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from stream.codec.container import read_container, write_container
from stream.codec.game_input import GameInputMapping, game_row_batches
from stream.errors import InvalidValueError
from stream.model.losses import get_loss
from stream.model.metrics import auc, log_loss, rmse
from stream.progress import Progress
from stream.scoring.scorer import Scorer

FORMATS = ("glmix", "photon")


def _batches(records: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    it = iter(records)
    while batch := list(islice(it, size)):
        yield batch


def scored_records(
    scorer: Scorer,
    impressions: Iterable[Mapping[str, Any]],
    fmt: str = "glmix",
    batch_size: int = 4096,
    progress: Progress | None = None,
    model_id: str = "glmix",
) -> Iterator[dict[str, Any]]:
    """Score ``impressions`` batch by batch; yields output records in input order."""
    if fmt not in FORMATS:
        raise InvalidValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    for batch in _batches(impressions, batch_size):
        margins, versions = scorer.rows_breakdown(batch)
        total: np.ndarray = sum(margins.values(), np.zeros(len(batch)))
        probability = scorer.mean(total)
        for i, record in enumerate(batch):
            if fmt == "photon":
                yield {
                    "uid": record["impression_id"],
                    "label": None,
                    "modelId": model_id,
                    "predictionScore": float(total[i]),
                    "weight": None,
                    "metadataMap": {"member_id": record["member_id"], "item_id": record["item_id"]},
                }
            else:
                yield {
                    "request_id": record["impression_id"],
                    "member_id": record["member_id"],
                    "item_id": record["item_id"],
                    "margin": float(total[i]),
                    "probability": float(probability[i]),
                    "breakdown": {k: float(v[i]) for k, v in margins.items()},
                    "versions": {k: int(v[i]) for k, v in versions.items()},
                }
        if progress is not None:
            progress.advance(len(batch))


def score_file(
    scorer: Scorer,
    input_path: str | Path | Sequence[str | Path],
    output_path: str | Path,
    fmt: str = "glmix",
    batch_size: int = 4096,
    progress: Progress | None = None,
) -> int:
    """Score every Impression of ``input_path`` (one file or several, in order) into ``output_path``; returns the count."""
    paths = [input_path] if isinstance(input_path, (str, Path)) else list(input_path)
    schema = "ScoringResultAvro" if fmt == "photon" else "ScoredCandidate"
    impressions = (record for path in paths for record in read_container(path, "Impression"))
    count = write_container(output_path, schema, scored_records(scorer, impressions, fmt, batch_size, progress))
    if progress is not None:
        progress.finish()
    return count


@dataclass
class GameScoring:
    """What :func:`score_game_files` did: records scored, how many carried a response, and the metrics on those."""

    scored: int
    labeled: int
    metrics: dict[str, float]


def score_game_files(
    scorer: Scorer,
    input_paths: Sequence[str | Path],
    output_path: str | Path,
    mapping: GameInputMapping,
    loss: str,
    batch_size: int = 4096,
    progress: Progress | None = None,
    model_id: str = "glmix",
) -> GameScoring:
    """Score Photon-ML GAME input records into Photon-ML ``ScoringResultAvro`` records, as Photon-ML's scoring driver.

    ``predictionScore`` is the margin with the record's offset added (Photon-ML's
    ``score + offset``), ``label`` the response (null when the record has none), ``weight``
    the record's (1 when none), ``metadataMap`` the record's entity ids by id field and its
    ``uid``. Records that carry a response are evaluated as Photon-ML's scoring driver
    evaluates them: :func:`response_metrics` of ``loss`` (the model's).
    """
    labels: list[np.ndarray] = []
    margins: list[np.ndarray] = []
    weights: list[np.ndarray] = []

    def records() -> Iterator[dict[str, Any]]:
        for batch in game_row_batches(input_paths, mapping, require_response=False, batch_size=batch_size):
            breakdown, _ = scorer.rows_breakdown(batch.rows)
            total = sum(breakdown.values(), batch.offset_array)
            responses = batch.labels
            known = ~np.isnan(responses)
            labels.append(responses[known])
            margins.append(total[known])
            weights.append(batch.weight_array[known])
            for i, row in enumerate(batch.rows):
                uid = batch.uids[i]
                yield {
                    "uid": uid,
                    "label": float(responses[i]) if known[i] else None,
                    "modelId": model_id,
                    "predictionScore": float(total[i]),
                    "weight": batch.weights[i],
                    "metadataMap": {**mapping.id_tags(row), **({} if uid is None else {"uid": uid})},
                }
            if progress is not None:
                progress.advance(len(batch))

    count = write_container(output_path, "ScoringResultAvro", records())
    if progress is not None:
        progress.finish()
    y, m, w = (np.concatenate(parts) if parts else np.zeros(0) for parts in (labels, margins, weights))
    return GameScoring(count, int(y.size), response_metrics(loss, y, m, w) if y.size else {})


def response_metrics(loss: str, labels: np.ndarray, margins: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """The evaluation Photon-ML's drivers print per task: AUC and log loss (logistic), RMSE (linear), Poisson loss.

    Losses are weighted means per record (Photon-ML prints weighted sums); RMSE is over the
    predicted means, weighted (Photon-ML divides by the record count: the same with unit weights).
    """
    fn = get_loss(loss)
    if loss == "logistic":
        return {"auc": auc(labels, margins), "log_loss": log_loss(labels, fn.mean(margins), weights)}
    result = {"rmse": rmse(labels, fn.mean(margins), weights)}
    if loss == "poisson":
        result["poisson_loss"] = float(weights @ fn.value(labels, margins) / weights.sum())
    return result


__all__ = ["FORMATS", "GameScoring", "Progress", "response_metrics", "score_file", "score_game_files", "scored_records"]
