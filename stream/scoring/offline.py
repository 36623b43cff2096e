"""Offline scoring: a container file of candidates in, a container file of scores out (``glmix score``).

The throughput path of the GLMix slides: score every (member, item) pair offline and
push the results to a key-value store. Input records are ``Impression``s (ids, feature
bags, context); output is ``ScoredCandidate`` (margin, probability, per-coordinate
breakdown and versions) or Photon-ML's ``ScoringResultAvro``. Records stream through in
batches, so memory stays bounded whatever the file size; progress goes to stderr.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from stream.codec.container import read_container, write_container
from stream.errors import InvalidValueError
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
    input_path: str | Path,
    output_path: str | Path,
    fmt: str = "glmix",
    batch_size: int = 4096,
    progress: Progress | None = None,
) -> int:
    """Score every Impression of ``input_path`` into ``output_path``; returns the count."""
    schema = "ScoringResultAvro" if fmt == "photon" else "ScoredCandidate"
    count = write_container(
        output_path, schema, scored_records(scorer, read_container(input_path, "Impression"), fmt, batch_size, progress)
    )
    if progress is not None:
        progress.finish()
    return count


__all__ = ["FORMATS", "Progress", "score_file", "scored_records"]
