"""``glmix backtest``: replay an event log through the live join and update code, in one process, deterministically.

What a live deployment would have scored (progressive validation: every example is
scored by the models current when it is emitted, then learned from) and what freshness
is worth on a user's own data (DESIGN §9). The replay calls the live stages' own
functions — :class:`~stream.consumers.labeling.ExampleJoin` over a RocksDB partition
store, the updater's reader of the emitted values (:class:`~stream.updaters.examples.ExampleReader`)
and its store glue (:func:`~stream.updaters.entity_updates.update_entities`), the
global refit with its vocabulary growth — so there is no second implementation to drift.

Time is the events' time. Micro-batches are cut every ``latency_ms`` of event time (0:
every event alone): a micro-batch's events are joined, its emitted examples are scored
with the models as they were before it, then every coordinate absorbs them, as an
updater a ``latency_ms`` behind the joiner would. Without a model, the first index comes
from a warm-up of ``joiner.bootstrap_impressions`` impressions, as the live joiner
builds it; every ``refit_every_ms`` the examples so far are archived and the refit runs
(vocabulary growth included) on the last ``refit.window_hours``. The replay is one
partition: the watermark is the whole log's, not one Kafka partition's.

Without refits the join does not depend on what the models learn, so a log can be joined once
(:meth:`Backtest.joined`) and learned from under many priors (:meth:`Backtest.run_joined`), as ``glmix tune`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from stream.archive.files import HOUR_MS, ArchiveFiles
from stream.codec.avro import SingleObjectCodec
from stream.codec.schemas import load_schema
from stream.config import Settings
from stream.consumers.join_state import IMPRESSIONS, INTERACTIONS, Emission, JoinCounts
from stream.consumers.labeling import IMPRESSION, ExampleJoin, JoinInput, interaction_types, warm_up_complete
from stream.errors import GlmixError
from stream.evaluation.progressive import TraceColumns, progressive_report
from stream.gc_pause import cyclic_gc_paused
from stream.model.export import initial_global_model_record
from stream.model.game import GLOBAL
from stream.model.losses import get_loss
from stream.progress import Progress
from stream.refit.job import GlobalRefit, RefitError
from stream.refit.schedule import next_refit_due
from stream.state.partition_store import PartitionStore, open_or_wipe
from stream.tables.models import CoefficientTable, GlobalModelTable
from stream.updaters.entity_updates import update_entities
from stream.updaters.examples import ExampleReader, valid_entity_batches
from stream.updaters.state_update import CoordinateMath

log = logging.getLogger(__name__)

_ENDED = frozenset({IMPRESSIONS, INTERACTIONS})


class BacktestError(GlmixError):
    """A replay asked of what it cannot replay (a joined log under settings that join differently)."""


@dataclass(frozen=True)
class BacktestOptions:
    """How the replay runs: the update latency, the refit schedule (event time) and the report's time windows."""

    latency_ms: int = 1000
    refit_every_ms: int = 0
    windows: int = 10


@dataclass(frozen=True)
class JoinedLog:
    """An event log's join, done once to be learned from many times (:meth:`Backtest.joined`).

    The join does not depend on what the models learn while no refit changes the indexes: the labels, the
    indexed features and the micro-batches are the same under any prior. ``emissions`` holds each micro-batch's
    emitted examples from the first one after the warm-up on, empty ones included; ``model_record`` is the
    warm-up's model that indexed them.
    """

    settings: Settings
    options: BacktestOptions
    model_record: dict[str, Any] | None
    emissions: list[list[Emission]] = field(repr=False)
    counts: JoinCounts
    micro_batches: int
    events: int


# What a replay of a JoinedLog may change: the settings of learning, none of joining or indexing.
LEARNING_SETTINGS = ("l2", "intercept_l2", "forgetting", "precision")


def same_join(a: Settings, b: Settings) -> bool:
    """Whether ``a`` and ``b`` join and index an event log alike (they may differ in :data:`LEARNING_SETTINGS` and
    in ``model.global_l2``, which only a refit reads)."""

    def joining(settings: Settings) -> Settings:
        coordinates = {
            name: msgspec.structs.replace(
                c, **{key: getattr(a.model.coordinates[name], key) for key in LEARNING_SETTINGS}
            )
            for name, c in settings.model.coordinates.items()
            if name in a.model.coordinates
        }
        model = msgspec.structs.replace(settings.model, global_l2=a.model.global_l2, coordinates=coordinates)
        return msgspec.structs.replace(settings, model=model)

    return a.model.coordinates.keys() == b.model.coordinates.keys() and joining(a) == joining(b)


