"""Records deleted before a stage read them (issue 27): found by the stage runtime, counted, logged and exported.

The brokers delete records differently: the librdkafka mock cluster keeps ~5 MiB per partition and
drops the oldest record sets beyond it (moving the log start, as retention does); Kafka deletes them
on DeleteRecords; Tansu 0.6 cannot delete records at all (DeleteRecords is not implemented: its memory
engine panics; ``retention.ms`` and ``retention.bytes`` are accepted and not enforced), so the tests that
need a deletion skip there, naming it, and the broker process runs the tests that must find no skip.
The stage is the archive (it needs no model); the records are not examples, so every one delivered is
dead-lettered, which makes "delivered" countable: each offset is either delivered or reported skipped.
"""

from __future__ import annotations

import logging
import os
import re

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream.archive.archiver import Archiver
from stream.config import load_settings
from stream.kafka import prepare_topics
from stream.metrics.collector import PipelineCollector
from stream.metrics.kafka_statistics import KafkaStatistics
from stream.runtime.retention import resets_to_end, skipped_range
from stream.runtime.runner import StageRunner
from tests.helpers import read_topic, wait_for

_FILLER = 64 * 1024  # one record set each; ~90 of them pass the mock's 5 MiB
_TANSU_DELETES_NOTHING = (
    "Tansu 0.6 deletes no records (DeleteRecords is not implemented; retention.ms and retention.bytes are not enforced)"
)


def _settings(bootstrap: str, tmp_path, prefix: str, **extra: str):
    return load_settings(overrides={
        "kafka.bootstrap_servers": bootstrap, "kafka.group_prefix": prefix, "state_dir": str(tmp_path / "state"),
        "archive.path": str(tmp_path / "archive"), "archive.roll_interval_ms": "100",
        "topics.examples_by_member": f"exm-{prefix}", "topics.examples_by_job": f"exj-{prefix}",
        "topics.impressions": f"imp-{prefix}", "topics.interactions": f"int-{prefix}",
        "topics.model_global": f"global-{prefix}", "topics.coefficients_prefix": f"coef-{prefix}-",
        "topics.dead_letter": f"dlq-{prefix}", **extra,
    })


def _producer(bootstrap: str, **extra) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "compression.type": "none", "linger.ms": 0, **extra})


def _produce(bootstrap: str, topic: str, count: int, size: int = 16) -> None:
    producer = _producer(bootstrap)
    for _ in range(count):
        producer.produce(topic, os.urandom(size), partition=0)
        if size > 1024:  # one record set each, so the mock drops them one at a time
            producer.flush(10)
    assert producer.flush(15) == 0


def _watermarks(bootstrap: str, topic: str) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watermarks-{topic}"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()


def _delete_below(broker, topic: str, offset: int) -> int:
    """Make partition 0's log start pass ``offset`` the way this broker can (not Tansu); returns the log start then."""
    if broker.kind == "mock":  # over ~5 MiB a partition drops its oldest record sets, moving the log start
        for _ in range(200):
            _produce(broker.bootstrap_servers, topic, 10, _FILLER)
            if _watermarks(broker.bootstrap_servers, topic)[0] >= offset:
                break
    else:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        for future in admin.delete_records([TopicPartition(topic, 0, offset)], request_timeout=30).values():
            future.result(30)
    log_start = _watermarks(broker.bootstrap_servers, topic)[0]
    assert log_start >= offset, f"the log start of {topic}[0] stayed at {log_start}"
    return log_start


def _samples(runner: StageRunner, statistics: KafkaStatistics | None = None) -> dict:
    registry = CollectorRegistry()
    registry.register(PipelineCollector({runner.stage.name: runner.stats}, statistics=statistics))
    page = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(page) for s in family.samples}


def _partition(name: str, topic: str, partition: int) -> tuple[str, tuple]:
    return name, (("client", "archive"), ("partition", str(partition)), ("topic", topic))


def _step_until(runner: StageRunner, check, what: str) -> None:
    wait_for(lambda: runner.step() >= 0 and check(), timeout_s=60, interval_s=0, what=what)


def _read_first_records(runner: StageRunner, bootstrap: str, topic: str) -> None:
    """Produce 30 records to partition 0 and step ``runner`` until it has delivered (dead-lettered) them all."""
    _produce(bootstrap, topic, 30)
    _step_until(runner, lambda: runner.stats.dead_lettered >= 30, "the first 30 records")


def _stage_that_read_the_first_records(settings, bootstrap: str) -> None:
    """A stage that read the first 30 records of partition 0 and stopped: it committed 30, the rest is the next's."""
    prepare_topics(settings)
    runner = StageRunner(Archiver(settings), settings)
    try:
        _read_first_records(runner, bootstrap, settings.topics.examples_by_member)
    finally:
        runner.close()


def _retention_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stream.runtime.retention" and r.levelno == logging.ERROR]


