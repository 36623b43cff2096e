"""Pipeline throughput and freshness on the embedded broker, with the raw ceiling measured in the same run.

Reproduce: python bench/pipeline.py   (or: make bench; --quick for a smaller run)

Prints one JSON line per measurement:

Stages join their consumer group and restore their partitions before the data arrives, so only processing is timed.

* ``updater-hot`` / ``updater-cold`` (DESIGN §8): LabeledExamples for the member
  coordinate (d=32, bayes, full and diagonal precision) consumed by a CoordinateUpdater — hot: ~1k
  entities with ~10 events each per micro-batch; cold: 120k entities, ~1 event each per
  micro-batch (produced in rounds, because the mock broker keeps only ~5 MiB a partition);
  cold again with ``state_write_ahead_log = false`` (``write_ahead_log``: false).
  Beside each: the raw ceiling, consume + compiled decode of the same messages into the arrays the update reads
  (``ExampleReader``, best of three reads), and
  their ratio; entity updates/s; RocksDB bytes per entity after a flush.
* ``joiner``: synthetic impressions and interactions (~13 name-term-value features each)
  through the Joiner (decode, index, RocksDB join, produce examples for two coordinates),
  against consume + decode of the same input; and what its changelog took per example
  (records and bytes, the outbox included) beside the size of one example.
* ``freshness``: a ``glmix run joiner`` process and the member updater (in this process)
  running live while impressions and clicks are produced (by a third process), event time =
  wall clock; freshness is click event time -> the clicked member's coefficients published
  (early positives on). Twice: at 80% of the joiner's rate measured above (``max_of``:
  ``joiner_alone``), and at 80% of the pipeline's end-to-end rate on this machine
  (``pipeline_end_to_end``: the ``run-all`` line printed before it, as bench/run_all.py
  measures it, with one joiner), where every stage, the broker and the producer share the cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.codec import decode_batch, make_codec
from stream.config import KafkaSettings, Settings, load_settings
from stream.kafka import EmbeddedBroker, consumer_config, producer_config
from stream.kafka.clients import prepare_topics
from stream.kafka.producing import produce_bounded
from stream.kafka.topic_reader import TopicReader
from stream.model.export import initial_global_model_record
from stream.model.losses import get_loss
from stream.runtime.runner import StageRunner
from stream.state.partition_store import PartitionStore
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.updaters.examples import ExampleReader
from stream.updaters.state_update import CoordinateMath
from stream.updaters.updater import CoordinateUpdater

import run_all

REPRODUCE = "python bench/pipeline.py"
D = 32


def overrides_for(bootstrap: str, state_dir: str, **extra: str) -> dict[str, str]:
    """run_all's overrides of one measurement, with the producer lingering 2 ms."""
    return run_all.overrides(bootstrap, state_dir, **{"kafka.producer.linger.ms": "2", **extra})


def settings_for(bootstrap: str, state_dir: str, **extra: str) -> Settings:
    return load_settings(overrides=overrides_for(bootstrap, state_dir, **extra))


