"""Always on: glmix processes at a steady share of their maximum for a long time, watched for anything that grows.

Reproduce: python bench/soak.py   (--quick: 3 minutes; --split: a joiner and two updater processes; --minutes N)

On a Tansu broker process (bench/freshness.py's ``--broker process``): first the most the same deployment sustains
end to end, measured as bench/freshness.py's ``max`` line does (bench/run_all.py's backlog, natural batching, through
``glmix run all`` or, with ``--split``, one joiner and an updater per coordinate), unless ``--rate`` gives the rate;
then ``glmix run all`` (or, with ``--split``, ``glmix run joiner`` and one ``glmix run updater``
per coordinate) while another process produces impressions and clicks live at ``--load`` of that maximum for
``--minutes``. Every 10 s, per glmix process (and the broker's RSS, to tell its in-memory log apart): RSS and threads
from /proc/<pid>/status, open file descriptors from /proc/<pid>/fd, the bytes of its state directory, the consumer
lag it reports on its own ``/metrics`` (``glmix_consumer_lag_messages``, summed), and the loop freshness p99 since
the previous sample (a follower of the member coefficients topic, as bench/freshness.py's ``loop`` line: the time a
record arrived minus the click's event time it carries).

After a warm-up (the first 20% of the run, at least a minute unless --quick), least-squares slopes per process:
RSS, state MB, file descriptors and threads per hour. ``glmix run all`` also runs the archive, whose Avro files
under ``<state_dir>/archive`` grow by design (kept for ``archive.retention_hours``): they are sampled and fitted
apart from the RocksDB stores (``archive_bytes``). A running store's directory holds its write-ahead log until
RocksDB flushes the memtable (64 MB a store), so the running bytes saw-tooth well above what the data needs. The
joiner keeps every impression it emitted for
``joiner.emitted_retention_ms`` after its event time (one hour by default), so its state grows for that long by
design; the soak sets the retention to ``--retention-minutes`` (2) so that a bounded state is reached inside the
warm-up of a 12-minute run, and reports the state bytes per retained impression (pending + emitted, counted in the
stores after the processes stop) and per entity (the updaters' entity keys), from which any retention's state size
follows. The synthetic world has 500 members and 300 jobs, so the updaters' entity count stops growing early.

``--overload`` (issue 27 item 2): the input at twice the target rate for ``--overload-minutes`` (5), then at half
of it for the rest of ``--minutes``; the target is the measured maximum (``--load 1``) or ``--rate``. An ``overload``
line per process and phase gives its RSS peak, the lag's peak and end, the loop p99 at the phase's end, and for
the recovery how long the lag took to fall below a tenth of its peak (``drained_after_s``).

The glmix processes fetch with ``kafka.consumer.fetch.wait.max.ms`` = ``--fetch-wait-ms`` (500), not the setting's
50: Tansu 0.6's in-memory log answers a fetch with nothing when gathering its records takes longer than the wait, and
once it holds a few GB a 50 ms wait starved the joiner (an hour at 1,262 events/s: the lag grew from minute ~35 on;
a probe at the joiner's offsets read 0 records/s at 50 ms, ~2,200 at 100-200 ms and 25,000 at 500 ms). A real
Kafka broker answers as soon as records are there, whatever the wait.

Lines: ``max`` (unless --rate), ``soak-sample`` per process and sample (--verbose only), ``soak`` per process (the
slopes and the figures at the end), ``soak-state`` per stage store, and ``soak-run`` (the run's parameters, the
rate produced, the machine's 1-minute load average at start and end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pipeline
import run_all

from stream.codec import make_codec
from stream.config import load_settings
from stream.consumers.join_state import EMITTED, PENDING
from stream.kafka.broker_process import BrokerProcess, free_port
from stream.kafka.clients import prepare_topics
from stream.kafka.topic_reader import TopicReader
from stream.state.partition_store import PartitionStore
from stream.updaters.entity_updates import ENTITY_PREFIX

REPRODUCE = "python bench/soak.py"
SAMPLE_EVERY_S = 10.0
MB = 1 << 20
LAG_METRIC = "glmix_consumer_lag_messages"
ARCHIVE_DIR = "archive"  # glmix run all's archive writes its Avro files under <state_dir>/archive (archive.path "")


@dataclass
class Watched:
    """A process the soak samples: its name, pid, state directory and metrics port (None: the broker)."""

    name: str
    pid: int
    state_dir: Path | None = None
    metrics_port: int | None = None
    samples: list[dict] = field(default_factory=list)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (bytes) and Threads of a live process, from /proc/<pid>/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_bytes": int(fields["VmRSS"].split()[0]) * 1024, "threads": int(fields["Threads"])}


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (RocksDB's SSTs, WAL, manifests); files vanishing mid-walk count 0."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # a compaction deleted it meanwhile
                pass
    return total


def consumer_lag(port: int) -> int | None:
    """The sum of ``glmix_consumer_lag_messages`` a process serves on ``port`` (None: no answer or no series yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith((LAG_METRIC + "{", LAG_METRIC + " "))]
    return int(sum(v for v in values if v >= 0)) if values else None


