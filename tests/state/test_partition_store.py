"""Partition stores on disk: atomic commits with offsets, one owner at a time, corrupt stores replaced."""

from __future__ import annotations

import pytest

from stream.state.exceptions import StoreOwnedError
from stream.state.partition_store import NO_OFFSET, PartitionStore, open_or_wipe


def test_values_and_offsets_commit_together_and_survive_reopening(tmp_path):
    store = PartitionStore(tmp_path / "p0")
    assert store.processed_offset() == NO_OFFSET
    store.commit([(b"ea", b"1"), (b"eb", b"2")], offsets={"input": 41})
    store.commit([(b"ec", b"3")], deletes=[b"ea"], offsets={"input": 42, "other": 7})
    store.close()
    reopened = PartitionStore(tmp_path / "p0")
    assert reopened.get_many([b"ea", b"eb", b"ec"]) == [None, b"2", b"3"]
    assert reopened.processed_offset() == 42 and reopened.processed_offset("other") == 7
    assert [k for k, _ in reopened.scan(b"e", b"f")] == [b"eb", b"ec"]
    reopened.close()


def test_a_store_has_one_owner_at_a_time(tmp_path):
    first = PartitionStore(tmp_path / "p1")
    with pytest.raises(StoreOwnedError):
        PartitionStore(tmp_path / "p1")
    with pytest.raises(StoreOwnedError):  # and it is never wiped from under its owner
        open_or_wipe(tmp_path / "p1")
    first.close()
    PartitionStore(tmp_path / "p1").close()


def test_an_unreadable_store_is_replaced_by_an_empty_one(tmp_path):
    store = PartitionStore(tmp_path / "p2")
    store.commit([(b"ea", b"1")], offsets={"input": 5})
    store.close()
    for f in (tmp_path / "p2").iterdir():
        if f.name.startswith(("CURRENT", "MANIFEST")):
            f.write_bytes(b"garbage")
    reopened, wiped = open_or_wipe(tmp_path / "p2")
    assert wiped and reopened.processed_offset() == NO_OFFSET and reopened.get_many([b"ea"]) == [None]
    reopened.close()
