"""One progress line for the long commands: backtest, tune, bootstrap, refit and offline scoring.

On a terminal the line is redrawn in place: how much is done, the rate and, where the
total is known, the share done and the time left. Anywhere else (a pipe, a file, a log
collector) it stays silent, so what a command writes does not depend on how long it ran.
That decision is made here, once, from the stream the line would go to.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_CLEAR_TO_END = "\x1b[K"  # a shorter redraw must not leave the end of a longer one on the line


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except ValueError:  # a closed stream is no terminal
        return False


def duration_text(seconds: float) -> str:
    """``8 s``, ``2 min 05 s``, ``1 h 02 min``: a time left, as a person reads it.

    >>> duration_text(8.4), duration_text(125), duration_text(3725)
    ('8 s', '2 min 05 s', '1 h 02 min')
    """
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """A one-line progress report on a terminal, redrawn at most every ``every_s`` seconds; silent elsewhere.

    ``total`` (when known) adds the share done and the time left. ``terminal`` overrides the
    decision taken from ``out`` (standard error by default), for tests of the line itself.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "records",
        out: TextIO | None = None,
        every_s: float = 0.5,
        terminal: bool | None = None,
    ) -> None:
        self._out = out if out is not None else sys.stderr
        self.shown = _is_terminal(self._out) if terminal is None else terminal
        self.label, self.total, self.unit, self._every = label, total, unit, every_s
        self._started = self._last = time.monotonic()
        self.count = 0

    def relabel(self, label: str) -> None:
        """Say what is being done now (``tune: trial 3 of 21``); the count and the clock go on."""
        self.label = label

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more; redraw if it is time."""
        self.count += n
        if not self.shown:
            return
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._out.write(f"\r{self.line(now - self._started)}{_CLEAR_TO_END}")
            self._out.flush()

    def line(self, elapsed_s: float) -> str:
        """The line as drawn ``elapsed_s`` after the start: done (of the total, share), rate, time left."""
        rate = self.count / max(elapsed_s, 1e-9)
        if self.total is None:
            return f"{self.label}: {self.count:,} {self.unit}, {rate:,.0f}/s"
        share = self.count / self.total if self.total else 1.0
        left = (self.total - self.count) / rate if rate > 0 else None
        eta = f", {duration_text(left)} left" if left is not None else ""
        return f"{self.label}: {self.count:,} of {self.total:,} {self.unit} ({share:.0%}), {rate:,.0f}/s{eta}"

    def finish(self) -> None:
        """Draw the final line (what was done, in how long) and end it."""
        if not self.shown:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self._out.write(
            f"\r{self.label}: {self.count:,} {self.unit} in {elapsed:.1f} s, "
            f"{self.count / elapsed:,.0f}/s{_CLEAR_TO_END}\n"
        )
        self._out.flush()