def sample(process: Watched, t_s: float, loop_p99_ms: float | None) -> dict:
    """One sample of ``process`` at ``t_s`` seconds into the run."""
    row: dict = {"bench": "soak-sample", "process": process.name, "t_s": round(t_s, 1), **proc_status(process.pid),
                 "fds": len(os.listdir(f"/proc/{process.pid}/fd"))}
    if process.state_dir is not None:
        stages = {p.name: dir_bytes(p) for p in process.state_dir.iterdir() if p.is_dir()}
        row["state_bytes"] = sum(size for name, size in stages.items() if name != ARCHIVE_DIR)
        if ARCHIVE_DIR in stages:
            row["archive_bytes"] = stages[ARCHIVE_DIR]
    if process.metrics_port is not None:
        row["lag_messages"] = consumer_lag(process.metrics_port)
        row["loop_p99_ms"] = loop_p99_ms
    return row


def slope_per_hour(samples: list[dict], key: str, scale: float = 1.0) -> float | None:
    """Least-squares slope of ``key`` (divided by ``scale``) per hour over ``samples`` (None: fewer than 3)."""
    points = [(s["t_s"] / 3600, s[key] / scale) for s in samples if s.get(key) is not None]
    if len(points) < 3:
        return None
    t, y = np.array(points).T
    return round(float(np.polyfit(t, y, 1)[0]), 2)


def summary(process: Watched, warmup_s: float, mode: str) -> dict:
    """The ``soak`` line of a process: figures at the end of the warm-up and of the run, slopes after the warm-up."""
    fitted = [s for s in process.samples if s["t_s"] >= warmup_s]
    first, last = fitted[0], fitted[-1]
    line: dict = {"bench": "soak", "mode": mode, "process": process.name, "samples_fitted": len(fitted),
                  "fit_from_s": first["t_s"], "fit_to_s": last["t_s"],
                  "rss_mb_start": round(first["rss_bytes"] / MB, 1), "rss_mb_end": round(last["rss_bytes"] / MB, 1),
                  "rss_end_bytes": last["rss_bytes"],
                  "rss_mb_peak": round(max(s["rss_bytes"] for s in process.samples) / MB, 1),
                  "rss_mb_per_hour": slope_per_hour(fitted, "rss_bytes", MB),
                  "fds_end": last["fds"], "fds_per_hour": slope_per_hour(fitted, "fds"),
                  "threads_end": last["threads"], "threads_per_hour": slope_per_hour(fitted, "threads")}
    if process.state_dir is not None:
        line.update(state_mb_start=round(first["state_bytes"] / MB, 1), state_mb_end=round(last["state_bytes"] / MB, 1),
                    state_mb_per_hour=slope_per_hour(fitted, "state_bytes", MB), state_end_bytes=last["state_bytes"])
        if "archive_bytes" in last:  # grows by design: archived examples are kept for archive.retention_hours
            line.update(archive_mb_end=round(last["archive_bytes"] / MB, 1),
                        archive_mb_per_hour=slope_per_hour(fitted, "archive_bytes", MB))
    if process.metrics_port is not None:
        loop = [s["loop_p99_ms"] for s in fitted if s.get("loop_p99_ms") is not None]
        line.update(lag_end_messages=last["lag_messages"], loop_p99_ms_end=last["loop_p99_ms"],
                    lag_max_messages=max((s["lag_messages"] or 0) for s in fitted),
                    lag_messages_per_hour=slope_per_hour(fitted, "lag_messages"),
                    loop_p99_ms_median=round(float(np.median(loop)), 1) if loop else None,
                    loop_p99_ms_max=round(float(max(loop)), 1) if loop else None)
    return {**line, "reproduce": REPRODUCE}


