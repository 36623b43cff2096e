"""``glmix demo``: the whole system on one machine, live, with no external service.

An embedded Kafka broker (librdkafka's mock cluster, the real wire protocol) or a real
cluster; a synthetic job-recommendation world whose events are produced in real time
(each when its arrival time comes); the whole pipeline in one process (joiner, one
updater per coordinate, archive); the HTTP scorer; and a periodic global refit. A
global model fitted on the world's history (its first requests, never streamed) is
published first — yesterday's batch model — so global-only is a fair baseline.

While it runs, one progress line a second: events/s, consumer lag, freshness, progressive
AUC of global-only vs GLMix, dead letters, the global model version, and a warning when
a stage lost records the broker deleted before it read them; ``/metrics`` is
served throughout. At the end: ``report.json`` and PNG plots from the archive's
progressive validation, and the ranking the scorer serves Alice and Annie — twins with
identical features and opposite tastes — with each coordinate's part of every score.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from confluent_kafka import Producer
from msgspec.structs import replace

from stream.archive.files import ArchiveFiles
from stream.codec import make_codec
from stream.config import Settings
from stream.consumers.joiner import JoinerStats
from stream.errors import GlmixError
from stream.evaluation.plots import write_plots
from stream.evaluation.progressive import collect, progressive_report
from stream.kafka import EmbeddedBroker, producer_config
from stream.metrics.kafka_statistics import KafkaStatistics
from stream.metrics.server import MetricsServer
from stream.model.export import fitted_global_model_record
from stream.model.game import GLOBAL
from stream.model.losses import get_loss
from stream.pipeline import Pipeline
from stream.refit.job import GlobalRefit, RefitError
from stream.scoring.http import BackgroundServer, ScoringService, build_app
from stream.scoring.scorer import Scorer
from stream.synthetic import World, WorldSpec, event_stream, labeled_impressions
from stream.synthetic.events import LabeledImpression
from stream.synthetic.sinks import event_topics_and_codecs, produce_items, produce_to_kafka
from stream.tables.follower import ModelFollower
from stream.updaters.updater import UpdaterStats

log = logging.getLogger(__name__)

ATTRIBUTION_WINDOW_MS = 10_000
ITEMS_PER_REQUEST = 5
HISTORY_SHARE = 0.2

DEMO_SETTINGS = {
    "joiner.attribution_window_ms": str(ATTRIBUTION_WINDOW_MS),
    "joiner.allowed_lateness_ms": "2000",
    "joiner.idle_input_ms": "1000",
    "joiner.emitted_retention_ms": "600000",
    "archive.roll_interval_ms": "1000",
    "metrics.port": "0",
    "log_level": "WARNING",
    "metrics.kafka_statistics_interval_ms": "1000",
    "refit.window_hours": "1",
    "refit.holdout_fraction": "0.2",
    "refit.min_examples": "500",
}
"""Settings the demo starts from (its clock is seconds, not hours); ``--set`` overrides them."""


@dataclass(frozen=True)
class DemoOptions:
    """How big and how long: ``events`` impressions over about ``duration_s`` seconds of live traffic."""

    events: int = 30_000
    duration_s: float = 60.0
    seed: int = 7
    refit_every_s: float = 20.0
    report_dir: Path = Path("demo-report")


@dataclass
class DemoRun:
    """What the demo saw, for the report."""

    produced: int = 0
    refits: list = field(default_factory=list)
    progress: list = field(default_factory=list)
    outrun_warned: bool = False


def demo_settings(settings: Settings, report_dir: Path, run_id: str) -> Settings:
    """``settings`` with the demo's own state directory, topic names and consumer groups (reruns never mix)."""
    topics = settings.topics
    prefix = f"glmix-demo-{run_id}."
    return replace(
        settings,
        state_dir=str(report_dir / "state"),
        kafka=replace(settings.kafka, group_prefix=f"glmix-demo-{run_id}"),
        topics=replace(
            topics,
            impressions=prefix + "impressions",
            interactions=prefix + "interactions",
            examples_by_member=prefix + "examples.by-member",
            examples_by_job=prefix + "examples.by-job",
            examples_prefix=prefix + "examples.by-",
            coefficients_prefix=prefix + "coefficients.",
            model_global=prefix + "model.global",
            dead_letter=prefix + "dead-letter",
            score_requests=prefix + "score-requests",
            score_results=prefix + "score-results",
            items=prefix + "items",
        ),
    )


