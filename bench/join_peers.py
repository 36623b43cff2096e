"""The joiner beside two peers doing the same join (a Quix Streams app, a Bytewax dataflow), on one broker and data.

Reproduce: python bench/join_peers.py   (--quick for a smoke run of a few thousand events; --requests N)

One Tansu broker process (stream/kafka/broker_process.py) for the whole run, and one synthetic world (bench/pipeline.py's,
20,000 requests of five impressions by default: impressions, clicks, applies, dismisses, 2% duplicates, 5% out of order,
1% late clicks and 1% orphans), encoded once. Each contender gets fresh input topics (4 partitions each) and its own
consumer group; once it holds its partitions, the same encoded events are produced to its topics (keys and arrival
timestamps as stream/synthetic/sinks.py gives them) and the clock starts at the first record produced. Contenders:

* ``joiner``: ``glmix run joiner`` as its own process, a first global model published before it starts (as
  bench/run_all.py and bench/pipeline.py do), with everything it does: decode, index, join on RocksDB with its
  changelog and outbox, score, examples to both examples topics. Timed until its committed offsets reach the inputs'
  ends (its examples are produced and flushed before it commits).
* ``quix-at-least-once``, ``quix-exactly-once``: bench/peers/quix_join.py (Quix Streams, RocksDB state with changelog
  topics, windows per impression id closed on each partition's watermark).
* ``bytewax``: bench/peers/bytewax_join.py (Bytewax, one worker, a stateful step per partition, SQLite recovery:
  at-least-once); ``bytewax-no-recovery`` without it.

The peers run in their own virtualenv (``--peers-venv``, default bench/.peers-venv, built once from
bench/peers/requirements.txt), never in the project's: their pins (confluent-kafka among them) are not the project's.
They decode the same Avro values with fastavro and the packaged schemas, apply the joiner's rules from the same settings
(``joiner.*``), and write one JSON example per impression, without indexing, scoring or dead letters. A peer is timed
until its join step has taken the last input event (it prints the wall clock then); its commits come later (Quix every
``commit_interval``, 5 s; Bytewax at the end of each 10 s epoch), so a peer's time is a lower bound of the joiner's kind.

Prints one JSON line per contender: input events/s, the contender process's CPU-seconds per million events (user +
system from /proc over the timed span), examples, and the comparison of its (impression id, label) pairs with the
joiner's: how many are equal, how many differ in label, and which impressions only one side emitted (a window that had
not closed when the input ended; ``missing_within_last_s`` says how close to the end of event time they all are). Then
one line with the joiner's rate over the fastest peer's. Exit status 1 when a contender failed or a label differs from the joiner's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import pipeline
import run_all
import stream.codec
from stream.codec import make_codec
from stream.config import Settings, load_settings
from stream.kafka import producer_config
from stream.kafka.broker_process import BrokerProcess
from stream.kafka.clients import prepare_topics
from stream.kafka.producing import produce_bounded
from stream.kafka.topic_reader import TopicReader
from stream.synthetic import event_stream
from stream.synthetic.sinks import encode_event, event_topics_and_codecs

REPRODUCE = "python bench/join_peers.py"
BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
SCHEMAS = Path(stream.codec.__file__).parent / "schemas"  # the packaged .avsc files the peers decode with
# The joiner's rules in this benchmark (bench/pipeline.py's joiner line): the world's one-minute attribution window,
# and a lateness above the world's disorder (out-of-order arrivals up to a minute late), so that which interactions
# count does not depend on how a contender batches or interleaves its inputs: only on the rule.
JOIN_SETTINGS = {"joiner.attribution_window_ms": "60000", "joiner.allowed_lateness_ms": "65000"}
CONTENDERS = ("joiner", "quix-at-least-once", "quix-exactly-once", "bytewax", "bytewax-no-recovery")
DEFAULT_CONTENDERS = ("joiner", "quix-at-least-once", "quix-exactly-once", "bytewax")


def peers_python(venv: Path) -> Path:
    """The peers' interpreter: ``venv``, built once (and again when bench/peers/requirements.txt changes)."""
    requirements = PEERS / "requirements.txt"
    stamp = venv / f".installed-{hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]}"
    python = venv / "bin" / "python"
    if stamp.exists() and python.exists():
        return python
    started = time.monotonic()
    print(f"building the peers' virtualenv in {venv} (once)", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                    str(requirements)], check=True)
    stamp.touch()
    print(f"peers' virtualenv ready in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return python


def contender_settings(bootstrap: str, state_dir: str) -> tuple[dict[str, str], Settings]:
    """Fresh topics and groups on the shared broker (bench/run_all.py's overrides), the join's rules, topics created."""
    values = run_all.overrides(bootstrap, state_dir, **JOIN_SETTINGS, **{"metrics.port": "0"})
    settings = load_settings(overrides=values)
    # The inputs name their retention: Tansu describes only the configs a topic was created with, and Quix Streams
    # derives its repartition and changelog topics' retention from its inputs'. The broker keeps everything anyway.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    inputs = [NewTopic(t, num_partitions=settings.topics.partitions, replication_factor=1,
                       config={"retention.ms": "-1", "retention.bytes": "-1"})
              for t in (settings.topics.impressions, settings.topics.interactions)]
    for future in admin.create_topics(inputs, operation_timeout=10).values():
        future.result(timeout=10)
    prepare_topics(settings, bootstrap)
    return values, settings


