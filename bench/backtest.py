"""Backtest throughput: a replay of an event log at several update latencies, against reading the log.

Reproduce: python bench/backtest.py   (or: make bench)

A synthetic world with mid-size-site traffic (``--gap-ms`` between requests of five
impressions: ~300 events a second of event time, over 800 s, so the 60 s attribution
windows close during the replay) is written to Avro container files once. Each line is one measurement in the same run:

* ``read_log``: reading and ordering the event log (``EventLog.from_paths``), the
  ceiling of any replay of these files;
* ``backtest`` at 1 s, 200 ms and per-event latency (the per-event replay runs on the
  first ``--per-event-events`` events only: every event is its own micro-batch);
* ``tune``: ``glmix tune`` at 1 s latency on the first ``--tune-events`` events (155,000: issue 24's aim is
  <= 2 minutes for a log that long), with the time of one whole backtest of the same events beside it.

Aim (issue "Learning from real data"): >= 50k events/s at 1 s latency.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from stream.event_log import EventLog
from stream.backtest.replay import Backtest, BacktestOptions
from stream.backtest.tune import tune
from stream.config import load_settings
from stream.synthetic import World, WorldSpec, event_stream
from stream.synthetic.sinks import write_avro_files

REPRODUCE = "python bench/backtest.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40_000, help="requests of five impressions each")
    parser.add_argument("--gap-ms", type=int, default=20, help="mean event time between requests")
    parser.add_argument("--per-event-events", type=int, default=20_000)
    parser.add_argument("--tune-events", type=int, default=155_000)
    parser.add_argument("--quick", action="store_true", help="a small run for the smoke test")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.gap_ms, args.per_event_events, args.tune_events = 2_000, 100, 3_000, 5_000
    settings = load_settings(overrides={"joiner.attribution_window_ms": "60000", "joiner.allowed_lateness_ms": "60000",
                                        "joiner.bootstrap_impressions": "2000"})
    with tempfile.TemporaryDirectory() as directory:
        world = World(WorldSpec(seed=3, members=5_000, jobs=2_000, requests=args.requests, emerging_terms=20,
                                mean_request_gap_ms=args.gap_ms, attribution_window_ms=60_000, late_rate=0.0))
        write_avro_files(event_stream(world), directory)
        paths = [Path(directory) / "impressions.avro", Path(directory) / "interactions.avro"]
        started = time.perf_counter()
        log = EventLog.from_paths(paths)
        read_s = time.perf_counter() - started
    emit({"measure": "read_log", "events": len(log), "events_per_s": round(len(log) / read_s)})
    for latency_ms, events in ((1000, log.events), (200, log.events), (0, log.events[: args.per_event_events])):
        result = Backtest(settings, BacktestOptions(latency_ms=latency_ms)).run(events)
        report = result.report
        emit({"measure": "backtest", "latency": f"{latency_ms} ms" if latency_ms else "per event", "events": len(events),
              "micro_batches": report["micro_batches"], "events_per_s": report["events_per_s"],
              "x_read_log": round(report["events_per_s"] / (len(log) / read_s), 3),
              "auc": report["variants"]["global+member+job"]["auc"]})
    events = log.events[: args.tune_events]
    one = Backtest(settings, BacktestOptions(latency_ms=1000)).run(events).report["seconds"]
    started = time.perf_counter()
    result = tune(settings, events, BacktestOptions(latency_ms=1000))
    emit({"measure": "tune", "latency": "1000 ms", "events": len(events), "trials": len(result.trials),
          "seconds": round(time.perf_counter() - started, 1), "one_backtest_seconds": one, "aim_seconds": 120})


def emit(line: dict) -> None:
    print(json.dumps({**line, "reproduce": REPRODUCE}), flush=True)


if __name__ == "__main__":
    main()