def overload_lines(process: Watched, overload_s: float) -> Iterator[dict]:
    """The ``overload`` lines of a process: per phase (overload, recovery) its RSS peak, the lag's peak and end, the
    loop p99 at the end, and how long after the overload the lag fell below a tenth of its peak."""
    phases = {"overload": [s for s in process.samples if s["t_s"] <= overload_s],
              "recovery": [s for s in process.samples if s["t_s"] > overload_s]}
    lag_peak = max((s.get("lag_messages") or 0 for s in process.samples), default=0)
    for phase, samples in phases.items():
        if not samples:
            continue
        line: dict = {"bench": "overload", "process": process.name, "phase": phase,
                      "from_s": samples[0]["t_s"], "to_s": samples[-1]["t_s"],
                      "rss_mb_peak": round(max(s["rss_bytes"] for s in samples) / MB, 1),
                      "rss_mb_end": round(samples[-1]["rss_bytes"] / MB, 1)}
        if process.metrics_port is not None:
            line.update(lag_max_messages=max(s.get("lag_messages") or 0 for s in samples),
                        lag_end_messages=samples[-1].get("lag_messages"), loop_p99_ms_end=samples[-1]["loop_p99_ms"])
            if phase == "recovery":
                drained = [s["t_s"] for s in samples if (s.get("lag_messages") or 0) <= lag_peak / 10]
                line["drained_after_s"] = round(drained[0] - overload_s, 1) if drained else None
        yield {**line, "reproduce": REPRODUCE + " --overload"}


def stage_stores(state_dir: Path) -> Iterator[tuple[str, Path]]:
    """(stage directory name, store path) of every partition store under a process's state directory."""
    for stage in sorted(p for p in state_dir.iterdir() if p.is_dir() and p.name != ARCHIVE_DIR):
        for store in sorted(p for p in stage.iterdir() if p.is_dir()):
            yield stage.name, store


def state_lines(processes: list[Watched], mode: str) -> Iterator[dict]:
    """Per stage: its stores' bytes on disk and what they hold, counted after the processes stopped.

    The joiner's retained impressions are its pending (``p``) and emitted (``x``) keys; an updater's entities are
    its entity keys. Bytes are measured before the stores are opened to count (opening replays the write-ahead log).
    """
    for process in processes:
        if process.state_dir is None:
            continue
        stores: dict[str, list[Path]] = {}
        for stage, store in stage_stores(process.state_dir):
            stores.setdefault(stage, []).append(store)
        for stage, paths in stores.items():
            size = sum(dir_bytes(p) for p in paths)
            counts = {prefix: 0 for prefix in ((PENDING, EMITTED) if stage == "joiner" else (ENTITY_PREFIX,))}
            for path in paths:
                store = PartitionStore(path)
                try:
                    for prefix in counts:
                        counts[prefix] += store.count(prefix)
                finally:
                    store.close()
            line: dict = {"bench": "soak-state", "mode": mode, "process": process.name, "stage": stage,
                          "stores": len(paths), "state_bytes": size}
            if stage == "joiner":
                retained = counts[PENDING] + counts[EMITTED]
                line.update(pending_impressions=counts[PENDING], emitted_impressions_kept=counts[EMITTED],
                            state_bytes_per_retained_impression=round(size / retained, 1) if retained else None)
            else:
                entities = counts[ENTITY_PREFIX]
                line.update(entities=entities, state_bytes_per_entity=round(size / entities, 1) if entities else None)
            yield {**line, "reproduce": REPRODUCE}


