"""Replay evaluation on random-bucket traffic: how would a model have ranked what was shown at random?

In the random bucket, items were shown in a random order, so for any model the served
impressions whose position equals the model's rank of that item within its request are
an unbiased sample of what the model would have shown there. Counting interactions on
those matched impressions estimates the model's click rate per matched slot (Li et al.,
"Unbiased offline evaluation of contextual-bandit-based news article recommendation");
position-1 matches — the model's top item was the one served first — estimate the click
rate of its top slot. Over all positions, matched impressions sample every rank of the
model equally, so the plain matched rate is close to the overall rate for any model;
the position-discounted rate (weights ``1/log2(position + 2)``, as in DCG) and the
position-1 rate are the ones that tell policies apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ReplayResult:
    """Matched impressions and their interactions, overall and at the first position."""

    requests: int
    matched_impressions: int
    matched_interactions: float
    position1_matches: int
    position1_interactions: float
    discounted_matches: float
    discounted_interactions: float

    @property
    def matched_rate(self) -> float:
        """Interactions per matched impression (nan without matches)."""
        return self.matched_interactions / self.matched_impressions if self.matched_impressions else float("nan")

    @property
    def position1_rate(self) -> float:
        """Interactions per position-1 match (nan without matches)."""
        return self.position1_interactions / self.position1_matches if self.position1_matches else float("nan")

    @property
    def discounted_rate(self) -> float:
        """Interactions per matched impression, each weighted ``1/log2(position + 2)`` (nan without matches)."""
        return self.discounted_interactions / self.discounted_matches if self.discounted_matches else float("nan")

    def to_json(self) -> dict:
        """The counts and the three rates."""
        return {
            **asdict(self),
            "matched_rate": self.matched_rate,
            "position1_rate": self.position1_rate,
            "discounted_rate": self.discounted_rate,
        }


def model_ranks(request_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each impression's 0-based rank by descending score within its request (ties keep input order)."""
    _, request = np.unique(request_ids, return_inverse=True)
    order = np.lexsort((np.arange(len(scores)), -scores, request))
    grouped = request[order]
    starts = np.r_[0, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1] if len(grouped) else np.zeros(0, dtype=int)
    run_lengths = np.diff(np.r_[starts, len(grouped)])
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(len(grouped)) - np.repeat(starts, run_lengths)
    return ranks


def replay(request_ids: np.ndarray, positions: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> ReplayResult:
    """Replay ``scores`` on random-bucket impressions (served ``positions`` are 0-based within each request)."""
    request_ids, positions = np.asarray(request_ids), np.asarray(positions)
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    ranks = model_ranks(request_ids, scores)
    matched = ranks == positions
    first = matched & (positions == 0)
    discount = np.where(matched, 1.0 / np.log2(positions + 2.0), 0.0)
    return ReplayResult(
        requests=len(np.unique(request_ids)),
        matched_impressions=int(matched.sum()),
        matched_interactions=float(labels[matched].sum()),
        position1_matches=int(first.sum()),
        position1_interactions=float(labels[first].sum()),
        discounted_matches=float(discount.sum()),
        discounted_interactions=float(discount @ labels),
    )
