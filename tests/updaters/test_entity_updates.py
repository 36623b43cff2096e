"""The store glue the live updater and the backtest share: keys, writes, and a replay that writes nothing."""

from __future__ import annotations

import numpy as np

from stream.state.partition_store import PartitionStore
from stream.updaters.entity_updates import entity_key, update_entities
from stream.updaters.examples import group_by_entity
from tests.updaters.test_state_update import _examples, _math


def test_updates_are_written_under_the_entity_key_and_a_replay_writes_nothing(tmp_path):
    math = _math()
    store = PartitionStore(tmp_path / "store")
    batch = group_by_entity(_examples(30, ["a", "é"], seed=3))
    first = update_entities(store, math, batch)
    assert [k for k, _ in first.writes] == [entity_key("a"), entity_key("é")] == [b"ea", "eé".encode()]
    assert first.entity_ids == ["a", "é"] and first.outcome.absorbed_events == 30
    store.commit(first.writes, offsets={"input": 29})
    stored, found = math.layout.decode(store.get_many([entity_key("a"), entity_key("é")]), math.new_entity_precision)
    assert found.all() and np.array_equal(stored["mean"], first.states["mean"])
    again = update_entities(store, math, batch)  # the same offsets: every event was absorbed already
    assert again.writes == [] and again.entity_ids == [] and again.outcome.replayed_events == 30
    store.close()
