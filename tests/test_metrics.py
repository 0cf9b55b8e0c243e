"""Metrics and access log: what a Prometheus scrape and the log file show."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import httpx
import orjson
import pytest
from harness.gateway import GatewayProcess

from smartflow.telemetry.access_log import format_entry

BENCH = {"server": {"bench_routes": True}}


def get_once(port: int, path: str) -> tuple[int, bytes]:
    """GET over a fresh HTTP/1.1 connection (Connection: close); status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def scrape(gateway: GatewayProcess) -> str:
    response = httpx.get(f"{gateway.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly `labels`, or None when absent."""
    for line in text.splitlines():
        metric, _, rest = line.partition("{")
        if not rest:
            metric = line.split(" ", 1)[0]
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest.split("}")[0])) if rest else {}
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for_sample(
    gateway: GatewayProcess, expected: float, name: str, timeout_s: float = 5.0, **labels: str
) -> float | None:
    deadline = time.monotonic() + timeout_s
    while True:
        value = sample(scrape(gateway), name, **labels)
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_metrics_sum_the_request_count_over_both_workers(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(BENCH)
    pids = set()
    for _ in range(60):  # a fresh connection each: the kernel spreads them over workers
        status, body = get_once(gateway.port, "/bench/worker")
        assert status == 200
        pids.add(orjson.loads(body)["pid"])
    assert pids == set(gateway.worker_pids())

    value = wait_for_sample(
        gateway, 60.0, "smartflow_http_requests_total",
        route="/bench/worker", method="GET", status="200",
    )
    assert value == 60.0
    text = scrape(gateway)
    assert sample(text, "smartflow_http_request_duration_seconds_count",
                  route="/bench/worker", method="GET") == 60.0
    assert sample(text, "smartflow_build_info", version="0.1.0",
                  python=sys.version.split()[0]) == 1.0


def test_an_unknown_path_is_counted_under_an_empty_route_not_its_path(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory()
    for i in range(3):
        assert httpx.get(f"{gateway.url}/no/such/{i}", timeout=10).status_code == 404
    assert wait_for_sample(gateway, 3.0, "smartflow_http_requests_total",
                           route="", method="GET", status="404") == 3.0
    assert "/no/such" not in scrape(gateway)


def test_in_flight_gauge_counts_a_running_stream_and_restarts_are_counted(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(BENCH)
    stream_url = f"{gateway.url}/bench/stream?chunks=30&interval_ms=100"
    with httpx.Client(timeout=10) as client, client.stream("GET", stream_url) as response:
        chunks = response.iter_bytes()  # kept: dropping the iterator closes the stream
        next(chunks)
        deadline = time.monotonic() + 5
        while (sample(scrape(gateway), "smartflow_http_requests_in_flight") or 0) < 1:
            assert time.monotonic() < deadline, "in-flight gauge never counted the stream"
            time.sleep(0.05)
    assert sample(scrape(gateway), "smartflow_worker_restarts_total") == 0.0

    os.kill(gateway.worker_pids()[0], signal.SIGKILL)
    assert wait_for_sample(gateway, 1.0, "smartflow_worker_restarts_total") == 1.0


def test_access_log_has_one_json_line_per_request(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory()
    response = httpx.get(f"{gateway.url}/health", headers={"x-request-id": "req-123"}, timeout=10)
    assert response.status_code == 200
    log_path = gateway.data_dir / "access.log"
    deadline = time.monotonic() + 5
    lines: list[dict[str, object]] = []
    while not any(line["request_id"] == "req-123" for line in lines):
        assert time.monotonic() < deadline, "no access log line for the request"
        time.sleep(0.05)
        if log_path.exists():
            lines = [orjson.loads(raw) for raw in log_path.read_bytes().splitlines()]
    line = next(line for line in lines if line["request_id"] == "req-123")
    assert {k: line[k] for k in ("method", "path", "route", "status", "protocol")} == {
        "method": "GET", "path": "/health", "route": "/health", "status": 200,
        "protocol": "HTTP/1.1",
    }
    assert set(line) >= {"ts", "duration_ms", "bytes", "client"}
    assert str(line["client"]).startswith("127.0.0.1:")


def test_access_log_off_writes_no_file(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gateway = gateway_factory({"server": {"access_log": False}})
    assert httpx.get(f"{gateway.url}/health", timeout=10).status_code == 200
    time.sleep(0.3)
    assert not (gateway.data_dir / "access.log").exists()


def test_extra_fields_attached_by_a_handler_join_the_log_line() -> None:
    entry = (0.0, "r1", "POST", "/v1/chat/completions", "/v1/chat/completions", 200, 0.25, 10,
             ("127.0.0.1", 5000), "2", {"model": "mock-gpt", "cost_usd": 0.001})
    line = orjson.loads(format_entry(entry))
    assert line["model"] == "mock-gpt" and line["cost_usd"] == 0.001
    assert line["duration_ms"] == 250.0 and line["protocol"] == "HTTP/2"


def test_batched_latency_matches_what_histogram_observe_would_record(tmp_path: object) -> None:
    # In a child process: prometheus_client must see PROMETHEUS_MULTIPROC_DIR at import.
    script = textwrap.dedent(
        """
        import os, sys
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
        from prometheus_client import Histogram, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector
        from smartflow.telemetry.metrics import LATENCY_BUCKETS_S, RequestMetrics
        class R:
            method = "GET"
        durations = [0.0001, 0.0005, 0.0007, 0.003, 0.2, 0.5, 7.0, 1000.0]
        metrics = RequestMetrics()
        for d in durations:
            metrics.on_request_start(R())
            metrics.on_request_end(R(), 200, d, 10, "/batched")
        metrics.flush()
        reference = Histogram("reference_seconds", "", ("route", "method"),
                              buckets=LATENCY_BUCKETS_S, registry=None)
        for d in durations:
            reference.labels("/batched", "GET").observe(d)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    ours, reference = {}, {}
    for line in result.stdout.splitlines():
        if line.startswith("smartflow_http_request_duration_seconds_"):
            ours[line.split("{")[0].rsplit("_", 1)[1] + line.split("{")[1]] = line
        elif line.startswith("reference_seconds_"):
            reference[line.split("{")[0].rsplit("_", 1)[1] + line.split("{")[1]] = line
    assert ours and set(ours) == set(reference)
    for key, line in reference.items():
        assert float(ours[key].rsplit(" ", 1)[1]) == pytest.approx(float(line.rsplit(" ", 1)[1]))
