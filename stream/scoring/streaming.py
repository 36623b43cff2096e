"""Streaming scoring: ``ScoreRequest``s from a topic, ranked ``ScoreResponse``s to another (``glmix run stream-scorer``).

For teams that rank inside Kafka. A consumer group reads requests in micro-batches,
scores each with the current models (followed from their topics like the HTTP service),
produces one response per request keyed by request id, flushes, then commits. It keeps
no state, so it scales out by adding members to its group; a crash between produce and
commit answers those requests again (at-least-once). Requests that cannot be decoded or
break the API's rules go to the dead-letter topic with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer

from stream.codec import make_codec
from stream.codec.avro import decode_batch, encode_batch
from stream.config import Settings
from stream.kafka.clients import consumer_config, prepare_topics, producer_config
from stream.kafka.dead_letter import DeadLetters
from stream.kafka.messages import commit_processed, last_offsets, without_errors
from stream.metrics.kafka_statistics import KafkaStatistics, statistics_settings
from stream.runtime.stats import StageStats
from stream.scoring.follower import ModelFollower
from stream.scoring.requests import InvalidRequest, parse_score_request
from stream.scoring.scorer import ModelNotReadyError, Scorer


@dataclass
class StreamingScorerStats(StageStats):
    """Counters of one streaming scorer since it started."""

    requests: int = 0
    responses: int = 0
    dead_lettered: int = 0


class StreamingScorer:
    """Answers score requests arriving on ``topics.score_requests`` on ``topics.score_results``."""

    def __init__(self, settings: Settings, bootstrap_servers: str = "", batch_size: int = 500,
                 batch_time_ms: int = 50, statistics: KafkaStatistics | None = None) -> None:
        topics, kafka = settings.topics, settings.kafka
        registry, registry_settings = kafka.schema_registry_url, kafka.schema_registry
        self.settings = settings
        self.stats = StreamingScorerStats()
        self._batch_size, self._batch_time_s = batch_size, batch_time_ms / 1000
        self._requests_codec = make_codec("ScoreRequest", topics.score_requests, registry, registry_settings)
        self._responses_codec = make_codec("ScoreResponse", topics.score_results, registry, registry_settings)
        self._producer = Producer(producer_config(kafka, bootstrap_servers))
        self._dead_letters = DeadLetters(self._producer, topics.dead_letter, "stream-scorer")
        prepare_topics(settings, bootstrap_servers)
        self.models = ModelFollower(settings, bootstrap_servers, kafka.group_id("stream-scorer"))
        self.models.catch_up()
        self.scorer = Scorer.following(settings.model, self.models)
        self._consumer = Consumer(consumer_config(kafka, kafka.group_id("stream-scorer"), bootstrap_servers,
                                                  **statistics_settings(statistics, "stream-scorer")))
        self._consumer.subscribe([topics.score_requests])

    def step(self) -> int:
        """Answer one micro-batch of requests; returns the messages it took."""
        self.models.refresh()
        messages = self._consumer.consume(self._batch_size, timeout=self._batch_time_s)
        good = without_errors(messages, "stream scorer")
        if not good:
            return len(messages)
        decoded = decode_batch(self._requests_codec, good)
        for message, error in decoded.failures:
            self._dead_letters.send(message, error.reason)
        responses, keys = [], []
        now = int(time.time() * 1000)
        for record, message in zip(decoded.records, decoded.messages):
            try:
                request = parse_score_request({k: v for k, v in record.items() if k != "request_id"},
                                              self.settings.serving)
                scored = self.scorer.score(request.member_id, request.member_features, request.candidates,
                                           request.context, request.top_k or len(request.candidates))
            except InvalidRequest as exc:
                self._dead_letters.send(message, str(exc))
                continue
            except ModelNotReadyError as exc:
                self._dead_letters.send(message, str(exc))
                continue
            responses.append({"request_id": record["request_id"], "member_id": request.member_id, "scored_time": now,
                              "results": [{"request_id": record["request_id"], "member_id": request.member_id,
                                           "item_id": s.item_id, "rank": rank, "margin": s.margin,
                                           "probability": s.probability, "breakdown": dict(s.breakdown),
                                           "versions": dict(s.versions)} for rank, s in enumerate(scored)]})
            keys.append(record["request_id"].encode())
        topic = self.settings.topics.score_results
        for key, value in zip(keys, encode_batch(self._responses_codec, responses)):
            self._producer.produce(topic, key=key, value=value)
        self._producer.flush()
        if not commit_processed(self._consumer, last_offsets(good), "stream-scorer"):
            self.stats.refused_commits += 1
        self.stats.requests += len(good)
        self.stats.responses += len(responses)
        self.stats.dead_lettered = self._dead_letters.total
        return len(messages)

    def close(self) -> None:
        """Flush, leave the group, close the model readers."""
        self._producer.flush(10)
        self._consumer.close()
        self.models.close()
