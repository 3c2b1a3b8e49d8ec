"""Prometheus metrics of the application, through Ray Serve's metrics API (:mod:`ray.serve.metrics`).

Ray exports them, with Serve's own (``ray_serve_*``), at every node's metrics endpoint
(``http://NODE:METRICS_EXPORT_PORT/metrics``, the port ``ray.nodes()`` lists as ``MetricsExportPort``) and
in the Ray dashboard; each series also carries Serve's ``application``, ``deployment`` and ``replica`` tags.

==========================================  ==========  ================================================
``ray_twotower_requests_total``             counter     HTTP requests by ``endpoint`` (route template,
                                                        e.g. ``/v1/recommend``), ``path`` (``model``,
                                                        ``cold_start``, or ``-`` for other routes) and
                                                        ``status`` (HTTP status code)
``ray_twotower_request_latency_ms``         histogram   the same requests' latency in the ingress (ms)
``ray_twotower_shard_errors_total``         counter     failed shard calls by ``shard`` (``Searcher1``):
                                                        errors, timeouts, version misses retried
``ray_twotower_index_version_info``         gauge       1 for the ``index_version`` a searcher ``shard``
                                                        serves, 0 for versions it no longer serves
==========================================  ==========  ================================================

Requests rejected by the proxy before the ingress (the 503s of ``max_queued_requests``) are counted
by Serve itself: ``ray_serve_num_http_error_requests_total`` (``error_code="503"``).

The same middleware counts the replica's requests in flight and, once the replica drains (:class:`Gate`,
set through the Ingress's ``user_config``, see ``twotower serve``'s graceful shutdown), answers new
requests 503 with ``Retry-After`` while those in flight finish.
"""
from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
_LABELS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("twotower_request_labels", default=None)


def note_path(path: str) -> None:
    """Label the current request with its recommend ``path`` (no-op outside :class:`RequestMetrics`)."""
    labels = _LABELS.get()
    if labels is not None:
        labels["path"] = path


@dataclass
class Gate:
    """One ingress replica's HTTP requests in flight, and whether it drains (new requests get 503)."""

    in_flight: int = 0
    draining: bool = False
    retry_after_s: int = 2


class RequestMetrics:
    """ASGI middleware counting requests and timing them (see the module docstring), and keeping ``gate``
    (in flight, draining). Needs a Ray worker (a Serve replica): the metrics are created with the app."""

    def __init__(self, app, gate: Gate | None = None):
        from ray.serve import metrics

        self.app, self.gate = app, gate if gate is not None else Gate()
        tags = ("endpoint", "path", "status")
        self.requests = metrics.Counter("twotower_requests", "HTTP requests answered by the ingress", tags)
        self.latency = metrics.Histogram("twotower_request_latency_ms", "request latency in the ingress (ms)",
                                         LATENCY_BOUNDARIES_MS, tags)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        labels = {"path": "-", "status": "500"}
        token = _LABELS.set(labels)
        t0 = time.perf_counter()
        self.gate.in_flight += 1

        async def send_status(message):
            if message["type"] == "http.response.start":
                labels["status"] = str(message["status"])
            await send(message)
        try:
            if self.gate.draining:
                await _draining(self.gate.retry_after_s)(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            self.gate.in_flight -= 1
            _LABELS.reset(token)
            route = scope.get("route")
            tags = {"endpoint": getattr(route, "path", "unmatched"), "path": labels["path"],
                    "status": labels["status"]}
            self.requests.inc(1, tags)
            self.latency.observe((time.perf_counter() - t0) * 1000.0, tags)


def _draining(retry_after_s: int):
    from .http import error_response
    return error_response(503, "unavailable", f"this replica is shutting down; retry after {retry_after_s} s",
                          headers={"Retry-After": str(retry_after_s)}, unavailable=["Ingress"],
                          retry_after_s=retry_after_s)


class ShardErrors:
    """``ray_twotower_shard_errors_total``: :meth:`__call__` ``(name, why)`` counts one failed shard call."""

    def __init__(self):
        from ray.serve import metrics

        self.counter = metrics.Counter("twotower_shard_errors", "failed shard searcher calls", ("shard",))

    def __call__(self, name: str, why: str) -> None:
        self.counter.inc(1, {"shard": name})


class IndexVersionGauge:
    """``ray_twotower_index_version_info``: :meth:`serve` marks the version a shard answers from (1) and the
    versions it answered from before (0)."""

    def __init__(self, shard: str):
        from ray.serve import metrics

        self.shard, self.seen = shard, set()
        self.gauge = metrics.Gauge("twotower_index_version_info", "index version served by a shard searcher",
                                   ("shard", "index_version"))

    def serve(self, version: str | None) -> None:
        """Mark ``version`` as served (None: nothing loaded yet). Called again on every status call: Ray
        exports a gauge value that is not set again for a while only once."""
        if version is None:
            return
        for old in self.seen - {version}:
            self.gauge.set(0, {"shard": self.shard, "index_version": old})
        self.seen = {version}
        self.gauge.set(1, {"shard": self.shard, "index_version": version})
