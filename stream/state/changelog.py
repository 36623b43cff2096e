"""Entity states <-> ``EntityModel`` records of the compacted coefficients topic.

The coefficients topic is both what scorers read and the updater's changelog: a record
carries everything a ``bayes`` state is (mean, precision, version, offset stamp), so a
lost store is rebuilt from it. An ``l2`` state's event window is not published; after a
restore the window starts empty from the restored mean (see the updater docs).
Records are produced to the partition the state belongs to, so input partition p restores
from changelog partition p alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream.codec.avro import RecordCodec
from stream.codec.entity_model_writer import check_entity_model_schema, encode_entity_models
from stream.errors import InvalidValueError
from stream.state.entity_state import StateLayout


def entity_model_values(
    codec: RecordCodec,
    coordinate: str,
    entity_ids: Sequence[str],
    states: np.ndarray,
    layout: StateLayout,
    partition: int,
    now_ms: int | None = None,
) -> list[bytes]:
    """One encoded ``EntityModel`` value per state; a non-finite mean or precision raises ``NonFiniteCoefficientsError``."""
    check_entity_model_schema(codec.schema)
    if len(states) == 0:
        return []
    states = np.ascontiguousarray(states)
    fields = states.dtype.fields
    assert fields is not None  # a structured state array
    return encode_entity_models(
        codec.header(),
        coordinate,
        list(entity_ids),
        states["version"],
        states.view(np.uint8).reshape(len(states), -1),
        (fields["mean"][1], layout.dim),
        "DIAGONAL" if layout.diagonal else "PACKED_UPPER",
        (fields["precision"][1], layout.precision_size),
        states["index_version"],
        partition,
        states["last_offset"],
        states["event_count"],
        states["last_event_time"],
        int(time.time() * 1000) if now_ms is None else now_ms,
    )


def states_from_records(
    records: Sequence[Mapping[str, Any]], layout: StateLayout, new_precision: np.ndarray
) -> np.ndarray:
    """States rebuilt from ``EntityModel`` records of this layout (empty event windows)."""
    states = layout.new_states(len(records), new_precision)
    kind = "DIAGONAL" if layout.diagonal else "PACKED_UPPER"
    for i, r in enumerate(records):
        if (
            r["precision_kind"] != kind
            or len(r["means"]) != layout.dim
            or len(r["precision"]) != 8 * layout.precision_size
        ):
            raise InvalidValueError(f"record of entity {r['entity_id']!r} does not fit the state layout {layout}")
        states[i]["mean"] = r["means"]
        states[i]["precision"] = np.frombuffer(r["precision"], dtype="<f8")
    states["version"] = [r["version"] for r in records]
    states["last_offset"] = [r["source_offset"] for r in records]
    states["event_count"] = [r["event_count"] for r in records]
    states["last_event_time"] = [r["last_event_time"] for r in records]
    states["index_version"] = [r["index_version"] for r in records]
    return states
