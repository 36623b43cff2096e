"""The scoring HTTP service (``glmix serve``), on aiohttp.

    POST /v1/score     score candidates for a member (schema: /openapi.json)
    GET  /healthz      the process is up
    GET  /readyz       200 once the models are caught up with their topics, else 503
    GET  /metrics      Prometheus metrics of this service
    GET  /openapi.json the API's OpenAPI 3 description, as this server's settings make it

Every request problem is a 4xx with a JSON body naming the field (``{"error": ...,
"field": ...}``); bodies over ``serving.max_body_bytes`` are refused before they are
read. The models are refreshed from Kafka on the event loop every ``serving.refresh_ms``
(a non-blocking poll), so a published coefficient is used from the next request on.
aiohttp's runner handles SIGTERM: it stops accepting, lets requests finish, then the
cleanup closes the Kafka readers.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from stream.config import ServingSettings
from stream.gc_pause import cyclic_gc_paused, freeze_long_lived
from stream.scoring.requests import OPENAPI, InvalidRequest, decode_score_request
from stream.scoring.scorer import ModelNotReadyError, Scorer

log = logging.getLogger(__name__)

EXPLORATION_OFF = {
    "nullable": True,
    "enum": [None],
    "description": "This server runs without exploration (serving.exploration = false): only null, as if left out.",
}


def openapi_spec(limits: ServingSettings) -> dict:
    """The OpenAPI description of a server with ``limits``: a request the spec allows is one the server serves.

    The package's spec with this server's candidate and feature limits as ``maxItems``, and, on a
    server without exploration, ``exploration`` allowed only as null, so a client (or a contract
    test) reading ``/openapi.json`` learns the 413s and the refused exploration before it sends them.
    """
    spec = copy.deepcopy(OPENAPI)
    request = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    fields = request["properties"]
    fields["candidates"]["maxItems"] = limits.max_candidates
    for bags in (fields["member_features"], fields["candidates"]["items"]["properties"]["features"]):
        bags["additionalProperties"]["maxItems"] = limits.max_features_per_bag
    if not limits.exploration:
        fields["exploration"] = dict(EXPLORATION_OFF)
    return spec


@dataclass
class ScoringService:
    """What the HTTP layer needs: a scorer, how to refresh its models, and whether they are ready."""

    scorer: Scorer
    limits: ServingSettings
    refresh: Callable[[], None]
    ready: Callable[[], bool]
    close: Callable[[], None] = lambda: None


class _Metrics:
    """The service's metrics; with several workers (:mod:`stream.scoring.workers`), summed over all of them.

    ``shared`` is ``serving.metrics_dir``: the workers' shared directory, or empty for one process.
    """

    def __init__(self, shared: str) -> None:
        self.registry = CollectorRegistry()
        if shared:  # each worker's values are in the shared directory; any worker's page reports them all
            MultiProcessCollector(self.registry, path=shared)
        own = None if shared else self.registry
        self.requests = Counter("glmix_scoring_requests", "Score requests by outcome.", ["status"], registry=own)
        self.latency = Histogram(
            "glmix_scoring_latency_seconds",
            "Time to score one request (in the service).",
            registry=own,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        )
        self.candidates = Counter("glmix_scoring_candidates", "Candidates scored.", registry=own)
        self.worker_requests = Gauge(
            "glmix_scoring_worker_requests",
            "Score requests this worker process answered (by pid with several workers): how evenly they share the load.",
            registry=own,
            multiprocess_mode="liveall",
        )


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


def build_app(service: ScoringService) -> web.Application:
    """The aiohttp application of ``service`` (used by ``glmix serve`` and the tests)."""
    metrics = _Metrics(service.limits.metrics_dir)
    spec = openapi_spec(service.limits)
    app = web.Application(client_max_size=service.limits.max_body_bytes)

    async def score(request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await _score(request)
        metrics.requests.labels(status=str(response.status)).inc()
        metrics.worker_requests.inc()
        metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _score(request: web.Request) -> web.Response:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body larger than {service.limits.max_body_bytes} bytes")
        # A request is thousands of small dicts, none in a cycle: reference counting frees them all before
        # the collector is back, so it never scans them (it did, at the first allocation after the request).
        with cyclic_gc_paused():
            return _answer(raw)

    def _answer(raw: bytes) -> web.Response:
        try:
            checked = decode_score_request(raw, service.limits)
        except InvalidRequest as exc:
            return _error(exc.status, exc.problem, exc.field)
        try:
            scored = service.scorer.score(
                checked.member_id,
                checked.member_features,
                checked.candidates,
                checked.context,
                checked.top_k,
                checked.exploration,
            )
        except ModelNotReadyError as exc:
            return _error(503, str(exc))
        if not all(math.isfinite(s.margin) for s in scored):
            return _error(422, "these features give a non-finite score")
        metrics.candidates.inc(len(checked.candidates))
        scored_json = {
            "candidates": [
                {
                    "item_id": s.item_id,
                    "margin": s.margin,
                    "probability": s.probability,
                    "breakdown": dict(s.breakdown),
                    "versions": dict(s.versions),
                }
                for s in scored
            ]
        }
        return web.Response(body=msgspec.json.encode(scored_json), content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready = service.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(spec)

    async def follow_models(_: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            frozen = False
            while True:
                try:
                    service.refresh()
                    if not frozen and service.ready():
                        freeze_long_lived()  # the loaded models leave the collector's full scans
                        frozen = True
                except Exception:  # a broker hiccup must not stop scoring with the models we have
                    log.exception("refreshing the models failed; retrying")
                await asyncio.sleep(service.limits.refresh_ms / 1000)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        service.close()

    app.router.add_post("/v1/score", score)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/openapi.json", openapi)
    app.cleanup_ctx.append(follow_models)
    return app


class BackgroundServer:
    """An app served on a loopback port from a background thread (the demo, tests and benchmarks embed it)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, host, port)
        self._loop.run_until_complete(site.start())
        self.host = host
        self.port = self._runner.addresses[0][1]
        self._thread = threading.Thread(target=self._loop.run_forever, name="glmix-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Shut the app down gracefully and stop the thread."""
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
