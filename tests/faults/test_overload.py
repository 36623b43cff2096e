"""A real ``glmix run all`` process given far more input than it sustains, then a trickle: nothing is dropped.

The input arrives as a backlog (produced as fast as the broker takes it: many times what
one process joins and updates), with librdkafka's prefetch queue bounded small
(``queued.max.messages.kbytes``) so the stages read it in bounded slices; then the rest
of the input comes at a trickle. The run must end as one uninterrupted run over the same
input: every example once on each examples topic and in the archive, every entity's
coefficients equal. The memory and freshness of an overload over minutes are measured by
``bench/soak.py --overload``, not asserted here. A default run backs up ~9k events;
``--run-slow`` ~45k.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.config import load_settings
from tests.faults.harness import JoinerInput, check_pipeline, pipeline_overrides, start_glmix_run
from tests.helpers import wait_for

pytestmark = pytest.mark.kafka

PREFETCH_KBYTES = 256  # librdkafka's default is 65,536: a backlog then sits in the process's memory 64 MB at a time


@pytest.mark.parametrize("requests", [pytest.param(1_200, id="9k-events"),
                                      pytest.param(6_000, id="45k-events", marks=pytest.mark.slow)])
def test_run_all_behind_a_backlog_then_a_trickle_ends_as_one_uninterrupted_run(kafka_broker, kafka_bootstrap,
                                                                              tmp_path, unique_name, requests):
    if kafka_broker.kind == "mock":
        pytest.skip("process-level fault tests run on a broker process, not on the mock in this test process")
    archive = tmp_path / "archive"
    overrides = {**pipeline_overrides(unique_name, tmp_path / "state", archive),
                 "kafka.consumer.queued.max.messages.kbytes": str(PREFETCH_KBYTES)}
    settings = load_settings(overrides={**overrides, "kafka.bootstrap_servers": kafka_bootstrap})
    events = JoinerInput.publish(settings, seed=29, requests=requests, chunks=8, members=50, jobs=30)
    log = tmp_path / "run-all.log"
    started = time.monotonic()
    process = start_glmix_run(kafka_bootstrap, overrides, log, stage="all")
    try:
        wait_for(lambda: "assigned partitions" in _text(log) or process.poll() is not None, timeout_s=60,
                 what="glmix run all to be assigned its partitions")
        backlog_started = time.monotonic()
        for chunk in range(6):  # the backlog: three quarters of the input, as fast as the broker takes it
            events.produce(chunk)
        backlog_s = time.monotonic() - backlog_started
        for chunk in (6, 7):  # then a trickle: the last quarter in small slices
            events.produce(chunk, slices=20, pause_s=0.25)
        check = check_pipeline(kafka_bootstrap, settings, events, tmp_path, unique_name, archive,
                               lambda: f"glmix run all behind a backlog of {events.events * 3 // 4} events "
                                       f"(produced in {backlog_s:.1f} s), then a trickle, "
                                       f"{time.monotonic() - started:.0f} s")
        alive = process.poll() is None
    finally:
        process.terminate()
        process.wait(60)
    assert alive, _text(log)[-3000:]
    assert check.exact, str(check)


def _text(log: Path) -> str:
    return log.read_text() if log.exists() else ""
