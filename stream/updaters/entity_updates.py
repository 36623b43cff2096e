"""One coordinate's micro-batch against its partition store: multi-get -> update -> the writes, and what changed.

The one glue between a store of entity states and the update math
(:func:`~stream.updaters.state_update.apply_batch`): the live updater and the backtest's
replay both call :func:`update_entities`, so the key encoding, the state layout and the
choice of what gets written cannot drift apart. It writes nothing itself: the live
updater hands the writes to its Checkpoint (published first, written after the commit),
the replay commits them at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.state.partition_store import PartitionStore
from stream.updaters.examples import EntityBatch
from stream.updaters.state_update import BatchOutcome, CoordinateMath, apply_batch

ENTITY_PREFIX = b"e"


def entity_key(entity_id: str) -> bytes:
    """The store key of an entity's state: ``e`` + its UTF-8 id (what every restored store holds)."""
    return ENTITY_PREFIX + entity_id.encode()


@dataclass(frozen=True)
class EntityUpdates:
    """What one batch changed: the store writes (key, encoded state), and the changed entities with their new states.

    ``entity_ids[i]`` has the new state ``states[i]``, written as ``writes[i]``; ``outcome``
    is the update's full account (replays, failures, Newton iterations).
    """

    writes: list[tuple[bytes, bytes]]
    entity_ids: list[str]
    states: np.ndarray
    outcome: BatchOutcome


def update_entities(store: PartitionStore, math: CoordinateMath, batch: EntityBatch) -> EntityUpdates:
    """Read ``batch``'s entities from ``store`` (one multi-get), update them, and return what to write and publish."""
    layout = math.layout
    keys = [entity_key(e) for e in batch.entity_ids]
    states, _ = layout.decode(store.get_many(keys), math.new_entity_precision)
    outcome = apply_batch(math, states, batch)
    changed = np.flatnonzero(outcome.changed)
    new = outcome.states[changed]
    return EntityUpdates(
        writes=list(zip((keys[i] for i in changed), layout.encode(new))),
        entity_ids=batch.entity_ids[changed].tolist(),
        states=new,
        outcome=outcome,
    )
