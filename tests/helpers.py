"""Small test helpers: bounded waiting instead of bare sleeps, reading a topic, glmix on a terminal and piped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from stream.codec.container import encoded_bodies
from stream.codec.labeled_example import LabeledColumns, scan_bodies
from stream.model.game import GLOBAL

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float = 30.0, interval_s: float = 0.1, what: str = "condition") -> T:
    """Call ``check`` until it returns something truthy or ``timeout_s`` passes (then fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def read_topic(bootstrap_servers: str, topic: str, timeout_s: float = 30.0) -> list:
    """Every message of ``topic`` now (all partitions, from the beginning), raw.

    A partition's end comes from fetch responses as well as ListOffsets: Tansu answers the
    latter with the base offset of the last batch (see stream.kafka.messages.fetched_end).
    """
    from confluent_kafka import Consumer, TopicPartition

    from stream.kafka.messages import fetched_end

    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"read-{topic}", "enable.auto.commit": False,
                         "enable.partition.eof": False})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = sorted(metadata.partitions)
        listed = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        positions = dict.fromkeys(partitions, 0)
        ends: dict[int, int | None] = dict.fromkeys(partitions)
        messages: list = []
        deadline = time.monotonic() + timeout_s
        while any(end is None or positions[p] < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout_s}s (at {positions} of {ends})")
            for m in consumer.consume(10_000, timeout=0.2):
                if m.error() is None:
                    messages.append(m)
                    positions[m.partition()] = m.offset() + 1
            for p in partitions:
                if ends[p] is None:
                    ends[p] = fetched_end(consumer, TopicPartition(topic, p), listed[p])
        return messages
    finally:
        consumer.close()


def _glmix(args: list[str], stderr: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=stderr)


def _read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: every writer of the terminal has closed it
            return
        if not data:
            return
        into.append(data)


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: each line as its last redraw (after its last ``\\r``) left it."""
    text = raw.replace("\r\n", "\n").replace("\x1b[K", "")
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.rsplit("\r", 1)[-1]]


def glmix_on_a_terminal_and_piped(terminal_args: list[str], piped_args: list[str] | None = None,
                                   concurrently: bool = True, timeout_s: float = 120.0) -> tuple[list[str], str, str]:
    """Run ``glmix`` with standard error on a pseudo-terminal, and again with it on a pipe (standard output is a
    pipe in both; ``piped_args`` default to the same arguments; at once unless ``concurrently`` is false, then the
    piped run first). Returns what the terminal showed (:func:`screen_lines`), the piped run's standard error, and
    its standard output; both runs must exit 0."""
    piped = _glmix(terminal_args if piped_args is None else piped_args, subprocess.PIPE)
    if not concurrently:
        out, err = piped.communicate(timeout=timeout_s)
    main, replica = os.openpty()
    on_terminal = _glmix(terminal_args, replica)
    os.close(replica)
    shown: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(main, shown), daemon=True)
    reader.start()
    try:
        if concurrently:
            out, err = piped.communicate(timeout=timeout_s)
        on_terminal.communicate(timeout=timeout_s)
    finally:
        for process in (piped, on_terminal):
            if process.poll() is None:
                process.kill()
                process.wait()
    reader.join(10)
    os.close(main)
    screen = screen_lines(b"".join(shown).decode())
    assert piped.returncode == 0, err.decode()[-3000:]
    assert on_terminal.returncode == 0, "\n".join(screen)[-3000:]
    return screen, err.decode(), out.decode()


def progress_done(label: str, unit: str) -> str:
    """The pattern of a progress line's final form (``label: 1,234 unit in 0.8 s, 1,543/s``); group 1 is the count."""
    return rf"{re.escape(label)}: ([\d,]+) {re.escape(unit)} in \d+\.\d s, [\d,]+/s"


def assert_screen(screen: list[str], patterns: list[str]) -> list[int]:
    """The terminal showed exactly one line per pattern, in order; returns each line's count (group 1)."""
    assert len(screen) == len(patterns), screen
    counts = []
    for line, pattern in zip(screen, patterns):
        match = re.fullmatch(pattern, line)
        assert match, (line, pattern)
        counts.append(int(match.group(1).replace(",", "")))
    return counts


def scanned_examples(records: list[dict]) -> LabeledColumns:
    """``LabeledExample`` records as the refit reads them from the archive: Avro bodies back to back, scanned."""
    return scan_bodies(b"".join(encoded_bodies("LabeledExample", records)), len(records), GLOBAL, 0)