def produce_all(producer: Producer, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    for key, value in items:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def example_values(settings: Settings, entities: np.ndarray, rng: np.random.Generator) -> list[tuple[bytes, bytes]]:
    codec = make_codec("LabeledExample", settings.topics.examples_by_member)
    features = rng.normal(size=(len(entities), D)).astype(np.float32)
    features[:, 0] = 1.0
    labels = rng.random(len(entities)) < 0.2
    out = []
    for entity, x, y in zip(entities, features, labels):
        member = f"m{entity:07d}"
        record = {"example_id": "e", "member_id": member, "item_id": "j", "label": float(y), "event_time": 0,
                  "label_time": 0, "scores": {"global": -1.0, "job": 0.1},
                  "global_features": {"indices": b"", "values": b""},
                  "coordinates": {"member": {"entity_id": member, "dense": x.tobytes()}}}
        out.append((member.encode(), codec.encode(record)))
    return out


def raw_ceiling(settings: Settings, topic: str, count: int, schema: str) -> float:
    """Consume + batch-decode ``count`` messages of ``topic`` from the beginning, events/s.

    LabeledExamples are decoded as the updater reads them (the compiled scan into the member coordinate's arrays,
    ``ExampleReader``); other schemas with ``decode_batch``.
    """
    consumer = Consumer(consumer_config(settings.kafka, group_id=f"raw-{uuid.uuid4().hex[:6]}"))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    codec = make_codec(schema, topic)
    if schema == "LabeledExample":
        reader = ExampleReader(codec, "member", D)

        def decoded(messages: list) -> int:
            offsets = np.fromiter((m.offset() for m in messages), dtype=np.int64, count=len(messages))
            return len(reader.read([m.value() for m in messages], offsets).rows)
    else:
        def decoded(messages: list) -> int:
            return len(decode_batch(codec, messages).records)
    seen, started = 0, None
    deadline = time.monotonic() + 120
    while seen < count and time.monotonic() < deadline:
        before = time.perf_counter()
        messages = consumer.consume(5000, timeout=0.5)
        if messages and started is None:
            started = before
        seen += decoded([m for m in messages if m.error() is None])
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


class _ValueSizes:
    """What ``TopicReader`` decodes each value to here: its size (a changelog's values are not Avro)."""

    def decode(self, payload: bytes | None) -> dict:
        return {"bytes": len(payload or b"")}


def topic_size(settings: Settings, topic: str) -> tuple[int, int]:
    """Records in ``topic`` and their key + value bytes, read from the beginning to the end."""
    reader = TopicReader(settings.kafka, topic, _ValueSizes(), client_id=f"size-{uuid.uuid4().hex[:6]}")
    records = size = 0
    try:
        for batch in reader.read_to_end(stall_timeout_s=120):
            records += len(batch.messages)
            size += sum(r["bytes"] for r in batch.records) + sum(len(m.key() or b"") for m in batch.messages)
    finally:
        reader.close()
    return records, size


def wait_ready(stage, timeout_s: float = 60.0) -> None:
    """Step ``stage`` until its consumer group gave it partitions and it restored them all.

    Joining the group and restoring (opening the stores, reading the changelog to its end) are not processing, so
    they are not timed.
    """
    deadline = time.monotonic() + timeout_s
    while not stage.assigned_partitions or stage.ready_partitions != stage.assigned_partitions:
        if time.monotonic() > deadline:
            raise TimeoutError("the stage got no partitions, or did not restore them")
        stage.step()


def timed_steps(step, done, timeout_s: float = 300.0) -> float:
    """Call ``step`` until ``done()``; seconds from the start of the first step that got messages."""
    started = None
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        before = time.perf_counter()
        if step() and started is None:
            started = before
    return time.perf_counter() - started


def step_until(stage: StageRunner, stop: threading.Event) -> None:
    """Run ``stage``'s loop until ``stop`` is set."""
    while not stop.is_set():
        stage.step()


def store_bytes(updater_dir: str) -> int:
    total = 0
    for path in Path(updater_dir).iterdir():
        store = PartitionStore(path)
        store.flush()
        total += store.size_bytes()
        store.close()
    return total


def bench_updater(bootstrap: str, workload: str, rounds: int, entities_per_round: int, events_per_entity: int,
                  batch_size: int, precision: str, write_ahead_log: bool = True) -> dict:
    state_dir = tempfile.mkdtemp(prefix="glmix-bench-")
    settings = settings_for(bootstrap, state_dir, **{
        "model.coordinates.member.max_features": str(D), "model.coordinates.member.batch_size": str(batch_size),
        "model.coordinates.member.batch_time_ms": "200", "model.coordinates.member.precision": precision,
        "state_write_ahead_log": str(write_ahead_log).lower()})
    rng = np.random.default_rng(0)
    producer = Producer(producer_config(settings.kafka))
    updater = StageRunner(CoordinateUpdater(settings, "member"), settings)
    wait_ready(updater)
    seconds = ceiling_seconds = 0.0
    total = 0
    for r in range(rounds):
        ids = np.arange(r * entities_per_round, (r + 1) * entities_per_round)
        order = np.tile(ids, events_per_entity)
        if workload == "hot":
            order = rng.permutation(order)
        items = example_values(settings, order, rng)
        produce_all(producer, settings.topics.examples_by_member, items)
        total += len(items)
        seconds += timed_steps(updater.step, lambda n=total: updater.stats.examples >= n)
        if r == 0:  # the best of three reads: the ceiling is what consume + decode can reach here
            ceiling_seconds = len(items) / max(raw_ceiling(settings, settings.topics.examples_by_member, len(items),
                                                           "LabeledExample") for _ in range(3))
    stats = updater.stats
    updater.close()
    entities = rounds * entities_per_round
    size = store_bytes(f"{state_dir}/updater-member")
    shutil.rmtree(state_dir, ignore_errors=True)
    ceiling = total / rounds / ceiling_seconds
    rate = stats.examples / seconds
    return {
        "bench": f"updater-{workload}", "precision": precision, "write_ahead_log": write_ahead_log,
        "entities": entities, "events": stats.examples,
        "batch_size": batch_size,
        "updater_events_per_s": round(rate), "raw_ceiling_events_per_s": round(ceiling),
        "updater_over_ceiling": round(rate / ceiling, 3),
        "entity_updates_per_s": round(stats.entity_updates / seconds), "mean_events_per_update": round(
            stats.examples / max(1, stats.entity_updates), 2),
        "rocksdb_bytes_per_entity": round(size / entities), "state_value_bytes": CoordinateMath.of(
            settings.model.coordinates["member"], get_loss("logistic")).layout.state_bytes,
        "reproduce": REPRODUCE,
    }


def world_events(requests: int) -> tuple[World, list]:
    world = World(WorldSpec(seed=3, members=500, jobs=300, requests=requests, items_per_request=5,
                            attribution_window_ms=60_000))
    return world, labeled_impressions(world)


def publish_first_model(settings: Settings) -> None:
    """Version 1 of the global model, indexed from this world's first 2,000 impressions: what every stage needs first."""
    _, labeled = world_events(2000)
    producer = Producer(producer_config(settings.kafka))
    producer.produce(settings.topics.model_global, key=b"glmix", value=make_codec(
        "GlobalModel", settings.topics.model_global).encode(initial_global_model_record(
            [li.impression for li in labeled[:2000]], settings.model)))
    producer.flush()


def bench_joiner(bootstrap: str, requests: int) -> dict:
    from stream.consumers.joiner import Joiner
    from stream.synthetic import event_stream
    from stream.synthetic.sinks import event_topics_and_codecs, produce_to_kafka

    state_dir = tempfile.mkdtemp(prefix="glmix-bench-")
    settings = settings_for(bootstrap, state_dir, **{"joiner.attribution_window_ms": "60000",
                                                     "joiner.allowed_lateness_ms": "65000"})
    world, labeled = world_events(requests)
    events = [e for e in event_stream(world, labeled) if not e.malformed]
    producer = Producer(producer_config(settings.kafka))
    record = initial_global_model_record([li.impression for li in labeled[:2000]], settings.model)
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    producer.flush()
    joiner = StageRunner(Joiner(settings), settings)
    wait_ready(joiner)
    topics, codecs = event_topics_and_codecs(settings)
    produce_to_kafka(events, producer, topics, codecs)

    def consumed() -> int:
        return joiner.stats.join.impressions + joiner.stats.join.interactions

    seconds = timed_steps(joiner.step, lambda: consumed() >= len(events))
    stats = joiner.stats
    joiner.close()
    impressions = sum(1 for e in events if e.kind == "impression")
    ceiling = raw_ceiling(settings, settings.topics.impressions, impressions, "Impression")
    changelog_records, changelog_bytes = topic_size(settings, settings.kafka.changelog_topic("joiner"))
    examples_bytes = topic_size(settings, settings.topics.examples_by_member)[1]
    shutil.rmtree(state_dir, ignore_errors=True)
    rate = consumed() / seconds
    return {"bench": "joiner", "events": consumed(), "examples": stats.examples, "joiner_events_per_s": round(rate),
            "raw_ceiling_impressions_per_s": round(ceiling), "joiner_over_ceiling": round(rate / ceiling, 3),
            "changelog_records_per_example": round(changelog_records / stats.examples, 2),
            "changelog_bytes_per_example": round(changelog_bytes / stats.examples),
            "example_bytes": round(examples_bytes / stats.examples), "reproduce": REPRODUCE}


def bench_freshness(bootstrap: str, rate_per_s: float, seconds: float) -> dict:
    """Click -> published coefficients while events arrive live, each stage in its own process as deployed."""
    state_dir = tempfile.mkdtemp(prefix="glmix-bench-")
    values = overrides_for(bootstrap, state_dir, **{
        "joiner.attribution_window_ms": "60000", "joiner.allowed_lateness_ms": "5000", "joiner.early_positives": "true",
        "joiner.batch_time_ms": "50", "model.coordinates.member.batch_time_ms": "50",
        "model.coordinates.job.batch_time_ms": "50", "metrics.port": "0"})
    settings = load_settings(overrides=values)
    prepare_topics(settings, bootstrap)
    _, labeled = world_events(2000)
    producer = Producer(producer_config(settings.kafka))
    producer.produce(settings.topics.model_global, key=b"glmix", value=make_codec(
        "GlobalModel", settings.topics.model_global).encode(initial_global_model_record(
            [li.impression for li in labeled[:2000]], settings.model)))
    producer.flush()
    # The joiner is a `glmix run joiner` process; the member updater runs here, where its freshness samples are.
    joiner_log = Path(state_dir) / "joiner.log"
    joiner = run_all.start_glmix(["run", "joiner"], {**values, "state_dir": f"{state_dir}/joiner", "log_level": "INFO"},
                                 joiner_log)
    updater = StageRunner(CoordinateUpdater(settings, "member"), settings)
    try:
        wait_ready(updater)
        run_all.wait_until_settled([joiner_log])
        stop = threading.Event()
        loop = threading.Thread(target=step_until, args=(updater, stop), daemon=True)
        loop.start()
        # The live events come from another process too, so producing them competes with no stage for a GIL.
        out = subprocess.run([sys.executable, __file__, "--produce-live", bootstrap, settings.topics.impressions,
                              settings.topics.interactions, str(rate_per_s), str(seconds)],
                             capture_output=True, text=True, check=True).stdout
        produced = json.loads(out.strip().splitlines()[-1])
        time.sleep(2)
        stop.set()
        loop.join(30)
    finally:
        joiner.terminate()
        joiner.wait(30)
    fresh = np.array(updater.stats.freshness_ms, dtype=float)
    updater.close()
    shutil.rmtree(state_dir, ignore_errors=True)
    return {"bench": "freshness", "impressions_per_s": round(produced["impressions"] / seconds),
            "clicks": produced["clicks"], "measured": len(fresh), "producer": "own process",
            "stages": "joiner process + member updater in the benchmark process",
            "freshness_p50_ms": round(float(np.percentile(fresh, 50)), 1) if len(fresh) else None,
            "freshness_p99_ms": round(float(np.percentile(fresh, 99)), 1) if len(fresh) else None,
            "reproduce": REPRODUCE}


def produce_live(bootstrap: str, impressions_topic: str, interactions_topic: str, rate_per_s: float | list[float],
                 seconds: float | list[float]) -> dict:
    """Impressions at ``rate_per_s`` with event time = now, and a click right after 20% of them.

    Lists of rates and durations are phases run one after the other (an overload, then a recovery), with
    impression ids running on across them.
    """
    rates = rate_per_s if isinstance(rate_per_s, list) else [rate_per_s]
    durations = seconds if isinstance(seconds, list) else [seconds]
    _, labeled = world_events(2000)
    producer = Producer(producer_config(KafkaSettings(bootstrap_servers=bootstrap), **{"linger.ms": 2}))
    imp_codec, int_codec = make_codec("Impression", impressions_topic), make_codec("Interaction", interactions_topic)
    rng = np.random.default_rng(1)
    sent = clicks = 0
    for topic in (impressions_topic, interactions_topic):
        producer.list_topics(topic, timeout=10)
    for rate, duration in zip(rates, durations):
        started, sent_before = time.monotonic(), sent
        while time.monotonic() - started < duration:
            li = labeled[sent % len(labeled)]
            now = int(time.time() * 1000)
            imp = dict(li.impression, impression_id=f"live-{sent}", event_time=now)
            produce_bounded(producer, impressions_topic, imp["member_id"].encode(), imp_codec.encode(imp),
                            stall_timeout_s=30)
            if rng.random() < 0.2:
                produce_bounded(producer, interactions_topic, imp["member_id"].encode(), int_codec.encode({
                    "interaction_id": f"c{sent}", "impression_id": imp["impression_id"], "member_id": imp["member_id"],
                    "item_id": imp["item_id"], "type": "CLICK", "event_time": now}), stall_timeout_s=30)
                clicks += 1
            producer.poll(0)
            sent += 1
            pause = started + (sent - sent_before) / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    producer.flush()
    return {"impressions": sent, "clicks": clicks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (the test suite's smoke run)")
    parser.add_argument("--produce-live", nargs=5, metavar=("BOOTSTRAP", "IMPRESSIONS", "INTERACTIONS", "RATE", "SECONDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.produce_live:
        b, imp, inter, rates, secs = args.produce_live  # RATE and SECONDS: comma-separated phases
        print(json.dumps(produce_live(b, imp, inter, [float(r) for r in rates.split(",")],
                                      [float(x) for x in secs.split(",")])), flush=True)
        return
    with EmbeddedBroker() as broker:
        b = broker.bootstrap_servers
        for precision in ("full", "diagonal"):
            if args.quick:
                hot = bench_updater(b, "hot", 1, 100, 10, batch_size=1000, precision=precision)
                cold = bench_updater(b, "cold", 2, 1000, 1, batch_size=1000, precision=precision)
            else:
                hot = bench_updater(b, "hot", 1, 1000, 40, batch_size=10_000, precision=precision)
                cold = bench_updater(b, "cold", 3, 40_000, 1, batch_size=10_000, precision=precision)
            print(json.dumps(hot), flush=True)
            print(json.dumps(cold), flush=True)
            if not args.quick:  # the write-heavy workload again with state_write_ahead_log = false
                print(json.dumps(bench_updater(b, "cold", 3, 40_000, 1, batch_size=10_000, precision=precision,
                                               write_ahead_log=False)), flush=True)
        joiner = bench_joiner(b, requests=300 if args.quick else 6000)
        print(json.dumps(joiner), flush=True)
        # Freshness at 80% of the most the joiner sustained alone, and (full run) at 80% of the most the whole
        # pipeline sustained end to end on this machine, where the stages, broker and producer share its cores.
        # The rates count impressions and clicks; the producer's rate is impressions (plus 20% clicks): 0.8 / 1.2.
        maxima = {"joiner_alone": joiner["joiner_events_per_s"]}
        if not args.quick:
            end_to_end = run_all.run(b, joiners=1, requests=12_000, partitions=4)
            print(json.dumps(end_to_end), flush=True)
            maxima["pipeline_end_to_end"] = end_to_end["events_per_s"]
        for name, events_per_s in maxima.items():
            fresh = bench_freshness(b, rate_per_s=events_per_s * 0.8 / 1.2, seconds=3 if args.quick else 15)
            fresh.update(share_of_max=0.8, max_of=name)
            print(json.dumps(fresh), flush=True)

if __name__ == "__main__":
    main()
