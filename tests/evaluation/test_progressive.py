"""Progressive validation from labeled examples: metrics per variant and window, O/E per type, calibration, plots, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.archive.files import ArchiveFiles, hour_of
from stream.cli import main
from stream.config import load_settings
from stream.evaluation.plots import write_plots
from stream.evaluation.progressive import TraceColumns, collect, progressive_report, reliability, variant_names
from stream.model.losses import get_loss
from stream.model.metrics import auc, grouped_auc
from stream.synthetic import World, WorldSpec, labeled_impressions


def _examples(seed: int = 3, requests: int = 1500) -> tuple[list[dict], list]:
    """Examples whose join-time scores are a weak global score plus the true per-entity part."""
    world = World(WorldSpec(seed=seed, members=60, jobs=40, requests=requests))
    labeled = labeled_impressions(world)
    rng = np.random.default_rng(seed)
    examples = []
    for li in labeled:
        imp = li.impression
        member_part = rng.normal(0, 0.3) + 0.6 * li.true_margin
        examples.append({
            "example_id": imp["impression_id"], "member_id": imp["member_id"], "item_id": imp["item_id"],
            "label": float(li.clicked), "weight": 1.0, "offset": 0.0, "event_time": imp["event_time"],
            "label_time": imp["event_time"], "interaction_types": ["CLICK", "APPLY"][: int(li.clicked) + int(li.applied)],
            "scores": {"global": 0.2 * li.true_margin + rng.normal(0, 1.0), "member": member_part, "job": 0.1},
            "model_versions": {}, "global_features": {"indices": b"", "values": b""}, "coordinates": {},
            "index_version": 1,
        })
    return examples, labeled


def test_report_matches_direct_metrics_and_glmix_beats_global_only():
    examples, labeled = _examples()
    trace = collect(reversed(examples), ["member", "job"])  # order does not matter: sorted by event time
    assert list(trace.margins) == variant_names(["member", "job"]) == ["global", "global+member", "global+member+job"]
    assert np.all(np.diff(trace.event_times) >= 0)
    report = progressive_report(trace, get_loss("logistic"), windows=5)
    y = np.array([e["label"] for e in examples])
    full = np.array([sum(e["scores"].values()) for e in examples])
    variants = report["variants"]
    assert variants["global+member+job"]["auc"] == pytest.approx(auc(y, full))
    members = np.array([e["member_id"] for e in examples])
    assert variants["global+member+job"]["per_member_auc"] == pytest.approx(grouped_auc(y, full, members))
    assert variants["global+member"]["auc"] > variants["global"]["auc"] + 0.05
    p = 1 / (1 + np.exp(-full))
    applies = sum("APPLY" in e["interaction_types"] for e in examples)
    by_type = variants["global+member+job"]["observed_expected_by_type"]
    assert by_type["APPLY"] == pytest.approx(applies / p.sum())
    assert by_type["CLICK"] == pytest.approx(variants["global+member+job"]["observed_expected"])
    assert sum(w["examples"] for w in report["windows"]) == len(examples) and len(report["windows"]) == 5


def test_reliability_bins_by_hand():
    table = reliability(np.array([0, 1, 1, 0]), np.array([0.05, 0.15, 0.95, 0.91]), bins=10)
    assert [(r["bin_low"], r["examples"], r["observed"]) for r in table] == [(0.0, 1, 0.0), (0.1, 1, 1.0), (0.9, 2, 0.5)]
    assert table[2]["predicted"] == pytest.approx(0.93)


def test_plots_are_png_files(tmp_path):
    examples, _ = _examples(requests=300)
    report = progressive_report(collect(examples, ["member", "job"]), get_loss("logistic"), windows=4)
    paths = write_plots(report, tmp_path)
    assert [p.name for p in paths] == ["auc_over_time.png", "observed_expected_over_time.png", "reliability.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_glmix_evaluate_progressive_reads_the_archive(tmp_path, capsys):
    examples, _ = _examples(requests=400)
    files = ArchiveFiles(str(tmp_path / "archive"))
    for first in range(0, len(examples), 100):  # files of up to 100 offsets, split by hour as the archiver does
        batch = examples[first:first + 100]
        for hour in sorted({hour_of(x["event_time"]) for x in batch}):
            files.write(hour, 0, first, first + len(batch) - 1, [x for x in batch if hour_of(x["event_time"]) == hour])
    code = main(["evaluate", "progressive", "--archive", str(tmp_path / "archive"), "--plots", str(tmp_path / "plots"),
                 "--windows", "3"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["examples"] == len(examples) and len(out["plots"]) == 3
    direct = progressive_report(collect(examples, list(load_settings().model.coordinates)), get_loss("logistic"), 3)
    assert out["variants"]["global+member+job"]["auc"] == pytest.approx(direct["variants"]["global+member+job"]["auc"])


def test_an_activity_type_the_models_cannot_see_shows_as_miscalibrated_in_the_report_and_in_metrics():
    """Feed-relevance practice: observed/expected per activity type finds the type every model gets wrong."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry

    from stream.consumers.joiner import JoinerStats
    from stream.metrics.collector import PipelineCollector
    from stream.metrics.progressive_window import ProgressiveWindow
    from stream.model.export import fitted_global_model_record
    from stream.synthetic.examples import joined_examples
    from stream.tables.models import GlobalModelTable

    settings = load_settings()
    world = World(WorldSpec(seed=6, members=80, jobs=60, requests=3000, activity_effects=(0.0, 0.0, -2.0)))
    labeled = labeled_impressions(world)
    table = GlobalModelTable(settings.model)
    table.apply([fitted_global_model_record([li.impression for li in labeled], [float(li.clicked) for li in labeled],
                                            settings.model)])
    examples = joined_examples(labeled, table.current, settings.model)
    report = progressive_report(collect(examples, ["member", "job"], by="context:activity_type"), get_loss("logistic"))
    ratios = {s["value"]: s["variants"]["global"]["observed_expected"] for s in report["segments"]}
    print(f"\nO/E per activity type (global model): {ratios}")
    assert set(ratios) == {"job-posted", "company-hiring", "similar-members-applied"}
    assert ratios["similar-members-applied"] < 0.6
    assert ratios["job-posted"] > 1.05 and ratios["company-hiring"] > 1.05
    assert sum(s["examples"] for s in report["segments"]) == len(examples)

    window = ProgressiveWindow(["member", "job"], get_loss("logistic"), ["CLICK", "APPLY"],
                               segment_by="context:activity_type", segment_values=2)
    window.add(examples)
    registry = CollectorRegistry()
    registry.register(PipelineCollector({"joiner": JoinerStats(progressive=window)}))
    samples = {s.labels["value"]: s.value for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples if s.name == "glmix_progressive_observed_expected_by_segment"}
    # Two values by name (the most frequent in the window), the third as (other): bounded label cardinality.
    assert len(samples) == 3 and "(other)" in samples
    named = {k: v for k, v in samples.items() if k != "(other)"}
    for value, ratio in named.items():
        # the full model's O/E from /metrics agrees with the report's direction for the same type
        assert (ratio < 0.6) == (value == "similar-members-applied")


