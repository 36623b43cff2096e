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


_WRITE_THEN_DIE = """
import os, signal, sys
from stream.state.partition_store import PartitionStore
store = PartitionStore(sys.argv[1], write_ahead_log=sys.argv[2] == "on")
store.commit([(b"k", b"v")], offsets={"input": 41})
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize(("write_ahead_log", "survives"), [("on", True), ("off", False)])
def test_what_a_killed_process_keeps_with_and_without_the_write_ahead_log(tmp_path, write_ahead_log, survives):
    """Without the log, the latest writes of a killed process are gone with its memory: the store is behind."""
    import signal
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _WRITE_THEN_DIE, str(tmp_path / "s"), write_ahead_log], check=False)
    assert done.returncode == -signal.SIGKILL
    store = PartitionStore(tmp_path / "s")
    assert (store.get_many([b"k"]) == [b"v"]) is survives
    assert store.processed_offset() == (41 if survives else NO_OFFSET)
    store.close()


def test_without_the_write_ahead_log_a_closed_store_keeps_everything(tmp_path):
    store = PartitionStore(tmp_path / "s", write_ahead_log=False)
    store.commit([(b"k", b"v")], offsets={"input": 7})
    store.close()
    assert not any(p.stat().st_size for p in (tmp_path / "s").glob("*.log"))  # nothing went through the log
    reopened = PartitionStore(tmp_path / "s")
    assert reopened.get_many([b"k"]) == [b"v"] and reopened.processed_offset() == 7
    reopened.close()
