"""Keeping Python's cyclic garbage collector off the hot path: pause it around cycle-free work, freeze what lives long."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many acyclic objects are built.

    Decoded records and indexed feature lists are acyclic dicts, lists and strings, so
    reference counting frees them and nothing is lost; but creating thousands of them
    triggers collections that rescan them again and again: ~40% of batch decode time
    (bench/decode.py), and the 1000-candidate scoring p99 went from 15.5 ms to 6.0 ms
    without them (bench/scoring.py).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def freeze_long_lived() -> None:
    """Move every object alive now out of the cyclic collector's reach (``gc.freeze``).

    A long-running service holds many long-lived container objects (models, indexes,
    caches); every full collection rescans them. Freezing them once they are loaded took
    the 1000-candidate scoring p99 from 29.7 ms to 4.8 ms (bench/scoring.py): the tail was
    full collections, not scoring.
    """
    gc.collect()
    gc.freeze()
