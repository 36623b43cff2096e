"""glmix beside River, the online-learning library a user would pick instead, on a ratings-like stream.

Reproduce: pip install 'river==0.26.1' && python bench/river_peer.py   (--quick for a smaller run)

The stream is ``stream.synthetic.ratings_like``: one item per request, about half positive, per-member and per-item
biases and tastes, members in sessions of ~9 consecutive events. Every model is judged by progressive validation
(predict each impression, then learn from it) on the last 80% of the stream; River's settings are chosen on the
first 20% (a small grid, the best progressive AUC there), and each River model learns every label the moment its
impression is scored, while glmix joins each label within the stream's 2 s attribution window (clicks come ~100 ms
after their impressions; a negative is known when the window closes). glmix runs ``glmix backtest``'s replay of the
same events per event and at 200 ms latency, with a gated refit every eighth of the stream and the random-effect L2
of DESIGN §1 (10, chosen on a public ratings stream). Peers:

* ``river_baseline``: ``reco.Baseline`` (global mean + a member and an item bias) with AdaGrad on the log loss;
* ``river_glmix_shaped``: ``linear_model.LogisticRegression`` over what a GLMix model sees, one-hot and sparse:
  the pair's features (global), member id x item features (per member) and item id x member features (per item),
  intercepts of each, with AdaGrad.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from river import linear_model, optim, reco

from stream.event_log import EventLog
from stream.backtest.replay import Backtest, BacktestOptions
from stream.config import load_settings
from stream.model.metrics import auc
from stream.synthetic import World, event_stream, labeled_impressions, ratings_like
from stream.synthetic.sinks import write_avro_files

REPRODUCE = "pip install 'river==0.26.1' && python bench/river_peer.py"
TUNE_SHARE = 0.2


def _features(impression: dict) -> tuple[dict[str, float], dict[str, float]]:
    """The member's and the item's name-term features of one impression (bags split by their owner)."""
    member, item = {}, {}
    for bag, entries in impression["features"].items():
        side = member if bag.startswith("member") else item
        for f in entries:
            side[f"{f['name']}={f['term']}"] = float(f["value"])
    return member, item


def glmix_shaped(impression: dict) -> dict[str, float]:
    """The sparse features a GLMix model of this stream uses, as one flat dict for a logistic regression."""
    member, item = _features(impression)
    m, i = impression["member_id"], impression["item_id"]
    x = {**member, **item, f"member={m}": 1.0, f"item={i}": 1.0}
    x.update({f"member={m}|{k}": v for k, v in item.items()})
    x.update({f"item={i}|{k}": v for k, v in member.items()})
    return x


def progressive(model_factory, rows: list, labels: np.ndarray, kind: str) -> np.ndarray:
    """Predict-then-learn scores of every row, in order."""
    model = model_factory()
    scores = np.empty(len(rows))
    for k, (imp, y) in enumerate(zip(rows, labels)):
        if kind == "baseline":
            scores[k] = model.predict_one(imp["member_id"], imp["item_id"])
            model.learn_one(imp["member_id"], imp["item_id"], float(y))
        else:
            x = glmix_shaped(imp)
            scores[k] = model.predict_proba_one(x).get(True, 0.5)
            model.learn_one(x, bool(y))
    return scores


def river_peers(rows: list, labels: np.ndarray, cut: int) -> list[dict]:
    """Each River model tuned on the first rows (up to ``cut``), then judged on the rest."""
    grids = {
        "baseline": [dict(lr=lr, l2=l2) for lr, l2 in itertools.product((0.01, 0.05, 0.2), (0.0, 0.001, 0.01))],
        "glmix_shaped": [dict(lr=lr, l2=l2) for lr, l2 in itertools.product((0.05, 0.2, 0.5), (0.0, 0.0001))],
    }

    def factory(kind: str, lr: float, l2: float):
        if kind == "baseline":
            return lambda: reco.Baseline(optimizer=optim.AdaGrad(lr), loss=optim.losses.Log(), l2=l2)
        return lambda: linear_model.LogisticRegression(optimizer=optim.AdaGrad(lr), l2=l2)

    out = []
    for kind, grid in grids.items():
        started = time.monotonic()
        tuned = max(grid, key=lambda p: auc(labels[:cut] > 0, progressive(factory(kind, **p), rows[:cut],
                                                                          labels[:cut], kind)))
        scores = progressive(factory(kind, **tuned), rows, labels, kind)
        out.append({"bench": "river-peer", "model": f"river_{kind}", "settings": tuned,
                    "auc_after_tuning_period": round(auc(labels[cut:] > 0, scores[cut:]), 4),
                    "elapsed_ms": round(1000 * (time.monotonic() - started)), "reproduce": REPRODUCE})
    return out


def glmix_backtests(log: EventLog, cut_ms: int) -> list[dict]:
    """``glmix backtest`` per event and at 200 ms, full-model and global-only AUC after ``cut_ms``."""
    settings = load_settings(overrides={
        "joiner.bootstrap_impressions": "1000", "joiner.attribution_window_ms": "2000",
        "joiner.allowed_lateness_ms": "0", "refit.min_examples": "100",
        "model.coordinates.member.l2": "10", "model.coordinates.job.l2": "10"})
    span = log.events[-1].record["event_time"] - log.events[0].record["event_time"]
    out = []
    for latency_ms in (0, 200):
        started = time.monotonic()
        result = Backtest(settings, BacktestOptions(latency_ms=latency_ms, refit_every_ms=span // 8)).run(log.events)
        later = [e for e in result.examples if e["event_time"] >= cut_ms]
        labels = np.array([e["label"] > 0 for e in later])
        full = np.array([e["offset"] + sum(e["scores"].values()) for e in later])
        alone = np.array([e["offset"] + e["scores"]["global"] for e in later])
        out.append({"bench": "river-peer", "model": "glmix_backtest", "latency_ms": latency_ms,
                    "auc_after_tuning_period": round(auc(labels, full), 4),
                    "global_only_auc_after_tuning_period": round(auc(labels, alone), 4),
                    "elapsed_ms": round(1000 * (time.monotonic() - started)), "reproduce": REPRODUCE})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small stream (the test suite's smoke run)")
    args = parser.parse_args()
    world = World(ratings_like(requests=3_000 if args.quick else 40_000))
    labeled = labeled_impressions(world)
    rows = [li.impression for li in labeled]
    labels = np.array([float(li.clicked) for li in labeled])
    cut = int(TUNE_SHARE * len(rows))
    cut_ms = rows[cut]["event_time"]
    stream = {"impressions": len(rows), "positive_share": round(float(labels.mean()), 3), "tuning_impressions": cut}
    for line in river_peers(rows, labels, cut):
        print(json.dumps({**line, **stream}), flush=True)
    with tempfile.TemporaryDirectory() as directory:
        write_avro_files(event_stream(world, labeled), directory)
        log = EventLog.from_paths([Path(directory) / "impressions.avro", Path(directory) / "interactions.avro"])
        for line in glmix_backtests(log, cut_ms):
            print(json.dumps({**line, **stream}), flush=True)


if __name__ == "__main__":
    main()
