"""Offline scoring: a container file of candidates in, a container file of scores out (``glmix score``).

The throughput path of the GLMix slides: score every (member, item) pair offline and
push the results to a key-value store. Input records are ``Impression``s (ids, feature
bags, context); output is ``ScoredCandidate`` (margin, probability, per-coordinate
breakdown and versions) or Photon-ML's ``ScoringResultAvro``. Records stream through in
batches, so memory stays bounded whatever the file size; progress goes to stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any, TextIO


from stream.codec.container import read_container, write_container
from stream.scoring.scorer import Scorer

FORMATS = ("glmix", "photon")


class Progress:
    """A one-line progress report (records and rate), redrawn at most every ``every_s`` seconds."""

    def __init__(self, label: str, out: TextIO = sys.stderr, every_s: float = 0.5) -> None:
        self._label, self._out, self._every = label, out, every_s
        self._started = self._last = time.monotonic()
        self.count = 0

    def advance(self, n: int) -> None:
        """Count ``n`` more records; redraw if it is time."""
        self.count += n
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._draw(now, end="")

    def _draw(self, now: float, end: str) -> None:
        rate = self.count / max(now - self._started, 1e-9)
        self._out.write(f"\r{self._label}: {self.count:,} records ({rate:,.0f}/s){end}")
        self._out.flush()

    def finish(self) -> None:
        """Draw the final line."""
        self._draw(time.monotonic(), end="\n")


def _batches(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(records)
    while batch := list(islice(it, size)):
        yield batch


def scored_records(scorer: Scorer, impressions: Iterable[Mapping[str, Any]], fmt: str = "glmix", batch_size: int = 4096,
                   progress: Progress | None = None, model_id: str = "glmix") -> Iterator[dict[str, Any]]:
    """Score ``impressions`` batch by batch; yields output records in input order."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    for batch in _batches(impressions, batch_size):
        margins, versions = scorer.rows_breakdown(batch)
        total = sum(margins.values())
        probability = scorer.mean(total)
        for i, record in enumerate(batch):
            if fmt == "photon":
                yield {"uid": record["impression_id"], "label": None, "modelId": model_id,
                       "predictionScore": float(total[i]), "weight": None,
                       "metadataMap": {"member_id": record["member_id"], "item_id": record["item_id"]}}
            else:
                yield {"request_id": record["impression_id"], "member_id": record["member_id"],
                       "item_id": record["item_id"], "margin": float(total[i]), "probability": float(probability[i]),
                       "breakdown": {k: float(v[i]) for k, v in margins.items()},
                       "versions": {k: int(v[i]) for k, v in versions.items()}}
        if progress is not None:
            progress.advance(len(batch))


def score_file(scorer: Scorer, input_path: str | Path, output_path: str | Path, fmt: str = "glmix",
               batch_size: int = 4096, progress: Progress | None = None) -> int:
    """Score every Impression of ``input_path`` into ``output_path``; returns the count."""
    schema = "ScoringResultAvro" if fmt == "photon" else "ScoredCandidate"
    count = write_container(output_path, schema, scored_records(scorer, read_container(input_path, "Impression"), fmt,
                                                                batch_size, progress))
    if progress is not None:
        progress.finish()
    return count


__all__ = ["FORMATS", "Progress", "score_file", "scored_records"]
