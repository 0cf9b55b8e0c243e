"""Prometheus metrics in multiprocess mode, summed across workers at scrape.

`prometheus_client` picks its value class when it is first imported, from
`PROMETHEUS_MULTIPROC_DIR`; the supervisor sets that variable (see
`prepare_multiprocess_dir`) before anything imports the library, and calls
`mark_worker_dead` when it reaps a worker so the live gauges stop counting it.

Each metric write in multiprocess mode takes a lock and writes an mmap'd
file (~13 us per request for counter + histogram + gauge, measured), too much
for the request path. So a worker records into plain dicts
(`RequestMetrics.on_request_end` is a couple of dict operations) and a loop
task calls `flush()` every ~50 ms to apply the batch to the real metrics.
The scrape then lags the truth by at most one flush interval.
"""

from __future__ import annotations

import os
import platform
import shutil
from bisect import bisect_left
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smartflow import __version__

if TYPE_CHECKING:
    from smartflow.http.request import Request

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FLUSH_INTERVAL_S = 0.05

# Upper bounds in seconds: from sub-millisecond health checks to multi-minute
# LLM streams.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)


def prepare_multiprocess_dir(data_dir: Path) -> Path:
    """A fresh, empty metrics directory in `data_dir` (left-overs of an earlier
    run would be summed into this run's counters)."""
    path = data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live-gauge files (its counters keep counting)."""
    if not os.environ.get(MULTIPROC_ENV):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class SupervisorMetrics:
    """The metrics only the supervisor writes."""

    def __init__(self) -> None:
        from prometheus_client import Counter

        self._restarts = Counter(
            "smartflow_worker_restarts",
            "Gateway workers restarted by the supervisor after an unexpected exit.",
            registry=None,
        )

    def record_worker_restart(self) -> None:
        self._restarts.inc()


class RequestMetrics:
    """Request count, latency and in-flight gauge, batched per worker.

    Implements the `RequestObserver` protocol of `smartflow.http`.
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._requests = Counter(
            "smartflow_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=None,
        )
        self._latency = Histogram(
            "smartflow_http_request_duration_seconds",
            "Time from request head to the last response byte, by route template and method.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self._in_flight_gauge = Gauge(
            "smartflow_http_requests_in_flight",
            "Requests being handled right now, summed over live workers.",
            multiprocess_mode="livesum",
            registry=None,
        )
        build_info = Gauge(
            "smartflow_build_info",
            "Smartflow version and Python implementation; always 1.",
            ("version", "python"),
            multiprocess_mode="max",
            registry=None,
        )
        build_info.labels(__version__, platform.python_version()).set(1)
        self._in_flight = 0
        self._flushed_in_flight = -1
        # (route, method, status) -> count
        self._pending_counts: dict[tuple[str, str, int], int] = {}
        # (route, method) -> [sum_s, count per bucket..., count past last bound]
        self._pending_latency: dict[tuple[str, str], list[float]] = {}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def on_request_start(self, request: Request) -> None:
        self._in_flight += 1

    def on_request_end(
        self, request: Request, status: int, duration_s: float, bytes_sent: int, route: str
    ) -> None:
        self._in_flight -= 1
        method = request.method
        key = (route, method, status)
        counts = self._pending_counts
        counts[key] = counts.get(key, 0) + 1
        latency = self._pending_latency.get((route, method))
        if latency is None:
            latency = [0.0] * (len(LATENCY_BUCKETS_S) + 2)
            self._pending_latency[(route, method)] = latency
        latency[0] += duration_s
        latency[1 + bisect_left(LATENCY_BUCKETS_S, duration_s)] += 1

    def flush(self) -> None:
        """Apply the batch recorded since the last flush to the shared metrics."""
        if self._in_flight != self._flushed_in_flight:
            self._in_flight_gauge.set(self._in_flight)
            self._flushed_in_flight = self._in_flight
        if self._pending_counts:
            counts, self._pending_counts = self._pending_counts, {}
            for (route, method, status), count in counts.items():
                self._requests.labels(route, method, str(status)).inc(count)
        if self._pending_latency:
            pending, self._pending_latency = self._pending_latency, {}
            for (route, method), latency in pending.items():
                _apply_latency(self._latency.labels(route, method), latency)


def _apply_latency(child: Any, latency: list[float]) -> None:
    # Histogram.observe() takes one value at a time; a batch goes straight to
    # the child's sum and bucket values (non-cumulative storage, one value per
    # upper bound, +Inf last) so a flush costs one write per touched bucket.
    child._sum.inc(latency[0])
    buckets = child._buckets
    for index, count in enumerate(latency[1:]):
        if count:
            buckets[index].inc(count)


def render_metrics(multiprocess_dir: str | None) -> bytes:
    """The Prometheus text exposition, summed over every worker's files."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiprocess_dir)
    return generate_latest(registry)