def encoded_events(requests: int) -> tuple[list[tuple[str, bytes, bytes, int]], dict[str, int]]:
    """The world's valid events, encoded once (kind, key, value, arrival ms); and each impression id's event time."""
    world, labeled = pipeline.world_events(requests)
    _, codecs = event_topics_and_codecs(load_settings())
    events = [e for e in event_stream(world, labeled) if not e.malformed]
    impression_times = {li.impression["impression_id"]: li.impression["event_time"] for li in labeled}
    return [(e.kind, e.key.encode(), encode_event(e, codecs), e.arrival_ms) for e in events], impression_times


def produce(bootstrap: str, settings: Settings, events: list[tuple[str, bytes, bytes, int]]) -> None:
    """The encoded events to this contender's input topics, in arrival order; returns once all are delivered."""
    topics, _ = event_topics_and_codecs(settings)
    producer = Producer(producer_config(settings.kafka, bootstrap))
    for topic in topics.values():
        producer.list_topics(topic, timeout=10)
    for kind, key, value, arrival_ms in events:
        produce_bounded(producer, topics[kind], key, value, stall_timeout_s=30, timestamp=arrival_ms)
    if producer.flush(60):
        raise RuntimeError("the input events were not all delivered within 60 s")


class _Json:
    """The peers' output values (JSON) as records, for TopicReader."""

    def decode(self, payload: bytes | None) -> dict:
        return json.loads(payload or b"null")


def read_labels(settings: Settings, topic: str, codec: Any) -> tuple[dict[str, float], int]:
    """Every example of ``topic``: impression id -> label, and how many records repeated an impression."""
    reader = TopicReader(settings.kafka, topic, codec, client_id=f"labels-{topic}")
    labels: dict[str, float] = {}
    repeats = 0
    try:
        for batch in reader.read_to_end(stall_timeout_s=60):
            for record in batch.records:
                repeats += record["example_id"] in labels
                labels[record["example_id"]] = float(record["label"])
    finally:
        reader.close()
    return labels, repeats


def run_joiner(bootstrap: str, events: list, timeout_s: float) -> tuple[dict, dict[str, float]]:
    """``glmix run joiner`` on fresh topics: its rate until its commits reach the inputs' ends, and its labels."""
    state_dir = tempfile.mkdtemp(prefix="glmix-bench-join-peers-")
    values, settings = contender_settings(bootstrap, state_dir)
    pipeline.publish_first_model(settings)
    log = Path(state_dir) / "joiner.log"
    process = run_all.start_glmix(["run", "joiner"], {**values, "state_dir": f"{state_dir}/joiner",
                                                      "log_level": "INFO"}, log)
    try:
        run_all.wait_until_settled([log])
        cpu_before = run_all.cpu_seconds(process.pid)
        started = time.time()
        produce(bootstrap, settings, events)
        partitions = settings.topics.partitions
        watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{values['kafka.group_prefix']}-watch"})
        inputs = {t: run_all.end_offsets(watcher, t, partitions)
                  for t in (settings.topics.impressions, settings.topics.interactions)}
        watcher.close()
        offsets = run_all.CommittedOffsets(bootstrap)
        group = settings.kafka.group_id("joiner")
        deadline = time.monotonic() + timeout_s
        while not all(offsets.reached(group, t, ends) for t, ends in inputs.items()):
            if process.poll() is not None or time.monotonic() > deadline:
                offsets.close()
                raise RuntimeError(f"the joiner {'exited' if process.poll() is not None else 'timed out'}: "
                                   f"{_tail(log)}")
            time.sleep(0.1)
        seconds = time.time() - started
        cpu = run_all.cpu_seconds(process.pid) - cpu_before
        offsets.close()
    finally:
        process.terminate()
        process.wait(30)
    topic = settings.topics.examples_by_member
    labels, repeats = read_labels(settings, topic, make_codec("LabeledExample", topic))
    shutil.rmtree(state_dir, ignore_errors=True)
    line = {"contender": "joiner", "engine": "glmix run joiner", "processing_guarantee":
            "one example per impression (changelog, outbox)", "does": "decode, index, join, score, 2 examples topics",
            "timed_to": "committed offsets reach the inputs' ends", "seconds": round(seconds, 2),
            "cpu_s_per_million_events": round(1e6 * cpu / len(events), 1), "examples": len(labels),
            "repeated_examples": repeats}
    return line, labels