class EmittedExamples:
    """What a replay emitted, in emission order: each example's value as the joiner publishes it (a
    ``LabeledExample`` in single-object encoding), the columns the progressive report reads, and the
    history the joiner counted for each coordinate's entity.

    The report is computed from the columns; a record per example is decoded only when asked for (:attr:`records`).
    """

    def __init__(self, codec: SingleObjectCodec, coordinates: Sequence[str]) -> None:
        self.codec, self.coordinates = codec, list(coordinates)
        self.values: list[bytes] = []
        self._columns: list[TraceColumns] = []
        self._history: list[dict[str, np.ndarray] | None] = []

    def __len__(self) -> int:
        return len(self.values)

    def add(self, values: list[bytes], columns: TraceColumns, history: dict[str, np.ndarray] | None) -> None:
        """One micro-batch's examples (``history`` None: they were not scored)."""
        self.values.extend(values)
        self._columns.append(columns)
        self._history.append(history)

    def columns(self) -> TraceColumns:
        """Every example's trace columns."""
        if not self._columns:
            return TraceColumns.of_records([], self.coordinates)
        return TraceColumns.concatenate(self._columns)

    def event_times(self) -> np.ndarray:
        """Every example's event time."""
        return np.concatenate([c.event_times for c in self._columns]) if self._columns else np.zeros(0, np.int64)

    def last_event_time(self) -> int | None:
        """The event time of the last example emitted, if any."""
        return int(self._columns[-1].event_times[-1]) if self._columns else None

    def bodies(self, rows: Sequence[int]) -> list[bytes]:
        """The examples at ``rows`` as the archive keeps them (the values without their single-object header)."""
        header = len(self.codec.header())
        return [self.values[i][header:] for i in rows]

    def records(self) -> list[dict[str, Any]]:
        """Every example as a record, with the joiner's ``entity_history`` when scored, as
        :meth:`~stream.consumers.labeling.ExampleJoin.records` makes them."""
        records: list[dict[str, Any]] = []
        for columns, history in zip(self._columns, self._history):
            batch = [self.codec.decode(value) for value in self.values[len(records) : len(records) + len(columns)]]
            if history is not None:
                counts = {name: h.tolist() for name, h in history.items()}
                for i, record in enumerate(batch):
                    record["entity_history"] = {name: c[i] for name, c in counts.items()}
            records += batch
        return records


class BacktestResult:
    """The progressive report, the emitted examples (scored at emission) and how the replay went."""

    def __init__(self, report: dict[str, Any], emitted: EmittedExamples) -> None:
        self.report = report
        self.emitted = emitted

    @functools.cached_property
    def examples(self) -> list[dict[str, Any]]:
        """The emitted examples as ``LabeledExample`` records, in emission order (decoded on first use)."""
        return self.emitted.records()


class _CoordinateReplay:
    """One coordinate's updater in the replay: a RocksDB store of entity states and the table the join scores with."""

    def __init__(self, settings: Settings, name: str, directory: Path) -> None:
        self.name = name
        coordinate = settings.model.coordinates[name]
        self.math = CoordinateMath.of(coordinate, get_loss(settings.model.loss))
        self.store, _ = open_or_wipe(directory / f"states-{name}", write_ahead_log=False)  # a replay's temporary state
        self.table = CoefficientTable(name, coordinate.max_features)
        self.reader = ExampleReader(SingleObjectCodec(load_schema("LabeledExample")), name, self.math.layout.dim)
        self._next_offset = 0
        self.entity_updates = 0
        self.widened_entities = 0
        self.reset_entities = 0

    def absorb(self, values: Sequence[bytes]) -> None:
        """Update every entity the examples (``LabeledExample`` values, as the joiner emits them) touch.

        As the coordinate's updater does with one micro-batch: the same reader, grouping and store glue.
        """
        offsets = np.arange(self._next_offset, self._next_offset + len(values))
        self._next_offset += len(values)
        read = self.reader.read(values, offsets)
        if not len(read.rows):
            return
        batches, _ = valid_entity_batches(read.examples)
        writes: list[tuple[bytes, bytes]] = []
        for batch in batches:
            update = update_entities(self.store, self.math, batch)
            writes += update.writes
            self.table.apply(
                {"entity_id": e, "version": v, "means": m}
                for e, v, m in zip(update.entity_ids, update.states["version"], update.states["mean"])
            )
            self.entity_updates += len(update.entity_ids)
            self.widened_entities += update.outcome.widened_entities
            self.reset_entities += update.outcome.reset_entities
        self.store.commit(writes, offsets={"input": int(offsets[-1])})

    def close(self) -> None:
        self.store.close()


