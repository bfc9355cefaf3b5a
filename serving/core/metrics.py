"""Prometheus metrics of one server: requests (HTTP and gRPC), latencies, batches, queues, and
Triton's per-model counters under Triton's own names.

Each app gets its own `CollectorRegistry` (not the process-global one), so several apps in one
process (tests, Ray Serve replicas sharing a worker) never collide on metric names. Routes are
recorded by their template (`/v2/models/{name}/infer`), not the raw path, and methods outside
HTTP's standard ones as "other", so no request a client can make adds a label value; gRPC
requests by the RPC's name (only the service's own methods reach a handler) and status code.
Batch histograms, the images counter and the queue gauges carry a `model` label.

`TritonCounters` adds Triton's inference request metrics (docs: Triton's user guide, "Metrics",
counters of the default `counter_latencies`), labelled `model` and `version`, so dashboards and
alerts written for Triton work unchanged. They are Prometheus counters named as Triton names them,
without the `_total` suffix `prometheus_client` appends to every counter it writes, so their text
is written here (`TritonCounters.exposition`). Their values are events added up for the life of
the server, not read from the engines, so a reload (a new engine for the same version) never
makes one go down.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# RFC 9110's methods and PATCH; any other token a client sends is counted as "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                          "PATCH"})

# Triton's name -> its help. Counts are per request (a request of n images is one request, n
# inferences); durations are microseconds summed over requests, so the compute time of a batch
# shared by k requests is added k times, as Triton's is.
TRITON_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes "
                                    "(cached /v1 responses included)",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes (a full "
                                    "queue, a failed run, a cancelled request)",
    "nv_inference_count": "Number of inferences performed: a request of n images counts n (cached "
                          "responses not included)",
    "nv_inference_exec_count": "Number of model executions (generator runs) performed (cached "
                               "responses not included)",
    "nv_inference_request_duration_us": "Cumulative end-to-end duration of successful inference "
                                        "requests in the engine, queue and run, in microseconds",
    "nv_inference_queue_duration_us": "Cumulative time requests waited in the batching queue, in "
                                      "microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative time requests spent in generator runs, "
                                              "in microseconds (cached responses not included)",
}


def _label(value: str) -> str:
    """A label value in the text format: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class TritonCounters:
    """Triton's per-model counters: `add(model, version, name=amount, ...)` from the engine's
    hooks, `exposition()` in Prometheus's text format. Durations are kept in seconds and written
    as whole microseconds."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], dict[str, float]] = {}
        # Hooks run on the event loop; a scrape may come from another thread (tests, Ray).
        self._lock = threading.Lock()

    def declare(self, model: str, version: str) -> None:
        """Show the model version's series at 0 from its load on, as Triton does."""
        with self._lock:
            self._values.setdefault((model, version), dict.fromkeys(TRITON_COUNTERS, 0.0))

    def add(self, model: str, version: str, **amounts: float) -> None:
        self.declare(model, version)
        with self._lock:
            values = self._values[(model, version)]
            for name, amount in amounts.items():
                values[name] += amount

    def value(self, model: str, version: str, name: str) -> float:
        """The counter as exposed (durations in microseconds); 0 for an unknown series."""
        raw = self._values.get((model, version), {}).get(name, 0.0)
        return int(raw * 1e6) if name.endswith("_us") else int(raw)

    def exposition(self) -> str:
        with self._lock:
            keys = sorted(self._values)
        lines = []
        for name, help_text in TRITON_COUNTERS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for model, version in keys:
                lines.append(f'{name}{{model="{_label(model)}",version="{_label(version)}"}} '
                             f"{self.value(model, version, name)}")
        return "\n".join(lines) + "\n"