def _tail(log: Path, chars: int = 600) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return " ".join(text[-chars:].split())


def _lines(stream: Any, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def run_peer(contender: str, python: Path, bootstrap: str, events: list, timeout_s: float
             ) -> tuple[dict, dict[str, float]]:
    """One peer process on fresh topics: its rate until its join step took the last event, and its labels."""
    state_dir = tempfile.mkdtemp(prefix="glmix-bench-join-peers-")
    values, settings = contender_settings(bootstrap, state_dir)
    engine, _, variant = contender.partition("-")
    guarantee = {"at-least-once": "at-least-once", "exactly-once": "exactly-once", "no-recovery": "none",
                 "": "at-least-once"}[variant]
    j = settings.joiner
    rules = {"attribution_window_ms": j.attribution_window_ms, "allowed_lateness_ms": j.allowed_lateness_ms,
             "emitted_retention_ms": j.emitted_retention_ms, "early_positives": j.early_positives,
             "labels": dict(j.labels)}
    output = settings.topics.examples_by_member
    command = [str(python), str(PEERS / f"{engine}_join.py"), "--bootstrap", bootstrap,
               "--impressions", settings.topics.impressions, "--interactions", settings.topics.interactions,
               "--output", output, "--group", settings.kafka.group_id(engine), "--state-dir", f"{state_dir}/{engine}",
               "--schemas", str(SCHEMAS), "--rules", json.dumps(rules), "--expect", str(len(events)),
               "--guarantee", guarantee]
    log = Path(state_dir) / f"{engine}.log"
    with log.open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=PEERS)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        _wait_ready(process, log)
        cpu_before = run_all.cpu_seconds(process.pid)
        started = time.time()
        produce(bootstrap, settings, events)
        deadline = time.monotonic() + timeout_s
        report = None
        while report is None:
            try:
                report = json.loads(lines.get(timeout=0.5))
            except queue.Empty:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{contender} {'exited' if process.poll() is not None else 'timed out'}: "
                                       f"{_tail(log)}") from None
        cpu = run_all.cpu_seconds(process.pid) - cpu_before
        seconds = report["last_input_s"] - started
        _wait_output(settings, output, report["examples"], process)
    finally:
        process.terminate()  # both peers stop on SIGTERM after their last commit (Quix) or flush (Bytewax)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    labels, repeats = read_labels(settings, output, _Json())
    shutil.rmtree(state_dir, ignore_errors=True)
    line = {"contender": contender, "engine": {"quix": "Quix Streams 3.28.1", "bytewax": "Bytewax 0.21.1"}[engine],
            "processing_guarantee": guarantee, "does": "decode, join, one JSON example topic",
            "state": {"quix": "RocksDB, changelog topics, hopping windows per impression id (re-keyed in place)",
                      "bytewax": "one worker, a stateful step per partition"
                                 + (", SQLite recovery every 10 s epoch" if guarantee != "none" else "")}[engine],
            "timed_to": "its join step took the last input event", "seconds": round(seconds, 2),
            "cpu_s_per_million_events": round(1e6 * cpu / len(events), 1), "examples": len(labels),
            "examples_when_done": report["examples"], "late_events_dropped": report["late_events"],
            "repeated_examples": repeats}
    return line, labels


def _wait_output(settings: Settings, topic: str, examples: int, process: subprocess.Popen, timeout_s: float = 30.0
                 ) -> None:
    """Until ``topic`` holds the ``examples`` a peer had emitted when it was done (they are on their way: a peer
    produces its last batch's examples after its join step took them), or ``timeout_s``; not timed."""
    watcher = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "unused"})
    deadline = time.monotonic() + timeout_s
    try:
        while sum(run_all.end_offsets(watcher, topic, settings.topics.partitions).values()) < examples:
            if process.poll() is not None or time.monotonic() > deadline:
                return
            time.sleep(0.2)
    finally:
        watcher.close()