def test_only_a_position_below_the_log_start_is_a_skip():
    assert skipped_range(10, 10, 0, to_end=False) is None  # went on where expected
    assert skipped_range(10, 12, 5, to_end=False) is None  # a gap above the log start: markers, compaction
    assert skipped_range(10, 500, 5, to_end=False) is None  # a large one too (aborted records, compaction)
    assert skipped_range(10, 50, -1001, to_end=False) is None  # no log start reported: nothing to judge
    assert skipped_range(10, 5, 41, to_end=False) is None  # a replay is not a skip
    assert skipped_range(10, 41, 41, to_end=False) == (10, 41)  # reset to the log start
    assert skipped_range(10, 45, 41, to_end=False) == (10, 41)  # past it: the rest is a compaction gap
    assert skipped_range(10, 41, 60, to_end=False) == (10, 41)  # the log start moved on after the reset
    assert skipped_range(10, 120, 41, to_end=True) == (10, 120)  # reset to the end: the kept records too
    assert [resets_to_end({"auto.offset.reset": v}) for v in ("earliest", "smallest", "latest", "largest", "end")] == [
        False, False, True, True, True]
    assert not resets_to_end({})


def test_a_stage_restarted_behind_the_log_start_counts_logs_and_exports_the_records_it_lost(
        kafka_broker, kafka_bootstrap, tmp_path, unique_name, caplog):
    if kafka_broker.kind == "process":
        pytest.skip(_TANSU_DELETES_NOTHING)
    settings = _settings(kafka_bootstrap, tmp_path, unique_name)
    topic = settings.topics.examples_by_member
    _stage_that_read_the_first_records(settings, kafka_bootstrap)

    log_start = _delete_below(kafka_broker, topic, 35)  # at least 5 records no one read are deleted
    end = _watermarks(kafka_bootstrap, topic)[1]
    statistics = KafkaStatistics(interval_ms=200)
    runner = StageRunner(Archiver(settings), settings, statistics=statistics)
    try:
        with caplog.at_level(logging.ERROR, logger="stream.runtime.retention"):
            _step_until(runner, lambda: runner.stats.dead_lettered >= end - log_start, "the records still there")
            for _ in range(5):
                runner.step()
        assert runner.stats.dead_lettered == end - log_start  # every offset left was delivered once
        assert runner.stats.skipped_records[(topic, 0)] == log_start - 30
        assert runner.stats.offset_resets[(topic, 0)] == 1
        assert all(runner.stats.skipped_records[(topic, p)] == 0 for p in (1, 2, 3))
        [error] = _retention_errors(caplog)
        assert f"{log_start - 30} records of {topic}[0] (offsets 30 to {log_start - 1})" in error
        assert "retention.ms" in error and "add consumers" in error

        wait_for(lambda: any(c.headroom.get((topic, 0)) == end - log_start for c in statistics.latest()),
                 timeout_s=10, what="librdkafka statistics of the committed offset and the log start")
        samples = _samples(runner, statistics)
        assert samples[_partition("glmix_input_records_skipped_total", topic, 0)] == log_start - 30
        assert samples[_partition("glmix_consumer_offset_resets_total", topic, 0)] == 1
        assert samples[_partition("glmix_input_records_skipped_total", topic, 3)] == 0
        assert samples[_partition("glmix_consumer_retention_headroom_messages", topic, 0)] == end - log_start
    finally:
        runner.close()


def test_reset_to_the_end_counts_the_retained_records_it_passed_over_too(
        kafka_broker, kafka_bootstrap, tmp_path, unique_name, caplog):
    """``auto.offset.reset = latest`` moves a lost position past every record there: deleted or not, all are lost."""
    if kafka_broker.kind == "process":
        pytest.skip(_TANSU_DELETES_NOTHING)
    settings = _settings(kafka_bootstrap, tmp_path, unique_name, **{"kafka.consumer.auto.offset.reset": "latest"})
    topic = settings.topics.examples_by_member
    prepare_topics(settings)
    runner = StageRunner(Archiver(settings), settings)
    try:
        _step_until(runner, lambda: runner.ready_partitions == [0, 1, 2, 3], "the partitions")  # a new group: the end
        _read_first_records(runner, kafka_bootstrap, topic)
    finally:
        runner.close()

    log_start = _delete_below(kafka_broker, topic, 35)
    end = _watermarks(kafka_bootstrap, topic)[1]
    runner = StageRunner(Archiver(settings), settings)
    try:
        def a_record_after_the_reset_delivered() -> bool:  # librdkafka logs the reset before it looks up the end
            _produce(kafka_bootstrap, topic, 1)
            return runner.stats.dead_lettered >= 1

        with caplog.at_level(logging.WARNING):
            _step_until(runner, lambda: any("offset reset" in r.getMessage() and topic in r.getMessage()
                                            for r in caplog.records if r.name == "librdkafka"), "librdkafka's reset")
            _step_until(runner, a_record_after_the_reset_delivered, "a record after the end it was moved to")
            for _ in range(5):
                runner.step()
        total = _watermarks(kafka_bootstrap, topic)[1]
        skipped = runner.stats.skipped_records[(topic, 0)]
        assert runner.stats.dead_lettered + skipped == total - 30 and runner.stats.offset_resets[(topic, 0)] == 1
        assert skipped >= end - 30 > log_start - 30  # every record there when it was lost, not only the deleted ones
        [error] = _retention_errors(caplog)
        assert f"{skipped} records of {topic}[0] (offsets 30 to {30 + skipped - 1})" in error
    finally:
        runner.close()


