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

A batch's outbox is a few chunks of up to 512 KiB, not one changelog record per outgoing
record, and a value that several records share (an example on each examples topic) is
kept once: the outbox costs about one copy of each example in the changelog.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stream.codec.avro import RecordCodec
from stream.config import Settings
from stream.kafka.clients import producer_wait_seconds
from stream.kafka.topic_reader import TopicReader
from stream.state.partition_store import PartitionStore

log = logging.getLogger(__name__)

_CHUNK_PREFIX = b"\x00outbox/"  # + the chunk's number (>I)
_CHUNK_END = b"\x00outbox0"
_CHUNK_COUNT_KEY = b"\x00outbox-chunks"
_CHUNK_BYTES = 512 * 1024  # a chunk is one changelog record: well under Kafka's 1 MB default message size
_COUNT = struct.Struct("<I")
_CHUNK_HEADER = struct.Struct("<qII")  # written ms, distinct values, records
_VALUE_SIZE = struct.Struct("<I")
_RECORD_HEADER = struct.Struct("<IHII")  # value number, topic, key and example id lengths
# Before chunks, each record was one entry of its own; a changelog written then is still read.
_LEGACY_PREFIX = b"\x00outbox:"
_LEGACY_END = b"\x00outbox;"
_LEGACY_SIZE_KEY = b"\x00outbox-size"
_LEGACY_HEADER = struct.Struct("<qHII")  # written ms, topic, key and value lengths
_SLACK_MS = 5_000  # producer timestamps are taken after the outbox write; a little earlier is safe


@dataclass(frozen=True)
class OutgoingRecord:
    """One record to produce: its topic, key, value and the example id that identifies it downstream."""

    topic: str
    key: bytes
    value: bytes
    example_id: str


def outbox_entries(records: Sequence[OutgoingRecord], written_ms: int) -> list[tuple[bytes, bytes]]:
    """The changelog items that hold ``records`` until they are produced: chunks, in produce order.

    A value that several records share (one example on every examples topic) is kept
    once per chunk, so the outbox adds about one copy of each example to the changelog,
    in a few records per batch instead of one per outgoing record.
    """
    chunks: list[bytes] = []
    values: list[bytes] = []
    numbers: dict[int, int] = {}  # id(value) -> its number in this chunk
    entries: list[bytes] = []
    size = 0
    for r in records:
        number = numbers.get(id(r.value))
        topic, example_id = r.topic.encode(), r.example_id.encode()
        entry_size = _RECORD_HEADER.size + len(topic) + len(r.key) + len(example_id)
        value_size = 0 if number is not None else _VALUE_SIZE.size + len(r.value)
        if entries and size + entry_size + value_size > _CHUNK_BYTES:
            chunks.append(_chunk(written_ms, values, entries))
            values, numbers, entries, size = [], {}, [], 0
            number, value_size = None, _VALUE_SIZE.size + len(r.value)
        if number is None:
            number = numbers[id(r.value)] = len(values)
            values.append(r.value)
        entries.append(
            _RECORD_HEADER.pack(number, len(topic), len(r.key), len(example_id)) + topic + r.key + example_id
        )
        size += entry_size + value_size
    if entries:
        chunks.append(_chunk(written_ms, values, entries))
    return [(_CHUNK_PREFIX + struct.pack(">I", n), chunk) for n, chunk in enumerate(chunks)]


def outbox_size_item(entries: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """The store item that remembers how many outbox entries (chunks) the last logged batch had."""
    return _CHUNK_COUNT_KEY, _COUNT.pack(len(entries))


def _chunk(written_ms: int, values: list[bytes], entries: list[bytes]) -> bytes:
    parts = [_CHUNK_HEADER.pack(written_ms, len(values), len(entries))]
    for value in values:
        parts += (_VALUE_SIZE.pack(len(value)), value)
    return b"".join(parts + entries)


def previous_outbox_keys(store: PartitionStore) -> list[bytes]:
    """The outbox keys the last logged batch wrote (the next batch deletes them)."""
    chunks, legacy = store.get_many([_CHUNK_COUNT_KEY, _LEGACY_SIZE_KEY])
    keys = [_CHUNK_PREFIX + struct.pack(">I", n) for n in range(0 if chunks is None else _COUNT.unpack(chunks)[0])]
    if legacy is not None:
        keys += [_LEGACY_PREFIX + struct.pack(">I", n) for n in range(_COUNT.unpack(legacy)[0])] + [_LEGACY_SIZE_KEY]
    return keys


def pending(store: PartitionStore) -> tuple[list[bytes], list[OutgoingRecord], int]:
    """The outbox keys a crash left in ``store``, their records in produce order, and when they were written (0: none)."""
    keys, records, written = [], [], 0
    for key, raw in store.scan(_LEGACY_PREFIX, _LEGACY_END):
        written_ms, record = _legacy_record(bytes(raw))
        keys.append(bytes(key))
        records.append(record)
        written = max(written, written_ms)
    for key, raw in store.scan(_CHUNK_PREFIX, _CHUNK_END):
        written_ms, chunk_records = _chunk_records(bytes(raw))
        keys.append(bytes(key))
        records += chunk_records
        written = max(written, written_ms)
    return keys, records, written


def _chunk_records(raw: bytes) -> tuple[int, list[OutgoingRecord]]:
    written_ms, value_count, record_count = _CHUNK_HEADER.unpack_from(raw)
    pos = _CHUNK_HEADER.size
    values = []
    for _ in range(value_count):
        (size,) = _VALUE_SIZE.unpack_from(raw, pos)
        pos += _VALUE_SIZE.size
        values.append(raw[pos : pos + size])
        pos += size
    records = []
    for _ in range(record_count):
        number, topic_size, key_size, id_size = _RECORD_HEADER.unpack_from(raw, pos)
        pos += _RECORD_HEADER.size
        topic = raw[pos : pos + topic_size].decode()
        pos += topic_size
        key = raw[pos : pos + key_size]
        pos += key_size
        example_id = raw[pos : pos + id_size].decode()
        pos += id_size
        records.append(OutgoingRecord(topic, key, values[number], example_id))
    return written_ms, records


def _legacy_record(raw: bytes) -> tuple[int, OutgoingRecord]:
    written_ms, topic_size, key_size, value_size = _LEGACY_HEADER.unpack_from(raw)
    pos = _LEGACY_HEADER.size
    topic = raw[pos : pos + topic_size].decode()
    pos += topic_size
    key = raw[pos : pos + key_size]
    pos += key_size
    value = raw[pos : pos + value_size]
    return written_ms, OutgoingRecord(topic, key, value, raw[pos + value_size :].decode())


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
            for batch in reader.read_to_end(stall_timeout_s=producer_wait_seconds(settings.kafka)):
                found.update((topic, r["example_id"]) for r in batch.records if r["example_id"] in ids)
        finally:
            reader.close()
    return found


def wall_ms() -> int:
    """Now, in epoch milliseconds (an outbox's write time, compared with producer timestamps)."""
    return int(time.time() * 1000)