def _world(options: DemoOptions, now_ms: int) -> World:
    requests = max(50, int(options.events / ITEMS_PER_REQUEST / (1 - HISTORY_SHARE)))
    gap_ms = max(1, int(options.duration_s * 1000 / (requests * (1 - HISTORY_SHARE))))
    start = now_ms - int(requests * HISTORY_SHARE * gap_ms)  # the history ends now; the stream is the next duration_s
    return World(
        WorldSpec(
            seed=options.seed,
            members=100,
            jobs=60,
            alice_annie_pairs=4,
            requests=requests,
            items_per_request=ITEMS_PER_REQUEST,
            attribution_window_ms=ATTRIBUTION_WINDOW_MS,
            mean_click_delay_ms=2_000,
            start_time_ms=start,
            mean_request_gap_ms=gap_ms,
            malformed_rate=0.01,
            duplicate_rate=0.02,
            out_of_order_rate=0.0,
            late_rate=0.01,
            orphan_rate=0.01,
            emerging_terms=10,
        )
    )


def _progress_line(elapsed: float, run: DemoRun, pipeline: Pipeline, statistics: KafkaStatistics) -> dict:
    joiner = pipeline.stats_of("joiner", JoinerStats)
    updaters = [pipeline.stats_of(n, UpdaterStats) for n in pipeline.stages if n in pipeline.settings.model.coordinates]
    window = joiner.progressive
    quality = window.quality() if window is not None and window.size else {}
    variants = list(quality)
    freshness = [float(np.median(s.freshness_ms)) / 1000 for s in updaters if s.freshness_ms]
    return {
        "t_s": round(elapsed, 1),
        "events_produced": run.produced,
        "events_per_s": round(run.produced / elapsed) if elapsed > 0 else 0,
        "examples": joiner.examples,
        "lag_messages": sum(sum(c.lag.values()) for c in statistics.latest()),
        "freshness_p50_s": max(freshness) if freshness else None,
        "auc_global": quality[variants[0]]["auc"] if variants else None,
        "auc_glmix": quality[variants[-1]]["auc"] if variants else None,
        "dead_letters": joiner.dead_lettered + sum(s.dead_lettered for s in updaters),
        "skipped_records": sum(runner.stats.skipped() for runner in pipeline.stages.values()),
        "refits": len(run.refits),
        "index_version": joiner.indexing.index_version if joiner.indexing else None,
        "index_columns": dict(joiner.indexing.index_columns) if joiner.indexing else {},
    }


OUTRUN_WINDOW = 10  # progress lines (seconds) over which the lag's rise is judged
OUTRUN_SHARE = 0.1  # the lag rising by this share of what was produced: the pipeline keeps up with less than 90%


def outrun(progress: Sequence[dict], window: int = OUTRUN_WINDOW) -> tuple[int, int] | None:
    """(events produced, lag risen) over the last ``window`` progress lines when the stream outruns the pipeline.

    The pipeline outruns when its consumer lag rose by more than ``OUTRUN_SHARE`` of the
    events produced meanwhile, at every line of the window: it takes in less than it is
    given, so freshness grows without bound until the input slows down. None otherwise.
    """
    if len(progress) <= window:
        return None
    recent = progress[-window - 1 :]
    if any(b["lag_messages"] <= a["lag_messages"] for a, b in itertools.pairwise(recent)):
        return None
    produced = recent[-1]["events_produced"] - recent[0]["events_produced"]
    risen = recent[-1]["lag_messages"] - recent[0]["lag_messages"]
    return (produced, risen) if produced > 0 and risen > OUTRUN_SHARE * produced else None


