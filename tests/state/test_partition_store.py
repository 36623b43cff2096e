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


@pytest.fixture
def full_filesystem(tmp_path):
    """A 4 MB tmpfs (mounting needs root; CI runs as root)."""
    import os

    from tests.faults.harness import SmallFilesystem

    if os.geteuid() != 0:
        pytest.skip("filling a real small filesystem needs a tmpfs mounted, which needs root (CI runs as root)")
    filesystem = SmallFilesystem(tmp_path / "small", 4 << 20)
    yield filesystem
    filesystem.close()


def test_a_full_disk_fails_in_one_line_naming_the_store_and_never_wipes_it(full_filesystem):
    """A store that cannot write or open for want of space is not corrupt: once space is back it opens with its data."""
    from stream.errors import DiskFullError, GlmixError

    path = full_filesystem.path / "p3"
    store = PartitionStore(path)
    store.commit([(b"kept", b"v")], offsets={"input": 7})
    full_filesystem.fill(leave_bytes=0)
    with pytest.raises(DiskFullError, match=rf"^no space left on the filesystem of {path} \(0 bytes free of "
                                            r"4,194,304\) while writing a write batch of 2 changes to the state store: "
                                            r"IO error: No space left on device") as failed:
        store.commit([(b"lost", b"x" * 100_000)], offsets={"input": 8})
    assert "\n" not in str(failed.value)
    with pytest.raises(GlmixError):  # RocksDB keeps the failed write's error: "Writer has previous error"
        store.close()
    with pytest.raises(DiskFullError, match="while writing the log and manifest of the state store"):
        open_or_wipe(path)
    full_filesystem.free()
    reopened, wiped = open_or_wipe(path)
    assert not wiped
    assert reopened.get_many([b"kept", b"lost"]) == [b"v", None] and reopened.processed_offset() == 7
    reopened.close()
