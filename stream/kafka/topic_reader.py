"""Reading a whole topic (or some of its partitions, or what was produced since a time) without a consumer group.

Compacted topics are read this way: the coefficient tables and the global model follow
every partition from the beginning, and an updater restoring partition p reads its
changelog partition p to the end. Nothing is committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from stream.codec.avro import DecodedBatch, RecordCodec, decode_batch
from stream.config import KafkaSettings
from stream.errors import WaitTimeoutError
from stream.kafka.clients import consumer_config
from stream.kafka.messages import fetched_end

log = logging.getLogger(__name__)


class TopicReader:
    """Decoded records of ``topic`` from the beginning, partition by partition as they come."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        codec: RecordCodec,
        partitions: Sequence[int] | None = None,
        bootstrap_servers: str = "",
        client_id: str = "glmix-topic-reader",
        since_ms: int | None = None,
    ) -> None:
        """``since_ms``: start at the first record produced at or after this time instead of the beginning."""
        self.topic = topic
        self._since_ms = since_ms
        self._codec = codec
        self._wanted = None if partitions is None else list(partitions)
        config = consumer_config(kafka, group_id=f"{client_id}-unused", bootstrap_servers=bootstrap_servers)
        config["client.id"] = client_id
        self._consumer = Consumer(config)
        self._assigned: list[int] = []
        self._early: list = []  # records consumed while finding the ends, handed out by the next poll

    def _ensure_assigned(self, timeout_s: float = 5.0) -> bool:
        if self._assigned:
            return True
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
        except KafkaException as exc:
            log.debug("metadata of %s unavailable: %s", self.topic, exc)
            return False
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return False
        available = sorted(metadata.partitions)
        self._assigned = available if self._wanted is None else [p for p in self._wanted if p in metadata.partitions]
        if not self._assigned:
            return False
        if self._since_ms is None:
            starts = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._assigned]
        else:
            found = self._consumer.offsets_for_times(
                [TopicPartition(self.topic, p, self._since_ms) for p in self._assigned], timeout=timeout_s
            )
            # -1 means "no record since then" on Kafka, but the mock cluster answers -1 to every such lookup:
            # read those partitions from their start, which is right on both (only slower where nothing is new).
            starts = [
                tp if tp.offset >= 0 else TopicPartition(self.topic, tp.partition, OFFSET_BEGINNING) for tp in found
            ]
        self._consumer.assign(starts)
        return True

    def poll(self, max_messages: int = 10_000, timeout_s: float = 0.0) -> DecodedBatch:
        """Whatever arrived (at most ``max_messages``), decoded; undecodable records are in ``failures``."""
        if not self._ensure_assigned():
            return DecodedBatch([], [], [])
        messages, self._early = self._early, []
        if not messages:
            messages = [m for m in self._consumer.consume(max_messages, timeout=timeout_s) if m.error() is None]
        return decode_batch(self._codec, messages)

    def end_offsets(self, timeout_s: float = 10.0) -> dict[int, int]:
        """The end of every assigned partition now (see :func:`stream.kafka.messages.fetched_end`)."""
        if not self._ensure_assigned(timeout_s):
            return {}
        listed = {
            p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout_s)[1]
            for p in self._assigned
        }
        deadline = time.monotonic() + timeout_s
        while True:
            ends = {p: fetched_end(self._consumer, TopicPartition(self.topic, p), high) for p, high in listed.items()}
            if all(end is not None for end in ends.values()):
                return {p: end for p, end in ends.items() if end is not None}
            if time.monotonic() > deadline:
                log.warning(
                    "%s: no fetch response for partitions %s within %.0f s; using the broker's listed ends",
                    self.topic,
                    sorted(p for p, e in ends.items() if e is None),
                    timeout_s,
                )
                return {p: listed[p] if end is None else end for p, end in ends.items()}
            self._early.extend(m for m in self._consumer.consume(10_000, timeout=0.1) if m.error() is None)

    def reached(self, targets: dict[int, int]) -> bool:
        """Whether the reader's position is at or past ``targets`` (partition -> offset) everywhere."""
        if self._early:
            return False
        pending = {p: end for p, end in targets.items() if end > 0}
        if not pending:
            return True
        if not self._assigned:
            return False
        positions = self._consumer.position([TopicPartition(self.topic, p) for p in pending])
        return all(tp.offset >= pending[tp.partition] for tp in positions)

    def read_to_end(self, stall_timeout_s: float = 60.0, batch: int = 10_000):
        """Yield decoded batches until every partition reached its high watermark at the start of the call.

        Fails when nothing arrives for ``stall_timeout_s`` before the end: a long read that
        keeps making progress (a big changelog, a throttled restore) is never cut off.
        """
        ends = self.end_offsets()
        deadline = time.monotonic() + stall_timeout_s
        while not self.reached(ends):
            if time.monotonic() > deadline:
                raise WaitTimeoutError(
                    f"{self.topic}: nothing read for {stall_timeout_s:.0f} s before the end offsets {ends}"
                )
            decoded = self.poll(batch, timeout_s=0.2)
            if decoded.messages or decoded.failures:
                yield decoded
                deadline = time.monotonic() + stall_timeout_s

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()