def start_processes(values: dict[str, str], root: Path, split: bool,
                    coordinates: list[str]) -> tuple[list[subprocess.Popen], list[Watched], list[Path]]:
    """``glmix run all`` (or a joiner and one updater per coordinate), each with its own state dir and metrics port."""
    commands = ([("joiner", ["run", "joiner"])] + [(f"updater-{c}", ["run", "updater", "--coordinate", c])
                                                   for c in coordinates]) if split else [("all", ["run", "all"])]
    popens, watched, logs = [], [], []
    for name, args in commands:
        port, state, log = free_port(), root / name, root / f"{name}.log"
        popen = run_all.start_glmix(args, {**values, "state_dir": str(state), "metrics.port": str(port),
                                           "log_level": "INFO"}, log)
        popens.append(popen)
        watched.append(Watched(name, popen.pid, state, port))
        logs.append(log)
    return popens, watched, logs


def stop(popens: list[subprocess.Popen], grace_s: float = 60.0) -> None:
    """SIGTERM every process, then SIGKILL whichever has not exited within ``grace_s`` (a store left locked by a
    process still closing would fail the count that follows)."""
    for p in popens:
        if p.poll() is None:
            p.terminate()
    for p in popens:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def soak(broker: BrokerProcess, phases: list[tuple[float, float]], split: bool, retention_ms: int,
         verbose: bool, fetch_wait_ms: int) -> tuple[list[Watched], dict]:
    """Run the processes through ``phases`` ((events/s, seconds) each), sampling each every 10 s; returns them and
    what was produced.

    Every process started is stopped and the state directories removed, also when the run fails or is interrupted.
    """
    root = Path(tempfile.mkdtemp(prefix="glmix-bench-soak-"))
    try:
        watched, produced = loaded_run(broker, root, phases, split, retention_ms, verbose, fetch_wait_ms)
        lines = list(state_lines([w for w in watched if w.state_dir is not None], "split" if split else "all"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return watched, {"produced": produced, "state_lines": lines}


def loaded_run(broker: BrokerProcess, root: Path, phases: list[tuple[float, float]], split: bool,
               retention_ms: int, verbose: bool, fetch_wait_ms: int) -> tuple[list[Watched], dict]:
    """The processes under ``root`` with the live producer and the follower; the samples and what was produced."""
    bootstrap = broker.bootstrap_servers
    values = run_all.overrides(bootstrap, str(root), **{
        "joiner.attribution_window_ms": "60000", "joiner.allowed_lateness_ms": "5000",
        "joiner.early_positives": "true", "joiner.emitted_retention_ms": str(retention_ms), "batching": "natural",
        "kafka.consumer.fetch.wait.max.ms": str(fetch_wait_ms)})
    settings = load_settings(overrides=values)
    prepare_topics(settings, bootstrap)
    pipeline.publish_first_model(settings)
    popens: list[subprocess.Popen] = []
    live: subprocess.Popen | None = None
    topic = settings.topics.coefficients("member")
    follower = TopicReader(settings.kafka, topic, make_codec("EntityModel", topic), bootstrap_servers=bootstrap,
                           client_id=f"{values['kafka.group_prefix']}-follower")
    try:
        popens, watched, logs = start_processes(values, root, split, list(settings.model.coordinates))
        run_all.wait_until_settled(logs)
        watched.append(Watched("broker", broker.process.pid))
        seconds = sum(duration for _, duration in phases)
        live = subprocess.Popen([sys.executable, pipeline.__file__, "--produce-live", bootstrap,
                                 settings.topics.impressions, settings.topics.interactions,
                                 ",".join(str(rate / 1.2) for rate, _ in phases),  # 1.2 events per impression
                                 ",".join(str(duration) for _, duration in phases)], stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        next_sample = started
        window: list[float] = []
        while time.monotonic() < started + seconds:
            window.extend(time.time() * 1000 - r["last_event_time"] for r in follower.poll(timeout_s=0.05).records)
            if time.monotonic() >= next_sample:
                p99 = round(float(np.percentile(window, 99)), 1) if window else None
                for process in watched:
                    row = sample(process, time.monotonic() - started, p99)
                    process.samples.append(row)
                    if verbose:
                        print(json.dumps({**row, "reproduce": REPRODUCE}), flush=True)
                window, next_sample = [], next_sample + SAMPLE_EVERY_S
        failed = [log for p, log in zip(popens, logs) if p.poll() is not None]
        if failed:
            tails = "\n".join(f"{log.name}: {log.read_text()[-2000:]}" for log in failed)
            raise SystemExit(f"bench: glmix processes exited during the soak:\n{tails}")
        out, _ = live.communicate(timeout=120)
    finally:
        follower.close()
        stop([*popens, *([live] if live else [])])
    return watched, json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the load lasts (default 60)")
    parser.add_argument("--quick", action="store_true", help="3 minutes, a smaller maximum run (the slow suite's)")
    parser.add_argument("--load", type=float, default=0.8, help="share of the measured maximum (default 0.8)")
    parser.add_argument("--rate", type=float, help="events/s (impressions + clicks) to run at; skips the maximum")
    parser.add_argument("--split", action="store_true", help="a joiner and one updater per coordinate as processes")
    parser.add_argument("--retention-minutes", type=float, default=2.0,
                        help="joiner.emitted_retention_ms for the soak, in minutes (default 2; the setting's is 60)")
    parser.add_argument("--overload", action="store_true",
                        help="twice the target for --overload-minutes, then half of it for the rest of --minutes")
    parser.add_argument("--overload-minutes", type=float, default=5.0, help="the overload phase (default 5)")
    parser.add_argument("--fetch-wait-ms", type=int, default=500,
                        help="the glmix processes' kafka.consumer.fetch.wait.max.ms (default 500: with the setting's "
                             "50, Tansu's in-memory log answers fetches with nothing once it holds a few GB)")
    parser.add_argument("--verbose", action="store_true", help="also print every sample")
    args = parser.parse_args()
    minutes = 3.0 if args.quick else args.minutes
    seconds = minutes * 60
    warmup_s = 0.2 * seconds if args.quick else max(0.2 * seconds, 60.0)
    mode = "split" if args.split else "all"
    load_start = os.getloadavg()[0]
    with BrokerProcess() as broker:
        if args.rate:
            maximum, target = None, args.rate
        else:
            result = run_all.run(broker.bootstrap_servers, joiners=1, requests=4000 if args.quick else 12_000,
                                 partitions=4, one_process=not args.split, batching="natural")
            print(json.dumps({**result, "bench": "max", "broker": "process"}), flush=True)
            maximum, target = result["events_per_s"], args.load * result["events_per_s"]
        overload_s = min(args.overload_minutes * 60, seconds) if args.overload else 0.0
        phases = [(2 * target, overload_s), (target / 2, seconds - overload_s)] if args.overload else [(target, seconds)]
        watched, outcome = soak(broker, [(rate, s) for rate, s in phases if s > 0], args.split,
                                int(args.retention_minutes * 60_000), args.verbose, args.fetch_wait_ms)
    for process in watched:
        print(json.dumps(summary(process, warmup_s, mode)), flush=True)
        if args.overload:
            for line in overload_lines(process, overload_s):
                print(json.dumps(line), flush=True)
    for line in outcome["state_lines"]:
        print(json.dumps(line), flush=True)
    produced = outcome["produced"]
    print(json.dumps({"bench": "soak-run", "mode": mode, "broker": "process", "minutes": minutes,
                      "warmup_ms": int(warmup_s * 1000), "sample_every_ms": int(SAMPLE_EVERY_S * 1000),
                      "load": None if args.rate else args.load, "max_events_per_s": maximum,
                      "overload_ms": int(overload_s * 1000) if args.overload else None,
                      "target_events_per_s": round(target),
                      "events_per_s": round((produced["impressions"] + produced["clicks"]) / seconds),
                      "impressions": produced["impressions"], "clicks": produced["clicks"],
                      "attribution_window_ms": 60_000, "emitted_retention_ms": int(args.retention_minutes * 60_000),
                      "fetch_wait_ms": args.fetch_wait_ms,
                      "cores": os.cpu_count(), "load_avg_1m_start": round(load_start, 2),
                      "load_avg_1m_end": round(os.getloadavg()[0], 2), "reproduce": REPRODUCE}), flush=True)


if __name__ == "__main__":
    main()
