"""Entity states <-> EntityModel values: the batch writer emits exactly what fastavro writes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.codec import make_codec
from stream.codec.entity_model_writer import NonFiniteCoefficientsError, check_entity_model_schema
from stream.codec.exceptions import EncodeError
from stream.codec.schemas import AvroSchema, load_schema
from stream.state.changelog import entity_model_values, states_from_records
from stream.state.entity_state import StateLayout

CODEC = make_codec("EntityModel", "coefficients")
LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _record(coordinate: str, entity: str, state: np.void, layout: StateLayout, partition: int, now_ms: int) -> dict:
    """The record as fastavro sees it, built field by field from the state."""
    return {
        "coordinate": coordinate, "entity_id": entity, "version": int(state["version"]), "means": state["mean"].tolist(),
        "precision_kind": "DIAGONAL" if layout.diagonal else "PACKED_UPPER",
        "precision": state["precision"].astype("<f8").tobytes(), "index_version": int(state["index_version"]),
        "source_partition": partition, "source_offset": int(state["last_offset"]), "event_count": int(state["event_count"]),
        "last_event_time": int(state["last_event_time"]), "published_time": now_ms,
    }


@given(
    diagonal=st.booleans(),
    dim=st.integers(min_value=0, max_value=5),
    window=st.integers(min_value=0, max_value=3),  # l2 windows make records whose size is not a multiple of 8
    entities=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6),
    longs=st.lists(LONGS, min_size=30, max_size=30),
    partition=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    now_ms=LONGS,
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_batch_written_values_equal_fastavros_byte_for_byte(diagonal, dim, window, entities, longs, partition, now_ms,
                                                           seed):
    layout = StateLayout(dim=dim, diagonal=diagonal, window=window)
    states = layout.new_states(len(entities), np.ones(dim))
    rng = np.random.default_rng(seed)
    states["mean"] = rng.normal(scale=1e3, size=states["mean"].shape)
    states["precision"] = rng.normal(size=states["precision"].shape)
    for i, name in enumerate(("version", "index_version", "last_offset", "event_count", "last_event_time")):
        states[name] = [longs[(i * 6 + j) % len(longs)] for j in range(len(entities))]
    values = entity_model_values(CODEC, "member", entities, states, layout, partition, now_ms=now_ms)
    expected = [CODEC.encode(_record("member", e, s, layout, partition, now_ms)) for e, s in zip(entities, states)]
    assert values == expected


def test_published_values_restore_the_states_they_came_from():
    layout = StateLayout(dim=3, diagonal=False, window=0)
    states = layout.new_states(2, np.ones(3))
    states["mean"] = [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]
    states["version"], states["last_offset"] = [4, 9], [120, 77]
    values = entity_model_values(CODEC, "job", ["j1", "j2"], states, layout, partition=3)
    restored = states_from_records([CODEC.decode(v) for v in values], layout, np.ones(3))
    for name in ("mean", "precision", "version", "last_offset"):
        np.testing.assert_array_equal(restored[name], states[name])


@pytest.mark.parametrize("field, bad", [("mean", np.nan), ("precision", np.inf), ("precision", -np.inf)])
def test_non_finite_states_are_never_published(field, bad):
    layout = StateLayout(dim=2, diagonal=False, window=0)
    states = layout.new_states(3, np.ones(2))
    states[field][1, -1] = bad
    with pytest.raises(NonFiniteCoefficientsError, match="non-finite"):
        entity_model_values(CODEC, "member", ["a", "b", "c"], states, layout, partition=0)
    assert entity_model_values(CODEC, "member", [], states[:0], layout, partition=0) == []


def test_the_writer_refuses_a_schema_it_does_not_know():
    check_entity_model_schema(load_schema("EntityModel"))
    plain = load_schema("EntityModel").plain
    reordered = dict(plain, fields=[plain["fields"][1], plain["fields"][0], *plain["fields"][2:]])
    with pytest.raises(EncodeError, match="does not know"):
        check_entity_model_schema(AvroSchema.from_json(reordered))
