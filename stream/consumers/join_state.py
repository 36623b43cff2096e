"""The attribution-window join of one partition, kept in its RocksDB store (DESIGN §2).

Keys of the partition store (all bytes; ``id`` is the impression id):

- ``p<id>``: a pending impression: its event time, deadline, label so far, interaction
  types seen, and its labeled example already indexed (features decoded once, here);
- ``x<id>``: an impression already emitted, kept for the retention after its event time,
  so duplicates and late interactions are recognized;
- ``o<id>``: interactions that arrived before their impression (out of order), with their
  original bytes, until the watermark passes their event time — then they are orphans;
- ``d<deadline><kind><id>``: the deadline index, scanned in time order to close windows.

One :class:`JoinBatch` reads everything it needs with one multi-get, works on an
in-memory overlay, and ends as one WriteBatch together with the processed offsets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from stream.state.partition_store import PartitionStore

PENDING, EMITTED, HELD = b"p", b"x", b"o"
_DEADLINE = b"d"
_MAX_EVENT_TIME = b"\x00meta:max-event-time:"
_SCAN_FROM = b"\x00meta:deadline-scan-from"
IMPRESSIONS, INTERACTIONS = "impressions", "interactions"
_NEVER = -(1 << 62)
_PENDING_HEADER = struct.Struct("<qqdI")
_EMITTED = struct.Struct("<qB")
_HELD_ITEM = struct.Struct("<qqHI")
_TIME = struct.Struct("<q")
_DEADLINE_TIME = struct.Struct(">Q")
_TIME_BIAS = 1 << 63  # deadlines are stored as biased unsigned big-endian so byte order is time order
_DELETED = None


def _deadline_key(deadline: int, kind: bytes, impression_id: bytes) -> bytes:
    return _DEADLINE + _DEADLINE_TIME.pack(deadline + _TIME_BIAS) + kind + impression_id


@dataclass
class Pending:
    """A pending impression: when it happened, when its window closes, and its label so far."""

    event_time: int
    deadline: int
    label: float
    types: int
    example: bytes

    def encode(self) -> bytes:
        return _PENDING_HEADER.pack(self.event_time, self.deadline, self.label, self.types) + self.example

    @classmethod
    def decode(cls, raw: bytes) -> Pending:
        event_time, deadline, label, types = _PENDING_HEADER.unpack_from(raw)
        return cls(event_time, deadline, label, types, bytes(raw[_PENDING_HEADER.size :]))


@dataclass(frozen=True)
class HeldInteraction:
    """An interaction waiting for its impression, with its original bytes and offset for the dead-letter topic."""

    event_time: int
    type_code: int
    raw: bytes
    key: bytes
    offset: int = -1


@dataclass(frozen=True)
class Emission:
    """An impression whose label is final: the stored example, its label, types and label time."""

    example: bytes
    label: float
    types: int
    label_time: int
    eager: bool


@dataclass
class JoinCounts:
    """What happened to the events of a batch."""

    impressions: int = 0
    interactions: int = 0
    duplicate_impressions: int = 0
    late_impressions: int = 0
    held_interactions: int = 0
    late_interactions: int = 0
    after_emission_interactions: int = 0
    ignored_interactions: int = 0

    def add(self, other: JoinCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class JoinResult:
    """Output of one batch: examples to emit and orphan interactions to dead-letter."""

    emissions: list[Emission] = field(default_factory=list)
    orphans: list[HeldInteraction] = field(default_factory=list)
    counts: JoinCounts = field(default_factory=JoinCounts)


@dataclass(frozen=True)
class ImpressionEvent:
    """An impression to join: id, event time, and its labeled example (label still 0) encoded."""

    impression_id: str
    event_time: int
    example: bytes


@dataclass(frozen=True)
class InteractionEvent:
    """An interaction to join, with its original key and bytes (kept if it must wait)."""

    impression_id: str
    event_time: int
    type_code: int
    raw: bytes
    key: bytes
    offset: int = -1


class JoinRules:
    """The window, lateness and labels of the join (from :class:`~stream.config.JoinerSettings`)."""

    def __init__(
        self,
        window_ms: int,
        lateness_ms: int,
        labels_by_code: Mapping[int, float],
        retention_ms: int | None = None,
        early_positives: bool = False,
    ) -> None:
        self.early_positives = early_positives
        self.window_ms = window_ms
        self.lateness_ms = lateness_ms
        self.retention_ms = 2 * window_ms if retention_ms is None else retention_ms
        self.labels_by_code = dict(labels_by_code)
        self.max_label = max(self.labels_by_code.values())


class JoinBatch:
    """The join state of one partition during one batch: an overlay over the store, flushed as one WriteBatch."""

    def __init__(self, store: PartitionStore, rules: JoinRules, impression_ids: Iterable[str]) -> None:
        self._store = store
        self._rules = rules
        ids = sorted({i.encode() for i in impression_ids})
        keys = [kind + i for i in ids for kind in (PENDING, EMITTED, HELD)]
        self._overlay: dict[bytes, bytes | None] = dict(zip(keys, store.get_many(keys)))
        self._dirty: set[bytes] = set()  # keys of the overlay this batch changed (the rest are cached reads)
        inputs = (IMPRESSIONS, INTERACTIONS)
        *stored, scan_from = store.get_many([_MAX_EVENT_TIME + i.encode() for i in inputs] + [_SCAN_FROM])
        self.max_event_time = {i: _TIME.unpack(raw)[0] if raw is not None else _NEVER for i, raw in zip(inputs, stored)}
        # Every stored deadline is at or after the last close's limit (all below it were closed), so the scan
        # starts there instead of wading through the tombstones of every deadline ever closed.
        self._scan_from = scan_from if scan_from is not None else _DEADLINE
        self._new_deadlines: set[bytes] = set()
        self._deleted_deadlines: set[bytes] = set()
        self.result = JoinResult()

    def watermark(self, idle: frozenset[str] = frozenset()) -> int:
        """The smallest of the inputs' largest event times, minus the allowed lateness.

        Taking the smallest keeps one input that is read ahead of the other (Kafka fetches
        partitions independently) from closing windows whose interactions are still
        unread. An ``idle`` input (quiet, nothing left to read) cannot hold the watermark
        back: it counts only if it is the one with the newest events.
        """
        times = self.max_event_time
        lagging = [t for name, t in times.items() if name not in idle]
        newest = min(lagging) if lagging else max(times.values())
        return max(newest - self._rules.lateness_ms, self._closed_through())

    def _closed_through(self) -> int:
        """The limit of the last window close: every deadline below it was closed.

        The watermark never goes below it. Without this, an input that was idle at the
        last close and delivers again would pull the watermark back, and an impression
        whose deadline fell between the two would wait below the scan position forever.
        """
        if len(self._scan_from) <= len(_DEADLINE):
            return _NEVER
        return _DEADLINE_TIME.unpack(self._scan_from[len(_DEADLINE) :])[0] - _TIME_BIAS

    def _get(self, key: bytes) -> bytes | None:
        if key not in self._overlay:
            self._overlay[key] = self._store.get_many([key])[0]
        return self._overlay[key]

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._overlay[key] = value
        self._dirty.add(key)

    def _put_deadline(self, deadline: int, kind: bytes, iid: bytes) -> None:
        key = _deadline_key(deadline, kind, iid)
        self._new_deadlines.add(key)
        self._deleted_deadlines.discard(key)

    def _drop_deadline(self, deadline: int, kind: bytes, iid: bytes) -> None:
        key = _deadline_key(deadline, kind, iid)
        self._new_deadlines.discard(key)
        self._deleted_deadlines.add(key)

    # ------------------------------------------------------------------ events

    def add_impression(self, event: ImpressionEvent) -> None:
        """A new impression waits for its window; a duplicate is ignored; one already past the watermark closes at once."""
        counts = self.result.counts
        counts.impressions += 1
        iid = event.impression_id.encode()
        if self._get(PENDING + iid) is not None or self._get(EMITTED + iid) is not None:
            counts.duplicate_impressions += 1
            return
        self.max_event_time[IMPRESSIONS] = max(self.max_event_time[IMPRESSIONS], event.event_time)
        pending = Pending(event.event_time, event.event_time + self._rules.window_ms, 0.0, 0, event.example)
        held = self._get(HELD + iid)
        label_time = event.event_time
        if held is not None:
            items = _decode_held(held)
            self._set(HELD + iid, _DELETED)
            self._drop_deadline(min(i.event_time for i in items), HELD, iid)
            for item in sorted(items, key=lambda i: i.event_time):
                self._apply(pending, item.type_code, item.event_time)
            label_time = max(i.event_time for i in items)
        if pending.deadline < self.watermark():
            counts.late_impressions += 1
            self._emit(iid, pending, label_time=pending.deadline, eager=False)
        elif not self._emit_if_final(iid, pending, label_time=label_time):
            self._set(PENDING + iid, pending.encode())
            self._put_deadline(pending.deadline, PENDING, iid)

    def add_interaction(self, event: InteractionEvent) -> None:
        """Label a pending impression, or count the interaction late, or hold it for its impression."""
        counts = self.result.counts
        counts.interactions += 1
        self.max_event_time[INTERACTIONS] = max(self.max_event_time[INTERACTIONS], event.event_time)
        iid = event.impression_id.encode()
        raw = self._get(PENDING + iid)
        if raw is not None:
            pending = Pending.decode(raw)
            if event.event_time - pending.event_time > self._rules.window_ms:
                counts.late_interactions += 1
                return
            if event.type_code not in self._rules.labels_by_code:
                counts.ignored_interactions += 1
            self._apply(pending, event.type_code, event.event_time)
            if not self._emit_if_final(iid, pending, label_time=event.event_time):
                self._set(PENDING + iid, pending.encode())
            return
        emitted = self._get(EMITTED + iid)
        if emitted is not None:
            impression_time, _ = _EMITTED.unpack(emitted)
            if event.event_time - impression_time > self._rules.window_ms:
                counts.late_interactions += 1
            else:
                counts.after_emission_interactions += 1
            return
        counts.held_interactions += 1
        held = self._get(HELD + iid)
        items = _decode_held(held) if held is not None else []
        if items:
            self._drop_deadline(min(i.event_time for i in items), HELD, iid)
        items.append(HeldInteraction(event.event_time, event.type_code, event.raw, event.key, event.offset))
        self._set(HELD + iid, _encode_held(items))
        self._put_deadline(min(i.event_time for i in items), HELD, iid)

    def _apply(self, pending: Pending, type_code: int, event_time: int) -> None:
        if event_time - pending.event_time > self._rules.window_ms:
            self.result.counts.late_interactions += 1
            return
        pending.types |= 1 << type_code
        label = self._rules.labels_by_code.get(type_code)
        if label is not None and label > pending.label:
            pending.label = label

    def _emit_if_final(self, iid: bytes, pending: Pending, label_time: int) -> bool:
        """Emit now when no later interaction can raise the label (it already has the highest one)."""
        if not self._rules.early_positives or pending.label < self._rules.max_label:
            return False
        self._emit(iid, pending, label_time=label_time, eager=True)
        return True

    def _emit(self, iid: bytes, pending: Pending, label_time: int, eager: bool) -> None:
        self.result.emissions.append(Emission(pending.example, pending.label, pending.types, label_time, eager))
        if self._get(PENDING + iid) is not None:
            self._set(PENDING + iid, _DELETED)
            self._drop_deadline(pending.deadline, PENDING, iid)
        self._set(EMITTED + iid, _EMITTED.pack(pending.event_time, int(eager)))
        self._put_deadline(pending.event_time + self._rules.retention_ms, EMITTED, iid)

    # ------------------------------------------------------------------ closing windows

    def close_windows(self, idle: frozenset[str] = frozenset(), through: int | None = None) -> None:
        """Emit every pending impression whose window closed, forget old markers, give up on held orphans.

        ``idle`` names the inputs (``impressions``, ``interactions``) that are idle (see :meth:`watermark`).
        ``through`` is a watermark known to have been reached by events this state never saw: a
        part of a history labeled apart from the rest closes its windows as the whole history does.
        """
        watermark = self.watermark(idle) if through is None else max(self.watermark(idle), through)
        limit = _DEADLINE + _DEADLINE_TIME.pack(max(watermark, -_TIME_BIAS) + _TIME_BIAS)
        stored = [k for k, _ in self._store.scan(self._scan_from, limit) if k not in self._deleted_deadlines]
        self._scan_from = limit
        due = sorted(set(stored) | {k for k in self._new_deadlines if k < limit})
        for key in due:
            kind, iid = key[9:10], key[10:]
            self._deleted_deadlines.add(key)
            self._new_deadlines.discard(key)
            value = self._get(kind + iid)
            if value is None:
                continue
            self._set(kind + iid, _DELETED)
            if kind == PENDING:
                pending = Pending.decode(value)
                self._emit(iid, pending, label_time=pending.deadline, eager=False)
            elif kind == HELD:
                self.result.orphans.extend(_decode_held(value))

    def changes(self) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        """Everything this batch changed in the store: (puts, deletes)."""
        changed = [(k, self._overlay[k]) for k in self._dirty]
        puts = [(k, v) for k, v in changed if v is not None]
        deletes = [k for k, v in changed if v is None]
        puts += [(k, b"") for k in self._new_deadlines]
        deletes += list(self._deleted_deadlines)
        puts += [(_MAX_EVENT_TIME + name.encode(), _TIME.pack(t)) for name, t in self.max_event_time.items()]
        puts.append((_SCAN_FROM, self._scan_from))
        return puts, deletes

    def write(self, offsets: Mapping[str, int]) -> None:
        """Everything this batch changed, plus the processed ``offsets``, in one WriteBatch."""
        puts, deletes = self.changes()
        self._store.commit(puts, deletes, offsets)


def _encode_held(items: list[HeldInteraction]) -> bytes:
    parts = []
    for item in items:
        parts.append(_HELD_ITEM.pack(item.event_time, item.offset, item.type_code, len(item.raw)) + item.raw)
        parts.append(struct.pack("<I", len(item.key)) + item.key)
    return b"".join(parts)


def _decode_held(raw: bytes) -> list[HeldInteraction]:
    items, pos = [], 0
    while pos < len(raw):
        event_time, offset, type_code, size = _HELD_ITEM.unpack_from(raw, pos)
        pos += _HELD_ITEM.size
        body = bytes(raw[pos : pos + size])
        pos += size
        (key_size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        key = bytes(raw[pos : pos + key_size])
        pos += key_size
        items.append(HeldInteraction(event_time, type_code, body, key, offset))
    return items


def label_types(types: int, symbols: list[str]) -> list[str]:
    """The interaction type names in a bit set of type codes."""
    return [s for code, s in enumerate(symbols) if types >> code & 1]
