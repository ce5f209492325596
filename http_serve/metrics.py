"""The service's Prometheus metrics (`GET /metrics`): requests, latency, queueing, batches, rows, the model.

With several worker processes each writes its own files under PROMETHEUS_MULTIPROC_DIR (the server sets it
before the workers start, and prometheus_client reads it when first imported) and `/metrics` adds them up,
whichever worker answers: counters and histograms summed, the model gauge one series per live worker.
"""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)

from http_serve.batching import BatchRun

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536, 262144)

REQUESTS = Counter("tfbridge_serve_requests", "HTTP requests by method, route and status",
                   ["method", "route", "status"])
LATENCY = Histogram("tfbridge_serve_request_seconds", "From the request's arrival to its response, by route",
                    ["route"], buckets=_SECONDS)
QUEUED = Histogram("tfbridge_serve_queue_seconds", "How long a scoring request waited for its batch's run",
                   buckets=_SECONDS)
RUN = Histogram("tfbridge_serve_run_seconds", "One onnxruntime run over a batch", buckets=_SECONDS)
BATCH_ROWS = Histogram("tfbridge_serve_batch_rows", "Rows in one onnxruntime run", buckets=_ROWS)
BATCH_REQUESTS = Histogram("tfbridge_serve_batch_requests", "Requests coalesced into one onnxruntime run",
                           buckets=_ROWS[:10])
ROWS = Counter("tfbridge_serve_rows", "Rows scored")
MODEL = Gauge("tfbridge_serve_model_info", "The model version served (1; 0: one served before a reload): its name, "
              "version and model.onnx's sha256", ["model", "version", "sha256"], multiprocess_mode="liveall")
RELOADS = Counter("tfbridge_serve_reloads", "New model versions loaded, or refused (the old one kept serving)",
                  ["result"])


def observe_batch(run: BatchRun) -> None:
    for seconds in run.queued_seconds:
        QUEUED.observe(seconds)
    RUN.observe(run.run_seconds)
    BATCH_ROWS.observe(run.rows)
    BATCH_REQUESTS.observe(run.requests)
    ROWS.inc(run.rows)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(route).observe(seconds)


def model_loaded(name: str, version: str, sha256: str) -> None:
    MODEL.labels(name, version, sha256).set(1)


def model_replaced(name: str, old_version: str, old_sha256: str, version: str, sha256: str) -> None:
    """The old version's series set to 0 rather than removed: with several workers it lives in a file that
    `remove` does not reach."""
    MODEL.labels(name, old_version, old_sha256).set(0)
    model_loaded(name, version, sha256)
    RELOADS.labels("loaded").inc()


def reload_refused() -> None:
    RELOADS.labels("refused").inc()


def process_stopped() -> None:
    """Drops this worker's live series (the model gauge) from the sum; its counts stay in it."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(os.getpid())


def exposition() -> tuple[bytes, str]:
    """The text format: this process's metrics, or every worker's added up."""
    registry = REGISTRY
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