def _wait_ready(process: subprocess.Popen, log: Path, quiet_s: float = 2.0, timeout_s: float = 120.0) -> None:
    """Until the peer said it holds its partitions and said nothing more for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    seen, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the peer exited before it was ready: {_tail(log)}")
        count = log.read_text(errors="replace").count("PEER READY")
        if count != seen:
            seen, changed = count, time.monotonic()
        elif count and time.monotonic() - changed >= quiet_s:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the peer did not take its partitions within {timeout_s:.0f} s: {_tail(log)}")


def compare(labels: dict[str, float], joiner: dict[str, float], impression_times: dict[str, int]) -> dict:
    """A peer's (impression id, label) pairs against the joiner's."""
    both = labels.keys() & joiner.keys()
    differ = sorted(i for i in both if labels[i] != joiner[i])
    missing, extra = joiner.keys() - labels.keys(), labels.keys() - joiner.keys()
    end = max(impression_times.values())
    within = {name: round((end - min(impression_times[i] for i in ids)) / 1000, 1) if ids else 0.0
              for name, ids in (("missing", missing), ("extra", extra))}
    return {"labels_equal_joiner": len(both) - len(differ), "labels_differ_joiner": len(differ),
            "label_differences": [[i, joiner[i], labels[i]] for i in differ[:5]],
            "joiner_only": len(missing), "joiner_only_within_last_s": within["missing"],
            "peer_only": len(extra), "peer_only_within_last_s": within["extra"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 requests (~4,200 events): the slow suite's smoke run")
    parser.add_argument("--requests", type=int, default=20_000, help="requests of five impressions each")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(DEFAULT_CONTENDERS))
    parser.add_argument("--peers-venv", type=Path, default=BENCH / ".peers-venv",
                        help="the peers' own virtualenv (built on first use)")
    args = parser.parse_args()
    requests = 600 if args.quick else args.requests
    contenders = ["joiner", *[c for c in args.contenders if c != "joiner"]]  # the joiner's labels are the reference
    python = peers_python(args.peers_venv) if len(contenders) > 1 else None
    events, impression_times = encoded_events(requests)
    timeout_s = 120 + len(events) / 300  # well beyond the slowest contender on a loaded machine
    common = {"bench": "join-peers", "requests": requests, "events": len(events), "cores": os.cpu_count(),
              "broker": "Tansu process", "attribution_window_ms": int(JOIN_SETTINGS["joiner.attribution_window_ms"]),
              "allowed_lateness_ms": int(JOIN_SETTINGS["joiner.allowed_lateness_ms"])}
    rates: dict[str, float] = {}
    cpu: dict[str, float] = {}
    failed = False
    with BrokerProcess() as broker:
        reference: dict[str, float] = {}
        for contender in contenders:
            try:
                if contender == "joiner":
                    line, reference = run_joiner(broker.bootstrap_servers, events, timeout_s)
                else:
                    assert python is not None
                    line, labels = run_peer(contender, python, broker.bootstrap_servers, events, timeout_s)
                    line.update(compare(labels, reference, impression_times))
                    failed |= line["labels_differ_joiner"] > 0
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                print(json.dumps({**common, "contender": contender, "error": str(exc), "reproduce": REPRODUCE}),
                      flush=True)
                failed = True
                continue
            rates[contender] = len(events) / line["seconds"]
            cpu[contender] = line["cpu_s_per_million_events"]
            print(json.dumps({**common, **line, "events_per_s": round(rates[contender]), "reproduce": REPRODUCE}),
                  flush=True)
    peers = {c: r for c, r in rates.items() if c != "joiner"}
    if "joiner" in rates and peers:
        fastest = max(peers, key=peers.__getitem__)
        print(json.dumps({"bench": "join-peers-ratio", "requests": requests, "events": len(events),
                          "joiner_events_per_s": round(rates["joiner"]), "fastest_peer": fastest,
                          "fastest_peer_events_per_s": round(peers[fastest]),
                          "joiner_over_fastest_peer": round(rates["joiner"] / peers[fastest], 2),
                          "fastest_peer_cpu_over_joiner_cpu": round(cpu[fastest] / cpu["joiner"], 2),
                          "aim_joiner_over_fastest_peer": 3.0, "reproduce": REPRODUCE}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
