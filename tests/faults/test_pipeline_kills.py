"""Real ``glmix run all`` processes SIGKILLed at random: the whole pipeline loses nothing and applies nothing twice.

Two processes, each with its own state directory (as on two machines) and one shared
archive directory (a shared volume), run the joiner, both updaters and the archive. One
is killed after each chunk of input and restarted, sometimes without its state. At the
end:
- each examples topic holds every example of an uninterrupted joiner exactly once;
- the archive holds every example exactly once;
- every entity's coefficients equal those of an uninterrupted updater over the same
  examples (linear loss, no forgetting: exact whatever the batch boundaries).
A default run kills a few times; ``--run-slow`` kills 20 times.
"""

from __future__ import annotations

import random
import time

import pytest

from stream.config import load_settings
from tests.faults.harness import JoinerInput, KilledProcesses, check_pipeline, pipeline_overrides

pytestmark = pytest.mark.kafka


# Without the write-ahead log a SIGKILL also loses the stores' latest writes (still in memtables), so every
# restart restores from the changelogs; the default suite runs that case, the joiner and updater kill tests
# the write-ahead-logged one.
@pytest.mark.parametrize(("kills", "requests", "write_ahead_log"), [
    pytest.param(3, 1_000, False, id="3-kills-no-write-ahead-log"),
    pytest.param(20, 6_000, True, id="20-kills", marks=pytest.mark.slow),
    pytest.param(20, 6_000, False, id="20-kills-no-write-ahead-log", marks=pytest.mark.slow),
])
def test_run_all_killed_at_random_ends_as_one_uninterrupted_run(kafka_broker, kafka_bootstrap, tmp_path, unique_name,
                                                                kills, requests, write_ahead_log):
    if kafka_broker.kind == "mock":
        pytest.skip("process-level fault tests run on a broker process, not on the mock in this test process")
    archive = tmp_path / "archive"
    settings = load_settings(overrides={**pipeline_overrides(unique_name, tmp_path / "state-0", archive,
                                                             write_ahead_log),
                                        "kafka.bootstrap_servers": kafka_bootstrap})
    events = JoinerInput.publish(settings, seed=23, requests=requests, chunks=kills + 1, members=50, jobs=30)
    started = time.monotonic()
    rng = random.Random(unique_name)
    pipelines = KilledProcesses(kafka_bootstrap, lambda state_dir: pipeline_overrides(unique_name, state_dir, archive,
                                                                                      write_ahead_log),
                                tmp_path / "run-all.log", tmp_path, count=2, stage="all")
    pipelines.churn(events, rng, pause_s=(3.0, 8.0), wipe_share=0.4)
    try:
        check = check_pipeline(kafka_bootstrap, settings, events, tmp_path, unique_name, archive,
                               lambda: f"glmix run all, {kills} kills, {pipelines.wipes} state wipes, 2 processes, "
                                       f"{time.monotonic() - started:.0f} s")
        alive = pipelines.all_alive()
    finally:
        pipelines.stop()
    assert alive, pipelines.log.read_text()[-3000:]
    assert check.exact, str(check)
