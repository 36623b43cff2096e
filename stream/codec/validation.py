"""Checks that decoded records make sense beyond their schema (ids present, numbers finite).

Avro guarantees shape, not meaning: an impression with an empty member id or a NaN
feature value decodes fine. Each check returns the reason a record must be
dead-lettered, or ``None`` when it is valid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

from stream.codec.avro import SingleObjectCodec
from stream.codec.columnar import ColumnarBatch, ColumnarDecoder, FeatureBagsColumn, StringColumn
from stream.codec.schemas import load_schema


def impression_problem(record: Mapping[str, Any]) -> str | None:
    """Why an Impression record is invalid (missing ids, non-finite feature values), or ``None``."""
    return impression_record_problems([record]).get(0)


def impression_record_problems(records: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Why each invalid Impression record of ``records`` is invalid, by position (valid records absent).

    The rule is :func:`impression_problems`, which the joiner applies to decoded batches; this applies it to
    records, encoded and then decoded as one batch like any values (a decode per record costs a millisecond).
    """
    batch = decoded_impressions(records)
    problems = {row: reason for row in range(len(records)) if (reason := batch.reason(row))}
    return {**impression_problems(batch), **problems}


def decoded_impressions(records: Sequence[Mapping[str, Any]]) -> ColumnarBatch:
    """Impression records (read from files, made in tests) as a decoded batch: encoded with the packaged schema and
    decoded like any values, so records meet the same decoder and checks as messages do."""
    codec, decoder = _impression_codec()
    return decoder.decode([codec.encode(record) for record in records])


@cache
def _impression_codec() -> tuple[SingleObjectCodec, ColumnarDecoder]:
    codec = SingleObjectCodec(load_schema("Impression"))
    return codec, ColumnarDecoder.of_codec(codec)


_INTERACTION_IDS = ("impression_id", "member_id")  # an Interaction without one of these cannot be joined


def interaction_problem(record: Mapping[str, Any]) -> str | None:
    """Why an Interaction record is invalid (missing ids), or ``None``."""
    for key in _INTERACTION_IDS:
        if not record.get(key):
            return _empty_interaction_id(key)
    return None


def interaction_problems(batch: ColumnarBatch) -> dict[int, str]:
    """:func:`interaction_problem` of every decoded row of a columnar Interaction batch, by row (valid rows absent)."""
    problems: dict[int, str] = {}
    for key in _INTERACTION_IDS:
        column = batch.columns[key]
        assert isinstance(column, StringColumn)
        for row in np.flatnonzero(batch.ok & (column.lengths == 0)).tolist():
            problems.setdefault(row, _empty_interaction_id(key))
    return problems


def _empty_interaction_id(key: str) -> str:
    return f"Interaction has an empty {key}"


def impression_problems(batch: ColumnarBatch) -> dict[int, str]:
    """:func:`impression_problem` of every decoded row of a columnar Impression batch, by row (valid rows absent).

    The same rule on arrays: ids of zero length, feature values that are not finite.
    """
    problems: dict[int, str] = {}
    ok = batch.ok
    for key in ("impression_id", "member_id", "item_id"):
        column = batch.columns[key]
        assert isinstance(column, StringColumn)
        for row in np.flatnonzero(ok & (column.lengths == 0)).tolist():
            problems.setdefault(row, f"Impression has an empty {key}")
    features = batch.columns["features"]
    assert isinstance(features, FeatureBagsColumn)
    bad = np.flatnonzero(~np.isfinite(features.values))
    if len(bad):
        rows = np.searchsorted(features.row_offsets, bad, side="right") - 1
        for feature, row in zip(bad.tolist(), rows.tolist()):
            if row not in problems:
                bag = int(np.searchsorted(features.bag_feature_offsets, feature, side="right") - 1)
                problems[row] = (
                    f"Impression feature {features.text(features.bag_key_offsets[bag], features.bag_key_lengths[bag])}"
                    f"/{features.text(features.name_offsets[feature], features.name_lengths[feature])}"
                    f":{features.text(features.term_offsets[feature], features.term_lengths[feature])}"
                    f" is {float(features.values[feature])}"
                )
    return problems
