"""The process model, seen from outside: real `smartflow serve` process trees.

Each test starts a gateway with two workers (tests/harness/gateway.py) and
checks what a client and the OS see: answers, pids, exit statuses, leftovers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from harness.gateway import GatewayError, GatewayProcess, group_pids, http_get_status
from harness.worker_client import Connection, get_once, worker_pid_of

BENCH = {"server": {"bench_routes": True, "shutdown_timeout": 10.0}}


def connections_per_worker(port: int, pids: list[int]) -> dict[int, Connection]:
    """One open connection to each worker in `pids` (the kernel picks the worker)."""
    found: dict[int, Connection] = {}
    deadline = time.monotonic() + 10
    while len(found) < len(pids) and time.monotonic() < deadline:
        connection = Connection(port)
        pid = worker_pid_of(connection)
        if pid in found or pid not in pids:
            connection.close()
        else:
            found[pid] = connection
    assert sorted(found) == sorted(pids), f"could not reach every worker: {sorted(found)}"
    return found


class StreamReader(threading.Thread):
    """Reads GET /bench/stream to the end in the background (raw socket)."""

    def __init__(self, port: int, chunks: int, interval_ms: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(
            f"GET /bench/stream?chunks={chunks}&interval_ms={interval_ms} HTTP/1.1\r\n"
            "Host: t\r\nConnection: close\r\n\r\n".encode()
        )
        self.first_bytes = threading.Event()
        self.data = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.data += chunk
                self.first_bytes.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.first_bytes.set()
            self.sock.close()

    def lines(self) -> list[bytes]:
        head, _, body = self.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding: chunked" in head.lower(), head
        return dechunk(body).splitlines()


def dechunk(body: bytes) -> bytes:
    """The payload of a complete chunked body; fails on a truncated one."""
    payload = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return payload
        assert len(body) >= size + 2, "chunked body cut short"
        payload += body[:size]
        body = body[size + 2:]


class Load(threading.Thread):
    """GET `path` on a fresh connection, again and again, counting failures."""

    def __init__(self, port: int, path: str = "/health", *, fresh_connections: bool = True,
                 connection: Connection | None = None) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.connection = connection
        self.fresh_connections = fresh_connections
        self.stop_event = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                if self.connection is not None:
                    status, _ = self.connection.get(self.path)
                else:
                    status, _ = get_once(self.port, self.path)
            except OSError as exc:
                self.failures.append(repr(exc))
                if self.connection is not None:
                    return
                continue
            if status == 200:
                self.ok += 1
            else:
                self.failures.append(f"status {status}")

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition`; the seconds it took. Fails the test past `timeout_s`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def redis_children(gateway: GatewayProcess) -> list[int]:
    names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in gateway.child_pids()}
    return [pid for pid, name in names.items() if name.startswith("redis")]


def process_title(pid: int) -> str:
    """What `ps -o args` shows for `pid` (setproctitle rewrites argv in place)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- tests -------------------------------------------------------------------------

def test_a_killed_worker_is_replaced_within_a_second_while_the_other_keeps_answering(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(BENCH)
    pids = gateway.worker_pids()
    assert len(pids) == 2
    connections = connections_per_worker(gateway.port, pids)
    victim, survivor = pids
    load = Load(gateway.port, "/health", connection=connections[survivor])
    load.start()
    time.sleep(0.2)

    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(set(gateway.worker_pids()) - {victim}) == 2, 10, "a replacement worker")
    replacement = (set(gateway.worker_pids()) - set(pids)).pop()
    seen: set[int] = set()

    def replacement_answers() -> bool:
        seen.add(int(orjson.loads(get_once(gateway.port, "/bench/worker")[1])["pid"]))
        return replacement in seen

    wait_for(replacement_answers, 10, "the replacement to answer")
    ok_before = load.ok
    wait_for(lambda: load.ok > ok_before + 10, 10, "the survivor to keep answering")
    load.finish()

    # Timed on the supervisor's own clock, not ours: how long it took to
    # decide (a first crash is replaced at once, no backoff) and how long
    # the replacement took to boot (imports are preloaded before the fork).
    # Measured at 2-5 ms and 12-30 ms with two CPU burners running; the
    # bounds leave a loaded CI runner a wide margin (the backoff itself is
    # unit-tested in test_supervisor_plan.py).
    # The replacement can answer before a loaded supervisor has written its
    # lines: wait for them rather than read the log once.
    def logged(event: str) -> dict[str, object] | None:
        return next((e for e in gateway.log_events(event) if e["worker_pid"] == replacement),
                    None)

    wait_for(lambda: logged("worker_started") is not None and logged("worker_ready") is not None,
             10, "the replacement's worker_started and worker_ready lines")
    (died,) = gateway.log_events("worker_died")
    started, ready = logged("worker_started"), logged("worker_ready")
    assert started is not None and ready is not None
    assert died["worker_pid"] == victim
    decided_s = float(started["ts"]) - float(died["ts"])  # type: ignore[arg-type]
    booted_s = float(ready["ts"]) - float(started["ts"])  # type: ignore[arg-type]
    assert 0 <= decided_s < 1.0, f"replacement forked {decided_s:.3f} s after the death"
    assert booted_s < 2.0, f"replacement took {booted_s:.3f} s to become ready"
    assert load.failures == []