class Backtest:
    """One replay of an event log under ``settings`` (the settings a live deployment would run with)."""

    def __init__(
        self, settings: Settings, options: BacktestOptions, model_record: dict[str, Any] | None = None
    ) -> None:
        self.settings = settings
        self.options = options
        self._model_record = model_record
        self._join = ExampleJoin(settings, interaction_types(load_schema("Interaction").plain))

    def run(self, events: Sequence[JoinInput], progress: Progress | None = None) -> BacktestResult:
        """Replay ``events`` (in event-time order) and report what a live deployment would have scored.

        ``progress`` counts the events replayed; the caller owns it (a tune counts many replays on one line).
        """
        return self._replay(len(events), lambda run: run.replay(events, progress), self._model_record)

    def joined(self, events: Sequence[JoinInput]) -> JoinedLog:
        """Join ``events`` once, for replays that differ only in how the models learn (:meth:`run_joined`).

        Only without refits: a refit changes the indexes, and with them the join's output.
        """
        if self.options.refit_every_ms:
            raise BacktestError("a joined log is replayed without refits (refit_every_ms 0): a refit changes the join")
        with tempfile.TemporaryDirectory(prefix="glmix-backtest-") as workdir:
            run = _Run(_isolated(self.settings, workdir), self.options, self._join, Path(workdir), self._model_record)
            try:
                emissions = run.join_all(events)
            finally:
                gc.unfreeze()
                run.close()
        return JoinedLog(
            self.settings, self.options, run.model_record, emissions, run.join_counts, run.micro_batches, len(events)
        )

    def run_joined(self, joined: JoinedLog, progress: Progress | None = None) -> BacktestResult:
        """Learn from ``joined`` under these settings: the report :meth:`run` gives for the same events.

        These settings must join as ``joined``'s did (:func:`same_join`), with the same options.
        """
        if joined.options != self.options or not same_join(joined.settings, self.settings):
            raise BacktestError(
                "a joined log is replayed only under settings that join alike (they may differ in "
                f"{', '.join(LEARNING_SETTINGS)} and model.global_l2) and the options it was joined with"
            )

        def learn(run: _Run) -> None:
            run.join_counts, run.micro_batches = joined.counts, joined.micro_batches
            for emissions in joined.emissions:
                with cyclic_gc_paused():
                    run.learn(emissions)
                gc.freeze()  # as in a replay: what the run keeps leaves the collector's scans
            if progress is not None:
                progress.advance(joined.events)

        return self._replay(joined.events, learn, joined.model_record)

    def _replay(
        self, events: int, replay: Callable[[_Run], None], model_record: dict[str, Any] | None
    ) -> BacktestResult:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="glmix-backtest-") as workdir:
            run = _Run(_isolated(self.settings, workdir), self.options, self._join, Path(workdir), model_record)
            try:
                replay(run)
            finally:
                gc.unfreeze()
                run.close()
        seconds = time.monotonic() - started
        report = progressive_report(
            run.emitted.columns().trace(),
            get_loss(self.settings.model.loss),
            self.options.windows,
            history_edges=self.settings.metrics.history_edges,
        )
        report.update(
            {
                "events": events,
                "seconds": round(seconds, 3),
                "events_per_s": round(events / seconds) if seconds > 0 else None,
                "latency_ms": self.options.latency_ms,
                "micro_batches": run.micro_batches,
                "join": dataclasses.asdict(run.join_counts),
                "refits": run.refits,
                "vocabulary": run.vocabulary,
                "entity_updates": {c.name: c.entity_updates for c in run.coordinates},
                "widened_entities": {c.name: c.widened_entities for c in run.coordinates},
                "reset_entities": {c.name: c.reset_entities for c in run.coordinates},
            }
        )
        return BacktestResult(report, run.emitted)


