"""A one-line progress display for long batch jobs (offline scoring, the refit's archive read)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A one-line progress report (records and rate), redrawn at most every ``every_s`` seconds."""

    def __init__(self, label: str, out: TextIO | None = None, every_s: float = 0.5) -> None:
        self._label, self._out, self._every = label, out or sys.stderr, every_s
        self._started = self._last = time.monotonic()
        self.count = 0

    def advance(self, n: int) -> None:
        """Count ``n`` more records; redraw if it is time."""
        self.count += n
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._draw(now, end="")

    def _draw(self, now: float, end: str) -> None:
        rate = self.count / max(now - self._started, 1e-9)
        self._out.write(f"\r{self._label}: {self.count:,} records ({rate:,.0f}/s){end}")
        self._out.flush()

    def finish(self) -> None:
        """Draw the final line."""
        self._draw(time.monotonic(), end="\n")