def test_processes_are_titled_by_role_and_a_replacement_takes_the_slot_it_fills(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory()
    assert process_title(gateway.pid) == "smartflow: supervisor"
    by_title = {process_title(pid): pid for pid in gateway.wait_worker_pids(2)}
    assert sorted(by_title) == ["smartflow: worker 1", "smartflow: worker 2"]
    (redis_pid,) = redis_children(gateway)
    assert "redis-server" in process_title(redis_pid)

    victim = by_title["smartflow: worker 1"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(set(gateway.worker_pids()) - {victim}) == 2, 10, "a replacement worker")
    (replacement,) = set(gateway.worker_pids()) - set(by_title.values())
    # Titled right after the fork, before the worker has even booted.
    wait_for(lambda: process_title(replacement) == "smartflow: worker 1", 5,
             "the replacement's title")
    assert process_title(by_title["smartflow: worker 2"]) == "smartflow: worker 2"


def test_sighup_rolls_every_worker_without_failing_a_request_or_cutting_a_stream(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(BENCH)
    old_pids = set(gateway.worker_pids())
    stream = StreamReader(gateway.port, chunks=15, interval_ms=100)
    stream.start()
    assert stream.first_bytes.wait(5)
    loads = [Load(gateway.port) for _ in range(2)]
    for load in loads:
        load.start()
    time.sleep(0.2)

    gateway.send_signal(signal.SIGHUP)
    wait_for(lambda: len(gateway.log_events("worker_ready")) >= 4, 10, "the new generation")
    wait_for(lambda: not (set(gateway.worker_pids()) & old_pids), 15, "old workers to exit")
    ok_before = sum(load.ok for load in loads)
    wait_for(lambda: sum(load.ok for load in loads) > ok_before + 20, 10,
             "requests to the new generation")
    for load in loads:
        load.finish()
    stream.join(timeout=15)

    new_pids = set(gateway.worker_pids())
    assert len(new_pids) == 2 and not new_pids & old_pids
    assert all(load.failures == [] for load in loads), [load.failures[:3] for load in loads]
    assert stream.error is None
    assert stream.lines() == [b"line %d" % i for i in range(15)]


def test_sighup_applies_the_edited_config_to_the_new_workers(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(BENCH)
    old_pids = set(gateway.worker_pids())
    assert get_once(gateway.port, "/bench/worker")[0] == 200
    gateway.config_path.write_text("[server]\nbench_routes = false\n")

    gateway.send_signal(signal.SIGHUP)
    wait_for(lambda: len(gateway.log_events("worker_ready")) >= 4, 10, "the new generation")
    wait_for(lambda: not (set(gateway.worker_pids()) & old_pids), 15, "old workers to exit")

    assert get_once(gateway.port, "/bench/worker")[0] == 404
    assert get_once(gateway.port, "/health")[0] == 200


def test_sighup_with_an_invalid_config_keeps_the_running_workers(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(BENCH)
    pids = gateway.worker_pids()
    gateway.config_path.write_text('[server]\nkeepalive_timeout = "soon"\n')

    gateway.send_signal(signal.SIGHUP)
    wait_for(lambda: bool(gateway.log_events("reload_refused")), 5, "the reload to be refused")
    time.sleep(0.3)

    assert "server.keepalive_timeout: expected float, got str" in gateway.log_events("reload_refused")[0]["message"]
    assert gateway.worker_pids() == pids
    assert http_get_status(gateway.port, "/health") == 200


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_an_in_flight_stream_then_leaves_nothing_running(
    gateway_factory: Callable[..., GatewayProcess], stop_signal: signal.Signals,
) -> None:
    gateway = gateway_factory(BENCH)
    redis_pids = redis_children(gateway)
    assert len(redis_pids) == 1
    socket_path = Path(str(gateway.log_events("redis_started")[0]["url"])[len("unix://"):])
    assert socket_path.exists()
    stream = StreamReader(gateway.port, chunks=10, interval_ms=100)
    stream.start()
    assert stream.first_bytes.wait(5)

    gateway.send_signal(stop_signal)
    assert gateway.wait_exit(20) == 0
    stream.join(timeout=10)

    assert stream.error is None
    assert stream.lines() == [b"line %d" % i for i in range(10)]
    assert group_pids(gateway.pid) == []
    assert not is_alive(redis_pids[0])
    assert not socket_path.exists()
    assert "Traceback" not in gateway.output_text()
    for line in gateway.output_lines:  # the operational log: one JSON object per line
        assert isinstance(orjson.loads(line), dict), line


def test_a_crashed_embedded_redis_is_restarted_and_readiness_recovers(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory()
    (redis_pid,) = redis_children(gateway)

    os.kill(redis_pid, signal.SIGKILL)
    wait_for(lambda: bool(gateway.log_events("redis_restarted")), 10, "redis to be restarted")
    wait_for(lambda: get_once(gateway.port, "/health/ready")[0] == 200, 10, "readiness")

    assert len(redis_children(gateway)) == 1 and redis_children(gateway) != [redis_pid]
    assert gateway.stop() == 0


def test_a_supervisor_killed_with_sigkill_takes_its_workers_and_redis_with_it(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory()
    children = gateway.child_pids()
    assert len(children) == 3  # two workers and redis

    gateway.send_signal(signal.SIGKILL)
    wait_for(lambda: not any(is_alive(pid) for pid in children), 15, "orphans to exit")


def test_workers_that_die_at_boot_halt_the_gateway_with_exit_status_4(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(
        {"supervisor": {"crash_loop_restarts": 4, "crash_loop_window": 30.0}},
        start=False, env={"SMARTFLOW_TEST_WORKER_BOOT_EXIT": "1"},
    )
    with pytest.raises(GatewayError):
        gateway.start()
    assert gateway.returncode == 4
    halt = gateway.log_events("halt")
    assert halt and "crash loop" in str(halt[0]["message"])
    assert len(gateway.log_events("worker_died")) == 4


def test_a_port_already_in_use_stops_the_gateway_with_exit_status_3(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        gateway = gateway_factory(port=squatter.getsockname()[1], start=False)
        with pytest.raises(GatewayError):
            gateway.start()
    assert gateway.returncode == 3
    assert "already in use" in gateway.output_text()
    assert "Traceback" not in gateway.output_text()


def test_a_worker_reporting_a_bind_failure_halts_the_gateway_with_exit_status_3(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(start=False, env={"SMARTFLOW_TEST_WORKER_BOOT_EXIT": "3"})
    with pytest.raises(GatewayError):
        gateway.start()
    assert gateway.returncode == 3
    assert "could not bind" in gateway.output_text()
    assert len(gateway.log_events("worker_died")) == 0


@pytest.mark.parametrize("flag", ["--http1.1", "--http2-prior-knowledge"])
def test_curl_gets_health_over_http1_and_http2(
    gateway_factory: Callable[..., GatewayProcess], flag: str
) -> None:
    gateway = gateway_factory()
    result = subprocess.run(
        ["curl", "-sS", flag, "-w", "\n%{http_code} %{http_version}", f"{gateway.url}/health"],
        check=False, capture_output=True, text=True, timeout=20,
    )
    body, _, status_line = result.stdout.rpartition("\n")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(body) == {"status": "ok"}
    assert status_line == ("200 1.1" if flag == "--http1.1" else "200 2")


def test_readiness_follows_redis_going_away_and_coming_back(
    gateway_factory: Callable[..., GatewayProcess], redis_server: object,
    tcp_proxy_factory: Callable[..., object],
) -> None:
    proxy = tcp_proxy_factory(redis_server.port)  # type: ignore[attr-defined]
    gateway = gateway_factory({"state": {"redis_url": f"redis://127.0.0.1:{proxy.port}/0"}})  # type: ignore[attr-defined]
    assert redis_children(gateway) == []

    proxy.cut()  # type: ignore[attr-defined]
    wait_for(lambda: get_once(gateway.port, "/health/ready")[0] == 503, 10, "503 from readiness")
    status, body = get_once(gateway.port, "/health/ready")
    error = orjson.loads(body)["error"]
    assert status == 503 and error["type"] == "server_error" and "Redis" in error["message"]
    assert get_once(gateway.port, "/health")[0] == 200

    proxy.restore()  # type: ignore[attr-defined]
    wait_for(lambda: get_once(gateway.port, "/health/ready")[0] == 200, 10, "200 from readiness")
