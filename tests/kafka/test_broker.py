"""The embedded broker serves other processes; client configs merge in a fixed order."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream.config import KafkaSettings, load_settings
from stream.kafka import (
    BrokerUnavailableError,
    admin_config,
    all_topics,
    consumer_config,
    ensure_topics,
    producer_config,
)


def test_glmix_broker_serves_produce_and_consume_from_another_process(unique_name):
    proc = subprocess.Popen([sys.executable, "-m", "stream", "broker"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("127.0.0.1:")
        kafka = KafkaSettings(bootstrap_servers=address)
        topic = f"broker-test-{unique_name}"
        producer = Producer(producer_config(kafka))
        for i in range(20):
            producer.produce(topic, key=str(i).encode(), value=f"v{i}".encode())
        assert producer.flush(15) == 0
        consumer = Consumer(consumer_config(kafka, group_id=unique_name))
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        seen, deadline = [], time.monotonic() + 20
        while len(seen) < 20 and time.monotonic() < deadline:
            seen += [m.value() for m in consumer.consume(100, timeout=0.5) if m.error() is None]
        consumer.close()
        assert sorted(seen) == sorted(f"v{i}".encode() for i in range(20))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_create_topics_failing_on_the_mock_is_a_warning_not_an_error(kafka_bootstrap, caplog, unique_name):
    settings = load_settings(overrides={"topics.impressions": f"imp-{unique_name}"})
    admin = AdminClient(admin_config(settings.kafka, kafka_bootstrap))
    wanted = all_topics(settings.topics, settings.model.coordinates)
    assert wanted[settings.topics.coefficients("member")] is True  # compacted
    created = ensure_topics(admin, settings.topics, {settings.topics.impressions: False}, timeout_s=5)
    assert created == [settings.topics.impressions] or "relying on auto" in caplog.text


def test_config_layers_merge_in_order_without_mutating_the_settings():
    kafka = KafkaSettings(
        bootstrap_servers="b:9092",
        client={"security.protocol": "SSL", "linger.ms": 50},
        consumer={"enable.auto.commit": True, "fetch.min.bytes": 1024},
    )
    producer = producer_config(kafka)
    consumer = consumer_config(kafka, group_id="g")
    assert producer["linger.ms"] == 50 and producer["security.protocol"] == "SSL"
    assert consumer["fetch.min.bytes"] == 1024
    assert consumer["enable.auto.commit"] is False  # enforced: offsets commit after state is safe
    assert dict(kafka.consumer) == {"enable.auto.commit": True, "fetch.min.bytes": 1024}


def test_missing_bootstrap_servers_fail_with_a_hint():
    with pytest.raises(BrokerUnavailableError, match="glmix broker"):
        producer_config(KafkaSettings())


def test_a_commit_refused_by_a_rebalance_is_reported_not_raised(kafka_bootstrap, unique_name, caplog):
    """A member that has not polled while another joins is asked to rejoin: its commit is refused, never a crash."""
    from stream.kafka.messages import commit_processed

    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = f"rebalance-{unique_name}"
    producer = Producer(producer_config(kafka))
    for i in range(40):
        producer.produce(topic, key=str(i).encode(), value=b"v")
    assert producer.flush(15) == 0
    overrides = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
    first = Consumer({**consumer_config(kafka, group_id=unique_name), **overrides})
    first.subscribe([topic])
    taken, deadline = [], time.monotonic() + 20
    while not taken and time.monotonic() < deadline:
        taken = [m for m in first.consume(10, timeout=0.5) if m.error() is None]
    assert taken
    second = Consumer({**consumer_config(kafka, group_id=unique_name), **overrides})
    second.subscribe([topic])
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # the second member joins; the first does not poll meanwhile
        second.consume(10, timeout=0.2)
    last = {(taken[-1].topic(), taken[-1].partition()): taken[-1].offset()}
    try:
        with caplog.at_level("WARNING", logger="stream.kafka.messages"):
            committed = commit_processed(first, last, "test-stage", timeout_s=30)
    finally:
        second.close()
        first.close()
    if committed:
        pytest.skip("this broker completed the commit while the group rebalanced (the broker process does); "
                    "nothing was refused")
    assert "refused by a rebalance" in caplog.text


def test_librdkafka_logs_go_through_logging_not_stderr(caplog, capfd):
    with caplog.at_level("DEBUG", logger="librdkafka"):
        producer = Producer(producer_config(KafkaSettings(bootstrap_servers="127.0.0.1:1")))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(r.name == "librdkafka" for r in caplog.records):
            producer.poll(0.2)
    assert any(r.name == "librdkafka" and "127.0.0.1:1" in r.getMessage() for r in caplog.records)
    assert "%3|" not in capfd.readouterr().err  # librdkafka's own stderr format


@pytest.mark.kafka
def test_a_read_to_the_end_that_keeps_making_progress_is_never_cut_off(kafka_bootstrap, unique_name):
    """The stall bound counts time with nothing read, not the whole read: a caller that pauses between batches (a
    throttled restore, polls of its group in between) reads a topic whose read takes longer than the bound."""
    from stream.codec import make_codec
    from stream.kafka.topic_reader import TopicReader

    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = f"reader-{unique_name}"
    codec = make_codec("Interaction", topic)
    producer = Producer(producer_config(kafka))
    records = 25_000  # more than the reader takes while it finds the ends (10,000), so the read takes batches
    for i in range(records):
        record = {"interaction_id": f"c{i}", "impression_id": f"i{i}", "member_id": "m", "item_id": "j",
                  "type": "CLICK", "event_time": i}
        producer.produce(topic, key=b"k", value=codec.encode(record), partition=0)
        producer.poll(0)
    assert producer.flush(30) == 0
    reader = TopicReader(kafka, topic, codec, [0])
    read = 0
    try:
        for batch in reader.read_to_end(stall_timeout_s=0.5, batch=5_000):
            read += len(batch.records)
            time.sleep(0.7)
    finally:
        reader.close()
    assert read == records
