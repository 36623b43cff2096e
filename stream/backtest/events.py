"""A time-ordered event log for a backtest: Impression and Interaction records from Avro container files.

Events are replayed in event-time order (impressions before interactions at the same
millisecond, file order otherwise), which is what a live deployment sees when its inputs
keep up. Records the live joiner would dead-letter are counted and left out here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fastavro

from stream.codec.container import read_container
from stream.codec.validation import impression_problem, interaction_problem
from stream.consumers.labeling import IMPRESSION, INTERACTION, JoinInput
from stream.errors import GlmixError


class EventLogError(GlmixError):
    """An event log cannot be read: a missing or unreadable file."""


@dataclass
class EventLog:
    """Valid events in replay order, and how many invalid ones were left out."""

    events: list[JoinInput]
    invalid: int = 0
    sources: list[str] = field(default_factory=list)

    @classmethod
    def from_files(cls, impressions: Sequence[str | Path], interactions: Sequence[str | Path]) -> EventLog:
        """Read every file (Impression, then Interaction container files) and order the events by event time."""
        events: list[JoinInput] = []
        invalid = 0
        for kind, schema, problem, paths in (
            (IMPRESSION, "Impression", impression_problem, impressions),
            (INTERACTION, "Interaction", interaction_problem, interactions),
        ):
            for path in paths:
                for record in _records(path, schema):
                    if problem(record) is not None:
                        invalid += 1
                        continue
                    events.append(JoinInput(kind, record))
        return cls(replay_order(events), invalid, [str(p) for p in [*impressions, *interactions]])

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path]) -> EventLog:
        """Like :meth:`from_files`, each file's kind read from the schema it was written with."""
        impressions, interactions = [], []
        for path in paths:
            name = writer_schema_name(path)
            if name == "Impression":
                impressions.append(path)
            elif name == "Interaction":
                interactions.append(path)
            else:
                raise EventLogError(f"{path}: holds {name} records; expected Impression or Interaction container files")
        return cls.from_files(impressions, interactions)

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[JoinInput]:
        return iter(self.events)


def replay_order(events: Sequence[JoinInput]) -> list[JoinInput]:
    """``events`` by event time; impressions before interactions at the same millisecond; given order otherwise."""
    return sorted(events, key=lambda e: (e.record["event_time"], e.kind != IMPRESSION))


def writer_schema_name(path: str | Path) -> str:
    """The short name of the schema an Avro container file was written with."""
    if not Path(path).is_file():
        raise EventLogError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            schema = fastavro.reader(fh).writer_schema
    except (OSError, ValueError) as exc:
        raise EventLogError(f"{path}: not an Avro container file ({exc})") from exc
    return str(schema.get("name", "?")).rsplit(".", 1)[-1] if isinstance(schema, dict) else "?"


def _records(path: str | Path, schema: str) -> Iterator[dict]:
    if not Path(path).is_file():
        raise EventLogError(f"{path}: no such file (expected an Avro container file of {schema} records)")
    try:
        yield from read_container(path, schema)
    except OSError as exc:
        raise EventLogError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
