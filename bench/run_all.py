"""End to end on one machine: impressions to published coefficients through real ``glmix run`` processes.

Reproduce: python bench/run_all.py   (--quick for a smaller run; --joiners 1 2 4 by default)

For each joiner count, on the embedded broker (4 partitions a topic): that many
``glmix run joiner`` processes and one ``glmix run updater --coordinate C`` per coordinate
join their groups on empty topics; then a synthetic world's impressions and clicks are
produced at once (a backlog). The run ends when the joiners' committed offsets reach the
inputs' ends and every updater's committed offsets reach the end of its examples topic as
it was then (the last minute's windows, which close only once the inputs are idle, are
left out). Each line: input events/s over that time, examples, and each stage's
CPU-seconds per million input events (user + system of its processes, from /proc, over
the timed span only): the figures a deployment is sized with. One machine, 2 cores here:
the processes share them with the broker and the producer, so more joiners than cores
cannot go faster; the line says how many cores there were.
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
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.codec import make_codec
from stream.config import Settings, load_settings
from stream.kafka import EmbeddedBroker, producer_config
from stream.kafka.clients import prepare_topics
from stream.model.export import initial_global_model_record
from stream.synthetic import World, WorldSpec, event_stream, labeled_impressions
from stream.synthetic.sinks import event_topics_and_codecs, produce_to_kafka

REPRODUCE = "python bench/run_all.py"
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def overrides(bootstrap: str, state_dir: str, **extra: str) -> dict[str, str]:
    """Settings of one measurement: its own topics and groups on the shared broker, plus ``extra``."""
    s = uuid.uuid4().hex[:8]
    return {
        "kafka.bootstrap_servers": bootstrap, "kafka.group_prefix": f"bench-{s}", "state_dir": state_dir,
        "topics.impressions": f"imp-{s}", "topics.interactions": f"int-{s}", "topics.examples_by_member": f"exm-{s}",
        "topics.examples_by_job": f"exj-{s}", "topics.coefficients_prefix": f"coef-{s}-",
        "topics.model_global": f"global-{s}", "topics.dead_letter": f"dlq-{s}",
        "kafka.consumer.session.timeout.ms": "6000", **extra,
    }


def start_glmix(args: list[str], settings: dict[str, str], log: Path) -> subprocess.Popen:
    """``glmix <args>`` as its own process with ``settings`` as ``--set`` overrides, its log in ``log``."""
    sets = [a for key, value in settings.items() for a in ("--set", f"{key}={value}")]
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "stream", *args, *sets], stdout=subprocess.DEVNULL, stderr=out)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


class CommittedOffsets:
    """Groups' committed offsets, read without joining the groups: one client per group, kept for the whole wait."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._consumers: dict[str, Consumer] = {}

    def of(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        """``group``'s committed offsets on ``topic`` (missing partitions: 0)."""
        consumer = self._consumers.get(group)
        if consumer is None:
            consumer = self._consumers[group] = Consumer({"bootstrap.servers": self._bootstrap, "group.id": group})
        done = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in done}

    def reached(self, group: str, topic: str, ends: dict[int, int]) -> bool:
        """Whether ``group`` committed at least ``ends`` (partition -> offset) on ``topic``."""
        done = self.of(group, topic, len(ends))
        return all(done.get(p, 0) >= end for p, end in ends.items())

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()


def end_offsets(consumer: Consumer, topic: str, partitions: int) -> dict[int, int]:
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}


