"""Hung-worker detection: a worker whose event loop stops turning is killed
and replaced (`supervisor.worker_timeout`), seen from outside with real
`smartflow serve` process trees.

A SIGSTOPped worker is, to the supervisor, exactly a wedged one: alive, but
its loop no longer stamps the heartbeat. Every test resumes (SIGCONT) the
processes it stopped before the gateway is torn down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from harness.gateway import GatewayProcess
from harness.worker_client import Connection, worker_pid_of

WORKER_TIMEOUT_S = 2.0


def _config(worker_timeout_s: float, shutdown_timeout_s: float = 10.0) -> dict[str, object]:
    return {
        "server": {"bench_routes": True, "shutdown_timeout": shutdown_timeout_s},
        "supervisor": {"worker_timeout": worker_timeout_s},
    }


def _connection_to(gateway: GatewayProcess, pid: int, attempts: int = 100) -> Connection:
    """A keep-alive connection the kernel handed to worker `pid`."""
    for _ in range(attempts):
        connection = Connection(gateway.port)
        if worker_pid_of(connection) == pid:
            return connection
        connection.close()
    raise AssertionError(f"no connection reached worker {pid} in {attempts} attempts")


@pytest.fixture
def stopped_pids() -> Iterator[list[int]]:
    """Pids a test SIGSTOPs; all resumed at teardown so nothing is left frozen."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _freeze(pid: int, stopped_pids: list[int]) -> None:
    stopped_pids.append(pid)
    os.kill(pid, signal.SIGSTOP)


def test_a_wedged_worker_is_killed_and_replaced_while_the_other_keeps_serving(
    gateway_factory: Callable[..., GatewayProcess], stopped_pids: list[int]
) -> None:
    gateway = gateway_factory(_config(WORKER_TIMEOUT_S))
    wedged, survivor = gateway.wait_worker_pids(2, ready=True)
    to_survivor = _connection_to(gateway, survivor)
    try:
        _freeze(wedged, stopped_pids)
        frozen_at = time.monotonic()
        deadline = frozen_at + 6.0 + 4.0  # ~6 s wanted; slack for a loaded machine
        while True:
            status, _ = to_survivor.get("/health")
            assert status == 200, "the healthy worker stopped answering"
            pids = gateway.worker_pids()
            if wedged not in pids and len(pids) == 2:
                break
            assert time.monotonic() < deadline, (
                f"wedged worker {wedged} not replaced; workers {pids}; "
                f"output:\n{gateway.output_tail()}"
            )
            time.sleep(0.1)
        replaced_after_s = time.monotonic() - frozen_at
        assert survivor in pids, "the healthy worker was killed too"
        status, _ = to_survivor.get("/health")
        assert status == 200
    finally:
        to_survivor.close()

    # The log is read by a thread: on a loaded machine its line can trail the
    # replacement the supervisor already made.
    lines_by = time.monotonic() + 10.0
    while not gateway.log_events("worker_timeout") and time.monotonic() < lines_by:
        time.sleep(0.05)
    timeouts = gateway.log_events("worker_timeout")
    assert [event["worker_pid"] for event in timeouts] == [wedged]
    seconds_silent = timeouts[0]["seconds_since_heartbeat"]
    assert isinstance(seconds_silent, float) and seconds_silent > WORKER_TIMEOUT_S
    assert replaced_after_s > WORKER_TIMEOUT_S - 1.5  # not killed at once: it had a timeout
    gateway.wait_ready(10.0)
    assert gateway.is_running, "one hang must not halt the gateway as a crash loop"
    assert gateway.stop() == 0
    assert "Traceback" not in gateway.output_text()


def test_with_worker_timeout_zero_a_wedged_worker_is_left_alone(
    gateway_factory: Callable[..., GatewayProcess], stopped_pids: list[int]
) -> None:
    gateway = gateway_factory(_config(0.0))
    wedged, survivor = gateway.wait_worker_pids(2, ready=True)
    _freeze(wedged, stopped_pids)
    watch_until = time.monotonic() + 2 * WORKER_TIMEOUT_S + 1.0
    while time.monotonic() < watch_until:
        assert gateway.worker_pids() == sorted([wedged, survivor])
        time.sleep(0.2)
    os.kill(wedged, signal.SIGCONT)
    to_wedged = _connection_to(gateway, wedged)
    try:
        assert to_wedged.get("/health")[0] == 200, "the resumed worker serves again"
    finally:
        to_wedged.close()
    assert gateway.log_events("worker_timeout") == []
    assert gateway.stop() == 0


def test_a_draining_worker_is_not_killed_by_the_heartbeat_check(
    gateway_factory: Callable[..., GatewayProcess], stopped_pids: list[int]
) -> None:
    # The wedged worker is retiring (the gateway is stopping): only its drain
    # deadline, shutdown_timeout plus a grace, may kill it.
    shutdown_timeout_s = 4.0
    gateway = gateway_factory(_config(WORKER_TIMEOUT_S, shutdown_timeout_s))
    wedged, _survivor = gateway.wait_worker_pids(2, ready=True)
    _freeze(wedged, stopped_pids)
    started = time.monotonic()
    assert gateway.stop(timeout_s=30.0) == 0
    assert time.monotonic() - started >= shutdown_timeout_s - 0.5
    assert gateway.log_events("worker_timeout") == []
    killed = gateway.log_events("worker_killed")
    assert [event["worker_pid"] for event in killed] == [wedged]
    assert gateway.stray_pids_at_stop == []
