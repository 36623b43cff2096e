"""The outbox's chunks, read back from a real RocksDB store as a restore leaves them."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.consumers import outbox
from stream.consumers.outbox import OutgoingRecord, outbox_entries, outbox_size_item, pending, previous_outbox_keys
from stream.state.partition_store import PartitionStore

TOPICS = ("glmix.examples.by-member", "glmix.examples.by-job")


def _records(values: list[bytes]) -> list[OutgoingRecord]:
    """One example per value, produced to both examples topics with the same value object, as the joiner does."""
    return [
        OutgoingRecord(topic, f"entity-{n}".encode(), value, f"example-{n}")
        for topic in TOPICS
        for n, value in enumerate(values)
    ]


def _restored(tmp_path, items: list[tuple[bytes, bytes]]) -> PartitionStore:
    store = PartitionStore(tmp_path / "p0")
    store.commit(items)
    return store


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), max_size=40), written_ms=st.integers(0, 2**62))
def test_a_batch_comes_back_whole_and_in_produce_order(tmp_path_factory, sizes, written_ms):
    records = _records([bytes([n % 251]) * size for n, size in enumerate(sizes)])
    entries = outbox_entries(records, written_ms)
    store = _restored(tmp_path_factory.mktemp("outbox"), [*entries, outbox_size_item(entries)])
    try:
        keys, got, written = pending(store)
        assert got == records
        assert sorted(keys) == sorted(k for k, _ in entries) == sorted(previous_outbox_keys(store))
        assert written == (written_ms if records else 0)
    finally:
        store.close()


def test_a_value_both_topics_carry_is_kept_once(tmp_path):
    values = [bytes([n]) * 600 for n in range(100)]
    entries = outbox_entries(_records(values), 1)
    logged = sum(len(v) for _, v in entries)
    assert len(entries) == 1 and sum(map(len, values)) < logged < 1.3 * sum(map(len, values))


def test_a_large_batch_is_split_into_chunks_kafka_accepts(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox, "_CHUNK_BYTES", 10_000)
    records = _records([bytes([n]) * 900 for n in range(60)] + [b"x" * 25_000])  # and one record above the bound
    entries = outbox_entries(records, 7)
    assert len(entries) > 10
    assert all(len(value) <= 10_000 for _, value in entries if b"x" * 25_000 not in value)
    store = _restored(tmp_path, [*entries, outbox_size_item(entries)])
    try:
        assert pending(store)[1] == records
    finally:
        store.close()


def test_an_outbox_a_previous_version_logged_is_still_read_and_cleared(tmp_path):
    """Before chunks every record was an entry of its own; a changelog logged then can still be restored."""
    record = OutgoingRecord(TOPICS[0], b"m1", b"an example", "example-1")
    topic = record.topic.encode()
    legacy_value = struct.pack("<qHII", 123, len(topic), 2, len(record.value)) + topic + b"m1" + record.value
    legacy = [(b"\x00outbox:" + struct.pack(">I", 0), legacy_value + b"example-1"), (b"\x00outbox-size", b"\x01\0\0\0")]
    store = _restored(tmp_path, legacy)
    try:
        keys, records, written = pending(store)
        assert records == [record] and written == 123 and keys == [legacy[0][0]]
        assert previous_outbox_keys(store) == [legacy[0][0], b"\x00outbox-size"]
    finally:
        store.close()


@pytest.mark.parametrize("count", [0, 1, 3])
def test_the_size_item_counts_the_chunks(tmp_path, count, monkeypatch):
    monkeypatch.setattr(outbox, "_CHUNK_BYTES", 1_000)
    records = _records([bytes([n]) * 700 for n in range(count)])[:count]
    entries = outbox_entries(records, 1)
    store = _restored(tmp_path, [outbox_size_item(entries)])
    try:
        assert len(entries) == count and len(previous_outbox_keys(store)) == count
    finally:
        store.close()
