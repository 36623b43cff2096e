"""glmix demo: the live pipeline answers /metrics while it runs, then leaves a report; at full size GLMix wins."""

from __future__ import annotations

import io
import json
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream.config import load_settings
from stream.demo import DEMO_SETTINGS, DemoOptions, run_demo


@dataclass
class SmallDemo:
    """One small demo run: its report, what it printed, the /metrics page scraped while it ran, where it wrote."""

    report: dict
    printed: str
    scraped: list[str]
    directory: Path


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> SmallDemo:
    scraped: list[str] = []

    def scrape_soon(url: str) -> None:
        def scrape() -> None:
            time.sleep(3)
            scraped.append(urllib.request.urlopen(url, timeout=10).read().decode())
        threading.Thread(target=scrape, daemon=True).start()

    directory = tmp_path_factory.mktemp("demo")
    options = DemoOptions(events=2500, duration_s=8, refit_every_s=4, report_dir=directory)
    out = io.StringIO()
    report = run_demo(load_settings(overrides=DEMO_SETTINGS), options, out=out, on_running=scrape_soon)
    return SmallDemo(report, out.getvalue(), scraped, directory)


def test_a_small_demo_serves_metrics_while_running_and_reports(small_demo):
    report, scraped, tmp_path = small_demo.report, small_demo.scraped, small_demo.directory
    assert scraped and "glmix_examples_emitted_total" in scraped[0] and "glmix_records_consumed_total" in scraped[0]
    assert report["examples"] > 2000 and report["http_scoring_ok"]
    stages = {"joiner", "member", "job", "archive"}  # far from the embedded broker's ~5 MiB a partition: nothing lost
    assert report["skipped_records"] == dict.fromkeys(stages, 0) and report["offset_resets"] == dict.fromkeys(stages, 0)
    assert "records deleted before a stage read them: none" in small_demo.printed
    assert all(line["skipped_records"] == 0 for line in report["progress"])
    assert report["refits"] and {r["status"] for r in report["refits"]} <= {"published", "refused", "unchanged", "skipped"}
    assert all(0.5 < auc < 1 for auc in report["progressive_auc"].values())
    twins = report["alice_and_annie"]
    assert len(twins) == 2 and {s["item_id"] for s in twins[0]["ranking"]} == {s["item_id"] for s in twins[1]["ranking"]}
    for twin in twins:  # identical features: only the member coordinate may differ between the twins
        by_item = {s["item_id"]: s["breakdown"] for s in twin["ranking"]}
        other = {s["item_id"]: s["breakdown"] for s in twins[1 - twins.index(twin)]["ranking"]}
        assert all(by_item[i]["global"] == other[i]["global"] and by_item[i]["job"] == other[i]["job"] for i in by_item)
    assert (tmp_path / "report.json").exists() and len(report["plots"]) == 3
    fresh = report["freshness_s"]["member"]
    # Without early positives the clock starts at the window's close and the joiner waits allowed_lateness for late clicks
    assert report["freshness_from"] == "the attribution window's close"
    assert report["freshness_includes_allowed_lateness_s"] == 2.0 and fresh["p50"] <= fresh["p99"]


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_demo_fields() -> list[str]:
    """The report fields the README's table of the demo's figures names (second column, in backticks)."""
    text = README.read_text()
    table = text[text.index("<!-- demo-report-fields"):].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[3:] if line.startswith("|")]
    return [field for row in rows for field in re.findall(r"`([^`]+)`", row.split("|")[2])]


def test_every_report_field_the_readme_quotes_is_in_the_demo_report(small_demo):
    fields = _readme_demo_fields()
    assert len(fields) >= 8 and "progressive_auc" in fields
    saved = json.loads((small_demo.directory / "report.json").read_text())
    for field in fields:
        value = saved
        for part in field.split("."):
            assert isinstance(value, dict) and part in value, f"README names {field!r}; the demo's report has no {part!r}"
            value = value[part]
    assert list(saved["progressive_auc"]) == ["global", "global+member", "global+member+job"]  # the README's three


@pytest.mark.slow
def test_the_default_demo_shows_glmix_beating_global_only(tmp_path):
    report = run_demo(load_settings(overrides=DEMO_SETTINGS), DemoOptions(report_dir=tmp_path))
    auc = report["progressive_auc"]
    assert auc["global+member+job"] > auc["global"] + 0.01, auc
    assert any(r["status"] == "published" for r in report["refits"])


def _lines(lags: list[int], produced_per_s: int = 1000) -> list[dict]:
    return [{"events_produced": i * produced_per_s, "lag_messages": lag} for i, lag in enumerate(lags)]


def test_a_lag_rising_at_every_line_by_a_tenth_of_the_input_is_a_stream_that_outruns_the_pipeline():
    from stream.demo import outrun

    assert outrun(_lines([i * 200 for i in range(12)])) == (10_000, 2_000)  # 20% of the input piles up
    assert outrun(_lines([i * 50 for i in range(12)])) is None  # 5%: keeping up, with a backlog
    assert outrun(_lines([0, 300, 600, 900, 1200, 900, 1200, 1500, 1800, 2100, 2400, 2700])) is None  # it drained once
    assert outrun(_lines([i * 200 for i in range(5)])) is None  # too early to tell
