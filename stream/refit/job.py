"""``glmix refit``: refit the global coordinate on archived examples and publish it if the gate passes.

One run: read the current global model and every coordinate's coefficients from Kafka;
have the engine (:class:`~stream.refit.engine.RefitEngine`: this process, or Spark executors) read a time window
of archived examples into chunks — the earlier part for
training, the final ``holdout_fraction`` of the window as a holdout — with the random
effects' scores as offsets (current coefficients or join-time scores for training;
always join-time scores for the holdout, which the current coefficients have already
learned from); fit the global coefficients by L-BFGS warm-started at the
current ones; score current and new on the holdout; and only if the gate passes, publish
version n+1 to ``model.global`` and write the model files (GlobalModel and Photon-ML
``BayesianLinearModelAvro``). The feature index is kept: updaters and the joiner go on
with the same columns. A rerun over the same window reaches the same coefficients and
publishes nothing new; a crash before publishing leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

from stream.archive.files import HOUR_MS, ArchiveFiles
from stream.codec import make_codec
from stream.codec.container import write_container
from stream.codec.photon import PhotonModel, write_models
from stream.config import Settings
from stream.errors import GlmixError
from stream.kafka.clients import prepare_topics, producer_config
from stream.kafka.topic_reader import TopicReader
from stream.metrics.families import MetricFamilies
from stream.model.export import global_model_record, photon_key
from stream.model.game import GLOBAL, CoordinateSpec, GameModel, fit_global_blocks
from stream.model.losses import get_loss
from stream.model.priors import l2_precision_diagonal
from stream.progress import Progress
from stream.refit.engine import LocalEngine, RefitEngine, RefitInputs
from stream.refit.examples import ExampleSplit
from stream.refit.gate import STEPS, GateDecision, choose_trial, gate, holdout_metrics
from stream.refit.window import RefitWindow
from stream.tables.follower import ModelFollower
from stream.tables.models import CoefficientTable, GlobalModel, GlobalModelTable
from stream.tables.stored_table import StoredCoefficientTable

log = logging.getLogger(__name__)

RESIDUAL, STANDALONE = "residual", "standalone"
# What each candidate fit is fitted around (a column of the spilled training split).
CANDIDATE_OFFSETS = {RESIDUAL: "offsets", STANDALONE: "fixed_offsets"}
UNCHANGED = 1e-3  # relative change ||new - old|| / ||new|| below which a rerun publishes nothing


def _trial_name(candidate: str, step: float) -> str:
    return candidate if step == 1.0 else f"{candidate}*{step:g}"


def _relative_change(new: np.ndarray, old: np.ndarray) -> float:
    return float(np.linalg.norm(new - old) / max(float(np.linalg.norm(new)), 1e-12))


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


class RefitError(GlmixError):
    """A refit could not run: no model to refit, or no archived examples."""


@dataclass
class RefitStats:
    """Counters of one refit process (exported as metrics by the process)."""

    runs: int = 0
    published: int = 0
    refused: int = 0
    unchanged: int = 0
    skipped: int = 0
    last_seconds: float = 0.0
    admitted_features: Counter[str] = field(default_factory=Counter)
    dropped_features: Counter[str] = field(default_factory=Counter)

    def add_samples(self, stage: str, families: MetricFamilies) -> None:
        """Runs by outcome, the last duration, and the vocabulary admitted and dropped."""
        for status, count in (
            ("published", self.published),
            ("refused", self.refused),
            ("unchanged", self.unchanged),
            ("skipped", self.skipped),
        ):
            families.counter("glmix_refit_runs", [status], count)
        families.gauge("glmix_refit_last_duration_seconds", [], self.last_seconds)
        for coordinate, count in self.admitted_features.items():
            families.counter("glmix_vocabulary_admitted_features", [coordinate], count)
        for coordinate, count in self.dropped_features.items():
            families.counter("glmix_vocabulary_dropped_features", [coordinate], count)


@dataclass
class RefitResult:
    """What one refit run did, for logs, the CLI's JSON line and tests."""

    status: str
    current_version: int
    version: int | None = None
    window_ms: tuple[int, int] = (0, 0)
    holdout_from_ms: int = 0
    train_examples: int = 0
    holdout_examples: int = 0
    dropped_examples: int = 0
    current_metrics: dict[str, float] = field(default_factory=dict)
    candidate: str = ""
    step: float = 1.0
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    gate: str = ""
    admitted_features: dict[str, int] = field(default_factory=dict)
    index_version: int | None = None
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        """A JSON-ready dict (non-finite metrics as null)."""
        out = asdict(self)
        for key in ("current_metrics", "candidate_metrics"):
            out[key] = _finite(out[key])
        out["candidates"] = {name: _finite(m) for name, m in out["candidates"].items()}
        return out


