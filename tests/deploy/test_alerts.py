"""deploy/prometheus/alerts.yml: valid rules (promtool check), the behaviour its unit tests pin (promtool test), exported names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from stream.metrics.collector import METRIC_NAMES

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def test_the_alert_rules_are_valid(promtool):
    result = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS: 8 rules found" in result.stdout, result.stdout + result.stderr


def test_the_alert_rules_fire_as_their_unit_tests_say(promtool):
    result = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS, capture_output=True,
                            text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_the_prometheus_configuration_loads_the_rules(promtool):
    result = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS, capture_output=True,
                            text=True)
    assert result.returncode == 0 and "alerts.yml" in result.stdout + result.stderr, result.stdout + result.stderr


def test_every_metric_an_alert_uses_is_exported_and_each_wanted_alert_exists():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    used = {name for rule in rules for name in re.findall(r"\bglmix_[a-z0-9_]+", rule["expr"])}
    assert used and used <= METRIC_NAMES, sorted(used - METRIC_NAMES)
    assert {rule["alert"] for rule in rules} == {"GlmixConsumerLagGrowing", "GlmixFreshnessSlow", "GlmixDeadLettersRising",
                                                 "GlmixNewtonFailures", "GlmixRefitRefused", "GlmixScorerNotReady",
                                                 "GlmixRecordsSkipped", "GlmixRetentionHeadroomLow"}