def wait_until_settled(logs: list[Path], quiet_s: float = 3.0, timeout_s: float = 120.0) -> None:
    """Until every process logged its partitions assigned and no assignment changed for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    seen: list[int] = []
    changed = time.monotonic()
    while time.monotonic() < deadline:
        counts = [sum(1 for line in log.read_text().splitlines() if "assigned partitions" in line or "released" in line)
                  for log in logs]
        if counts != seen:
            seen, changed = counts, time.monotonic()
        elif all(counts) and time.monotonic() - changed >= quiet_s:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the processes' partition assignments did not settle within {timeout_s:.0f} s")


def run(bootstrap: str, joiners: int, requests: int, partitions: int, one_process: bool = False, **extra: str) -> dict:
    """The whole pipeline end to end as processes (``joiners`` joiners, one updater per coordinate); ``extra`` settings.

    ``one_process``: one ``glmix run all`` instead (the joiner, every updater and the archive as threads of one
    process, in the same groups), for bench/soak.py's maximum of that deployment.
    """
    state_root = tempfile.mkdtemp(prefix="glmix-bench-run-all-")
    values = overrides(bootstrap, state_root, **{"joiner.attribution_window_ms": "60000",
                                                 "joiner.allowed_lateness_ms": "60000", "metrics.port": "0", **extra})
    settings: Settings = load_settings(overrides=values)
    prepare_topics(settings, bootstrap)
    world = World(WorldSpec(seed=4, members=2000, jobs=1000, requests=requests, attribution_window_ms=60_000,
                            late_rate=0.0, malformed_rate=0.0))
    labeled = labeled_impressions(world)
    events = list(event_stream(world, labeled))
    producer = Producer(producer_config(settings.kafka))
    record = initial_global_model_record([li.impression for li in labeled[:5000]], settings.model)
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    producer.flush()

    logs: list[Path] = []

    def glmix(*args: str, state: str) -> subprocess.Popen:
        logs.append(Path(f"{state}.log"))
        return start_glmix(["run", *args], {**values, "state_dir": state, "log_level": "INFO"}, logs[-1])

    coordinates = list(settings.model.coordinates)
    if one_process:
        stages = {"all": [glmix("all", state=f"{state_root}/all")]}
    else:
        stages = {"joiner": [glmix("joiner", state=f"{state_root}/j{i}") for i in range(joiners)]}
        for name in coordinates:
            stages[f"updater-{name}"] = [glmix("updater", "--coordinate", name, state=f"{state_root}/u-{name}")]
    try:
        wait_until_settled(logs)
        cpu_before = {stage: [cpu_seconds(p.pid) for p in procs] for stage, procs in stages.items()}
        started = time.monotonic()
        produce_to_kafka(events, producer, *event_topics_and_codecs(settings))
        watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{values['kafka.group_prefix']}-watch"})
        inputs = {t: end_offsets(watcher, t, partitions) for t in (settings.topics.impressions, settings.topics.interactions)}
        joiner_group = settings.kafka.group_id("joiner")
        offsets = CommittedOffsets(bootstrap)
        while not all(offsets.reached(joiner_group, t, ends) for t, ends in inputs.items()):
            time.sleep(0.2)
        examples_topics = {name: settings.topics.examples(name, c.entity_field)
                           for name, c in settings.model.coordinates.items()}
        targets = {name: end_offsets(watcher, topic, partitions) for name, topic in examples_topics.items()}
        while not all(offsets.reached(settings.kafka.group_id(f"updater-{name}"), examples_topics[name], ends)
                      for name, ends in targets.items()):
            time.sleep(0.2)
        seconds = time.monotonic() - started
        cpu = {stage: sum(cpu_seconds(p.pid) - b for p, b in zip(procs, cpu_before[stage]))
               for stage, procs in stages.items()}
        watcher.close()
        offsets.close()
    finally:
        for procs in stages.values():
            for p in procs:
                p.terminate()
        for procs in stages.values():
            for p in procs:
                p.wait(30)
        shutil.rmtree(state_root, ignore_errors=True)
    n = len(events)
    examples = sum(targets[coordinates[0]].values())
    processes = {"processes": "glmix run all"} if one_process else {"joiner_processes": joiners,
                                                                     "updater_processes": len(coordinates)}
    return {"bench": "run-all", **processes, "cores": os.cpu_count(),
            **extra, "events": n, "examples": examples, "seconds": round(seconds, 2), "events_per_s": round(n / seconds),
            **{f"{stage}_cpu_s_per_million_events": round(1e6 * c / n, 1) for stage, c in cpu.items()},
            "reproduce": REPRODUCE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (the test suite's smoke run)")
    parser.add_argument("--joiners", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--requests", type=int, default=12_000, help="requests of five impressions each")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.joiners = 400, [1, 2]
    with EmbeddedBroker() as broker:
        for joiners in args.joiners:
            print(json.dumps(run(broker.bootstrap_servers, joiners, args.requests, partitions=4)), flush=True)


if __name__ == "__main__":
    main()
