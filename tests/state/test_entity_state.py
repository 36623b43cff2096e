"""The fixed binary layout of entity states: round trips, packing, and refusing foreign bytes."""

from __future__ import annotations

import numpy as np
import pytest

from stream.state.entity_state import StateLayout
from stream.state.exceptions import StateLayoutError


@pytest.mark.parametrize("diagonal", [True, False])
def test_states_round_trip_through_bytes(diagonal):
    layout = StateLayout(dim=5, diagonal=diagonal, window=3)
    rng = np.random.default_rng(0)
    states = layout.new_states(4, np.ones(5))
    states["mean"] = rng.normal(size=(4, 5))
    states["version"] = [1, 2, 3, 4]
    states["window_features"] = rng.normal(size=(4, 3, 5)).astype(np.float32)
    values = layout.encode(states)
    assert all(len(v) == layout.state_bytes for v in values)
    decoded, found = layout.decode([values[0], None, values[2]], np.full(5, 7.0))
    assert found.tolist() == [True, False, True]
    assert decoded[0].tobytes() == states[0].tobytes() and decoded[2].tobytes() == states[2].tobytes()
    assert decoded["version"][1] == 0 and np.allclose(layout.unpack_precision(decoded["precision"][1:2])[0],
                                                      7.0 * (np.ones(5) if diagonal else np.eye(5)))


def test_full_precision_is_stored_as_its_upper_triangle():
    layout = StateLayout(dim=4, diagonal=False, window=0)
    a = np.random.default_rng(1).normal(size=(2, 4, 4))
    spd = a @ a.transpose(0, 2, 1) + np.eye(4)
    packed = layout.pack_precision(spd)
    assert packed.shape == (2, 10)
    assert np.allclose(layout.unpack_precision(packed), spd)


def test_a_state_of_another_layout_is_refused_not_misread():
    small, other = StateLayout(4, True, 0), StateLayout(4, False, 0)
    value = small.encode(small.new_states(1, np.ones(4)))[0]
    with pytest.raises(StateLayoutError):
        other.decode([value], np.ones(4))
    same_size = StateLayout(4, True, 0)
    tampered = bytearray(value)
    tampered[0] ^= 0xFF
    with pytest.raises(StateLayoutError):
        same_size.decode([bytes(tampered)], np.ones(4))


def test_state_size_is_what_the_layout_says():
    """d=32, full precision, no window: mean + packed triangle + header, about 4.5 KB."""
    layout = StateLayout(dim=32, diagonal=False, window=0)
    assert layout.state_bytes == 48 + 32 * 8 + 528 * 8
