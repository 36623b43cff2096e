"""librdkafka's statistics, bridged: consumer lag and retention headroom per partition, rebalances per client.

librdkafka emits a JSON document every ``statistics.interval.ms`` through ``stats_cb``;
:meth:`KafkaStatistics.client_settings` adds both to a client's configuration and the
latest document of each client is kept for the metrics collector.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientStatistics:
    """What glmix exports of one client's latest statistics.

    ``headroom`` is a partition's committed offset minus its log start (``lo_offset``): how
    many of the oldest retained messages retention may delete before the consumer loses
    records it has not read (:mod:`stream.runtime.retention` counts those it did lose).
    """

    client: str
    lag: dict[tuple[str, int], int]
    rebalances: int
    headroom: dict[tuple[str, int], int]


class KafkaStatistics:
    """The latest statistics of every client configured with :meth:`client_settings`."""

    def __init__(self, interval_ms: int = 5000) -> None:
        self.interval_ms = interval_ms
        self._latest: dict[str, ClientStatistics] = {}
        self._lock = threading.Lock()

    def client_settings(self, client: str) -> dict:
        """librdkafka settings that make a client report to this object under the name ``client``."""
        return {"statistics.interval.ms": self.interval_ms, "stats_cb": lambda document: self.record(client, document)}

    def record(self, client: str, document: str) -> None:
        """Keep the parts of one statistics document that are exported."""
        stats = json.loads(document)
        lag, headroom = {}, {}
        for topic, info in stats.get("topics", {}).items():
            for partition, p in info.get("partitions", {}).items():
                if int(partition) < 0:
                    continue
                if p.get("consumer_lag", -1) >= 0:
                    lag[(topic, int(partition))] = int(p["consumer_lag"])
                committed, log_start = p.get("committed_offset", -1), p.get("lo_offset", -1)
                if committed >= 0 and log_start >= 0:
                    headroom[(topic, int(partition))] = int(committed) - int(log_start)
        rebalances = int(stats.get("cgrp", {}).get("rebalance_cnt", 0))
        with self._lock:
            self._latest[client] = ClientStatistics(client, lag, rebalances, headroom)

    def latest(self) -> list[ClientStatistics]:
        """The newest statistics of every client."""
        with self._lock:
            return list(self._latest.values())


def statistics_settings(statistics: KafkaStatistics | None, client: str) -> dict:
    """``statistics.client_settings(client)``, or nothing when statistics are not collected."""
    return statistics.client_settings(client) if statistics is not None else {}
