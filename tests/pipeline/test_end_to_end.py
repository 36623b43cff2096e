"""The whole pipeline over the kafka_bootstrap broker: synthetic events -> joined examples -> published coefficients.

One module-scoped run (a few seconds) feeds every test here: a synthetic world with
duplicates, out-of-order, late and orphan interactions and 10% malformed records is
produced; a global model fitted on the first 30% of the (clean) history is published;
then the joiner and both updaters run until every valid record has been processed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream.archive.files import ArchiveFiles
from stream.event_log import replay_order
from stream.backtest.replay import Backtest, BacktestOptions
from stream.codec import make_codec
from stream.codec.validation import impression_problem, interaction_problem
from stream.config import Settings, load_settings
from stream.consumers.labeling import JoinInput
from stream.evaluation.progressive import collect, progressive_report
from stream.kafka import producer_config
from stream.metrics.kafka_statistics import KafkaStatistics
from stream.model.export import fitted_global_model_record
from stream.model.losses import LogisticLoss
from stream.model.metrics import auc
from stream.pipeline import Pipeline
from stream.refit.job import GlobalRefit
from stream.synthetic import IMPRESSION, INTERACTION, World, WorldSpec, event_stream, labeled_impressions
from stream.synthetic.sinks import event_topics_and_codecs, produce_to_kafka
from stream.tables.models import GlobalModel
from tests.helpers import read_topic, wait_for

pytestmark = pytest.mark.kafka

WINDOW_MS = 60_000
LATENESS_MS = 65_000  # out-of-order arrivals are up to 60 s late, so no in-window click arrives after its window closed
POSITIVE = {"CLICK", "APPLY"}


@dataclass
class PipelineRun:
    settings: Settings
    world: World
    events: list
    stats: dict
    bootstrap: str
    warmup_end_ms: int
    model_record: dict


def _settings(bootstrap: str, tmp_path, suffix: str) -> Settings:
    names = {
        "topics.impressions": f"imp-{suffix}", "topics.interactions": f"int-{suffix}",
        "topics.examples_by_member": f"ex-member-{suffix}", "topics.examples_by_job": f"ex-job-{suffix}",
        "topics.coefficients_prefix": f"coef-{suffix}-", "topics.model_global": f"global-{suffix}",
        "topics.dead_letter": f"dlq-{suffix}",
    }
    return load_settings(overrides={
        **names,
        "kafka.bootstrap_servers": bootstrap,
        "kafka.group_prefix": f"glmix-{suffix}",
        "state_dir": str(tmp_path),
        "joiner.attribution_window_ms": str(WINDOW_MS),
        "joiner.allowed_lateness_ms": str(LATENESS_MS),
        "joiner.batch_size": "2000",
        "joiner.idle_input_ms": "1000",
        "joiner.emitted_retention_ms": str(30 * 60_000),  # longer than the stream: no impression is forgotten
        "archive.roll_interval_ms": "300",
        "metrics.kafka_statistics_interval_ms": "500",
        "model.coordinates.member.l2": "1.0",
        "model.coordinates.job.l2": "1.0",
    })


@pytest.fixture(scope="module")
def run(kafka_bootstrap, tmp_path_factory) -> PipelineRun:
    suffix = uuid.uuid4().hex[:8]
    settings = _settings(kafka_bootstrap, tmp_path_factory.mktemp("state"), suffix)
    spec = WorldSpec(seed=11, members=40, jobs=30, requests=4000, items_per_request=5, attribution_window_ms=WINDOW_MS,
                     malformed_rate=0.10, duplicate_rate=0.03, out_of_order_rate=0.05, late_rate=0.03, orphan_rate=0.02)
    world = World(spec)
    labeled = labeled_impressions(world)
    warmup = labeled[: int(0.3 * len(labeled))]
    producer = Producer(producer_config(settings.kafka))
    record = fitted_global_model_record([li.impression for li in warmup], [float(li.clicked) for li in warmup],
                                        settings.model)
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    events = list(event_stream(world, labeled))
    topics, codecs = event_topics_and_codecs(settings)

    statistics = KafkaStatistics(settings.metrics.kafka_statistics_interval_ms)
    pipeline = Pipeline(settings, statistics=statistics)
    joiner, member, job, archive = (pipeline.stages[n] for n in ("joiner", "member", "job", "archive"))
    pipeline.start()
    started = time.monotonic()
    valid = 0
    try:  # the stream arrives in chunks, as if live, so examples are joined with models that learned from earlier ones
        for chunk in np.array_split(np.arange(len(events)), 12):
            part = [events[i] for i in chunk]
            produce_to_kafka(part, producer, topics, codecs)
            valid += sum(1 for e in part if not e.malformed)
            wait_for(lambda n=valid: joiner.stats.join.impressions + joiner.stats.join.interactions == n or pipeline.errors,
                     timeout_s=120, what="the joiner to read every valid record")
            wait_for(lambda: member.stats.examples == joiner.stats.examples == job.stats.examples or pipeline.errors,
                     timeout_s=120, what="both updaters to absorb every example")
        # then every input goes idle, so each partition's watermark reaches its newest event
        settled = []
        wait_for(lambda: _settled(settled, joiner.stats.examples) and member.stats.examples == job.stats.examples
                 == joiner.stats.examples or pipeline.errors, timeout_s=60, interval_s=0.5, what="the last windows to close")
        wait_for(lambda: archive.stats.archived == joiner.stats.examples or pipeline.errors, timeout_s=60,
                 what="the archive to hold every example")
        metrics = generate_latest(_registry(pipeline.metrics_collector(statistics))).decode()  # a scrape while running
    finally:
        pipeline.stop()
    assert not pipeline.errors
    elapsed = time.monotonic() - started
    stats = {"joiner": joiner.stats, "member": member.stats, "job": job.stats, "archive": archive.stats, "seconds": elapsed,
             "metrics": metrics}
    return PipelineRun(settings, world, events, stats, kafka_bootstrap, warmup[-1].impression["event_time"], record)


def _registry(collector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def _settled(history: list, value: int, quiet_checks: int = 6) -> bool:
    """True once ``value`` has not changed over the last ``quiet_checks`` calls."""
    history.append(value)
    return len(history) > quiet_checks and len(set(history[-quiet_checks:])) == 1


def _decode_all(run: PipelineRun, topic: str, schema: str) -> list[dict]:
    codec = make_codec(schema, topic)
    return [codec.decode(m.value()) for m in read_topic(run.bootstrap, topic)]


def _expected_labels(events) -> tuple[dict[str, int], dict[str, float]]:
    """An independent statement of the join: first impression per id, positive iff a click/apply within the window."""
    times: dict[str, int] = {}
    for e in events:
        if e.kind == IMPRESSION and not e.malformed:
            times.setdefault(e.record["impression_id"], e.record["event_time"])
    labels = {i: 0.0 for i in times}
    for e in events:
        if e.kind == INTERACTION and not e.malformed and e.record["type"] in POSITIVE:
            t0 = times.get(e.record["impression_id"])
            if t0 is not None and e.record["event_time"] - t0 <= WINDOW_MS:
                labels[e.record["impression_id"]] = 1.0
    return times, labels


def _final_watermarks(run: PipelineRun) -> dict[int, int]:
    """Each partition's watermark once both its inputs are idle: its newest valid event time minus the lateness."""
    newest: dict[int, int] = {}
    for topic, schema in ((run.settings.topics.impressions, "Impression"), (run.settings.topics.interactions, "Interaction")):
        codec = make_codec(schema, topic)
        for m in read_topic(run.bootstrap, topic):
            try:
                record = codec.decode(m.value())
            except Exception:
                continue
            if (impression_problem if schema == "Impression" else interaction_problem)(record) is None:
                newest[m.partition()] = max(newest.get(m.partition(), 0), record["event_time"])
    return {p: t - LATENESS_MS for p, t in newest.items()}