def _warn_if_outrun(run: DemoRun, out: TextIO) -> None:
    """Say once that the requested rate is more than this machine's pipeline sustains."""
    found = None if run.outrun_warned else outrun(run.progress)
    if found is None:
        return
    produced, risen = found
    run.outrun_warned = True
    out.write(
        f"          !! the stream outruns the pipeline: {produced} events produced and the lag rose by {risen} in "
        f"{OUTRUN_WINDOW} s, so freshness will keep growing; ask for fewer --events per --duration, or run "
        "the stages as separate processes (glmix run)\n"
    )


def _show(line: dict, out: TextIO) -> None:
    def fmt(value, pattern: str) -> str:
        return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else pattern.format(value)

    out.write(
        f"[{line['t_s']:6.1f}s] events {line['events_produced']:>7} ({line['events_per_s']:>5}/s)  "
        f"examples {line['examples']:>7}  lag {line['lag_messages']:>5}  "
        f"freshness p50 {fmt(line['freshness_p50_s'], '{:.2f}s'):>6}  "
        f"AUC global {fmt(line['auc_global'], '{:.3f}')} vs GLMix {fmt(line['auc_glmix'], '{:.3f}')}  "
        f"dead letters {line['dead_letters']}  refits {line['refits']}\n"
    )
    if line["skipped_records"]:
        out.write(
            f"          !! {line['skipped_records']} records deleted by the broker before a stage read them "
            "(never processed; see the ERROR lines)\n"
        )
    out.flush()


