"""``/metrics`` of a pipeline process: a registry with the pipeline collector, served over HTTP."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

from stream.config import MetricsSettings
from stream.metrics.collector import PipelineCollector

log = logging.getLogger(__name__)


class MetricsServer:
    """Serves one collector's metrics on ``settings.host:settings.port`` (port 0: any free port)."""

    def __init__(self, collector: PipelineCollector, settings: MetricsSettings) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self._server, self._thread = start_http_server(settings.port, addr=settings.host, registry=self.registry)
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", settings.host, self.port)

    @property
    def url(self) -> str:
        """The local URL of the metrics page."""
        return f"http://127.0.0.1:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
