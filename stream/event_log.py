"""A time-ordered event log for a backtest or a bootstrap: Impression and Interaction records from Avro container files or topics.

Photon-ML GAME input files that carry an event time are read as such events too
(:func:`game_input_events`).

Events are replayed in event-time order (impressions before interactions at the same
millisecond, file or topic order otherwise), which is what a live deployment sees when
its inputs keep up. Records the live joiner would dead-letter are counted and left out here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fastavro
import numpy as np

from stream.codec import load_schema, make_codec
from stream.codec.columnar import ColumnarDecoder
from stream.codec.columnar.batch import ScalarColumn
from stream.codec.container import container_bodies, read_container
from stream.codec.game_input import GameInputMapping, read_game_rows
from stream.codec.validation import (
    impression_problem,
    impression_problems,
    interaction_problem,
    interaction_problems,
)
from stream.config import Settings
from stream.consumers.impressions import DecodedRow, impression_rows
from stream.consumers.labeling import IMPRESSION, INTERACTION, KIND_SCHEMAS, JoinInput, decoded_inputs
from stream.errors import GlmixError
from stream.kafka.topic_reader import TopicReader
from stream.progress import Progress

log = logging.getLogger(__name__)

_PROBLEMS: dict[str, Callable[[Mapping], str | None]] = {
    IMPRESSION: impression_problem,
    INTERACTION: interaction_problem,
}

_IMPRESSION_CHUNK = 4096  # impressions decoded into columns at a time (and counted by the progress line)


class EventLogError(GlmixError):
    """An event log cannot be read: a missing or unreadable file."""


@dataclass
class EventLog:
    """Valid events in replay order, and how many invalid ones were left out."""

    events: list[JoinInput]
    invalid: int = 0
    sources: list[str] = field(default_factory=list)

    @classmethod
    def from_files(
        cls,
        impressions: Sequence[str | Path],
        interactions: Sequence[str | Path],
        progress: Progress | None = None,
    ) -> EventLog:
        """Read every file (Impression, then Interaction container files) and order the events by event time.

        ``progress`` counts the records read; the caller owns it.
        """
        log = cls([], 0, [str(p) for p in [*impressions, *interactions]])
        for kind, paths in ((IMPRESSION, impressions), (INTERACTION, interactions)):
            for path in paths:
                log._add_file(kind, path, progress)
        log.events = replay_order(log.events)
        return log

    @classmethod
    def from_topics(
        cls,
        settings: Settings,
        since_ms: int,
        until_ms: int,
        timeout_s: float = 300.0,
        progress: Progress | None = None,
    ) -> EventLog:
        """The events of the impressions and interactions topics with ``since_ms <= event_time < until_ms``.

        Reading starts at the first record produced at ``since_ms`` (an event is produced
        after it happens) and ends at each partition's end when the read began. ``progress``
        counts the events kept.
        """
        if until_ms <= since_ms:
            raise EventLogError(f"an empty time range: --until ({until_ms}) must be after --since ({since_ms})")
        topics, kafka = settings.topics, settings.kafka
        log = cls([], 0, [f"kafka:{topics.impressions}", f"kafka:{topics.interactions}"])
        for kind, topic in ((IMPRESSION, topics.impressions), (INTERACTION, topics.interactions)):
            codec = make_codec(KIND_SCHEMAS[kind], topic, kafka.schema_registry_url, kafka.schema_registry)
            reader = TopicReader(
                kafka,
                topic,
                codec,
                bootstrap_servers=kafka.bootstrap_servers,
                client_id=kafka.group_id("backtest-reader"),
                since_ms=since_ms,
            )
            try:
                for batch in reader.read_to_end(stall_timeout_s=timeout_s):
                    log.invalid += len(batch.failures)
                    log._add(kind, (r for r in batch.records if since_ms <= r["event_time"] < until_ms), progress)
            finally:
                reader.close()
        log.events = replay_order(log.events)
        return log

    def _add_file(self, kind: str, path: str | Path, progress: Progress | None) -> None:
        """One event file's valid events, decoded from its blocks' bodies into columns in one compiled pass.

        Impressions are decoded again in chunks of event-time order, for the same reason as
        in :meth:`_add`; each event's record holds the join's fields (the row has the rest).
        """
        schema = KIND_SCHEMAS[kind]
        decoder = ColumnarDecoder.bodies(load_schema(schema))
        data, count = read_bodies(path, schema)
        batch = decoder.decode_bodies(data, count)
        undecodable = batch.failures()
        if undecodable:
            row, reason = undecodable[0]
            raise EventLogError(f"{path}: record {row} of {count} cannot be decoded: {reason}")
        problems = impression_problems(batch) if kind == IMPRESSION else interaction_problems(batch)
        self.invalid += len(problems)
        keep = np.ones(count, dtype=bool)
        keep[list(problems)] = False
        valid = np.flatnonzero(keep)
        if kind == IMPRESSION:
            times = batch.columns["event_time"]
            assert isinstance(times, ScalarColumn)
            valid = valid[np.argsort(times.values[valid], kind="stable")]
        for start in range(0, len(valid), _IMPRESSION_CHUNK):
            chunk = valid[start : start + _IMPRESSION_CHUNK]
            if kind == IMPRESSION:  # a batch of its own, whose feature lookup the join keeps
                at = batch.starts
                again = decoder.decode([data[a:b] for a, b in zip(at[chunk].tolist(), at[chunk + 1].tolist())])
                rows = [DecodedRow(again, row) for row in range(len(chunk))]
            else:
                rows = [DecodedRow(batch, row) for row in chunk.tolist()]
            nothing = [b""] * len(rows)
            self.events += decoded_inputs(kind, rows, [-1] * len(rows), nothing, nothing)
            if progress is not None:
                progress.advance(len(chunk))
        if progress is not None:
            progress.advance(len(problems))

    def _add(self, kind: str, records: Iterable[Mapping], progress: Progress | None = None) -> None:
        # Chunks of event-time order: a replay's micro-batch then finds its impressions in one or two decoded chunks,
        # whose feature lookup the join keeps (a chunk of file order scattered them over four or five). The sort is
        # stable, so the replay order (replay_order, also stable) is what it was.
        listed = sorted(records, key=lambda record: record["event_time"])
        for start in range(0, len(listed), _IMPRESSION_CHUNK):
            chunk = listed[start : start + _IMPRESSION_CHUNK]
            if kind == INTERACTION:
                rows: list = [interaction_problem(record) or None for record in chunk]
            else:  # decoded into columns once, for every replay
                rows = impression_rows(chunk)
            for record, row in zip(chunk, rows):
                if isinstance(row, str):
                    self.invalid += 1
                else:
                    self.events.append(JoinInput(kind, record, columns=row))
            if progress is not None:
                progress.advance(len(chunk))

    @classmethod
    def from_paths(
        cls, paths: Sequence[str | Path], settings: Settings | None = None, progress: Progress | None = None
    ) -> EventLog:
        """Like :meth:`from_files`, each file's kind read from the schema it was written with.

        With ``settings``, a file of any other schema is read as Photon-ML GAME input
        records (:func:`game_input_events`) by ``settings.game_input``.
        """
        impressions, interactions, game_inputs = [], [], []
        for path in paths:
            name = writer_schema_name(path)
            if name == "Impression":
                impressions.append(path)
            elif name == "Interaction":
                interactions.append(path)
            elif settings is not None:
                game_inputs.append(path)
            else:
                raise EventLogError(f"{path}: holds {name} records; expected Impression or Interaction container files")
        log = cls.from_files(impressions, interactions, progress)
        if game_inputs:
            assert settings is not None
            log._add_events(game_input_events(game_inputs, settings))
            log.sources += [str(p) for p in game_inputs]
            log.events = replay_order(log.events)
        return log

    def _add_events(self, events: Iterable[JoinInput]) -> None:
        listed = list(events)
        for kind in (IMPRESSION, INTERACTION):
            self._add(kind, [event.record for event in listed if event.kind == kind])

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[JoinInput]:
        return iter(self.events)


def game_input_events(paths: Sequence[str | Path], settings: Settings) -> list[JoinInput]:
    """Photon-ML GAME input records as the events the live join labels them from.

    Each record is an impression at its event time (``game_input.event_time``) with the
    model's bags and the coordinates' ids, and — unless its response is 0, which the
    join gives an impression nobody answered — an interaction at the same time whose
    type's label in ``joiner.labels`` is the response (the first such type). The join
    needs a ``member_id`` and an ``item_id``: a record whose coordinates key on neither
    gets its impression id in their place (the model reads the coordinates' ids only).
    The live join gives every example weight 1 and no offset, so records' weights and
    offsets are not replayed (a warning says how many had any).
    """
    mapping = GameInputMapping.of(settings)
    label_types: dict[float, str] = {}
    for kind, label in settings.joiner.labels.items():
        label_types.setdefault(label, kind)
    events: list[JoinInput] = []
    weighted = records = 0
    for path in paths:
        rows = read_game_rows([path], mapping, require_response=True, require_time=True)
        weighted += int(np.count_nonzero((rows.weight_array != 1.0) | (rows.offset_array != 0.0)))
        for row, response, event_time in zip(rows.rows, rows.responses, rows.event_times):
            impression_id = f"game-input-{records}"
            records += 1
            member_id, item_id = row["member_id"] or impression_id, row["item_id"] or impression_id
            impression = {
                "impression_id": impression_id,
                "request_id": impression_id,
                "member_id": member_id,
                "item_id": item_id,
                "position": 0,
                "event_time": event_time,
                "random_bucket": False,
                "features": row["features"],
                "context": row["context"],
            }
            events.append(JoinInput(IMPRESSION, impression))
            if response == 0.0:
                continue
            interaction_type = label_types.get(response)
            if interaction_type is None:
                raise EventLogError(
                    f"{path}: a response of {response:g} has no interaction type in joiner.labels giving it "
                    f"(labels: {dict(settings.joiner.labels)}); a replay labels a record through the join"
                )
            events.append(
                JoinInput(
                    INTERACTION,
                    {
                        "interaction_id": f"{impression_id}:response",
                        "impression_id": impression_id,
                        "member_id": member_id,
                        "item_id": item_id,
                        "type": interaction_type,
                        "event_time": event_time,
                    },
                )
            )
    if weighted:
        log.warning("%d GAME input records have a weight or an offset, which a replay through the join drops", weighted)
    return events


def valid_event(kind: str, record: Mapping) -> bool:
    """Whether the live joiner would take ``record`` (an ``impression`` or ``interaction``) rather than dead-letter it."""
    return _PROBLEMS[kind](record) is None


def replay_key(kind: str, event_time: int) -> tuple[int, bool]:
    """Where an event goes in replay order: by event time, impressions first at the same millisecond."""
    return event_time, kind != IMPRESSION


def replay_order(events: Sequence[JoinInput]) -> list[JoinInput]:
    """``events`` by event time; impressions before interactions at the same millisecond; given order otherwise."""
    return sorted(events, key=lambda e: replay_key(e.kind, e.record["event_time"]))


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


def read_events(path: str | Path, schema: str) -> Iterator[dict]:
    """The records of one event file (``Impression`` or ``Interaction``), failing with one line when it cannot be read."""
    _require_file(path, schema)
    try:
        yield from read_container(path, schema)
    except OSError as exc:
        raise EventLogError(f"{path}: cannot read it: {exc.strerror or exc}") from exc


def read_bodies(path: str | Path, schema: str) -> tuple[bytes, int]:
    """Every record body of one event file (``Impression`` or ``Interaction``) back to back, and how many.

    Fails with one line when the file cannot be read.
    """
    _require_file(path, schema)
    try:
        with open(path, "rb") as fh:
            blocks = list(container_bodies(fh, schema, str(path)))
    except OSError as exc:
        raise EventLogError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    return b"".join(body for body, _ in blocks), sum(count for _, count in blocks)


def _require_file(path: str | Path, schema: str) -> None:
    if not Path(path).is_file():
        raise EventLogError(f"{path}: no such file (expected an Avro container file of {schema} records)")