class _PeriodicRefit:
    """Runs the global refit every ``every_s`` in a background thread; keeps every result."""

    def __init__(self, refit: GlobalRefit, every_s: float, results: list) -> None:
        self._refit, self._every_s, self._results = refit, every_s, results
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="glmix-demo-refit", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self._results.append(self._refit.run_once().to_json())
            except RefitError as exc:
                log.info("demo refit skipped: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


def _alice_and_annie(
    world: World, settings: Settings, follower: ModelFollower, live: list[LabeledImpression]
) -> list[dict]:
    """What the scorer serves the Alice/Annie pair seen most in the stream: the same candidates, ranked for each twin."""
    if not world.truth.alice_annie:
        return []
    shown = Counter(li.impression["member_id"] for li in live)
    pair = max(range(len(world.truth.alice_annie)), key=lambda p: min(shown[m] for m in world.truth.alice_annie[p]))
    alice, annie = world.truth.alice_annie[pair]
    liked = World.truth_liked_title(pair)
    members = {m.entity_id: m for m in world.members}
    candidates = [j for j in world.jobs if j.bags["job_title"][0][1] == liked][:3]
    candidates += [j for j in world.jobs if j.bags["job_title"][0][1] != liked][:3]
    scorer = Scorer.following(settings.model, follower)

    def bags(entity) -> dict:
        return {b: [{"name": n, "term": t, "value": v} for n, t, v in f] for b, f in entity.bags.items()}

    out = []
    for who in (alice, annie):
        ranked = scorer.score(
            who,
            bags(members[who]),
            [{"item_id": j.entity_id, "features": bags(j)} for j in candidates],
            top_k=len(candidates),
        )
        titles = {j.entity_id: j.bags["job_title"][0][1] for j in candidates}
        out.append(
            {
                "member_id": who,
                "loves": liked if who == alice else f"anything but {liked}",
                "ranking": [
                    {
                        "item_id": s.item_id,
                        "title": titles[s.item_id],
                        "probability": round(s.probability, 3),
                        "breakdown": {k: round(v, 3) for k, v in s.breakdown.items()},
                        "versions": s.versions,
                    }
                    for s in ranked
                ],
            }
        )
    return out


def _wait_until_settled(pipeline: Pipeline, archive_stats, produced: int, timeout_s: float = 90.0) -> None:
    """Until the joiner has read every produced event and closed the windows it can, and every example is absorbed
    and archived.

    The last windows close only once both inputs have been idle for ``joiner.idle_input_ms`` (and the cached end
    offsets, refreshed every statistics interval, say nothing is left), so the example count must stand still for
    longer than that after the last event was read: on a loaded machine a fixed few seconds saw no window close yet.
    """
    settings = pipeline.settings
    joiner = pipeline.stats_of("joiner", JoinerStats)
    updaters = [pipeline.stats_of(n, UpdaterStats) for n in pipeline.stages if n in settings.model.coordinates]
    still_s = 2.0 + (settings.joiner.idle_input_ms + settings.metrics.kafka_statistics_interval_ms) / 1000
    deadline, last_change, last_count = time.monotonic() + timeout_s, time.monotonic(), -1
    while time.monotonic() < deadline and not pipeline.errors:
        now = time.monotonic()
        if joiner.consumed() < produced or joiner.examples != last_count:
            last_change, last_count = now, joiner.examples
        absorbed = all(s.examples == joiner.examples for s in updaters) and archive_stats.archived == joiner.examples
        if now - last_change >= still_s and absorbed:
            return
        time.sleep(0.25)
    if not pipeline.errors:
        log.warning(
            "the pipeline had not settled after %.0f s: the joiner read %d of %d events and emitted %d examples",
            timeout_s,
            joiner.consumed(),
            produced,
            joiner.examples,
        )


def run_demo(
    settings: Settings, options: DemoOptions, out: TextIO | None = None, on_running: Callable[[str], None] | None = None
) -> dict:
    """Run the demo and return its report (also written to ``report_dir/report.json``).

    Progress goes to ``out`` (standard error by default). ``on_running`` is called with the
    metrics URL once everything runs (tests scrape it).
    """
    out = out or sys.stderr  # looked up now: a default bound at import would outlive a replaced stderr
    run_id = uuid.uuid4().hex[:8]
    report_dir = Path(options.report_dir)
    shutil.rmtree(report_dir / "state", ignore_errors=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    broker = None
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        broker = EmbeddedBroker()
        bootstrap = broker.bootstrap_servers
        out.write(f"embedded Kafka (librdkafka mock cluster) at {bootstrap}\n")
    try:
        settings = demo_settings(
            replace(settings, kafka=replace(settings.kafka, bootstrap_servers=bootstrap)), report_dir, run_id
        )
        return _run(settings, options, report_dir, out, on_running)
    finally:
        if broker is not None:
            broker.close()


def _run(
    settings: Settings, options: DemoOptions, report_dir: Path, out: TextIO, on_running: Callable[[str], None] | None
) -> dict:
    started_ms = int(time.time() * 1000)
    world = _world(options, started_ms)
    labeled = labeled_impressions(world)
    cut = int(len(labeled) * HISTORY_SHARE) // ITEMS_PER_REQUEST * ITEMS_PER_REQUEST
    history, live = labeled[:cut], labeled[cut:]
    producer = Producer(producer_config(settings.kafka))
    record = fitted_global_model_record(
        [li.impression for li in history], np.array([float(li.clicked) for li in history]), settings.model
    )  # version 1: yesterday's batch model
    producer.produce(
        settings.topics.model_global,
        key=b"glmix",
        value=make_codec("GlobalModel", settings.topics.model_global).encode(record),
    )
    producer.flush()
    events = list(event_stream(world, live))
    out.write(
        f"synthetic world: {len(world.members)} members, {len(world.jobs)} jobs; global model v1 fitted on "
        f"{len(history)} historical impressions; streaming {len(live)} impressions "
        f"({len(events)} events) over ~{options.duration_s:.0f} s\n"
    )

    statistics = KafkaStatistics(settings.metrics.kafka_statistics_interval_ms)
    with ExitStack() as cleanup:
        pipeline = Pipeline(settings, statistics=statistics)
        metrics = MetricsServer(pipeline.metrics_collector(statistics), settings.metrics)
        cleanup.callback(metrics.close)
        produce_items(world, producer, settings)  # the job catalog: HTTP requests may name candidates by id alone
        follower = ModelFollower(
            settings, settings.kafka.bootstrap_servers, client_id=settings.kafka.group_id("scorer"), follow_items=True
        )
        cleanup.callback(follower.close)
        service = ScoringService(
            Scorer.following(settings.model, follower),
            settings.serving,
            follower.refresh,
            lambda: follower.ready and follower.global_model.current is not None,
        )
        http = BackgroundServer(build_app(service))
        cleanup.callback(http.close)
        refit = GlobalRefit(settings, settings.kafka.bootstrap_servers)
        run = DemoRun()
        out.write(f"metrics: {metrics.url}   scoring: {http.url}/v1/score   report: {report_dir}/\n")
        if on_running is not None:
            on_running(metrics.url)
        clock = time.monotonic()
        pipeline.start()
        refits = _PeriodicRefit(refit, options.refit_every_s, run.refits)
        try:
            _stream_live(
                events, producer, settings, run, pipeline, statistics, out, started_ms + int(options.duration_s * 1000)
            )
            _wait_until_settled(pipeline, pipeline.stages["archive"].stats, run.produced)
            refits.stop()
            try:  # one last refit over everything archived, so every demo shows the gate at work
                run.refits.append(refit.run_once().to_json())
            except RefitError as exc:
                log.warning("final demo refit skipped: %s", exc)
            run.progress.append(_progress_line(time.monotonic() - clock, run, pipeline, statistics))
            _show(run.progress[-1], out)
        finally:
            refits.stop()
            pipeline.stop()
        if pipeline.errors:
            raise GlmixError(f"pipeline stages failed: {pipeline.errors}")
        http_ok = _ask_http(http.url, world, service.scorer)
        latest = ModelFollower(settings, settings.kafka.bootstrap_servers, client_id=settings.kafka.group_id("report"))
        cleanup.callback(latest.close)
        latest.catch_up()
        twins = _alice_and_annie(world, settings, latest, live)
        seconds = time.monotonic() - clock
    return _report(settings, world, run, pipeline, twins, http_ok, report_dir, out, seconds)


def _stream_live(
    events: list,
    producer: Producer,
    settings: Settings,
    run: DemoRun,
    pipeline: Pipeline,
    statistics: KafkaStatistics,
    out: TextIO,
    stream_end_ms: int,
) -> None:
    """Produce each event when its arrival time comes (the tail at once after ``stream_end_ms``); a progress line a second."""
    topics, codecs = event_topics_and_codecs(settings)
    clock = next_line = time.monotonic()
    i = 0
    while i < len(events) and not pipeline.errors:
        now_ms = int(time.time() * 1000)
        if now_ms > stream_end_ms:  # the tail (late clicks, strays) arrives at once instead of a minute later
            now_ms = events[-1].arrival_ms
        due = i
        while due < len(events) and events[due].arrival_ms <= now_ms:
            due += 1
        if due > i:
            produce_to_kafka(events[i:due], producer, topics, codecs)
            run.produced += due - i
            i = due
        if time.monotonic() >= next_line:
            run.progress.append(_progress_line(time.monotonic() - clock, run, pipeline, statistics))
            _show(run.progress[-1], out)
            _warn_if_outrun(run, out)
            next_line += 1.0
        time.sleep(0.05)


def _percentiles_s(samples_ms: Sequence[float]) -> dict[str, float | None]:
    """p50 and p99 in seconds of the recent samples (as bench/pipeline.py computes them), None without samples."""
    if not samples_ms:
        return {"p50": None, "p99": None}
    ms = np.asarray(samples_ms, dtype=float)
    return {"p50": float(np.percentile(ms, 50)) / 1000, "p99": float(np.percentile(ms, 99)) / 1000}


def _history_lines(evaluation: dict) -> list[str]:
    """Full-model AUC by entity history, one line per coordinate: how new members and jobs are served."""
    lines = []
    for coordinate, buckets in evaluation.get("entity_history", {}).items():
        parts = []
        for bucket in buckets:
            variants = bucket["variants"]
            full, only = variants[list(variants)[-1]]["auc"], variants[GLOBAL]["auc"]
            if full is not None and only is not None:
                parts.append(f"{bucket['history']}: {only:.3f} / {full:.3f} ({bucket['examples']})")
        if parts:
            lines.append(f"AUC global-only / full by {coordinate} history (earlier examples): " + ", ".join(parts))
    return lines


def _freshness_line(report: dict[str, Any]) -> str:
    """Freshness as the benchmark states it, and why the demo's differs (what its clock starts from)."""
    parts = ", ".join(
        f"{n} p50 {q['p50']:.2f}s p99 {q['p99']:.2f}s" for n, q in report["freshness_s"].items() if q["p50"] is not None
    )
    line = f"freshness (label time -> coefficients published): {parts}; from {report['freshness_from']}"
    wait = report["freshness_includes_allowed_lateness_s"]
    if wait:
        line += (
            f", so it includes the joiner's wait of joiner.allowed_lateness_ms ({wait:.1f}s) for late clicks"
            " (bench/pipeline.py measures click -> coefficients with joiner.early_positives on)"
        )
    return line


def _skipped_line(report: dict[str, Any]) -> str:
    """How many records the broker deleted before a stage read them (a consumer behind retention), by stage."""
    skipped = {n: k for n, k in report["skipped_records"].items() if k}
    if not skipped:
        return "records deleted before a stage read them: none"
    return (
        f"records deleted before a stage read them (never processed): {sum(skipped.values())}, "
        + ", ".join(f"{n} {k} in {report['offset_resets'][n]} resets" for n, k in skipped.items())
        + " (the embedded broker keeps ~5 MiB per partition; on a cluster, raise retention.ms or add consumers)"
    )


def _ask_http(url: str, world: World, scorer: Scorer) -> bool:
    """One real request to the scoring service, candidates named by id alone (features from the items topic).

    True when it answers 200 with the same top 3 and margins as the scorer given every feature explicitly.
    """
    member = world.members[0]
    member_bags = {b: [{"name": n, "term": t, "value": v} for n, t, v in f] for b, f in member.bags.items()}
    body = {
        "member_id": member.entity_id,
        "member_features": member_bags,
        "candidates": [{"item_id": j.entity_id} for j in world.jobs[:10]],
        "top_k": 3,
    }
    request = urllib.request.Request(
        f"{url}/v1/score", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            return False
        answered = json.loads(response.read())["candidates"]
    listed = [
        {
            "item_id": j.entity_id,
            "features": {b: [{"name": n, "term": t, "value": v} for n, t, v in f] for b, f in j.bags.items()},
        }
        for j in world.jobs[:10]
    ]
    expected = scorer.score(member.entity_id, member_bags, listed, top_k=3)
    return [a["item_id"] for a in answered] == [e.item_id for e in expected] and all(
        abs(a["margin"] - e.margin) < 1e-9 for a, e in zip(answered, expected)
    )


def _vocabulary_over_time(progress: list[dict]) -> list[dict]:
    """Each coordinate's index size whenever the joiner took a new index version (from the progress lines)."""
    changes: list[dict] = []
    for line in progress:
        if line.get("index_columns") and (not changes or changes[-1]["index_version"] != line["index_version"]):
            changes.append(
                {"t_s": line["t_s"], "index_version": line["index_version"], "columns": line["index_columns"]}
            )
    return changes


def _report(
    settings: Settings,
    world: World,
    run: DemoRun,
    pipeline: Pipeline,
    twins: list,
    http_ok: bool,
    report_dir: Path,
    out: TextIO,
    seconds: float,
) -> dict:
    archived = list(ArchiveFiles(settings.archive_path).examples_between(0, 2**62))
    evaluation = progressive_report(
        collect(archived, list(settings.model.coordinates)),
        get_loss(settings.model.loss),
        history_edges=settings.metrics.history_edges,
    )
    plots = write_plots(evaluation, report_dir / "plots")
    variants = evaluation["variants"]
    names = list(variants)
    joiner = pipeline.stats_of("joiner", JoinerStats)
    updaters = {n: pipeline.stats_of(n, UpdaterStats) for n in pipeline.stages if n in settings.model.coordinates}
    report: dict[str, Any] = {
        "seconds": round(seconds, 1),
        "events_produced": run.produced,
        "examples": joiner.examples,
        "positives": joiner.positives,
        "dead_letters": joiner.dead_lettered + sum(s.dead_lettered for s in updaters.values()),
        "skipped_records": {n: runner.stats.skipped() for n, runner in pipeline.stages.items()},
        "stream_outran_pipeline": run.outrun_warned,
        "offset_resets": {n: sum(runner.stats.offset_resets.values()) for n, runner in pipeline.stages.items()},
        "entity_updates": {n: s.entity_updates for n, s in updaters.items()},
        "freshness_s": {n: _percentiles_s(s.freshness_ms) for n, s in updaters.items()},
        "freshness_from": "the click" if settings.joiner.early_positives else "the attribution window's close",
        "freshness_includes_allowed_lateness_s": 0.0
        if settings.joiner.early_positives
        else settings.joiner.allowed_lateness_ms / 1000,
        "progressive_auc": {name: variants[name]["auc"] for name in names},
        "progressive_log_loss": {name: variants[name]["log_loss"] for name in names},
        "observed_expected": {name: variants[name]["observed_expected"] for name in names},
        "glmix_beats_global_only": (variants[names[-1]]["auc"] or 0) > (variants[GLOBAL]["auc"] or 1),
        "refits": run.refits,
        "http_scoring_ok": http_ok,
        "alice_and_annie": twins,
        "plots": [str(p) for p in plots],
        "progress": run.progress,
        "vocabulary": _vocabulary_over_time(run.progress),
        "evaluation": evaluation,
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=1))
    auc = report["progressive_auc"]
    out.write(
        "\nprogressive AUC (each example scored before anyone learned from it): "
        + ", ".join(f"{k} {v:.3f}" for k, v in auc.items() if v is not None)
        + "\n"
    )
    out.write(_freshness_line(report) + "\n")
    out.write(_skipped_line(report) + "\n")
    out.writelines(line + "\n" for line in _history_lines(evaluation))
    published = sum(1 for r in run.refits if r["status"] in ("published", "grown"))
    out.write(f"global refits: {len(run.refits)} run, {published} published\n")
    if report["vocabulary"]:
        first, last = report["vocabulary"][0], report["vocabulary"][-1]
        out.write(
            f"vocabulary: index version {first['index_version']} -> {last['index_version']}; columns "
            + ", ".join(f"{k} {first['columns'].get(k)} -> {v}" for k, v in last["columns"].items())
            + "\n"
        )
    for twin in twins:
        out.write(f"\n{twin['member_id']} ({twin['loves']}):\n")
        for s in twin["ranking"]:
            parts = "  ".join(f"{k} {v:+.2f}" for k, v in s["breakdown"].items())
            out.write(f"  {s['item_id']}  {s['title']:<16} p={s['probability']:.3f}   {parts}\n")
    out.write(f"\nreport: {report_dir / 'report.json'}  plots: {report_dir / 'plots'}\n")
    return report