def test_segments_need_a_known_field(capsys):
    assert main(["evaluate", "progressive", "--by", "colour"]) == 2
    assert "cannot group examples by 'colour'" in capsys.readouterr().err


def test_earlier_occurrences_count_each_entitys_earlier_examples():
    from stream.evaluation.progressive import earlier_occurrences, history_bucket_names, history_buckets

    assert earlier_occurrences(np.array(["a", "b", "a", "c", "a", "b"])).tolist() == [0, 0, 1, 0, 2, 1]
    assert history_bucket_names() == ["0", "1-4", "5-19", "20+"]
    assert history_bucket_names((1, 10)) == ["0", "1-9", "10+"]
    assert history_buckets(np.array([0, 1, 4, 5, 19, 20, 99])).tolist() == [0, 1, 1, 2, 2, 3, 3]


def test_new_members_that_the_global_model_mis_serves_show_in_the_first_history_bucket():
    """A world's new members are scored backwards by the global model (their member effect knows nothing yet):
    overall the full model looks fine, the 0 bucket shows the cold-start failure, and later buckets do not."""
    rng = np.random.default_rng(11)
    examples = []
    for member in range(300):
        for k in range(int(rng.integers(1, 40))):
            label = float(rng.random() < 0.5)
            signal = 2 * label - 1
            first = k == 0
            examples.append({
                "member_id": f"m{member}", "label": label, "weight": 1.0, "offset": 0.0,
                "event_time": 1_000 * (member + 300 * k), "interaction_types": ["CLICK"] if label else [],
                "scores": {"global": (-1.5 if first else 0.3) * signal + rng.normal(),
                           "member": 0.0 if first else min(k, 10) * 0.2 * signal + rng.normal()},
                "coordinates": {"member": {"entity_id": f"m{member}", "dense": b""}},
            })
    report = progressive_report(collect(examples, ["member"]), get_loss("logistic"))
    buckets = {b["history"]: b for b in report["entity_history"]["member"]}
    assert list(buckets) == ["0", "1-4", "5-19", "20+"]
    assert buckets["0"]["examples"] == 300 and sum(b["examples"] for b in buckets.values()) == len(examples)
    assert buckets["0"]["variants"]["global+member"]["auc"] < 0.25
    assert buckets["20+"]["variants"]["global+member"]["auc"] > 0.8
    assert report["variants"]["global+member"]["auc"] > 0.75  # overall, the failure is hidden