class _QueueGauges(Collector):
    """bigan_queue_depth and bigan_queue_images by model, read at scrape time."""

    def __init__(self, by_model: Callable[[], dict[str, tuple[int, int]]]):
        self.by_model = by_model

    def collect(self):
        depth = GaugeMetricFamily("bigan_queue_depth", "requests waiting for a batch",
                                  labels=["model"])
        images = GaugeMetricFamily("bigan_queue_images", "images waiting or being drawn",
                                   labels=["model"])
        for model, (requests, queued) in sorted(self.by_model().items()):
            depth.add_metric([model], requests)
            images.add_metric([model], queued)
        yield depth
        yield images


def _kept(cache: dict, key, make: Callable[[], tuple]) -> tuple:
    """The labelled metric children `make()` builds for `key`, built once and kept in `cache`:
    `labels()` builds and looks its key up under a lock, a few times a request, on the event
    loop. The keys' values are bounded (model names, route templates, standard methods,
    statuses), as the metrics' own label sets are."""
    children = cache.get(key)
    if children is None:
        children = cache[key] = make()
    return children


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bigan_http_requests_total", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("bigan_http_request_duration_seconds",
                                         "HTTP request latency by route", ["route"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.grpc_requests = Counter("bigan_grpc_requests_total", "gRPC requests by method and "
                                     "status code", ["method", "code"], registry=r)
        self.grpc_seconds = Histogram("bigan_grpc_request_duration_seconds",
                                      "gRPC request latency by method", ["method"],
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_images = Histogram("bigan_batch_size_images", "images per generator run",
                                      ["model"], buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("bigan_batch_duration_seconds", "generator run latency",
                                       ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("bigan_images_generated_total", "images generated", ["model"],
                              registry=r)
        self.triton = TritonCounters()
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._run_children: dict[str, tuple[Any, Any, Any]] = {}

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

    def track_engine(self, engine: Any) -> None:
        """Count the requests and runs of `engine` (a `serving.core.engine.Engine`; the app calls
        this for each one the repository opens, reloads included)."""
        name, version = engine.name, engine.version
        engine.batcher.on_run = functools.partial(self.observe_run, name, version)
        engine.on_request = functools.partial(self.observe_inference, name, version)
        self.triton.declare(name, version)

    def observe_cache(self, model: str, hit: bool, version: str | None = None) -> None:
        """A cacheable /v1 request; a hit is also a successful request to Triton's counters."""
        (self.cache_hits if hit else self.cache_misses).labels(model).inc()
        if hit and version is not None:
            self.triton.add(model, version, nv_inference_request_success=1)

    def observe_run(self, model: str, version: str, requests: int, images: int, seconds: float,
                    queued_s: float) -> None:
        """One successful generator run answering `requests` requests (the batcher's hook)."""
        children = _kept(self._run_children, model, lambda: (
            self.batch_images.labels(model), self.batch_seconds.labels(model),
            self.images.labels(model)))
        children[0].observe(images)
        children[1].observe(seconds)
        children[2].inc(images)
        self.triton.add(model, version, nv_inference_count=images, nv_inference_exec_count=1,
                        nv_inference_queue_duration_us=queued_s,
                        nv_inference_compute_infer_duration_us=seconds * requests)

    def observe_inference(self, model: str, version: str, ok: bool, seconds: float) -> None:
        """One request through an engine, answered or failed (the engine's hook)."""
        if ok:
            self.triton.add(model, version, nv_inference_request_success=1,
                            nv_inference_request_duration_us=seconds)
        else:
            self.triton.add(model, version, nv_inference_request_failure=1)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "other"
        children = _kept(self._request_children, (route, method, status), lambda: (
            self.requests.labels(route, method, str(status)), self.request_seconds.labels(route)))
        children[0].inc()
        children[1].observe(seconds)

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        self.grpc_requests.labels(method, code).inc()
        self.grpc_seconds.labels(method).observe(seconds)

    def track_queue(self, by_model: Callable[[], dict[str, tuple[int, int]]]) -> None:
        """by_model() -> {model: (requests waiting, images waiting or being drawn)}."""
        self.registry.register(_QueueGauges(by_model))

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the /metrics response."""
        return (generate_latest(self.registry) + self.triton.exposition().encode(),
                CONTENT_TYPE_LATEST)