def unpublished_result(inputs: RefitInputs) -> RefitResult:
    """A result of ``inputs`` that says nothing was published yet."""
    return RefitResult(
        "skipped",
        inputs.model.version,
        window_ms=(inputs.window.start_ms, inputs.window.end_ms),
        holdout_from_ms=inputs.window.holdout_ms,
        train_examples=inputs.train.rows,
        holdout_examples=inputs.holdout.rows,
        dropped_examples=inputs.dropped,
        admitted_features=dict(inputs.growth.admitted),
    )


def make_engine(settings: Settings, show_progress: bool = False) -> RefitEngine:
    """The engine ``refit.engine`` names (Spark only when asked for: pyspark is an optional extra)."""
    if settings.refit.engine == "spark":
        from stream.refit.spark import SparkEngine

        return SparkEngine(settings)
    return LocalEngine(settings, show_progress)


class GlobalRefit:
    """Refits and gates the global coordinate; :meth:`run_once` is one cron run."""

    def __init__(
        self,
        settings: Settings,
        bootstrap_servers: str = "",
        show_progress: bool = False,
        publish: Callable[[dict], None] | None = None,
    ) -> None:
        """``publish`` takes each new ``GlobalModel`` record: by default to ``model.global``; a backtest keeps it.

        ``show_progress``: a command's run, whose reading and fitting draw a progress line on a terminal.
        """
        self.settings = settings
        self._publish = publish or self._publish_to_kafka
        self._show_progress = show_progress
        self.refit = settings.refit
        self.loss = get_loss(settings.model.loss)
        self.stats = RefitStats()
        self.archive = ArchiveFiles(settings.archive_path)
        self.engine = make_engine(settings, show_progress)
        self._bootstrap = bootstrap_servers
        topic = settings.topics.model_global
        self._codec = make_codec(
            "GlobalModel", topic, settings.kafka.schema_registry_url, settings.kafka.schema_registry
        )

    # ------------------------------------------------------------------ data

    def window(self, from_ms: int | None, to_ms: int | None) -> RefitWindow:
        """The window asked for, or the last ``window_hours`` of the archive, narrowed to where data is."""
        hours = self.archive.hours()
        if not hours:
            raise RefitError(f"no archived examples under {self.settings.archive_path}: run `glmix run archive` first")
        if to_ms is None:
            to_ms = 1 + self._event_time(hours[-1], max)
        if from_ms is None:
            from_ms = to_ms - int(self.refit.window_hours * 3_600_000)
            first = next((h for h in hours if h + HOUR_MS > from_ms), None)
            if first is not None:
                from_ms = max(from_ms, self._event_time(first, min))
        if from_ms >= to_ms:
            raise RefitError(f"empty refit window [{from_ms}, {to_ms})")
        return RefitWindow(from_ms, to_ms - int((to_ms - from_ms) * self.refit.holdout_fraction), to_ms)

    def _event_time(self, hour_ms: int, pick: Callable[[Iterable[int]], int]) -> int:
        """The first (``min``) or last (``max``) event time archived in the hour, from the files' headers."""
        bounds = [b for f in self.archive.files(hour_ms) if (b := self.archive.event_times(f)) is not None]
        if not bounds:
            raise RefitError(f"the archive's hour {hour_ms} holds no examples")
        return pick(t for first, last in bounds for t in (first, last))

    # ------------------------------------------------------------------ the run

    def _current_global_model(self) -> GlobalModel:
        """The newest usable global model on ``model.global``."""
        table = GlobalModelTable(self.settings.model)
        reader = TopicReader(
            self.settings.kafka,
            self.settings.topics.model_global,
            self._codec,
            bootstrap_servers=self._bootstrap,
            client_id=self.settings.kafka.group_id("refit-global"),
        )
        try:
            for batch in reader.read_to_end(stall_timeout_s=120):
                table.apply(batch.records)
        finally:
            reader.close()
        if table.current is None:
            raise RefitError(
                f"no global model on {self.settings.topics.model_global}: start the pipeline "
                "(the joiner bootstraps one) before refitting"
            )
        return table.current

    def prepare(self, scope: ExitStack, from_ms: int | None = None, to_ms: int | None = None) -> RefitInputs:
        """The current global model and the window's examples as train and holdout splits, held until ``scope`` closes.

        Every coordinate's coefficients are read too, but only for ``offsets = "current"``.
        """
        window = self.window(from_ms, to_ms)
        if self.refit.offsets == "join_time":
            return self.read_window(scope, window, self._current_global_model(), {})
        follower = ModelFollower(self.settings, self._bootstrap, client_id=self.settings.kafka.group_id("refit"))
        try:
            follower.catch_up(timeout_s=120)
            if follower.global_model.current is None:
                raise RefitError(
                    f"no global model on {self.settings.topics.model_global}: start the pipeline "
                    "(the joiner bootstraps one) before refitting"
                )
            return self.read_window(scope, window, follower.global_model.current, follower.tables)
        finally:
            follower.close()

    def read_window(
        self,
        scope: ExitStack,
        window: RefitWindow,
        model: GlobalModel,
        tables: Mapping[str, CoefficientTable | StoredCoefficientTable],
    ) -> RefitInputs:
        """``window``'s archived examples as train and holdout splits, with offsets from ``tables`` (or join time).

        The engine reads them (:class:`~stream.refit.engine.RefitEngine`). The vocabulary grows in the same read
        (:mod:`stream.refit.vocabulary`): the splits come back in the columns of the grown
        index, and ``RefitInputs.model`` is the grown model (its global coefficients zero on
        the new columns).
        """
        inputs = self.engine.read(scope, window, model, tables)
        log.info(
            "refit (%s): %d training and %d holdout examples in [%d, %d) (%d dropped)",
            self.refit.engine,
            inputs.train.rows,
            inputs.holdout.rows,
            window.start_ms,
            window.end_ms,
            inputs.dropped,
        )
        return inputs

    def run_once(self, from_ms: int | None = None, to_ms: int | None = None) -> RefitResult:
        """One refit over ``[from_ms, to_ms)`` (default: the last ``window_hours`` of the archive)."""
        return self._run(lambda scope: self.prepare(scope, from_ms, to_ms))

    def run_from(self, model: GlobalModel, from_ms: int | None = None, to_ms: int | None = None) -> RefitResult:
        """One refit of ``model`` (instead of the newest on Kafka) with join-time offsets, as a backtest runs it."""
        return self._run(lambda scope: self.read_window(scope, self.window(from_ms, to_ms), model, {}))

    def _run(self, prepare: Callable[[ExitStack], RefitInputs]) -> RefitResult:
        started = time.monotonic()
        self.stats.runs += 1
        with ExitStack() as scope:
            inputs = prepare(scope)
            result = unpublished_result(inputs)
            if inputs.train.rows < self.refit.min_examples or inputs.holdout.rows == 0:
                log.warning(
                    "refit: too few examples (%d training, %d holdout; need %d and 1); nothing published",
                    inputs.train.rows,
                    inputs.holdout.rows,
                    self.refit.min_examples,
                )
                self.stats.skipped += 1
            else:
                start, intercept = inputs.model.coefficients, inputs.model.global_index.intercept
                candidates = {name: self.fit(inputs.train, start, intercept, name) for name in self.candidate_names()}
                self.decide(result, inputs.model, candidates, inputs.train, inputs.holdout, inputs.growth.grew)
                self.stats.dropped_features.update(inputs.growth.dropped)
                if result.version is not None:  # the grown index went out with this version
                    self.stats.admitted_features.update(inputs.growth.admitted)
        result.seconds = time.monotonic() - started
        self.stats.last_seconds = result.seconds
        return result

    def spec(self, intercept: bool) -> CoordinateSpec:
        """The global coordinate's penalty: ``model.global_l2`` on every feature, none on the intercept."""
        return CoordinateSpec(
            l2=self.settings.model.global_l2, intercept_l2=0.0, intercept_column=0 if intercept else None
        )

    def candidate_names(self) -> list[str]:
        """The fits a run compares (``refit.candidates``): ``residual``, ``standalone`` or both."""
        return list(CANDIDATE_OFFSETS) if self.refit.candidates == "both" else [self.refit.candidates]

    def fit(
        self, train: ExampleSplit, start: np.ndarray, intercept: bool = True, candidate: str = RESIDUAL
    ) -> np.ndarray:
        """The global coefficients minimizing the penalized loss on ``train``, warm-started at ``start``.

        ``candidate`` says around what: the random effects' scores (``residual``) or the
        examples' own offsets alone (``standalone``).
        """
        column = CANDIDATE_OFFSETS[candidate]
        progress = Progress(f"refit: fitting {candidate}", unit="L-BFGS iterations") if self._show_progress else None
        coefficients = fit_global_blocks(
            lambda partial: train.summed_blocks(partial, column),
            train.dim,
            self.spec(intercept),
            self.loss,
            start=start.copy(),
            max_iterations=self.refit.max_iterations,
            tolerance=1e-9,
            on_iteration=None if progress is None else progress.advance,
        )
        if progress is not None:
            progress.finish()
        return coefficients

    def _holdout_views(self, holdout: ExampleSplit, stacked: np.ndarray) -> list[dict[str, float]]:
        """Per column of ``stacked``: the holdout metrics of the full model, and (``global_only_``) of it alone."""
        labels, weights = holdout.column("labels"), holdout.column("weights")
        full, alone = holdout.margins(stacked), holdout.margins(stacked, "fixed_offsets")  # one pass for every model
        return [
            {
                **holdout_metrics(labels, weights, full[:, k], self.loss),
                **{
                    f"global_only_{key}": value
                    for key, value in holdout_metrics(labels, weights, alone[:, k], self.loss).items()
                    if key != "examples"
                },
            }
            for k in range(stacked.shape[1])
        ]

    def decide(
        self,
        result: RefitResult,
        model: GlobalModel,
        candidates: Mapping[str, np.ndarray],
        train: ExampleSplit,
        holdout: ExampleSplit,
        grew: bool = False,
    ) -> GateDecision:
        """Gate each of ``candidates`` against ``model`` on ``holdout``; publish the best that passes, and write files.

        A candidate passes when neither the full model nor the global model alone gets
        worse (:func:`stream.refit.gate.gate`); one refused at the full step is tried at
        the shorter ``STEPS`` towards it. Published: the longest passing step, and there
        the best full-model gate metric. With ``grew`` (``model`` carries a grown vocabulary), a version is published even
        when every candidate is refused or unchanged: the grown index with ``model``'s
        coefficients (status ``grown``), so the random effects can learn the new columns.
        """
        trials = {  # each candidate, and shorter steps towards it from the current coefficients
            (name, step): model.coefficients + step * (coefficients - model.coefficients)
            for step in STEPS
            for name, coefficients in candidates.items()
        }
        measured = self._holdout_views(holdout, np.column_stack([model.coefficients, *trials.values()]))
        result.current_metrics = measured[0]
        by_trial = dict(zip(trials, measured[1:]))
        result.candidates = {_trial_name(*trial): m for trial, m in by_trial.items()}
        decisions = {trial: gate(result.current_metrics, m, self.refit) for trial, m in by_trial.items()}
        chosen = choose_trial(decisions)
        (result.candidate, result.step), decision, coefficients = chosen, decisions[chosen], trials[chosen]
        result.candidate_metrics = by_trial[chosen]
        result.gate = f"{_trial_name(*chosen)} {decision.reason}"
        if not decision.passed:
            log.warning("refit: %s; version %d's coefficients stay", decision.reason, model.version)
            result.status = "refused"
            self.stats.refused += 1
        elif (change := _relative_change(coefficients, model.coefficients)) <= UNCHANGED:
            log.info("refit: coefficients within %.1e of version %d's", change, model.version)
            result.status = "unchanged"
            self.stats.unchanged += 1
        else:
            log.info("refit: %s", decision.reason)
            result.status = "published"
        if result.status != "published":
            if not grew:
                return decision
            coefficients, result.status = model.coefficients, "grown"
            result.gate += "; the grown feature index is published with the current coefficients"
        result.version, result.index_version = model.version + 1, model.index_version
        metrics = {f"holdout_{k}": v for k, v in result.candidate_metrics.items() if math.isfinite(v)}
        record = global_model_record(
            GameModel(self.settings.model.loss, coefficients),
            model.global_index,
            model.coordinate_indices,
            result.version,
            self.refit.model_name,
            metrics,
        )
        spec = self.spec(model.global_index.intercept)
        penalty = l2_precision_diagonal(len(coefficients), spec.l2, spec.intercept_l2, spec.intercept_column)
        data = train.hessian_diagonal(coefficients, self.loss, CANDIDATE_OFFSETS[result.candidate])
        variances = 1.0 / np.maximum(data + penalty, 1e-12)
        photon = PhotonModel(
            GLOBAL,
            [photon_key(k) for k in model.global_index.keys],
            coefficients.tolist(),
            variances.tolist(),
            self.settings.model.loss,
        )
        result.files = self._write_files(record, photon)
        self._publish(record)
        self.stats.published += 1
        return decision

    def _write_files(self, record: dict, photon: PhotonModel) -> list[str]:
        """The model as a GlobalModel container and a Photon-ML model file, each written whole (rename)."""
        directory = Path(self.settings.models_dir)
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{self.refit.model_name}-global-v{record['version']:06d}"
        targets = [
            (directory / f"{stem}.avro", lambda p: write_container(p, "GlobalModel", [record])),
            (directory / f"{stem}.photon.avro", lambda p: write_models(p, [photon])),
        ]
        for path, write in targets:
            temporary = path.with_name(f".{path.name}.tmp")
            write(temporary)
            temporary.replace(path)
        return [str(path) for path, _ in targets]

    def _publish_to_kafka(self, record: dict) -> None:
        prepare_topics(self.settings, self._bootstrap)
        producer = Producer(producer_config(self.settings.kafka, self._bootstrap))
        producer.produce(
            self.settings.topics.model_global, key=self.refit.model_name.encode(), value=self._codec.encode(record)
        )
        if producer.flush(30):
            raise RefitError(f"could not publish global model version {record['version']} within 30 s")
        log.info("refit: published global model version %d to %s", record["version"], self.settings.topics.model_global)