def _partition_of(run: PipelineRun) -> dict[str, int]:
    """The input partition of every member (keys are member ids)."""
    return {m.key().decode(): m.partition() for m in read_topic(run.bootstrap, run.settings.topics.impressions) if m.key()}


def test_join_labels_follow_the_attribution_window(run):
    examples = _decode_all(run, run.settings.topics.examples_by_member, "LabeledExample")
    ids = [e["example_id"] for e in examples]
    assert len(ids) == len(set(ids)), "an impression was emitted twice"
    times, expected = _expected_labels(run.events)
    got = {e["example_id"]: e["label"] for e in examples}
    wrong = {i: (label, expected[i]) for i, label in got.items() if expected[i] != label}
    assert not wrong, f"{len(wrong)} labels differ from the attribution window, e.g. {list(wrong.items())[:5]}"
    watermark, partition = _final_watermarks(run), _partition_of(run)
    members = {e.record["impression_id"]: e.record["member_id"] for e in run.events if e.kind == IMPRESSION and e.record}
    closed = {i for i, t in times.items() if t + WINDOW_MS < watermark[partition[members[i]]]}
    missing = closed - set(got)
    assert not missing, f"{len(missing)} closed windows were never emitted, e.g. {sorted(missing)[:5]}"
    still_open = set(got) - closed
    assert all(got[i] == 1.0 for i in still_open), "only positives may be emitted before their window closes"
    assert sum(got.values()) > 100 and len(got) - sum(got.values()) > 1000
    joined = run.stats["joiner"].join
    assert joined.duplicate_impressions > 0 and joined.late_interactions > 0 and joined.held_interactions > 0


