"""Prometheus metrics of one app (its own registry, so several apps in one process never collide).

``mmembed_http_requests_total`` and ``mmembed_http_request_duration_seconds`` are labelled by the route
template (``/items/{shard}/{key:path}``), never the raw path, so label cardinality stays bounded; unmatched
paths count as ``<unmatched>``.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mmembed_http_requests", "HTTP requests by route and status", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "mmembed_http_request_duration_seconds",
            "HTTP request latency, first byte in to last byte out",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queries = Counter(
            "mmembed_search_queries", "Search queries by query kind and target", ["query", "target"], registry=r
        )
        self.encode = Histogram(
            "mmembed_query_encode_seconds",
            "Time to encode one query (waiting for the model included)",
            ["query"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encode_batch = Histogram(
            "mmembed_query_encode_batch_size",
            "Text queries encoded together in one model call",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.search = Histogram(
            "mmembed_index_search_seconds",
            "Time of the index search plus the metadata lookup",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.index_vectors = Gauge("mmembed_index_vectors", "Vectors in each index", ["modality"], registry=r)
        self.index_bytes = Gauge("mmembed_index_file_bytes", "Size of each index file", ["modality"], registry=r)
        self.thumbnail_cache = Counter(
            "mmembed_thumbnail_cache", "Thumbnail cache lookups by result", ["result"], registry=r
        )
        self.thumbnail_cache_items = Gauge("mmembed_thumbnail_cache_items", "Thumbnails held in the cache", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: count and time every HTTP request by route template and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "") if scope.get("method") in METHODS else "OTHER"
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - began)