def test_a_running_stage_that_falls_behind_the_log_start_reports_what_it_lost(
        kafka_broker, kafka_bootstrap, tmp_path, unique_name, caplog):
    """Overload rather than an outage: the consumer stays in its group, its fetch queue holds ~128 KiB (refilled
    10 ms after it has room), and the partition's oldest records are deleted while the stage does not poll."""
    if kafka_broker.kind != "mock":
        pytest.skip("needs records deleted under a running consumer by size: the mock's ~5 MiB per partition")
    settings = _settings(kafka_bootstrap, tmp_path, unique_name, **{
        "kafka.consumer.queued.max.messages.kbytes": "128", "kafka.consumer.max.partition.fetch.bytes": "131072",
        "kafka.consumer.fetch.queue.backoff.ms": "10"})
    topic = settings.topics.examples_by_member
    prepare_topics(settings)
    runner = StageRunner(Archiver(settings), settings)
    try:
        _read_first_records(runner, kafka_bootstrap, topic)
        log_start = _delete_below(kafka_broker, topic, 60)  # past what the fetcher took before its queue was full
        end = _watermarks(kafka_bootstrap, topic)[1]
        with caplog.at_level(logging.ERROR, logger="stream.runtime.retention"):
            _step_until(runner, lambda: runner.stats.dead_lettered + runner.stats.skipped() >= end,
                        "every offset delivered or reported skipped")
            for _ in range(5):
                runner.step()
        skipped = runner.stats.skipped_records[(topic, 0)]
        assert runner.stats.dead_lettered + skipped == end and runner.stats.offset_resets[(topic, 0)] == 1
        [error] = _retention_errors(caplog)
        first, last = map(int, re.search(r"\(offsets (\d+) to (\d+)\)", error).groups())
        assert last == log_start - 1 and last - first + 1 == skipped and first >= 30
    finally:
        runner.close()


def test_the_gaps_transactions_leave_are_not_skips(kafka_broker, kafka_bootstrap, tmp_path, unique_name):
    """Each committed transaction leaves an offset for its marker: a gap the stage sees, with nothing deleted."""
    settings = _settings(kafka_bootstrap, tmp_path, unique_name)
    topic = settings.topics.examples_by_member
    prepare_topics(settings)
    producer = _producer(kafka_bootstrap, **{"transactional.id": f"tx-{unique_name}"})
    producer.init_transactions(30)
    for _ in range(10):
        producer.begin_transaction()
        for _ in range(3):
            producer.produce(topic, os.urandom(16), partition=0)
        producer.commit_transaction(30)

    statistics = KafkaStatistics(interval_ms=200)
    runner = StageRunner(Archiver(settings), settings, statistics=statistics)
    try:
        _step_until(runner, lambda: runner.stats.dead_lettered >= 30, "the 30 transactional records")
        for _ in range(5):
            runner.step()
        delivered = sorted(int(dict(m.headers())["source.offset"]) for m in read_topic(kafka_bootstrap,
                                                                                        settings.topics.dead_letter))
        assert len(delivered) == 30 and delivered[-1] == 38, delivered  # offsets 3, 7, ... were commit markers
        assert runner.stats.skipped_records == dict.fromkeys([(topic, p) for p in range(4)], 0)
        assert sum(runner.stats.offset_resets.values()) == 0
        log_start = _watermarks(kafka_bootstrap, topic)[0]
        wait_for(lambda: any(c.headroom.get((topic, 0)) == 39 - log_start for c in statistics.latest()),
                 timeout_s=10, what="librdkafka statistics of the committed offset")
        samples = _samples(runner, statistics)
        assert all(samples[_partition("glmix_input_records_skipped_total", topic, p)] == 0 for p in range(4))
    finally:
        runner.close()


def test_with_input_loss_stop_a_stage_behind_the_log_start_stops_before_processing_past_the_loss(
        kafka_broker, kafka_bootstrap, tmp_path, unique_name):
    """The other policy: stop, rather than go on from what is left (README, "Records lost to retention")."""
    from stream.kafka.exceptions import InputLostError

    if kafka_broker.kind == "process":
        pytest.skip(_TANSU_DELETES_NOTHING)
    settings = _settings(kafka_bootstrap, tmp_path, unique_name, **{"kafka.input_loss": "stop"})
    topic = settings.topics.examples_by_member
    _stage_that_read_the_first_records(settings, kafka_bootstrap)
    _delete_below(kafka_broker, topic, 35)
    runner = StageRunner(Archiver(settings), settings)
    try:
        with pytest.raises(InputLostError, match=rf"records of {topic}\[0\] \(offsets 30 to \d+\) were deleted"):
            _step_until(runner, lambda: False, "the stage to stop")
        assert runner.stats.dead_lettered == 0  # nothing past the loss was processed
    finally:
        runner.close()
