"""The ``glmix`` command line: one entry point, one subcommand per job.

Settings are loaded once here (``--config`` TOML < ``GLMIX_*`` environment < ``--set``
and dedicated flags) and passed down; nothing below reads the environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException

from stream.config import ConfigError, Settings, load_settings
from stream.errors import GlmixError
from stream.scoring.workers import WORKER_FLAG, serve_workers

if TYPE_CHECKING:
    from stream.event_log import EventLog

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    setting_defaults = getattr(args, "setting_defaults", None)  # a subcommand's own defaults, read when it runs
    overrides = dict(setting_defaults() if setting_defaults is not None else {})
    overrides.update(_parse_set(item) for item in args.set)
    if getattr(args, "bootstrap_servers", None):
        overrides["kafka.bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "workers", None) is not None:
        overrides["serving.workers"] = str(args.workers)
    if getattr(args, "loss", None):
        overrides["model.loss"] = args.loss
    if getattr(args, "engine", None):
        overrides["refit.engine"] = args.engine
    return load_settings(args.config, env=os.environ, overrides=overrides)


def _parse_set(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(item, "--set takes KEY=VALUE, e.g. --set model.coordinates.member.l2=10")
    return key.strip(), value


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the embedded broker until interrupted, printing its bootstrap address."""
    from stream.kafka import EmbeddedBroker

    stop = _stop_event()
    with EmbeddedBroker(num_brokers=args.num_brokers) as broker:
        print(broker.bootstrap_servers, flush=True)
        broker.serve_until(stop)
    return 0


