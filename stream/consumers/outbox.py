"""The joiner's outbox: a batch's outgoing examples, logged with its join state before they are produced.

Without Kafka transactions, a joiner that crashed after producing a batch's examples
but before its state was safe would join that input again and emit the examples twice,
with new offsets that no downstream offset stamp recognizes. So each batch's outgoing
records go into its changelog batch (:mod:`stream.state.store_changelog`), with the join
state and the processed input offsets, *before* they are produced. A restore that
applies logged batches (the local store was behind, or absent: another machine) may have
applied a batch whose records were not all delivered; it reads what the output topics
received since the outbox was written and produces only the records that are missing.
Input is never joined twice (its processed offsets are in the same logged batch) and no
record is produced twice, so every example reaches each examples topic exactly once —
on any broker, the mock cluster included. The local store does not keep the outbox:
it is written after the records were delivered.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stream.codec.avro import RecordCodec
from stream.config import Settings
from stream.kafka.topic_reader import TopicReader
from stream.state.partition_store import PartitionStore

log = logging.getLogger(__name__)

_PREFIX = b"\x00outbox:"
_END = b"\x00outbox;"
_SIZE_KEY = b"\x00outbox-size"
_SIZE = struct.Struct("<I")
_HEADER = struct.Struct("<qHII")  # written ms, topic, key and value lengths
_SLACK_MS = 5_000  # producer timestamps are taken after the outbox write; a little earlier is safe


@dataclass(frozen=True)
class OutgoingRecord:
    """One record to produce: its topic, key, value and the example id that identifies it downstream."""

    topic: str
    key: bytes
    value: bytes
    example_id: str


def outbox_entries(records: Sequence[OutgoingRecord], written_ms: int) -> list[tuple[bytes, bytes]]:
    """The store items that hold ``records`` until they are produced (keys in produce order)."""
    entries = []
    for n, r in enumerate(records):
        topic, example_id = r.topic.encode(), r.example_id.encode()
        value = _HEADER.pack(written_ms, len(topic), len(r.key), len(r.value)) + topic + r.key + r.value + example_id
        entries.append((_PREFIX + struct.pack(">I", n), value))
    return entries


def outbox_size_item(size: int) -> tuple[bytes, bytes]:
    """The store item that remembers how many outbox entries the last logged batch had."""
    return _SIZE_KEY, _SIZE.pack(size)


def previous_outbox_keys(store: PartitionStore) -> list[bytes]:
    """The outbox keys the last logged batch wrote (the next batch deletes them)."""
    raw = store.get_many([_SIZE_KEY])[0]
    size = 0 if raw is None else _SIZE.unpack(raw)[0]
    return [_PREFIX + struct.pack(">I", n) for n in range(size)]


def pending(store: PartitionStore) -> tuple[list[bytes], list[OutgoingRecord], int]:
    """The outbox keys a crash left in ``store``, their records, and when they were written (0: none)."""
    keys, records, written = [], [], 0
    for key, raw in store.scan(_PREFIX, _END):
        written_ms, topic_size, key_size, value_size = _HEADER.unpack_from(raw)
        pos = _HEADER.size
        topic = bytes(raw[pos : pos + topic_size]).decode()
        pos += topic_size
        record_key = bytes(raw[pos : pos + key_size])
        pos += key_size
        value = bytes(raw[pos : pos + value_size])
        example_id = bytes(raw[pos + value_size :]).decode()
        keys.append(bytes(key))
        records.append(OutgoingRecord(topic, record_key, value, example_id))
        written = max(written, written_ms)
    return keys, records, written


def already_produced(
    settings: Settings,
    bootstrap_servers: str,
    codecs: dict[str, RecordCodec],
    records: Iterable[OutgoingRecord],
    since_ms: int,
    client_id: str,
) -> set[tuple[str, str]]:
    """(topic, example id) of the ``records`` their topics received since ``since_ms``."""
    wanted: dict[str, set[str]] = {}
    for r in records:
        wanted.setdefault(r.topic, set()).add(r.example_id)
    found: set[tuple[str, str]] = set()
    for topic, ids in wanted.items():
        reader = TopicReader(
            settings.kafka,
            topic,
            codecs[topic],
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            since_ms=since_ms - _SLACK_MS,
        )
        try:
            for batch in reader.read_to_end(timeout_s=120):
                found.update((topic, r["example_id"]) for r in batch.records if r["example_id"] in ids)
        finally:
            reader.close()
    return found


def wall_ms() -> int:
    """Now, in epoch milliseconds (an outbox's write time, compared with producer timestamps)."""
    return int(time.time() * 1000)