def test_examples_by_job_carry_the_same_examples(run):
    by_member = _decode_all(run, run.settings.topics.examples_by_member, "LabeledExample")
    by_job = _decode_all(run, run.settings.topics.examples_by_job, "LabeledExample")
    assert sorted(e["example_id"] for e in by_job) == sorted(e["example_id"] for e in by_member)
    assert all(e["coordinates"]["job"]["entity_id"] == e["item_id"] for e in by_job)


def test_bad_records_and_orphans_are_dead_lettered_with_their_reason(run):
    dead = read_topic(run.bootstrap, run.settings.topics.dead_letter)
    reasons = [dict(m.headers())["error"].decode() for m in dead]
    malformed = sum(1 for e in run.events if e.malformed)
    assert malformed >= 0.09 * len(run.events) / 1.1
    assert sum(1 for r in reasons if not r.startswith("orphan")) == malformed
    assert all({"source.topic", "source.partition", "source.offset", "error"} <= set(dict(m.headers())) for m in dead)
    sources = {(h["source.topic"].decode(), int(h["source.partition"]), int(h["source.offset"]))
               for h in (dict(m.headers()) for m in dead)}
    assert all(topic in (run.settings.topics.impressions, run.settings.topics.interactions) and offset >= 0
               for topic, _, offset in sources)
    assert len(sources) == len(dead)  # each dead letter points at its own original record
    codec = make_codec("Interaction", run.settings.topics.interactions)
    orphaned = {codec.decode(m.value())["interaction_id"] for m, r in zip(dead, reasons) if r.startswith("orphan")}
    watermark, partition = _final_watermarks(run), _partition_of(run)
    orphans = {e.record["interaction_id"]: e.record for e in run.events
               if e.kind == INTERACTION and not e.malformed and e.record["impression_id"].startswith("imp-orphan")}
    assert orphaned <= set(orphans)
    assert {i for i, r in orphans.items() if r["event_time"] < watermark[partition[r["member_id"]]]} <= orphaned


def test_glmix_progressive_auc_beats_global_only(run):
    """Every example carries the scores of the models current when it was joined: progressive validation."""
    examples = [e for e in _decode_all(run, run.settings.topics.examples_by_member, "LabeledExample")
                if e["event_time"] > run.warmup_end_ms]
    labels = np.array([e["label"] for e in examples])
    global_only = np.array([e["scores"]["global"] for e in examples])
    glmix = np.array([sum(e["scores"].values()) for e in examples])
    auc_global, auc_glmix = auc(labels, global_only), auc(labels, glmix)
    print(f"\nprogressive AUC after warm-up ({len(examples)} examples): global-only {auc_global:.3f}, GLMix {auc_glmix:.3f}")
    assert auc_glmix > auc_global + 0.02


