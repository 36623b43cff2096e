"""Running pipeline stages: each alone (one per process, scaled out by consumer groups) or all in one process.

``glmix run joiner``, ``glmix run updater --coordinate member`` and ``glmix run all`` all
come here. Every stage runs its micro-batch loop in its own thread until the shared
stop event is set (SIGTERM or SIGINT), then finishes its batch, commits and closes its
stores. numpy, librdkafka and RocksDB release the GIL in their heavy parts, so the
threads of ``run all`` overlap usefully on a small deployment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TypeVar

from stream.archive.archiver import Archiver
from stream.config import ConfigError, Settings
from stream.consumers.joiner import Joiner
from stream.errors import GlmixError
from stream.metrics.collector import PipelineCollector
from stream.metrics.kafka_statistics import KafkaStatistics
from stream.runtime.runner import StageRunner
from stream.runtime.stage import Stage
from stream.runtime.stats import StageStats
from stream.scoring.streaming import StreamingScorer
from stream.updaters.updater import CoordinateUpdater

log = logging.getLogger(__name__)
S = TypeVar("S", bound=StageStats)

JOINER = "joiner"
ARCHIVE = "archive"
STREAM_SCORER = "stream-scorer"
NAMED_STAGES = (JOINER, ARCHIVE, STREAM_SCORER)


def run_stage(runner: StageRunner, stop: threading.Event) -> None:
    """Run a stage's micro-batches until ``stop`` is set, then close it; a failed batch abandons it and is raised.

    Abandoning commits nothing more (see :meth:`StageRunner.abandon`), so the failed
    batch's error is the one reported, not a second failure of a last checkpoint.
    """
    try:
        while not stop.is_set():
            runner.step()
    except BaseException:
        runner.abandon()
        raise
    runner.close()


def stage_names(settings: Settings) -> list[str]:
    """Every stage of the pipeline: the joiner, one updater per coordinate, and the archive."""
    return [JOINER, *settings.model.coordinates, ARCHIVE]


def build_stage(settings: Settings, name: str) -> Stage:
    """The joiner, the archive, the streaming scorer, or the updater of coordinate ``name``."""
    if name == JOINER:
        return Joiner(settings)
    if name == ARCHIVE:
        return Archiver(settings)
    if name == STREAM_SCORER:
        return StreamingScorer(settings)
    return CoordinateUpdater(settings, name)


class Pipeline:
    """Some or all stages, each in its own thread, sharing one stop event."""

    def __init__(
        self,
        settings: Settings,
        stages: Sequence[str] | None = None,
        bootstrap_servers: str = "",
        stop_event: threading.Event | None = None,
        statistics: KafkaStatistics | None = None,
    ) -> None:
        names = list(stages or stage_names(settings))
        unknown = [n for n in names if n not in NAMED_STAGES and n not in settings.model.coordinates]
        if unknown:
            raise ConfigError(
                "stage", f"unknown stages {unknown}; known: {', '.join(stage_names(settings) + [STREAM_SCORER])}"
            )
        self.settings = settings
        self.stop_event = stop_event or threading.Event()
        self.stages = {
            name: StageRunner(build_stage(settings, name), settings, bootstrap_servers, statistics) for name in names
        }
        self._threads: list[threading.Thread] = []
        self.errors: dict[str, BaseException] = {}

    def stats_of(self, name: str, kind: type[S]) -> S:
        """The statistics of stage ``name`` as the class they are (``JoinerStats``, ``UpdaterStats``, ...)."""
        stats = self.stages[name].stats
        if not isinstance(stats, kind):
            raise ConfigError("stage", f"{name} keeps {type(stats).__name__}, not {kind.__name__}")
        return stats

    def metrics_collector(self, statistics: KafkaStatistics | None = None) -> PipelineCollector:
        """A Prometheus collector of every stage's counters and state size (and the Kafka statistics)."""
        return PipelineCollector(
            {runner.stage.name: runner.stage.stats for runner in self.stages.values()},
            {runner.stage.name: runner for runner in self.stages.values() if runner.stage.state_owner()},
            statistics,
        )

    def start(self) -> None:
        """Start every stage's loop."""
        for name, stage in self.stages.items():
            thread = threading.Thread(target=self._run, args=(name, stage), name=f"glmix-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, name: str, stage: StageRunner) -> None:
        try:
            run_stage(stage, self.stop_event)
        except GlmixError as exc:  # said in one line: what went wrong, where
            log.error("stage %s failed: %s", name, exc)
            self.errors[name] = exc
            self.stop_event.set()
        except BaseException as exc:  # a bug: the traceback is for us
            log.exception("stage %s failed", name)
            self.errors[name] = exc
            self.stop_event.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask every stage to finish its batch and close; wait for them."""
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def wait(self) -> None:
        """Block until the stop event is set (by a signal or a failing stage), then stop."""
        while not self.stop_event.wait(0.5):
            pass
        self.stop()
