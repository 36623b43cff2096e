"""The root of every error glmix-stream raises on purpose.

Each stage keeps its own ``exceptions.py`` with subclasses of :class:`GlmixError`, so a
caller can catch everything from this package with one ``except`` while the type still
says what went wrong.
"""

from __future__ import annotations

import errno
import os


class GlmixError(Exception):
    """Base class of all errors raised by glmix-stream."""


class InvalidValueError(GlmixError, ValueError):
    """An argument or record outside what a function accepts; the message names it and why."""


class WaitTimeoutError(GlmixError, TimeoutError):
    """Something awaited (a topic's end, a model) did not happen within the time allowed."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says its filesystem is full: an ``OSError`` with ``ENOSPC``, or RocksDB's IO error text.

    rocksdict raises a plain ``Exception`` for every RocksDB status; a full disk reads
    ``IO error: No space left on device: While appending to file: <path>``.
    """
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "no space left on device" in str(exc).lower()


class DiskFullError(GlmixError):
    """A write failed because its filesystem is full; says which path, what was being written and what is free.

    Nothing is half-applied: the batch being written was not committed, so once space is
    freed a restart replays it from the last commit (the state stores' write batches are
    atomic, archive files appear whole or not at all).
    """

    def __init__(self, path: str | os.PathLike[str], writing: str, cause: BaseException) -> None:
        self.path = str(path)
        self.writing = writing
        super().__init__(
            f"no space left on the filesystem of {self.path} ({_free_space(self.path)}) while writing {writing}: "
            f"{' '.join(str(cause).split())}; free space there and restart (the uncommitted batch is replayed)",
        )


def _free_space(path: str) -> str:
    """``N bytes free of M`` on the filesystem holding ``path`` (its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        stat = os.statvfs(probe)
    except OSError:
        return "free space unknown"
    return f"{stat.f_bavail * stat.f_frsize:,} bytes free of {stat.f_blocks * stat.f_frsize:,}"