def test_published_coefficients_approach_the_true_model(run):
    """Margins from the published coefficients vs the generator's true margins, on every (member, job) pair."""
    world, settings = run.world, run.settings
    record = _decode_all(run, settings.topics.model_global, "GlobalModel")[-1]
    model = GlobalModel.from_record(record, settings.model)
    latest = {}
    for name in ("member", "job"):
        table = {}
        for r in _decode_all(run, settings.topics.coefficients(name), "EntityModel"):
            if r["entity_id"] not in table or r["version"] > table[r["entity_id"]]["version"]:
                table[r["entity_id"]] = r
        latest[name] = table
        assert all(np.isfinite(r["means"]).all() for r in table.values())
    true, learned, global_only = [], [], []
    for member in world.members:
        for job in world.jobs:
            bags = {**{b: [{"name": n, "term": t, "value": v} for n, t, v in f] for b, f in member.bags.items()},
                    **{b: [{"name": n, "term": t, "value": v} for n, t, v in f] for b, f in job.bags.items()}}
            g = float((model.global_index.sparse_rows([bags]) @ model.coefficients)[0])
            m = latest["member"].get(member.entity_id)
            j = latest["job"].get(job.entity_id)
            mz = model.coordinate_indices["member"].dense(bags, admit=False) @ np.asarray(m["means"]) if m else 0.0
            jz = model.coordinate_indices["job"].dense(bags, admit=False) @ np.asarray(j["means"]) if j else 0.0
            true.append(world.true_margin(member, job))
            learned.append(g + mz + jz)
            global_only.append(g)
    true, learned, global_only = map(np.array, (true, learned, global_only))

    def centered_rmse(a):
        return float(np.sqrt(np.mean(((a - a.mean()) - (true - true.mean())) ** 2)))

    corr_glmix, corr_global = np.corrcoef(true, learned)[0, 1], np.corrcoef(true, global_only)[0, 1]
    print(f"\nmargin vs truth: GLMix corr {corr_glmix:.3f} centered RMSE {centered_rmse(learned):.3f}; "
          f"global-only corr {corr_global:.3f} centered RMSE {centered_rmse(global_only):.3f}")
    assert corr_glmix > corr_global + 0.05
    assert centered_rmse(learned) < centered_rmse(global_only)


def test_versions_only_grow_and_offsets_are_stamped(run):
    for name in ("member", "job"):
        records = _decode_all(run, run.settings.topics.coefficients(name), "EntityModel")
        last: dict[str, tuple[int, int]] = {}
        for r in records:  # one partition per entity, so topic order is publish order
            version, offset = last.get(r["entity_id"], (0, -1))
            assert r["version"] == version + 1 and r["source_offset"] > offset
            last[r["entity_id"]] = (r["version"], r["source_offset"])
    stats = run.stats
    assert stats["member"].entity_updates > 0 and stats["member"].failed_updates == 0
    print(f"\npipeline: {stats['joiner'].examples} examples in {stats['seconds']:.1f} s; "
          f"member updates {stats['member'].entity_updates}, job updates {stats['job'].entity_updates}")


def test_archive_holds_every_example_once_and_replays_the_progressive_validation(run):
    examples = _decode_all(run, run.settings.topics.examples_by_member, "LabeledExample")
    files = ArchiveFiles(run.settings.archive_path)
    archived = list(files.examples_between(0, 2**62))
    assert sorted(e["example_id"] for e in archived) == sorted(e["example_id"] for e in examples)
    after_warmup = [e for e in archived if e["event_time"] > run.warmup_end_ms]
    report = progressive_report(collect(after_warmup, ["member", "job"]), LogisticLoss(), windows=4)
    variants = report["variants"]
    print(f"\nprogressive from the archive: AUC global {variants['global']['auc']:.3f}, "
          f"+member {variants['global+member']['auc']:.3f}, +job {variants['global+member+job']['auc']:.3f}; "
          f"O/E {variants['global+member+job']['observed_expected']:.3f}")
    assert variants["global+member+job"]["auc"] > variants["global"]["auc"] + 0.02


