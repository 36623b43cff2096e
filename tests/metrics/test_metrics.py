"""Metric building blocks: the batch histogram, the progressive window, librdkafka statistics, and the served page."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.config import MetricsSettings
from stream.metrics.collector import METRIC_NAMES, PipelineCollector
from stream.metrics.histogram import CumulativeHistogram
from stream.metrics.kafka_statistics import KafkaStatistics
from stream.metrics.progressive_window import ProgressiveWindow
from stream.metrics.server import MetricsServer
from stream.model.losses import get_loss
from stream.model.metrics import auc
from stream.refit.job import RefitStats


def test_histogram_counts_values_into_upper_bound_buckets():
    h = CumulativeHistogram([0.1, 1.0, 10.0])
    h.observe_many(np.array([0.05, 0.1, 0.5, 20.0, np.nan]))
    h.observe(1.0)
    assert h.counts.tolist() == [2, 2, 0, 1] and h.count == 5 and h.sum == pytest.approx(21.65)
    assert h.quantile(0.5) == 1.0 and h.quantile(1.0) == float("inf") and np.isnan(CumulativeHistogram([1]).quantile(0.5))


def test_progressive_window_keeps_the_last_examples():
    window = ProgressiveWindow(["member"], get_loss("logistic"), ["CLICK"], capacity=50)
    rng = np.random.default_rng(0)
    examples = [{"label": float(rng.random() < 0.3), "offset": 0.0, "interaction_types": [],
                 "scores": {"global": float(rng.normal()), "member": float(rng.normal())}} for _ in range(120)]
    for e in examples:
        if e["label"]:
            e["interaction_types"] = ["CLICK"]
    for start in range(0, 120, 17):
        window.add(examples[start:start + 17])
    last = examples[-50:]
    y = np.array([e["label"] for e in last])
    full = np.array([e["scores"]["global"] + e["scores"]["member"] for e in last])
    quality = window.quality()
    assert window.size == 50
    assert quality["global+member"]["auc"] == pytest.approx(auc(y, full))
    p = 1 / (1 + np.exp(-full))
    assert quality["global+member"]["observed_expected:CLICK"] == pytest.approx(y.sum() / p.sum())


def test_kafka_statistics_keep_lag_headroom_and_rebalances_per_client():
    statistics = KafkaStatistics(interval_ms=1000)
    settings = statistics.client_settings("joiner")
    assert settings["statistics.interval.ms"] == 1000
    settings["stats_cb"](json.dumps({
        "name": "rdkafka#consumer-1", "type": "consumer", "cgrp": {"rebalance_cnt": 3},
        "topics": {"glmix.impressions": {"partitions": {
            "0": {"consumer_lag": 12, "committed_offset": 500, "lo_offset": 480},
            "1": {"consumer_lag": -1, "committed_offset": -1001, "lo_offset": 0},
            "-1": {"consumer_lag": 0}}}}}))
    [client] = statistics.latest()
    assert client.client == "joiner" and client.rebalances == 3 and client.lag == {("glmix.impressions", 0): 12}
    assert client.headroom == {("glmix.impressions", 0): 20}  # nothing committed on partition 1: no headroom


def test_served_metrics_follow_prometheus_conventions():
    statistics = KafkaStatistics()
    statistics.record("updater-member", json.dumps({"cgrp": {"rebalance_cnt": 1},
                                                   "topics": {"t": {"partitions": {"2": {"consumer_lag": 7}}}}}))
    refit = RefitStats(runs=3, published=1, refused=2, last_seconds=4.5)
    server = MetricsServer(PipelineCollector({}, statistics=statistics, refit=refit), MetricsSettings(host="127.0.0.1", port=0))
    try:
        page = urllib.request.urlopen(server.url, timeout=10).read().decode()
    finally:
        server.close()
    families = list(text_string_to_metric_families(page))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}
    assert all(s.name.endswith("_total") for f in families if f.type == "counter" for s in f.samples)
    assert samples[("glmix_refit_runs_total", (("status", "refused"),))] == 2
    assert samples[("glmix_consumer_lag_messages", (("client", "updater-member"), ("partition", "2"), ("topic", "t")))] == 7
    names = {name for name, _ in samples}
    assert names <= METRIC_NAMES and all(n.startswith("glmix_") for n in names)
