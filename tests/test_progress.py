"""The progress line of the long commands: what it says, and that only a terminal gets it."""

from __future__ import annotations

import io
import os

from stream.progress import Progress


def test_a_terminal_gets_the_line_and_a_pipe_or_a_file_gets_nothing(tmp_path):
    main, replica = os.openpty()
    read_end, write_end = os.pipe()
    try:
        with open(replica, "w", closefd=False) as terminal, open(write_end, "w", closefd=False) as pipe, \
                open(tmp_path / "log", "w") as file:
            assert Progress("x", out=terminal).shown
            for out in (pipe, file, io.StringIO()):
                progress = Progress("x", out=out, every_s=0.0)
                progress.advance(5)
                progress.finish()
                assert not progress.shown and progress.count == 5
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 100) == b"" and (tmp_path / "log").read_text() == ""
    finally:
        for fd in (main, replica, read_end, write_end):
            if fd >= 0:
                os.close(fd)


def test_with_a_total_the_line_gives_the_share_and_the_time_left():
    progress = Progress("backtest", total=1000, unit="events", terminal=True)
    progress.count = 250
    assert progress.line(10.0) == "backtest: 250 of 1,000 events (25%), 25/s, 30 s left"
    progress.count = 100
    assert progress.line(100.0).endswith("(10%), 1/s, 15 min 00 s left")
    assert Progress("refit: reading the archive", unit="examples", terminal=True).line(1.0) == (
        "refit: reading the archive: 0 examples, 0/s")  # no total: no share, no time left


def test_it_redraws_in_place_and_ends_with_what_was_done():
    out = io.StringIO()
    progress = Progress("tune", total=40, unit="events", out=out, every_s=0.0, terminal=True)
    progress.relabel("tune: trial 1 of 2")
    progress.advance(20)
    progress.relabel("tune")
    progress.advance(20)
    progress.finish()
    drawn = out.getvalue()
    assert drawn.startswith("\rtune: trial 1 of 2: 20 of 40 events (50%), ") and drawn.count("\r") == 3
    final = drawn.rsplit("\r", 1)[1]
    assert final.startswith("tune: 40 events in ") and final.endswith("/s\x1b[K\n") and drawn.count("\n") == 1