def test_refit_on_the_archive_keeps_or_improves_holdout_auc(run):
    """The global model was fitted on the first 30% of history; a refit on everything, around the learned random effects."""
    result = GlobalRefit(run.settings, run.bootstrap).run_once()
    print(f"\nrefit: {result.status}, holdout AUC {result.current_metrics.get('auc', float('nan')):.3f} -> "
          f"{result.candidate_metrics.get('auc', float('nan')):.3f} on {result.holdout_examples} examples "
          f"({result.train_examples} trained)")
    assert result.status in ("published", "unchanged"), result.gate
    assert result.candidate_metrics["auc"] >= result.current_metrics["auc"] - run.settings.refit.gate_tolerance
    assert result.train_examples + result.holdout_examples + result.dropped_examples == run.stats["archive"].archived


def test_metrics_describe_the_run(run):
    """The pipeline's /metrics content, scraped at the end of the run, agrees with the stages' own counts."""
    samples = {}
    for family in text_string_to_metric_families(run.stats["metrics"]):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    joiner, member = run.stats["joiner"], run.stats["member"]
    assert samples[("glmix_examples_emitted_total", (("label", "positive"),))] == joiner.positives
    assert samples[("glmix_entity_updates_total", (("coordinate", "member"),))] == member.entity_updates
    assert samples[("glmix_freshness_seconds_count", (("coordinate", "member"),))] > 0
    assert samples[("glmix_newton_iterations_count", (("coordinate", "job"),))] > 0
    assert samples[("glmix_dead_letters_total", (("stage", "joiner"),))] == joiner.dead_lettered > 0
    assert samples[("glmix_state_size_bytes", (("stage", "updater-member"),))] > 0
    assert samples[("glmix_progressive_auc", (("variant", "global+member+job"),))] > samples[
        ("glmix_progressive_auc", (("variant", "global"),))]
    lags = [v for (name, _), v in samples.items() if name == "glmix_consumer_lag_messages"]
    assert lags and all(v >= 0 for v in lags)


def test_backtest_of_the_run_reproduces_its_progressive_auc_and_is_deterministic(run):
    """The same events through ``glmix backtest``'s replay: the same examples, the live run's AUC, twice the same report.

    The live run's update latency depends on scheduling: the joiner reads up to 2,000
    records (~140 s of event time here) a batch and scores with coefficients its follower
    has read by then, while the updaters run beside it. Over latencies of 0-180 s the
    replay's full-model AUC moved by 0.002 (0.7859-0.7880) and the live run's own AUC
    by 0.0015 over three runs (0.7825-0.7838), so the replay at 180 s must match the
    live run within 0.006.
    """
    events = replay_order([JoinInput(e.kind, e.record) for e in run.events if not e.malformed])
    archived = list(ArchiveFiles(run.settings.archive_path).examples_between(0, 2**62))

    def report(examples):
        after_warmup = [e for e in examples if e["event_time"] > run.warmup_end_ms]
        return progressive_report(collect(after_warmup, ["member", "job"]), LogisticLoss(), windows=1)["variants"]

    first, second = (Backtest(run.settings, BacktestOptions(latency_ms=180_000), run.model_record).run(events)
                     for _ in range(2))
    # The replay is one partition: at the end its watermark is the log's newest event, while each live partition's
    # stops at its own newest, so the replay also closes windows of the last minutes; nothing else differs.
    replayed_ids, live_ids = {e["example_id"] for e in first.examples}, {e["example_id"] for e in archived}
    assert live_ids <= replayed_ids and len(replayed_ids) == len(first.examples)
    tail = max(e.record["event_time"] for e in events) - 3 * (WINDOW_MS + LATENESS_MS)
    assert all(e["event_time"] > tail for e in first.examples if e["example_id"] not in live_ids)
    live = report(archived)
    replayed = report([e for e in first.examples if e["example_id"] in live_ids])
    print(f"\nbacktest at 180 s: AUC {replayed['global+member+job']['auc']:.4f} (live {live['global+member+job']['auc']:.4f})"
          f", {first.report['events_per_s']} events/s")
    for variant in live:
        assert replayed[variant]["auc"] == pytest.approx(live[variant]["auc"], abs=0.006), variant
    timing = ("seconds", "events_per_s")
    assert {k: v for k, v in first.report.items() if k not in timing} == {
        k: v for k, v in second.report.items() if k not in timing}
    assert first.examples == second.examples
