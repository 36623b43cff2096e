"""Labeled examples of a clean synthetic stream, as the joiner would emit them, without Kafka.

For the refit, evaluation and benchmarks that start from archived examples: the same
indexing code as the joiner (:func:`~stream.consumers.labeling.unlabeled_records`), the true clicks and applies as
labels, and the per-coordinate scores of the given tables at "join time".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stream.config import ModelSettings
from stream.consumers.example_builder import add_scores
from stream.consumers.labeling import unlabeled_records
from stream.synthetic.events import LabeledImpression
from stream.tables.models import EntityTable, GlobalModel


def joined_examples(
    labeled: Sequence[LabeledImpression],
    model: GlobalModel,
    settings: ModelSettings,
    tables: Mapping[str, EntityTable] | None = None,
) -> list[dict[str, Any]]:
    """One ``LabeledExample`` per impression: label 1 when clicked, interaction types, scores from ``tables``."""
    examples = unlabeled_records([li.impression for li in labeled], model, settings)
    for example, li in zip(examples, labeled):
        example["label"] = 1.0 if li.clicked else 0.0
        example["interaction_types"] = ["CLICK", "APPLY"][: int(li.clicked) + int(li.applied)]
    add_scores(examples, model, tables or {})
    return examples
