"""Prometheus metrics of one app (``GET /metrics``): requests, queue, batches, latency, tokens/s.

Each app owns its own :class:`~prometheus_client.CollectorRegistry` (no process-wide default
registry), so two apps in one process never mix their counts. :class:`CountRequests` is the ASGI
middleware that counts every HTTP reply by endpoint and status.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE_LATEST", "CountRequests", "Metrics"]

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300)
OCCUPANCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


class Metrics:
    """The server's metrics in a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "cogview_requests",
            "HTTP requests answered, by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.rejected = Counter(
            "cogview_requests_dropped",
            "requests given up before their result: queue_full (503), deadline (503), disconnect",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "cogview_request_latency_seconds",
            "seconds from a job's arrival in the queue to its result",
            ["job"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.occupancy = Histogram(
            "cogview_batch_occupancy",
            "transformer rows of each text-to-image batch, as a fraction of the row budget",
            buckets=OCCUPANCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "cogview_image_tokens", "image codes decoded (one per draw and step)", registry=r
        )
        self.tokens_per_second = Gauge(
            "cogview_image_tokens_per_second", "image codes decoded per second by the last batch", registry=r
        )
        self.queue_depth = Gauge("cogview_queue_depth", "requests waiting for the model", registry=r)
        self.running_rows = Gauge(
            "cogview_running_rows", "transformer rows of the batch decoding now", registry=r
        )

    def watch(self, queue_depth: Callable[[], float], running_rows: Callable[[], float]) -> None:
        """Read the two gauges from the scheduler when scraped."""
        self.queue_depth.set_function(queue_depth)
        self.running_rows.set_function(running_rows)

    def batch(self, occupancy: float, tokens: int, seconds: float) -> None:
        """Record one finished text-to-image batch."""
        self.occupancy.observe(occupancy)
        self.tokens.inc(tokens)
        self.tokens_per_second.set(tokens / seconds if seconds > 0 else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware counting replies by endpoint (the known paths; "other" for the rest) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: Callable[[], set[str]]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints() else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send=counting_send)