def test_the_live_metrics_report_quality_by_the_entity_history_the_joiner_saw():
    """The joiner's window cuts its AUC by how many events each entity's model had absorbed (the tables' event
    counts, which add_scores records): new members mis-served by the global model show in the 0 bucket of /metrics."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry

    from stream.consumers.joiner import JoinerStats
    from stream.metrics.collector import PipelineCollector
    from stream.metrics.progressive_window import ProgressiveWindow
    from stream.model.export import fitted_global_model_record
    from stream.synthetic.examples import joined_examples
    from stream.tables.models import CoefficientTable, GlobalModelTable

    settings = load_settings()
    labeled = labeled_impressions(World(WorldSpec(seed=6, members=80, jobs=60, requests=600)))
    table = GlobalModelTable(settings.model)
    table.apply([fitted_global_model_record([li.impression for li in labeled], [float(li.clicked) for li in labeled],
                                            settings.model)])
    dim = settings.model.coordinates["member"].max_features
    members = CoefficientTable("member", dim)
    veterans = sorted({li.impression["member_id"] for li in labeled})[::2]
    members.apply([{"entity_id": m, "version": 3, "means": [0.0] * dim, "event_count": 30} for m in veterans])
    examples = joined_examples(labeled, table.current, settings.model, {"member": members})
    assert {e["entity_history"]["member"] for e in examples} == {0, 30}
    rng = np.random.default_rng(2)
    for example in examples:  # the global model scores new members backwards, veterans well
        signal = 2 * example["label"] - 1
        new = example["entity_history"]["member"] == 0
        example["scores"] = {"global": (-2.0 if new else 2.0) * signal + rng.normal(), "member": 0.0}

    window = ProgressiveWindow(["member"], get_loss("logistic"), ["CLICK"])
    window.add(examples)
    registry = CollectorRegistry()
    registry.register(PipelineCollector({"joiner": JoinerStats(progressive=window)}))
    samples = {(s.labels["history"], s.labels["variant"]): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples if s.name == "glmix_progressive_auc_by_history"}
    assert set(samples) == {("0", "global"), ("0", "global+member"), ("20+", "global"), ("20+", "global+member")}
    assert samples[("0", "global+member")] < 0.2 and samples[("20+", "global+member")] > 0.8


def test_trace_columns_taken_apart_and_concatenated_give_the_trace_of_the_whole():
    examples, _ = _examples(seed=5, requests=600)
    columns = TraceColumns.of_records(examples, ["member", "job"], by="member_id")
    half = len(columns) // 2
    rejoined = TraceColumns.concatenate([columns.take(np.arange(half)), columns.take(np.arange(half, len(columns)))])
    loss = get_loss("logistic")
    assert progressive_report(rejoined.trace(), loss) == progressive_report(collect(examples, ["member", "job"], by="member_id"), loss)
    later = columns.event_times >= np.median(columns.event_times)
    assert progressive_report(columns.take(later).trace(), loss) == progressive_report(
        collect([e for e in examples if e["event_time"] >= np.median(columns.event_times)], ["member", "job"], by="member_id"), loss)
