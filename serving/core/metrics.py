"""Prometheus metrics of one server: requests, latencies, batch sizes, queue depth.

Each app gets its own `CollectorRegistry` (not the process-global one), so several apps in one
process (tests, Ray Serve replicas sharing a worker) never collide on metric names. Routes are
recorded by their template (`/v2/models/{name}/infer`), not the raw path, and methods outside
HTTP's standard ones as "other", so no request a client can make adds a label value.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# RFC 9110's methods and PATCH; any other token a client sends is counted as "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                          "PATCH"})


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bigan_http_requests_total", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("bigan_http_request_duration_seconds",
                                         "HTTP request latency by route", ["route"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_images = Histogram("bigan_batch_size_images", "images per generator run",
                                      buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("bigan_batch_duration_seconds", "generator run latency",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("bigan_images_generated_total", "images generated", registry=r)
        self.queue_depth = Gauge("bigan_queue_depth", "requests waiting for a batch", registry=r)
        self.queue_images = Gauge("bigan_queue_images", "images waiting or being drawn",
                                  registry=r)

    def track_cache(self, cache) -> None:
        """Counters and gauges of a `serving.core.cache.ResponseCache`."""
        r = self.registry
        self.cache_hits = Counter("bigan_cache_hits_total", "/v1 responses served from the cache",
                                  ["model"], registry=r)
        self.cache_misses = Counter("bigan_cache_misses_total",
                                    "cacheable /v1 requests the cache did not hold", ["model"],
                                    registry=r)
        Gauge("bigan_cache_bytes", "bytes held by the response cache",
              registry=r).set_function(lambda: cache.bytes)
        Gauge("bigan_cache_entries", "responses held by the response cache",
              registry=r).set_function(lambda: len(cache))

    def observe_cache(self, model: str, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).labels(model).inc()

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_images.observe(images)
        self.batch_seconds.observe(seconds)
        self.images.inc(images)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def track_queue(self, depth: Callable[[], int], images: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)
        self.queue_images.set_function(images)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the /metrics response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
