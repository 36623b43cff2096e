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

from confluent_kafka import Message

from stream.codec import make_codec
from stream.codec.avro import decode_batch, encode_batch
from stream.config import Settings
from stream.metrics.families import MetricFamilies
from stream.runtime.checkpoint import Checkpoint
from stream.runtime.stage import Stage, StageClients
from stream.runtime.stats import StageStats
from stream.scoring.requests import InvalidRequest, parse_score_request
from stream.scoring.scorer import ModelNotReadyError, Scorer
from stream.tables.follower import ModelFollower


@dataclass
class StreamingScorerStats(StageStats):
    """Counters of one streaming scorer since it started."""

    requests: int = 0
    responses: int = 0

    def consumed(self) -> int:
        """Requests consumed."""
        return self.requests

    def add_samples(self, stage: str, families: MetricFamilies) -> None:
        """Stage samples, plus responses written."""
        super().add_samples(stage, families)
        families.counter("glmix_stream_scoring_responses", [], self.responses)


class StreamingScorer(Stage):
    """Answers score requests arriving on ``topics.score_requests`` on ``topics.score_results``."""

    name = "stream-scorer"

    def __init__(self, settings: Settings, batch_size: int = 500, batch_time_ms: int = 50) -> None:
        topics, kafka = settings.topics, settings.kafka
        registry, registry_settings = kafka.schema_registry_url, kafka.schema_registry
        self.settings = settings
        self.group_id = kafka.group_id(self.name)
        self.stats: StreamingScorerStats = StreamingScorerStats()
        self._batch_size, self._batch_time_s = batch_size, batch_time_ms / 1000
        self._requests_codec = make_codec("ScoreRequest", topics.score_requests, registry, registry_settings)
        self._responses_codec = make_codec("ScoreResponse", topics.score_results, registry, registry_settings)
        self.models: ModelFollower | None = None
        self.scorer: Scorer | None = None

    def subscription(self) -> list[str]:
        """The score requests."""
        return [self.settings.topics.score_requests]

    def batch_limits(self) -> tuple[int, float]:
        """Requests per batch, and the wait for them."""
        return self._batch_size, self._batch_time_s

    def open(self, clients: StageClients) -> None:
        """Follow the models from their topics."""
        super().open(clients)
        self.models = ModelFollower(self.settings, clients.bootstrap_servers, self.group_id)
        self.models.catch_up()
        self.scorer = Scorer.following(self.settings.model, self.models)

    def process(self, messages: list[Message], checkpoint: Checkpoint) -> None:
        """Answer one micro-batch of requests into the checkpoint."""
        assert self.models is not None and self.scorer is not None
        self.models.refresh()
        if not messages:
            return
        dead_letters = self.clients.dead_letters
        decoded = decode_batch(self._requests_codec, messages)
        for message, error in decoded.failures:
            dead_letters.send(checkpoint, message, error.reason)
        responses, keys = [], []
        now = int(time.time() * 1000)
        for record, message in zip(decoded.records, decoded.messages):
            try:
                request = parse_score_request(
                    {k: v for k, v in record.items() if k != "request_id"}, self.settings.serving
                )
                scored = self.scorer.score(
                    request.member_id,
                    request.member_features,
                    request.candidates,
                    request.context,
                    request.top_k or len(request.candidates),
                )
            except (InvalidRequest, ModelNotReadyError) as exc:
                dead_letters.send(checkpoint, message, str(exc))
                continue
            responses.append(
                {
                    "request_id": record["request_id"],
                    "member_id": request.member_id,
                    "scored_time": now,
                    "results": [
                        {
                            "request_id": record["request_id"],
                            "member_id": request.member_id,
                            "item_id": s.item_id,
                            "rank": rank,
                            "margin": s.margin,
                            "probability": s.probability,
                            "breakdown": dict(s.breakdown),
                            "versions": dict(s.versions),
                        }
                        for rank, s in enumerate(scored)
                    ],
                }
            )
            keys.append(record["request_id"].encode())
        topic = self.settings.topics.score_results
        for key, value in zip(keys, encode_batch(self._responses_codec, responses)):
            checkpoint.produce(topic, key, value)
        checkpoint.consumed(messages)
        self.stats.requests += len(messages)
        self.stats.responses += len(responses)

    def close(self) -> None:
        """Stop following the models."""
        if self.models is not None:
            self.models.close()
