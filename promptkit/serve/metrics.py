"""Prometheus metrics of the server, correct with several worker processes.

With more than one worker, ``promptkit serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the
workers start; prometheus-client then writes each process's values to files there and
``/metrics`` aggregates all of them (counters and histograms summed, queue depth summed over
live workers, drift scores per worker).
"""

from __future__ import annotations

import os
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONFIDENCE_BUCKETS = tuple(x / 20 for x in range(10, 21))


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # one registry per server: several apps in one process (tests) do not collide
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "promptkit_requests_total",
            "Requests answered.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.errors = Counter(
            "promptkit_request_errors_total",
            "Requests answered with an error.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "promptkit_request_seconds",
            "Request latency.",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "promptkit_batch_size",
            "Inputs per model forward pass.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue = Gauge(
            "promptkit_queue_depth",
            "Inputs waiting for a batch.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tokens = Counter(
            "promptkit_tokens_generated_total",
            "Whitespace-separated tokens generated.",
            ["model"],
            registry=r,
        )
        self.labels = Counter(
            "promptkit_predicted_labels_total", "Predicted labels.", ["model", "label"], registry=r
        )
        self.confidence = Histogram(
            "promptkit_confidence",
            "Probability of the predicted label.",
            ["model"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.drift_p = Gauge(
            "promptkit_drift_p_value",
            "p-value of each drift test on the latest window.",
            ["model", "test"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.drift_alarm = Gauge(
            "promptkit_drift_alarm",
            "1 while the latest window drifted.",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def record_drift(self, model: str, result: dict[str, Any]) -> None:
        for test, values in result["tests"].items():
            self.drift_p.labels(model, test).set(values["p_value"])
        self.drift_alarm.labels(model).set(1 if result["alarm"] else 0)
