"""The models every stage reads — the global model and every coordinate's coefficients — followed from their topics.

Used by the joiner (scores at join time), the refit (current offsets), ``glmix evaluate replay``
and the scorer; the scorer also follows the compacted items topic, the features of items that
candidates may name by id alone. The follower reads the compacted topics from the beginning
into version-checked tables and keeps following them; it is ``ready`` once it has read up to
the high watermarks that existed when it started, so nothing already published is missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stream.codec import make_codec
from stream.config import Settings
from stream.errors import WaitTimeoutError
from stream.kafka.topic_reader import TopicReader
from stream.tables.models import CoefficientTable, GlobalModelTable
from stream.tables.stored_table import StoredCoefficientTable

log = logging.getLogger(__name__)

Bags = Mapping[str, Sequence[Any]]


class ModelFollower:
    """The global model, every coordinate's coefficients and, with ``follow_items``, the item catalog.

    Each is kept current from its topic.
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap_servers: str,
        client_id: str,
        keep_posteriors: bool = False,
        follow_items: bool = False,
    ) -> None:
        registry, registry_settings = settings.kafka.schema_registry_url, settings.kafka.schema_registry
        topics = settings.topics
        self.global_model = GlobalModelTable(settings.model)
        self.tables = {name: _table(settings, name, client_id, keep_posteriors) for name in settings.model.coordinates}
        self._global_reader = TopicReader(
            settings.kafka,
            topics.model_global,
            make_codec("GlobalModel", topics.model_global, registry, registry_settings),
            bootstrap_servers=bootstrap_servers,
            client_id=f"{client_id}-global-model",
        )
        self._readers = {
            name: TopicReader(
                settings.kafka,
                topics.coefficients(name),
                make_codec("EntityModel", topics.coefficients(name), registry, registry_settings),
                bootstrap_servers=bootstrap_servers,
                client_id=f"{client_id}-{name}-coefficients",
            )
            for name in self.tables
        }
        self.items: dict[str, tuple[int, Bags]] = {}
        self._item_listeners: list[Callable[[dict[str, Bags]], None]] = []
        self._items_reader = (
            TopicReader(
                settings.kafka,
                topics.items,
                make_codec("ItemFeatures", topics.items, registry, registry_settings),
                bootstrap_servers=bootstrap_servers,
                client_id=f"{client_id}-items",
            )
            if follow_items
            else None
        )
        self._targets = {reader: reader.end_offsets() for reader in self._all_readers()}
        self._ready = False

    def _all_readers(self) -> list[TopicReader]:
        return [self._global_reader, *self._readers.values(), *([self._items_reader] if self._items_reader else [])]

    def on_items(self, listener: Callable[[dict[str, Bags]], None]) -> None:
        """Call ``listener`` with every item's features now, then with each batch of changed items."""
        self._item_listeners.append(listener)
        if self.items:
            listener({item: features for item, (_, features) in self.items.items()})

    @property
    def ready(self) -> bool:
        """Whether every topic has been read up to where it ended when the follower started."""
        if not self._ready:
            self._ready = all(reader.reached(target) for reader, target in self._targets.items())
        return self._ready

    def catch_up(self, timeout_s: float = 60.0) -> None:
        """Refresh until :attr:`ready` (or fail after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.refresh(timeout_s=0.2)
            if self.ready:
                return
            if time.monotonic() > deadline:
                raise WaitTimeoutError(f"models not caught up with their topics after {timeout_s:.0f} s")

    def refresh(self, timeout_s: float = 0.0) -> None:
        """Take whatever was published since the last call (waiting at most ``timeout_s`` per topic)."""
        current = self.global_model.current
        if self.global_model.apply(self._global_reader.poll(timeout_s=timeout_s).records):
            current = self.global_model.current
            assert current is not None  # apply() returned True: a model was taken
            log.info("using global model version %d (index version %d)", current.version, current.index_version)
        for name, reader in self._readers.items():
            self.tables[name].apply(reader.poll(timeout_s=timeout_s).records)
        if self._items_reader is not None:
            self._take_items(self._items_reader.poll(timeout_s=timeout_s).records)

    def _take_items(self, records: list[dict]) -> None:
        """Keep each item's highest version; tell the listeners which items changed."""
        changed: dict[str, Bags] = {}
        for record in records:
            held = self.items.get(record["item_id"])
            if held is None or record["version"] > held[0]:
                self.items[record["item_id"]] = (record["version"], record["features"])
                changed[record["item_id"]] = record["features"]
        if changed:
            for listener in self._item_listeners:
                listener(changed)

    def close(self) -> None:
        """Close every reader and table."""
        for reader in self._all_readers():
            reader.close()
        for table in self.tables.values():
            table.close()


def _table(
    settings: Settings, coordinate: str, client_id: str, keep_posteriors: bool
) -> CoefficientTable | StoredCoefficientTable:
    """The coefficient table ``serving.table`` asks for."""
    dim = settings.model.coordinates[coordinate].max_features
    if settings.serving.table == "memory":
        return CoefficientTable(coordinate, dim, keep_posteriors)
    directory = Path(settings.state_dir) / "coefficient-tables" / client_id
    return StoredCoefficientTable(coordinate, dim, directory, settings.serving.cache_entities, keep_posteriors)
