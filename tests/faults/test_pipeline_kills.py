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
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from stream.archive.files import ArchiveFiles
from stream.codec import make_codec
from stream.config import Settings, load_settings
from stream.runtime.runner import StageRunner
from stream.updaters.updater import CoordinateUpdater
from tests.faults.harness import JoinerInput, KilledProcesses, exactly_once, joiner_overrides, wait_for_examples
from tests.helpers import read_topic

pytestmark = pytest.mark.kafka


def _overrides(prefix: str, state_dir: Path, archive: Path, write_ahead_log: bool = True) -> dict[str, str]:
    solver = {f"model.coordinates.{c}.{key}": value for c in ("member", "job")
              for key, value in (("newton_steps", "50"), ("gradient_tolerance", "1e-10"), ("batch_size", "300"))}
    return {**joiner_overrides(prefix, state_dir), "model.loss": "linear", "archive.path": str(archive),
            "archive.roll_records": "500", "archive.roll_interval_ms": "1000",
            "state_write_ahead_log": str(write_ahead_log).lower(), **solver}


def _latest(bootstrap: str, settings: Settings, coordinate: str) -> dict[str, tuple[int, np.ndarray]]:
    codec = make_codec("EntityModel", "any")
    latest: dict[str, tuple[int, np.ndarray]] = {}
    for message in read_topic(bootstrap, settings.topics.coefficients(coordinate), timeout_s=20):
        record = codec.decode(message.value())
        if record["version"] > latest.get(record["entity_id"], (0, None))[0]:
            latest[record["entity_id"]] = (record["version"], np.array(record["means"]))
    return latest


def _reference_coefficients(bootstrap: str, settings: Settings, state_dir: Path, prefix: str,
                            records: dict[str, int]) -> dict[str, dict[str, tuple[int, np.ndarray]]]:
    """What one uninterrupted updater per coordinate makes of the run's examples topics (own group and outputs);
    ``records``: how many records each examples topic holds."""
    reference = load_settings(overrides={**_overrides(prefix, state_dir, state_dir / "archive"),
                                         "topics.examples_by_member": settings.topics.examples_by_member,
                                         "topics.examples_by_job": settings.topics.examples_by_job,
                                         "kafka.bootstrap_servers": bootstrap})
    latest = {}
    for coordinate in reference.model.coordinates:
        updater = CoordinateUpdater(reference, coordinate)
        runner = StageRunner(updater, reference, bootstrap)
        try:
            deadline = time.monotonic() + 120
            while runner.stats.consumed() < records[updater.topic]:
                assert time.monotonic() < deadline, f"reference {coordinate}: {runner.stats.consumed()} of {records}"
                runner.step()
        finally:
            runner.close()
        latest[coordinate] = _latest(bootstrap, reference, coordinate)
    return latest


def _differing(got: dict, expected: dict) -> list[str]:
    return [e for e, (_, means) in expected.items()
            if e not in got or not np.allclose(got[e][1], means, rtol=1e-7, atol=1e-9)]


def _archived(path: Path) -> Counter:
    files = ArchiveFiles(str(path))
    return Counter(e["example_id"] for h in files.hours() for f in files.files(h) for e in files.read(f))


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
    settings = load_settings(overrides={**_overrides(unique_name, tmp_path / "state-0", archive, write_ahead_log),
                                        "kafka.bootstrap_servers": kafka_bootstrap})
    events = JoinerInput.publish(settings, seed=23, requests=requests, chunks=kills + 1, members=50, jobs=30)
    started = time.monotonic()
    rng = random.Random(unique_name)
    pipelines = KilledProcesses(kafka_bootstrap, lambda state_dir: _overrides(unique_name, state_dir, archive,
                                                                              write_ahead_log),
                                tmp_path / "run-all.log", tmp_path, count=2, stage="all")
    pipelines.churn(events, rng, pause_s=(3.0, 8.0), wipe_share=0.4)
    expected = events.reference(kafka_bootstrap, tmp_path / "reference-joiner", f"{unique_name}-ref")
    wanted = sum(expected[settings.topics.examples_by_member].values())
    try:
        got = wait_for_examples(kafka_bootstrap, settings, expected, timeout_s=150)
        deadline = time.monotonic() + 60
        while sum((archived := _archived(archive)).values()) < wanted and time.monotonic() < deadline:
            time.sleep(2)
        reference = _reference_coefficients(kafka_bootstrap, settings, tmp_path / "reference-updaters",
                                            f"{unique_name}-refu", {t: sum(c.values()) for t, c in got.items()})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            coefficients = {c: _latest(kafka_bootstrap, settings, c) for c in reference}
            if not any(_differing(coefficients[c], reference[c]) for c in reference):
                break
            time.sleep(2)
        alive = pipelines.all_alive()
    finally:
        pipelines.stop()
    assert alive, pipelines.log.read_text()[-3000:]
    wrong = exactly_once(got, expected, f"glmix run all, {kills} kills, {pipelines.wipes} state wipes, 2 processes, "
                                        f"{time.monotonic() - started:.0f} s")
    archive_lost = len(set(expected[settings.topics.examples_by_member]) - set(archived))
    archive_twice = sum(1 for n in archived.values() if n > 1)
    print(f"archive: lost {archive_lost}, twice {archive_twice}")
    differing = {c: len(_differing(coefficients[c], reference[c])) for c in reference}
    print("; ".join(f"{c}: {n} of {len(reference[c])} entities differ" for c, n in differing.items()))
    assert not wrong and archive_lost == archive_twice == 0
    assert all(reference.values()) and not any(differing.values())
