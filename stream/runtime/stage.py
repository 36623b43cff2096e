"""What a stage is to the runtime: a batch function plus its state (DESIGN §5).

The runtime (:class:`stream.runtime.runner.StageRunner`) owns everything else: the Kafka
clients, the one consume loop, partition assignment with restores outside the rebalance
callbacks, and the :class:`~stream.runtime.checkpoint.Checkpoint` that makes a batch
durable in one order. A stage says what it reads and how, restores a partition's state
when asked, and turns a batch of messages into checkpoint entries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Message, Producer

from stream.errors import GlmixError
from stream.kafka.dead_letter import DeadLetters
from stream.runtime.checkpoint import Checkpoint
from stream.runtime.stats import StageStats
from stream.state.partition_store import PartitionStore


class StageNotStartedError(GlmixError):
    """A stage was used before the runtime started it."""


@dataclass
class StageClients:
    """What the runtime made for a stage once it started: its clients, dead-letter sink and ready stores."""

    producer: Producer
    consumer: Consumer
    dead_letters: DeadLetters
    bootstrap_servers: str
    stores: Mapping[int, PartitionStore]


class Stage(ABC):
    """A pipeline stage as the runtime runs it. Stateless stages keep the defaults of the state hooks."""

    name: str
    group_id: str
    stats: StageStats
    _clients: StageClients | None = None

    @property
    def clients(self) -> StageClients:
        """The clients :meth:`open` was given."""
        if self._clients is None:
            raise StageNotStartedError(f"{self.name}: not started yet (the runtime opens a stage on its first step)")
        return self._clients

    @abstractmethod
    def subscription(self) -> list[str]:
        """The input topics."""

    def consumer_settings(self) -> dict[str, Any]:
        """librdkafka settings this stage needs beyond the user's (e.g. the joiner's range assignment)."""
        return {}

    @abstractmethod
    def batch_limits(self) -> tuple[int, float]:
        """The most messages one batch takes, and the seconds to wait for them."""

    def open(self, clients: StageClients) -> None:
        """Called once, when the runtime has created the clients (lazily, on the first step)."""
        self._clients = clients

    def state_owner(self) -> str | None:
        """The state-dir folder of this stage's partition stores, or None for a stateless stage."""
        return None

    def restore(self, partition: int, store: PartitionStore, committed: Mapping[str, int]) -> Iterator[int]:
        """Bring ``store`` up to date for ``partition`` (``committed``: the group's offsets by topic); yields progress.

        Runs in the loop with the partition paused, in slices the runtime times; yielding
        nothing means the store was already current.
        """
        return iter(())

    def restored(self, partition: int) -> None:
        """``partition`` is up to date and about to be resumed (e.g. the joiner recovers its outbox here)."""

    def revoked(self, partitions: list[int]) -> None:
        """``partitions`` were taken away (or lost): drop what is held for them. Runs inside the callback: no I/O."""

    @abstractmethod
    def process(self, messages: list[Message], checkpoint: Checkpoint) -> None:
        """Turn one batch (of ready partitions only) into checkpoint entries; the runtime commits them."""

    def finish(self, checkpoint: Checkpoint) -> None:
        """On a clean stop, before the group is left: put what is still held into a last checkpoint (the archive)."""

    def close(self) -> None:
        """Release what the stage holds beyond the runtime's clients and stores (model readers, files)."""