def _isolated(settings: Settings, workdir: str) -> Settings:
    """``settings`` with everything the replay writes (state, archive, refit model files) under ``workdir``.

    A backtest run with a deployment's configuration must neither write into its archive
    nor refit on what is there: those examples may come from after the replayed events.
    """
    return msgspec.structs.replace(
        settings,
        state_dir=workdir,
        archive=msgspec.structs.replace(settings.archive, path=""),
        refit=msgspec.structs.replace(settings.refit, output_dir=""),
    )


class _Run:
    """The state of one replay (everything under one temporary directory)."""

    def __init__(
        self,
        settings: Settings,
        options: BacktestOptions,
        join: ExampleJoin,
        workdir: Path,
        model_record: dict[str, Any] | None,
    ) -> None:
        self.settings, self.options, self.join = settings, options, join
        self.store: PartitionStore = open_or_wipe(workdir / "join", write_ahead_log=False)[0]
        self.coordinates = [_CoordinateReplay(settings, name, workdir) for name in settings.model.coordinates]
        self.tables = {c.name: c.table for c in self.coordinates}
        self.model = GlobalModelTable(settings.model)
        self.model_record = model_record  # the model the join indexes with (a warm-up's, when it starts without one)
        if model_record is not None:
            self.model.apply([model_record])
        self.refit = GlobalRefit(settings, publish=self._take_model)
        self.archive = ArchiveFiles(settings.archive_path)
        self.emitted = EmittedExamples(
            SingleObjectCodec(load_schema("LabeledExample")), list(settings.model.coordinates)
        )
        self._unarchived = 0
        self.join_counts = JoinCounts()
        self.micro_batches = 0
        self.refits: list[dict[str, Any]] = []
        self.vocabulary: list[dict[str, Any]] = []
        self._held: list[JoinInput] = []
        self._held_impressions = 0

    def _take_model(self, record: dict[str, Any]) -> None:
        self.model.apply([record])

    def replay(self, events: Sequence[JoinInput], progress: Progress | None) -> None:
        times = np.fromiter((e.record["event_time"] for e in events), dtype=np.int64, count=len(events))
        bounds = _micro_batches(times, self.options.latency_ms)
        every = self.options.refit_every_ms
        next_refit = int(times[0]) + every if len(times) and every else None
        for start, end in itertools.pairwise(bounds):
            with cyclic_gc_paused():
                self._micro_batch(events[start:end], frozenset())
            gc.freeze()  # what the replay keeps (its examples) leaves the collector's scans; run() unfreezes
            if progress is not None:
                progress.advance(int(end - start))
            now = int(times[end - 1])
            if next_refit is not None and now >= next_refit:
                skipped = not self._refit_now(now)
                retry = self.settings.archive.roll_interval_ms
                next_refit = int(next_refit_due(next_refit, every, now, skipped=skipped, retry=retry))
        self._micro_batch([], _ENDED)  # the inputs ended: every window the watermark has passed closes

    def join_all(self, events: Sequence[JoinInput]) -> list[list[Emission]]:
        """Join every micro-batch of ``events`` without learning: each one's emissions once the warm-up is over."""
        times = np.fromiter((e.record["event_time"] for e in events), dtype=np.int64, count=len(events))
        out = []
        for start, end in itertools.pairwise(_micro_batches(times, self.options.latency_ms)):
            with cyclic_gc_paused():
                emissions = self._join_step(events[start:end], frozenset())
            if emissions is not None:
                out.append(emissions)
        final = self._join_step([], _ENDED)
        if final is not None:
            out.append(final)
        return out

    def _micro_batch(self, events: Sequence[JoinInput], idle: frozenset[str]) -> None:
        emissions = self._join_step(events, idle)
        if emissions is not None:
            self.learn(emissions)

    def _join_step(self, events: Sequence[JoinInput], idle: frozenset[str]) -> list[Emission] | None:
        """Join one micro-batch into the state; its emissions, or None while the warm-up holds the events."""
        if self.model.current is None:
            events = self._warm_up(events)
            if self.model.current is None:
                return None
        batch = self.join.join(self.store, events, self.model.current, idle)
        batch.write({})
        self.join_counts.add(batch.result.counts)
        self.micro_batches += 1
        return batch.result.emissions

    def learn(self, emissions: list[Emission]) -> None:
        """Score one micro-batch's emitted examples with the models as they are, then let every coordinate absorb them."""
        labeled = self.join.emitted(emissions, self.model.current, self.tables)
        if len(labeled):
            values = self.join.encoded(labeled, self.emitted.codec)
            history = labeled.scores.history if labeled.scores is not None else None
            self.emitted.add(values, self.join.trace_columns(labeled), history)
            for coordinate in self.coordinates:
                coordinate.absorb(values)
        self._note_vocabulary()

    def _warm_up(self, events: Sequence[JoinInput]) -> list[JoinInput]:
        """Hold events until the live joiner's warm-up would be complete, then index the first model from them."""
        self._held.extend(events)
        self._held_impressions += sum(1 for e in events if e.kind == IMPRESSION)
        span = self._held[-1].record["event_time"] - self._held[0].record["event_time"] if self._held else 0
        if not warm_up_complete(self._held_impressions, span, self.settings.joiner):
            return []
        impressions = [e.full_record() for e in self._held if e.kind == IMPRESSION]
        self.model_record = initial_global_model_record(impressions, self.settings.model)
        self.model.apply([self.model_record])
        held, self._held, self._held_impressions = self._held, [], 0
        return held

    def _note_vocabulary(self) -> None:
        model = self.model.current
        if model is not None and (not self.vocabulary or self.vocabulary[-1]["index_version"] != model.index_version):
            last = self.emitted.last_event_time()
            self.vocabulary.append(
                {
                    "index_version": model.index_version,
                    "from_event_time": last,
                    "columns": {
                        GLOBAL: model.global_index.dim,
                        **{n: i.dim for n, i in model.coordinate_indices.items()},
                    },
                }
            )

    def _refit_now(self, now_ms: int) -> bool:
        """Archive the examples emitted since the last refit, then refit the current model on the archive.

        False when the refit was skipped for want of examples, as ``glmix refit --every`` skips it.
        """
        times = self.emitted.event_times()[self._unarchived :]
        hours = times - times % HOUR_MS
        for hour in np.unique(hours).tolist():
            rows = np.flatnonzero(hours == hour)
            first, last = self._unarchived + int(rows[0]), self._unarchived + int(rows[-1])
            bodies = self.emitted.bodies((self._unarchived + rows).tolist())
            self.archive.write_bodies(hour, 0, first, last, bodies, times[rows])
        self._unarchived = len(self.emitted)
        if self.model.current is None or not len(self.emitted):
            return False
        try:
            result = self.refit.run_from(self.model.current)
        except RefitError as exc:
            log.info("backtest: refit at %d skipped: %s", now_ms, exc)
            return False
        self.refits.append(
            {
                "at_event_time": now_ms,
                "status": result.status,
                "version": result.version,
                "index_version": result.index_version,
                "admitted_features": result.admitted_features,
                "train_examples": result.train_examples,
                "holdout_examples": result.holdout_examples,
                "current_metrics": result.to_json()["current_metrics"],
                "candidate": result.candidate,
                "step": result.step,
                "candidate_metrics": result.to_json()["candidate_metrics"],
            }
        )
        self._note_vocabulary()
        return result.status != "skipped"

    def close(self) -> None:
        self.store.close()
        for coordinate in self.coordinates:
            coordinate.close()


def _micro_batches(times: np.ndarray, latency_ms: int) -> np.ndarray:
    """Boundaries (start indexes, then the end) of the micro-batches: every ``latency_ms`` of event time, or every event."""
    if not len(times):
        return np.zeros(1, dtype=np.int64)
    if latency_ms <= 0:
        return np.arange(len(times) + 1)
    slots = (times - times[0]) // latency_ms
    return np.concatenate([[0], np.flatnonzero(np.diff(slots)) + 1, [len(times)]])
