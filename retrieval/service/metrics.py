"""Prometheus metrics of the service (prometheus_client, one registry per service)."""

from __future__ import annotations

import sys

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("retrieval_requests", "HTTP requests by route and status", ["method", "route", "status"],
                                registry=r)
        self.errors = Counter("retrieval_errors", "HTTP requests answered with 4xx or 5xx, by route and class",
                              ["route", "class"], registry=r)
        self.latency = Histogram("retrieval_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("retrieval_stage_seconds", "time per pipeline stage per search",
                                       ["domain", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.writes = Counter("retrieval_documents_written", "documents added, replaced or deleted",
                              ["domain", "op"], registry=r)
        self.documents = Gauge("retrieval_documents", "documents in each domain", ["domain"], registry=r)
        self.queue = Gauge("retrieval_admitted_requests", "requests running or waiting for a worker", registry=r)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, f"{status // 100}xx").inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def log(message: str) -> None:
        print(f"retrieval: {message}", file=sys.stderr, flush=True)
