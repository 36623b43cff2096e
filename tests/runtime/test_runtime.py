"""The stage runtime: restores outside the rebalance callbacks, offsets that only go forward, one checkpoint order."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from stream.config import load_settings
from stream.consumers.joiner import Joiner
from stream.kafka import prepare_topics, producer_config
from stream.runtime.checkpoint import Checkpoint, CheckpointError
from stream.runtime.runner import StageRunner, restore_slice_seconds
from stream.state.store_changelog import batch_records

MAX_POLL_MS = 4_000


def _settings(bootstrap: str, state_dir, prefix: str, **extra: str):
    return load_settings(overrides={
        "kafka.bootstrap_servers": bootstrap, "kafka.group_prefix": prefix, "state_dir": str(state_dir),
        "topics.impressions": f"imp-{prefix}", "topics.interactions": f"int-{prefix}",
        "topics.examples_by_member": f"exm-{prefix}", "topics.examples_by_job": f"exj-{prefix}",
        "topics.model_global": f"global-{prefix}", "topics.coefficients_prefix": f"coef-{prefix}-",
        "topics.dead_letter": f"dlq-{prefix}", **extra,
    })


def test_a_restore_longer_than_the_poll_interval_does_not_evict_the_member(kafka_bootstrap, tmp_path, unique_name):
    """2,000 changelog records restored at 400/s (5 s) under max.poll.interval.ms = 4 s: restored inside a rebalance
    callback, the member would be evicted and its partitions revoked; in the loop, it keeps them."""
    settings = _settings(kafka_bootstrap, tmp_path, unique_name, **{
        "kafka.consumer.session.timeout.ms": "3000", "kafka.consumer.max.poll.interval.ms": str(MAX_POLL_MS),
        "restore_max_records_per_s": "400",
    })
    prepare_topics(settings)
    producer = Producer(producer_config(settings.kafka))
    records = batch_records([(b"k%05d" % i, b"v%d" % i) for i in range(2_000)], [], {settings.topics.impressions: 7})
    for key, value in records:
        producer.produce(settings.kafka.changelog_topic("joiner"), key=key, value=value, partition=0)
    assert producer.flush(15) == 0

    runner = StageRunner(Joiner(settings), settings)
    try:
        deadline = time.monotonic() + 90
        while 0 not in runner.assignment.stores:
            assert time.monotonic() < deadline, "partition 0 was not restored"
            runner.step()
        store = runner.assignment.stores[0]
        assert store.get_many([b"k00000", b"k01999"]) == [b"v0", b"v1999"]
        assert store.processed_offset(settings.topics.impressions) == 7
        for _ in range(10):  # an eviction shows up at the next polls as a revocation
            runner.step()
        assert runner.stats.restore_seconds > MAX_POLL_MS / 1000
        assert runner.assignment.revocations == 0 and runner.assignment.assignments == 1
        assert runner.assigned_partitions == [0, 1, 2, 3]
    finally:
        runner.close()


def test_the_restore_slice_leaves_most_of_the_poll_interval_to_the_batch():
    assert restore_slice_seconds(load_settings(overrides={"kafka.consumer.max.poll.interval.ms": "4000"})) == 0.4
    assert restore_slice_seconds(load_settings()) == 1.0


def test_a_checkpoint_refuses_offsets_that_go_backwards():
    producer = Producer({"bootstrap.servers": "127.0.0.1:1"})

    class Message:  # what Checkpoint.consumed reads of a consumed message
        def __init__(self, offset: int) -> None:
            self._offset = offset

        def topic(self) -> str:
            return "t"

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return self._offset

    checkpoint = Checkpoint(producer, "test", committed={("t", 0): 10}, delivery_errors=[], wait_s=10)
    checkpoint.consumed([Message(4)])
    with pytest.raises(CheckpointError, match=r"t\[0\] 4 < 10"):
        checkpoint.commit(consumer=None)


def test_cooperative_rebalancing_is_refused_before_anything_connects(tmp_path):
    """The runtime's callbacks take and give whole assignments (the eager protocol): say so instead of misbehaving."""
    from stream.archive.archiver import Archiver
    from stream.config import ConfigError

    settings = load_settings(overrides={"kafka.bootstrap_servers": "127.0.0.1:1", "state_dir": str(tmp_path),
                                        "kafka.consumer.partition.assignment.strategy": "cooperative-sticky"})
    with pytest.raises(ConfigError, match="partition.assignment.strategy"):
        StageRunner(Archiver(settings), settings).step()


def test_a_producer_that_delivers_nothing_fails_the_batch_within_its_bound_naming_the_topic():
    """No broker at all: a full queue waits for room only as long as the bound, then says what it was producing."""
    from stream.kafka.producing import ProducerStalledError, produce_bounded

    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "queue.buffering.max.messages": 1})
    produce_bounded(producer, "t", b"k", b"v1", stall_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ProducerStalledError, match=r"could not produce to t: .*stayed full for 0.3 s"):
        produce_bounded(producer, "t", b"k", b"v2", stall_timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 5



def test_a_batch_of_records_larger_than_the_producer_queue_arrives_whole_and_in_order(kafka_bootstrap, unique_name):
    """produce_many waits out a full queue record by record (as produce_bounded does) and loses or reorders nothing."""
    from confluent_kafka import Consumer, TopicPartition

    from stream.kafka.producing import ProducerStalledError, produce_many

    topic = f"many-{unique_name}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "queue.buffering.max.messages": 5, "linger.ms": 1})
    producer.list_topics(topic, timeout=10)
    items = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(300)]
    produce_many(producer, topic, items, stall_timeout_s=30, partition=0)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{unique_name}"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 30
    while len(got) < len(items) and time.monotonic() < deadline:
        got += [(m.key(), m.value()) for m in consumer.consume(500, timeout=1) if m.error() is None]
    consumer.close()
    assert got == items
    stalled = Producer({"bootstrap.servers": "127.0.0.1:1", "queue.buffering.max.messages": 1})
    with pytest.raises(ProducerStalledError, match=r"could not produce to t: .*stayed full for 0.3 s"):
        produce_many(stalled, "t", items[:3], stall_timeout_s=0.3)

def test_a_checkpoint_flush_is_bounded_and_says_what_it_waited_for():
    producer = Producer({"bootstrap.servers": "127.0.0.1:1"})
    checkpoint = Checkpoint(producer, "test", committed={}, delivery_errors=[], wait_s=0.5)
    checkpoint.dead_letter("dlq", b"k", b"bad", headers=[("error", b"garbage")])
    checkpoint.produce("out", b"k", b"v")
    with pytest.raises(CheckpointError, match=r"2 dead-letter and output record\(s\) were still undelivered after"):
        checkpoint.commit(consumer=None)