def _world_spec(args: argparse.Namespace):
    from stream.synthetic import WorldSpec

    names = {f.name for f in fields(WorldSpec)}
    return WorldSpec(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def cmd_produce_synthetic(args: argparse.Namespace, settings: Settings) -> int:
    """Generate a synthetic world and write it to Kafka or Avro container files."""
    from confluent_kafka import Producer

    from stream.kafka import producer_config
    from stream.kafka.clients import prepare_topics
    from stream.synthetic import World, event_stream
    from stream.synthetic.sinks import (
        event_topics_and_codecs,
        produce_items,
        produce_to_kafka,
        write_avro_files,
        write_ground_truth,
    )

    world = World(_world_spec(args))
    if args.truth:
        write_ground_truth(world.truth, args.truth)
    if args.to == "files":
        counts = write_avro_files(event_stream(world), args.output)
    else:
        topics, codecs = event_topics_and_codecs(settings)
        producer = Producer(producer_config(settings.kafka))
        prepare_topics(settings, settings.kafka.bootstrap_servers)
        counts = produce_to_kafka(event_stream(world), producer, topics, codecs)
        counts["items"] = produce_items(world, producer, settings)
    print(json.dumps(dict(counts)))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """The whole system live on the embedded broker (or a real cluster): progress, metrics, a report and plots."""
    from stream.demo import DemoOptions, run_demo

    options = DemoOptions(
        events=args.events,
        duration_s=args.duration,
        seed=args.seed,
        refit_every_s=args.refit_every,
        report_dir=args.report_dir,
    )
    report = run_demo(settings, options)
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "events_produced",
                    "examples",
                    "progressive_auc",
                    "glmix_beats_global_only",
                    "http_scoring_ok",
                    "plots",
                )
            }
        )
    )
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run pipeline stages until SIGTERM/SIGINT: the joiner, updaters, the streaming scorer, or all."""
    from stream.kafka.clients import prepare_topics
    from stream.metrics.kafka_statistics import KafkaStatistics
    from stream.metrics.server import MetricsServer
    from stream.pipeline import NAMED_STAGES, Pipeline

    if args.stage == "updater":
        if not args.coordinate:
            raise ConfigError(
                "--coordinate", f"glmix run updater needs --coordinate ({', '.join(settings.model.coordinates)})"
            )
        unknown = sorted(set(args.coordinate) - set(settings.model.coordinates))
        if unknown:
            raise ConfigError(
                "--coordinate", f"unknown coordinates {unknown}; configured: {', '.join(settings.model.coordinates)}"
            )
        stages: list[str] | None = list(args.coordinate)
    else:
        stages = [args.stage] if args.stage in NAMED_STAGES else None
    if not settings.kafka.bootstrap_servers:
        raise ConfigError("kafka.bootstrap_servers", "glmix run needs a broker: --bootstrap-servers, or run glmix demo")
    prepare_topics(settings)  # an unreachable broker is a one-line error here, not a failed stage thread
    statistics = KafkaStatistics(settings.metrics.kafka_statistics_interval_ms)
    pipeline = Pipeline(settings, stages, stop_event=_stop_event(), statistics=statistics)
    metrics = (
        MetricsServer(pipeline.metrics_collector(statistics), settings.metrics) if settings.metrics.enabled else None
    )
    pipeline.start()
    try:
        pipeline.wait()
    finally:
        if metrics is not None:
            metrics.close()
    if pipeline.errors:
        for name, error in pipeline.errors.items():
            print(f"glmix: stage {name} failed: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve POST /v1/score from the models on Kafka until SIGTERM/SIGINT."""
    from aiohttp import web

    from stream.scoring.http import ScoringService, build_app
    from stream.scoring.scorer import Scorer
    from stream.tables.follower import ModelFollower

    if not settings.kafka.bootstrap_servers:
        raise ConfigError("kafka.bootstrap_servers", "glmix serve needs a broker: --bootstrap-servers")
    if settings.serving.workers > 1 and args.worker_of_port is None:
        return serve_workers(args.argv, settings.serving)
    follower = ModelFollower(
        settings,
        settings.kafka.bootstrap_servers,
        client_id=settings.kafka.group_id("scorer"),
        keep_posteriors=settings.serving.exploration,
        follow_items=True,
    )
    service = ScoringService(
        Scorer.following(settings.model, follower),
        settings.serving,
        follower.refresh,
        lambda: follower.ready and follower.global_model.current is not None,
        follower.close,
    )
    if args.worker_of_port is not None:  # one of serve_workers' processes: share the port it holds
        web.run_app(
            build_app(service), host=settings.serving.host, port=args.worker_of_port, reuse_port=True, print=None
        )
        return 0
    web.run_app(
        build_app(service),
        host=settings.serving.host,
        port=settings.serving.port,
        shutdown_timeout=10,
        print=lambda message: print(message, flush=True),
    )
    return 0


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    """Score container files of Impressions (or, with --format photon, Photon-ML GAME input records) offline."""
    from stream.codec.game_input import GameInputMapping
    from stream.event_log import writer_schema_name
    from stream.progress import Progress
    from stream.scoring.offline import score_file, score_game_files
    from stream.scoring.scorer import Scorer
    from stream.tables.follower import ModelFollower

    if not settings.kafka.bootstrap_servers:
        raise ConfigError("kafka.bootstrap_servers", "glmix score reads the models from Kafka: --bootstrap-servers")
    for path in args.input:
        if not path.is_file():
            raise ConfigError("--input", f"no such file: {path}")
    impressions = [writer_schema_name(path) == "Impression" for path in args.input]
    if any(impressions) and not all(impressions):
        raise ConfigError("--input", "give Impression files or Photon-ML GAME input files, not both")
    game = not impressions[0]
    if game and args.format != "photon":
        raise ConfigError("--format", f"{args.input[0]} holds GAME input records: they are scored with --format photon")
    follower = ModelFollower(
        settings, settings.kafka.bootstrap_servers, client_id=settings.kafka.group_id("offline-scorer")
    )
    progress = Progress(f"scoring {', '.join(map(str, args.input))}")
    try:
        follower.catch_up(timeout_s=args.timeout)
        scorer = Scorer.following(settings.model, follower)
        if game:
            mapping = GameInputMapping.of(settings)
            scoring = score_game_files(scorer, args.input, args.output, mapping, settings.model.loss, progress=progress)
            outcome = {"scored": scoring.scored, "labeled": scoring.labeled, **scoring.metrics}
        else:
            outcome = {"scored": score_file(scorer, args.input, args.output, args.format, progress=progress)}
    finally:
        follower.close()
    print(json.dumps({**outcome, "output": str(args.output), "format": args.format}))
    return 0


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_s(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``1h`` or ``1d`` (a bare number is seconds)."""
    unit = text[-1:].lower()
    number = text[:-1] if unit in _DURATION_UNITS else text
    try:
        seconds = float(number) * _DURATION_UNITS.get(unit, 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 15m, 1h)") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a duration must be > 0, got {text!r}")
    return seconds


def _segment_field(field: str | None) -> str | None:
    """``--by``'s field, checked (None when not given)."""
    from stream.config.settings import SEGMENT_FIELDS, is_segment_field

    if field is not None and not is_segment_field(field):
        raise ConfigError(
            "--by", f"cannot group examples by {field!r}: use {', '.join(SEGMENT_FIELDS)} or context:<key>"
        )
    return field


def _latency_s(text: str) -> float:
    """A duration that may be 0 (``0`` or ``event``: every event alone), or ``200ms``."""
    if text in ("0", "event"):
        return 0.0
    if text.endswith("ms"):
        return _duration_s(text[:-2]) / 1000
    return _duration_s(text)


def _time_ms(text: str) -> int:
    """Epoch milliseconds from an ISO-8601 time (UTC unless it says otherwise) or a number of milliseconds."""
    from datetime import datetime, timezone

    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (ISO-8601 or epoch ms)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


def cmd_refit(args: argparse.Namespace, settings: Settings) -> int:
    """Refit the global model on archived examples; publish it if the gate passes. Once, or ``--every``."""
    from stream.refit.job import GlobalRefit, RefitError
    from stream.refit.schedule import next_refit_due

    if not settings.kafka.bootstrap_servers:
        raise ConfigError(
            "kafka.bootstrap_servers", "glmix refit reads and publishes models on Kafka: --bootstrap-servers"
        )
    refit = GlobalRefit(settings, settings.kafka.bootstrap_servers, show_progress=True)
    stop = _stop_event()
    metrics = None
    if args.every is not None and settings.metrics.enabled:
        from stream.metrics.collector import PipelineCollector
        from stream.metrics.server import MetricsServer

        metrics = MetricsServer(PipelineCollector({}, refit=refit.stats), settings.metrics)
    retry_s = settings.archive.roll_interval_ms / 1000
    due = time.monotonic()
    try:
        while True:
            skipped = False
            try:
                result = refit.run_once(args.from_ms, args.to_ms)
                print(json.dumps(result.to_json()), flush=True)
                skipped = result.status == "skipped"
            except RefitError as exc:
                if args.every is None:
                    raise
                refit.stats.skipped += 1  # a service started before the archive has data waits for it
                skipped = True
                log.warning("refit skipped: %s; next try in %.0f s", exc, min(retry_s, args.every))
            if args.every is None:
                return 0
            now = time.monotonic()
            due = next_refit_due(due, args.every, now, skipped=skipped, retry=retry_s)
            if stop.wait(max(0.0, due - now)):
                return 0
    finally:
        if metrics is not None:
            metrics.close()


def cmd_evaluate_progressive(args: argparse.Namespace, settings: Settings) -> int:
    """Progressive validation of the pipeline's archived examples: JSON report, and PNG plots with --plots."""
    from stream.archive.files import ArchiveFiles
    from stream.evaluation.progressive import collect, progressive_report
    from stream.model.losses import get_loss

    by = _segment_field(args.by)
    files = ArchiveFiles(args.archive or settings.archive_path)
    examples = files.examples_between(args.from_ms or 0, args.to_ms or 2**62)
    report = progressive_report(
        collect(examples, list(settings.model.coordinates), by),
        get_loss(settings.model.loss),
        windows=args.windows,
        top=args.top,
        history_edges=settings.metrics.history_edges,
    )
    if args.plots:
        from stream.evaluation.plots import write_plots

        report["plots"] = [str(p) for p in write_plots(report, args.plots)]
    print(json.dumps(report, indent=1))
    return 0


def cmd_evaluate_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Replay the current models (read from Kafka) on random-bucket impressions, beside a seeded random policy."""
    import numpy as np

    from stream.codec.container import read_container
    from stream.evaluation.replay import replay
    from stream.scoring.scorer import Scorer
    from stream.tables.follower import ModelFollower

    if not settings.kafka.bootstrap_servers:
        raise ConfigError(
            "kafka.bootstrap_servers", "glmix evaluate replay reads the models from Kafka: --bootstrap-servers"
        )
    labels = settings.joiner.labels
    outcome: dict[str, float] = {}
    for interaction in read_container(args.interactions, "Interaction"):
        label = labels.get(interaction["type"])
        if label is not None:
            outcome[interaction["impression_id"]] = max(label, outcome.get(interaction["impression_id"], label))
    served = [i for i in read_container(args.impressions, "Impression") if i["random_bucket"]]
    if not served:
        raise ConfigError("--impressions", f"{args.impressions} holds no random-bucket impressions to replay")
    follower = ModelFollower(settings, settings.kafka.bootstrap_servers, client_id=settings.kafka.group_id("replay"))
    try:
        follower.catch_up(timeout_s=args.timeout)
        margins, _ = Scorer.following(settings.model, follower).rows_breakdown(served)
    finally:
        follower.close()
    requests = np.array([i["request_id"] for i in served])
    positions = np.array([i["position"] for i in served])
    y = np.array([outcome.get(i["impression_id"], 0.0) for i in served])
    random_scores = np.random.default_rng(args.seed).random(len(served))
    print(
        json.dumps(
            {
                "model": replay(requests, positions, y, sum(margins.values(), np.zeros(len(served)))).to_json(),
                "random": replay(requests, positions, y, random_scores).to_json(),
            },
            indent=1,
        )
    )
    return 0


def cmd_evaluate_movielens(args: argparse.Namespace, settings: Settings) -> int:
    """Run the GDMix MovieLens-100K protocol on a local copy of ml-100k and print the AUCs."""
    from stream.evaluation.movielens import run_movielens

    result = run_movielens(Path(args.path), seed=args.seed, l2=args.l2, passes=args.passes, tune=args.tune)
    print(json.dumps(result, indent=1))
    return 0


def cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    """Build the first feature indexes, a fitted global model and random effects from history; publish them."""
    from stream.codec.container import write_container
    from stream.event_log import writer_schema_name
    from stream.progress import Progress
    from stream.refit.bootstrap import (
        BootstrapModel,
        PhotonBagRules,
        PhotonHistory,
        bootstrap_model,
        publish_bootstrap,
    )

    kinds = {path: writer_schema_name(path) for path in args.from_files or []}
    photon = [p for p, kind in kinds.items() if kind == "TrainingExampleAvro"]
    game = [p for p, kind in kinds.items() if kind not in ("TrainingExampleAvro", "Impression", "Interaction")]
    if (photon or game) and len(photon or game) != len(kinds):
        raise ConfigError(
            "--from", "give one kind of history: event files, Photon-ML TrainingExampleAvro files or GAME input files"
        )
    if (photon or game) and settings.refit.engine == "spark":
        raise ConfigError(
            "refit.engine", "Photon-ML training and GAME input files are bootstrapped by the local engine"
        )
    if game:
        from stream.refit.game_training import read_training_rows, train_rows, trained_import

        if args.photon_bag:
            raise ConfigError("--photon-bag", "maps the features of Photon-ML TrainingExampleAvro files only")
        rows = read_training_rows(settings, game)
        model = BootstrapModel.of_import(trained_import(settings, train_rows(settings, rows, None, GAME_PASSES)))
        read: dict = {"game_records": len(rows)}
    elif photon:
        history = PhotonHistory.read(photon, PhotonBagRules.parse(args.photon_bag or []), settings.model)
        model = BootstrapModel(history.model_record(settings.model))
        read = {
            "photon_records": len(history.impressions),
            "unmapped_features": dict(history.unmapped.most_common(10)),
        }
    else:
        if args.photon_bag:
            raise ConfigError("--photon-bag", "maps the features of Photon-ML TrainingExampleAvro files only")
        if settings.refit.engine == "spark":
            from stream.refit.spark import spark_bootstrap_model

            if args.from_topics:
                raise ConfigError("--from-topics", "the spark engine's executors read history files: give --from FILE")
            model, read = spark_bootstrap_model(settings, args.from_files)
        else:
            log = _event_log(args, settings)
            progress = Progress("bootstrap: labeling the history", total=len(log), unit="events")
            model = bootstrap_model(settings, log.events, progress)
            progress.finish()
            read = {"events": len(log), "invalid_events": log.invalid}
    record = model.record
    if args.output:
        write_container(args.output, "GlobalModel", [record])
    if not args.no_publish:
        publish_bootstrap(settings, model)
    print(
        json.dumps(
            {
                **read,
                "version": record["version"],
                "index_version": record["index_version"],
                "global_features": len(record["features"]),
                "coordinate_features": {k: len(v) for k, v in record["coordinate_indices"].items()},
                "entities": {k: len(e.entity_ids) for k, e in model.random_effects.items()},
                "engine": settings.refit.engine,
                "published_to": None if args.no_publish else settings.topics.model_global,
                "output": str(args.output) if args.output else None,
            }
        )
    )
    return 0


def _event_log(args: argparse.Namespace, settings: Settings) -> EventLog:
    """The event log the command names: container files, or a time range of the input topics."""
    from stream.event_log import EventLog
    from stream.progress import Progress

    if not args.from_topics:
        if args.since is not None or args.until is not None:
            raise ConfigError("--since", "--since and --until select events of --from-topics, not of files")
        progress = Progress("reading the event log", unit="records")
        log = EventLog.from_paths(args.from_files, settings, progress)
    else:
        if not settings.kafka.bootstrap_servers:
            raise ConfigError("kafka.bootstrap_servers", "--from-topics reads the input topics: --bootstrap-servers")
        if args.since is None:
            raise ConfigError("--since", "--from-topics needs the first event time of the range")
        until = args.until if args.until is not None else int(time.time() * 1000)
        progress = Progress("reading the event log", unit="events")
        log = EventLog.from_topics(settings, args.since, until, progress=progress)
    progress.finish()
    return log


GAME_PASSES = 2  # coordinate-descent passes of glmix train (--passes) and of glmix bootstrap from GAME input


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    """Batch GAME by coordinate descent on Photon-ML GAME input files; validation metrics; a GAME model directory."""
    from stream.codec.photon_game import check_writable, write_game_model
    from stream.progress import Progress
    from stream.refit.game_models import optimization_configurations
    from stream.refit.game_training import read_training_rows, step_json, train_rows, trained_game_files

    if args.passes < 1:
        raise ConfigError("--passes", f"must be >= 1, got {args.passes}")
    if args.output is not None:
        check_writable(args.output)
    progress = Progress("reading GAME input") if sys.stderr.isatty() else None
    train = read_training_rows(settings, args.from_files, progress)
    validation = read_training_rows(settings, args.validate, progress) if args.validate else None
    if progress is not None:
        progress.finish()
    trained = train_rows(
        settings, train, validation, args.passes, lambda step: print(json.dumps(step_json(step)), flush=True)
    )
    if args.output is not None:
        write_game_model(args.output, trained_game_files(settings, trained), optimization_configurations(settings))
    result = trained.result
    print(
        json.dumps(
            {
                "train_records": len(train),
                "validation_records": 0 if validation is None else len(validation),
                "loss": settings.model.loss,
                "passes": args.passes,
                "global_features": trained.global_index.dim,
                "coordinates": {
                    name: {
                        "entities": len(result.model.random_effects[name].entity_ids)
                        if name in result.model.random_effects
                        else 0,
                        "features": index.dim,
                    }
                    for name, index in trained.coordinate_indices.items()
                },
                "best": step_json(result.history[result.best_step]) if result.history else None,
                "output": None if args.output is None else str(args.output),
            }
        )
    )
    return 0


def cmd_import_photon(args: argparse.Namespace, settings: Settings) -> int:
    """Publish a Photon-ML GAME model directory as the first global model and every entity's coefficients."""
    from stream.refit.game_models import plan_import, publish_import

    plan = plan_import(settings, args.model)
    if not args.dry_run:
        publish_import(settings, plan)
    print(json.dumps({**plan.mapping(), "published": not args.dry_run}, indent=1))
    return 0


def cmd_export_photon(args: argparse.Namespace, settings: Settings) -> int:
    """Write the current global model and every coordinate's latest coefficients as a Photon-ML GAME model directory."""
    from stream.refit.game_models import export_game_model

    print(json.dumps(export_game_model(settings, args.output)))
    return 0


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    """Replay an event log through the live join and update code; print the progressive report as JSON."""
    from stream.backtest.replay import Backtest, BacktestOptions
    from stream.codec.container import read_container
    from stream.progress import Progress

    log = _event_log(args, settings)
    model = None
    if args.model:
        if not args.model.is_file():
            raise ConfigError("--model", f"no such file: {args.model}")
        model = next(iter(read_container(args.model, "GlobalModel")), None)
    options = BacktestOptions(
        latency_ms=int(args.latency * 1000), refit_every_ms=int((args.refit_every or 0) * 1000), windows=args.windows
    )
    progress = Progress("backtest", total=len(log), unit="events")
    result = Backtest(settings, options, model).run(log.events, progress)
    progress.finish()
    report = {"invalid_events": log.invalid, **result.report}
    text = json.dumps(report, indent=1)
    if args.report:
        args.report.write_text(text)
    print(text)
    return 0


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    """Choose every coordinate's prior and the global L2 by backtest on the log before the split; judge them after it."""
    from stream.backtest.replay import BacktestOptions
    from stream.backtest.tune import tune
    from stream.progress import Progress

    if not 0 < args.split < 1:
        raise ConfigError("--split", f"must be a share of the log's impressions in (0, 1), got {args.split}")
    log = _event_log(args, settings)
    options = BacktestOptions(latency_ms=int(args.latency * 1000), refit_every_ms=int((args.refit_every or 0) * 1000))
    progress = Progress("tune", unit="events")  # its total is the tune's: every trial's events
    result = tune(settings, log.events, options, args.split, progress=progress)
    progress.finish()
    print(
        json.dumps(
            {
                "split_event_time_ms": result.split_ms,
                "chosen": result.chosen,
                "validation_auc": result.validation_auc,
                "evaluation_auc": result.evaluation_auc,
                "trials": len(result.trials),
            },
            indent=1,
        )
    )
    print(result.toml(), end="")
    return 0


def cmd_compile(args: argparse.Namespace, settings: Settings) -> int:
    """Compile the joiner's, the scorer's and the updaters' numba kernels into numba's on-disk cache (once per install or upgrade)."""
    import numpy as np

    from stream.codec.avro import SingleObjectCodec
    from stream.codec.columnar import bags
    from stream.codec.schemas import load_schema
    from stream.consumers.labeling import warm_up_join_kernels
    from stream.model.losses import get_loss
    from stream.updaters.examples import ExampleReader
    from stream.updaters.state_update import CoordinateMath

    started = time.monotonic()
    examples = warm_up_join_kernels(settings)
    bags.warm_up()  # the scorer's request features into the join's lookup
    codec = SingleObjectCodec(load_schema("LabeledExample"))
    for name, coordinate in settings.model.coordinates.items():
        math = CoordinateMath.of(coordinate, get_loss(settings.model.loss))
        math.warm_up()
        ExampleReader(codec, name, math.layout.dim).read(examples, np.zeros(len(examples), dtype=np.int64))
    print(f"compiled kernels ready in {time.monotonic() - started:.1f} s")
    return 0


def _demo_setting_defaults() -> dict[str, str]:
    from stream.demo import DEMO_SETTINGS  # imported only when the demo runs: the module is heavy (plots, stages)

    return dict(DEMO_SETTINGS)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``glmix`` and all its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML settings file")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set topics.partitions=8 (repeatable)",
    )
    common.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (overrides kafka.bootstrap_servers)")

    parser = argparse.ArgumentParser(prog="glmix", description="Streaming GLMix models on Kafka.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = sub.add_parser("broker", parents=[common], help="run the embedded Kafka broker (librdkafka mock cluster)")
    broker.add_argument("--num-brokers", type=int, default=1, help="brokers in the mock cluster (default 1)")
    broker.set_defaults(handler=cmd_broker)

    produce = sub.add_parser("produce", help="produce data into Kafka or files")
    produce_sub = produce.add_subparsers(dest="source", required=True, metavar="SOURCE")
    synthetic = produce_sub.add_parser(
        "synthetic", parents=[common], help="a synthetic world with known true coefficients"
    )
    synthetic.add_argument("--seed", type=int, default=7, help="seed of the world and its events (default 7)")
    synthetic.add_argument("--members", type=int, help="members in the world (default 200)")
    synthetic.add_argument("--jobs", type=int, help="jobs in the world (default 100)")
    synthetic.add_argument("--requests", type=int, help="requests served, each showing several jobs (default 2000)")
    synthetic.add_argument("--items-per-request", type=int, help="jobs shown per request (default 5)")
    synthetic.add_argument(
        "--alice-annie-pairs", type=int, help="pairs of members with the same features and opposite tastes (default 2)"
    )
    for rate, what in (
        ("duplicate", "events sent twice"),
        ("out-of-order", "events that arrive up to a minute late"),
        ("late", "clicks after the attribution window"),
        ("orphan", "interactions with no impression"),
        ("malformed", "records a correct pipeline must dead-letter"),
        ("random-bucket", "requests ranked at random"),
    ):
        synthetic.add_argument(f"--{rate}-rate", type=float, help=f"share of {what}")
    synthetic.add_argument(
        "--to",
        choices=("kafka", "files"),
        default="kafka",
        help="write to Kafka (--bootstrap-servers) or to Avro container files (--output)",
    )
    synthetic.add_argument("--output", type=Path, default=Path("out/synthetic"), help="directory for --to files")
    synthetic.add_argument("--truth", type=Path, help="write the true coefficients to this JSON file")
    synthetic.set_defaults(handler=cmd_produce_synthetic)

    compile_parser = sub.add_parser(
        "compile",
        parents=[common],
        help="compile the join's and the Newton solver's kernels into numba's cache (else the first stage start does, ~15 s)",
    )
    compile_parser.set_defaults(handler=cmd_compile)

    demo = sub.add_parser(
        "demo", parents=[common], help="the whole pipeline live on the embedded broker, with a report"
    )
    demo.add_argument("--events", type=int, default=30_000, help="impressions to stream (default 30000)")
    demo.add_argument(
        "--duration", type=_duration_s, default=60.0, help="how long the live traffic lasts (default 60s)"
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the synthetic world (default 7)")
    demo.add_argument("--refit-every", type=_duration_s, default=20.0, help="global refit interval (default 20s)")
    demo.add_argument("--report-dir", type=Path, default=Path("demo-report"), help="where report.json and plots go")
    demo.set_defaults(handler=cmd_demo, setting_defaults=_demo_setting_defaults)

    run = sub.add_parser("run", parents=[common], help="run pipeline stages until SIGTERM")
    run.add_argument(
        "stage",
        choices=("joiner", "updater", "archive", "stream-scorer", "all"),
        help="all = the joiner and every coordinate's updater",
    )
    run.add_argument("--coordinate", action="append", help="with 'updater': the coordinate to update (repeatable)")
    run.set_defaults(handler=cmd_run)

    serve = sub.add_parser("serve", parents=[common], help="the scoring HTTP service (POST /v1/score)")
    serve.add_argument("--workers", type=int, help="scoring processes on the port, one per core (serving.workers)")
    serve.add_argument(WORKER_FLAG, dest="worker_of_port", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_serve)

    score = sub.add_parser("score", parents=[common], help="score a file of candidates offline")
    score.add_argument(
        "--input",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="Avro container files of Impression records, or (with --format photon) Photon-ML GAME input records",
    )
    score.add_argument("--output", type=Path, required=True, help="Avro container file to write")
    score.add_argument(
        "--format",
        choices=("glmix", "photon"),
        default="glmix",
        help="ScoredCandidate records, or Photon-ML ScoringResultAvro (with RMSE, or AUC and log loss, of"
        " GAME inputs that carry a response)",
    )
    score.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the models to load")
    score.set_defaults(handler=cmd_score)

    engine = argparse.ArgumentParser(add_help=False)
    engine.add_argument(
        "--engine",
        choices=("local", "spark"),
        help="where the examples are read and the model fitted: this process, or Spark (overrides refit.engine)",
    )
    refit = sub.add_parser(
        "refit", parents=[common, engine], help="refit the global model on archived examples (gated)"
    )
    refit.add_argument(
        "--from",
        dest="from_ms",
        type=_time_ms,
        help="window start (ISO-8601 or epoch ms); default: refit.window_hours before --to",
    )
    refit.add_argument(
        "--to", dest="to_ms", type=_time_ms, help="window end; default: just after the newest archived example"
    )
    refit.add_argument("--every", type=_duration_s, help="keep running, one refit per interval (e.g. 1h)")
    refit.set_defaults(handler=cmd_refit)

    event_log = argparse.ArgumentParser(add_help=False)
    source = event_log.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from",
        dest="from_files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="Impression and Interaction Avro container files (told apart by their schema)",
    )
    source.add_argument(
        "--from-topics",
        action="store_true",
        help="the impressions and interactions topics (--bootstrap-servers), events between --since and --until",
    )
    event_log.add_argument("--since", type=_time_ms, help="with --from-topics: first event time (ISO-8601 or epoch ms)")
    event_log.add_argument("--until", type=_time_ms, help="with --from-topics: end event time (exclusive; default now)")
    replay_options = argparse.ArgumentParser(add_help=False)
    replay_options.add_argument(
        "--latency",
        type=_latency_s,
        default=1.0,
        help="update latency: micro-batches of this much event time (e.g. 200ms, 1s; 0 = every event)",
    )
    replay_options.add_argument(
        "--refit-every",
        type=_duration_s,
        help="event time between global refits with vocabulary growth (default: none)",
    )

    bootstrap = sub.add_parser(
        "bootstrap",
        parents=[common, event_log, engine],
        help="first feature indexes, a fitted global model and random effects from history (event files, a topic"
        " range, Photon-ML TrainingExampleAvro files, or Photon-ML GAME input files), published as version 1",
    )
    bootstrap.add_argument("--output", type=Path, help="also write the GlobalModel record to this container file")
    bootstrap.add_argument("--no-publish", action="store_true", help="do not publish to model.global (with --output)")
    bootstrap.add_argument(
        "--photon-bag",
        action="append",
        metavar="PATTERN=BAG",
        help="Photon-ML files: the feature bag of features named PATTERN (shell-style; repeatable; first match wins;"
        " default: the bag of the feature's own name)",
    )
    bootstrap.set_defaults(handler=cmd_bootstrap)

    backtest = sub.add_parser(
        "backtest",
        parents=[common, event_log, replay_options],
        help="replay an event log through the live join and update code (progressive report)",
    )
    backtest.add_argument(
        "--model",
        type=Path,
        help="GlobalModel container file to start from (glmix bootstrap --output); default: the joiner's warm-up",
    )
    backtest.add_argument("--windows", type=int, default=10, help="time windows for the over-time metrics")
    backtest.add_argument("--report", type=Path, help="also write the JSON report to this file")
    backtest.set_defaults(handler=cmd_backtest)

    tune_parser = sub.add_parser(
        "tune",
        parents=[common, event_log, replay_options],
        help="choose each coordinate's prior and the global L2 by backtest (prints TOML)",
    )
    tune_parser.add_argument(
        "--split",
        type=float,
        default=0.7,
        help="share of the log's impressions, in time order, used to choose (the rest judges the choice; default 0.7)",
    )
    tune_parser.set_defaults(handler=cmd_tune)

    train_parser = sub.add_parser(
        "train",
        parents=[common],
        help="batch GAME by coordinate descent on Photon-ML GAME input files, written as a GAME model directory",
    )
    train_parser.add_argument(
        "--from",
        dest="from_files",
        nargs="+",
        type=Path,
        required=True,
        metavar="FILE",
        help="GAME input container files to train on (fields mapped by the [game_input] settings)",
    )
    train_parser.add_argument(
        "--validate",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="GAME input files to score every coordinate update on (AUC for logistic, RMSE otherwise); the best"
        " update is the model written",
    )
    train_parser.add_argument("--output", type=Path, help="GAME model directory to write (new or empty)")
    train_parser.add_argument(
        "--loss", choices=("logistic", "linear", "poisson"), help="the model's loss (overrides model.loss)"
    )
    train_parser.add_argument(
        "--passes", type=int, default=GAME_PASSES, help=f"coordinate-descent passes (default {GAME_PASSES})"
    )
    train_parser.set_defaults(handler=cmd_train)

    import_parser = sub.add_parser("import", help="bring a model made elsewhere onto the model topics")
    import_sub = import_parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    import_photon = import_sub.add_parser(
        "photon",
        parents=[common],
        help="a Photon-ML GAME model directory, published as version 1 and every entity's coefficients",
    )
    import_photon.add_argument("--model", type=Path, required=True, help="the GAME model directory")
    import_photon.add_argument(
        "--dry-run", action="store_true", help="print the mapping (coordinate -> topic, entities, features) only"
    )
    import_photon.set_defaults(handler=cmd_import_photon)
    export_parser = sub.add_parser("export", help="write the models on the topics in another format")
    export_sub = export_parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    export_photon = export_sub.add_parser(
        "photon", parents=[common], help="the current models as a Photon-ML GAME model directory"
    )
    export_photon.add_argument("--output", type=Path, required=True, help="directory to write (new or empty)")
    export_photon.set_defaults(handler=cmd_export_photon)

    evaluate = sub.add_parser("evaluate", help="offline evaluation protocols")
    evaluate_sub = evaluate.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    progressive = evaluate_sub.add_parser(
        "progressive", parents=[common], help="progressive validation of archived examples (predict, then update)"
    )
    progressive.add_argument("--archive", help="archive path (default: the archive.path setting)")
    progressive.add_argument("--from", dest="from_ms", type=_time_ms, help="first event time (ISO-8601 or epoch ms)")
    progressive.add_argument("--to", dest="to_ms", type=_time_ms, help="end event time (exclusive)")
    progressive.add_argument("--windows", type=int, default=10, help="time windows for the over-time metrics")
    progressive.add_argument("--plots", type=Path, help="directory for the PNG plots")
    progressive.add_argument(
        "--by",
        help="also report per value of this field: member_id, item_id, random_bucket, "
        "position or context:<key> (e.g. context:activity_type)",
    )
    progressive.add_argument(
        "--top", type=int, default=10, help="with --by: values reported one by one, the rest as (other) (default 10)"
    )
    progressive.set_defaults(handler=cmd_evaluate_progressive)
    replay_parser = evaluate_sub.add_parser(
        "replay", parents=[common], help="replay the current models on random-bucket impressions"
    )
    replay_parser.add_argument(
        "--impressions", type=Path, required=True, help="Avro container file of Impression records"
    )
    replay_parser.add_argument(
        "--interactions", type=Path, required=True, help="Avro container file of Interaction records"
    )
    replay_parser.add_argument("--seed", type=int, default=0, help="seed of the random policy it is compared with")
    replay_parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the models to load")
    replay_parser.set_defaults(handler=cmd_evaluate_replay)
    movielens = evaluate_sub.add_parser("movielens", parents=[common], help="GDMix's MovieLens-100K protocol")
    movielens.add_argument("--path", required=True, help="directory with u.data, u.user and u.item")
    movielens.add_argument("--seed", type=int, default=0, help="seed of the random 80/20 split (default 0)")
    movielens.add_argument("--l2", type=float, default=1.0, help="every coordinate's L2 unless --tune (default 1)")
    movielens.add_argument("--passes", type=int, default=2, help="coordinate-descent passes")
    movielens.add_argument(
        "--tune", action="store_true", help="choose each coordinate's L2 on a validation split of the training data"
    )
    movielens.set_defaults(handler=cmd_evaluate_movielens)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``glmix`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = _settings(args)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.handler(args, settings)
    except GlmixError as exc:
        print(f"glmix: error: {exc}", file=sys.stderr)
        return 2
    except (KafkaException, OSError) as exc:  # the boundary's last net: a user's broker or file, never a traceback
        print(f"glmix: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """What went wrong, in one line (librdkafka errors by their own description)."""
    error = exc.args[0] if exc.args else exc
    text = error.str() if hasattr(error, "str") else str(exc)
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text else ""
    return " ".join(f"{text}{where}".split())


if __name__ == "__main__":
    sys.exit(main())
