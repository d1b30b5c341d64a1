"""Prometheus metrics, on a registry of the app's own (so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tunelab_requests", "HTTP requests, by route, model and status code "
                                "(499: the client went away before the response was complete; 408: it sent too "
                                "slowly).",
                                ["route", "model", "status"], registry=r)
        self.read_timeouts = Counter("tunelab_read_timeouts", "Connections closed because a request's headers or "
                                     "body did not arrive in time (slow clients), by phase.", ["phase"], registry=r)
        self.errors = Counter("tunelab_request_errors", "Requests answered with a 4xx/5xx, by route, model and code.",
                              ["route", "model", "status"], registry=r)
        self.latency = Histogram("tunelab_request_latency_seconds", "Time to the full response (last chunk when "
                                 "streaming), by route and model.", ["route", "model"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.batch_size = Histogram("tunelab_batch_size", "Items per model call (texts, images, or generation "
                                    "requests), by model and kind.", ["model", "kind"], buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_wait = Histogram("tunelab_queue_wait_seconds", "Time an item waited before its model call.",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_seconds = Histogram("tunelab_model_call_seconds", "Duration of one batched model call.",
                                       ["model", "kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("tunelab_tokens", "Tokens read (prompt) and written (completion), by model.",
                              ["model", "kind"], registry=r)
        self.in_flight = Gauge("tunelab_requests_in_flight", "Requests being handled, by route.", ["route"],
                               registry=r)
        self.queue_depth = Gauge("tunelab_queue_depth", "Items waiting for a model call, by model.", ["model"],
                                 registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
