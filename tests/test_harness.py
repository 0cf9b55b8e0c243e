"""The test harness itself: each fixture really starts what it says."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from harness.gateway import GatewayError, GatewayProcess, http_get_status, to_toml
from harness.loop_guard import LoopExceptionRecorder, LoopExceptionsRecorded
from harness.ports import free_port, is_port_open
from harness.postgres import PostgresServer
from harness.redis_server import RedisServer, redis_command
from harness.tcp_proxy import TCPProxy
from harness.waiting import wait_until_sync
from redis.backoff import NoBackoff
from redis.retry import Retry


def _client(url: str) -> aioredis.Redis:
    # One attempt per command, so a refused connection shows at once.
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=5)


# -- ports ------------------------------------------------------------------------

def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 0 < port < 65536


# -- redis ------------------------------------------------------------------------

async def test_redis_server_answers_ping_at_its_url(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = _client(redis_server.url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


@pytest.mark.parametrize("value", ["first", "second"])
async def test_redis_url_gives_each_test_an_empty_database(redis_url: str, value: str) -> None:
    client = _client(redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set("harness:key", value)
    finally:
        await client.aclose()


async def test_redis_server_comes_back_on_the_same_port_after_stop_and_start(
    redis_server: RedisServer,
) -> None:
    port = redis_server.port
    client = _client(redis_server.url)
    try:
        redis_server.stop()
        assert not is_port_open(port)
        with pytest.raises(aioredis.ConnectionError):
            await client.ping()
        redis_server.start()
        assert redis_server.port == port
        assert await client.ping() is True
    finally:
        await client.aclose()
        redis_server.start()


def test_persistent_redis_server_keeps_its_data_across_a_restart(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(persistence=True)
    assert redis_command(server.port, "SET", "kept", "yes") == b"+OK"
    server.stop()
    server.start()
    assert redis_command(server.port, "EXISTS", "kept") == b":1"


def test_plain_redis_server_forgets_its_data_on_a_restart(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    assert redis_command(server.port, "SET", "gone", "yes") == b"+OK"
    server.stop()
    server.start()
    assert redis_command(server.port, "EXISTS", "gone") == b":0"


# -- postgres ---------------------------------------------------------------------

async def test_postgres_server_runs_queries_over_asyncpg(postgres_server: PostgresServer) -> None:
    assert postgres_server.dsn == f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"
    connection = await asyncpg.connect(postgres_server.dsn, timeout=30)
    try:
        assert await connection.fetchval("SELECT 1") == 1
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS harness_check (id serial PRIMARY KEY, note text)"
        )
        await connection.execute("INSERT INTO harness_check (note) VALUES ($1)", "hello")
        assert await connection.fetchval(
            "SELECT note FROM harness_check WHERE note = $1", "hello"
        ) == "hello"
        assert "PostgreSQL 15" in await connection.fetchval("SELECT version()")
    finally:
        await connection.close()


# -- tcp proxy --------------------------------------------------------------------

async def test_tcp_proxy_relays_redis_traffic_to_its_target(
    redis_url: str, redis_server: RedisServer, tcp_proxy_factory: Callable[..., TCPProxy]
) -> None:
    proxy = tcp_proxy_factory(redis_server.port)
    client = _client(f"redis://127.0.0.1:{proxy.port}/0")
    try:
        await client.set("through", "proxy")
        assert await client.get("through") == b"proxy"
        assert proxy.total_connections >= 1
    finally:
        await client.aclose()


def test_cutting_the_tcp_proxy_drops_open_connections_and_refuses_new_ones(
    redis_server: RedisServer, tcp_proxy_factory: Callable[..., TCPProxy]
) -> None:
    proxy = tcp_proxy_factory(redis_server.port)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
        proxy.cut()
        assert proxy.is_cut
        try:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64) == b""
        except ConnectionError:
            pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)


async def test_restoring_the_tcp_proxy_lets_a_redis_client_reconnect(
    redis_url: str, redis_server: RedisServer, tcp_proxy_factory: Callable[..., TCPProxy]
) -> None:
    proxy = tcp_proxy_factory(redis_server.port)
    port = proxy.port
    client = _client(f"redis://127.0.0.1:{port}/0")
    try:
        assert await client.ping() is True
        proxy.cut()
        with pytest.raises((aioredis.ConnectionError, aioredis.TimeoutError)):
            await client.ping()
        proxy.restore()
        assert proxy.port == port
        assert await client.ping() is True
    finally:
        await client.aclose()


# -- loop guard -------------------------------------------------------------------

def test_loop_exception_recorder_reports_an_unretrieved_task_exception() -> None:
    loop = asyncio.new_event_loop()
    recorder = LoopExceptionRecorder()
    recorder.install(loop)

    async def fail() -> None:
        raise ValueError("nobody awaited me")

    async def orphan_a_failing_task() -> None:
        task = loop.create_task(fail())
        await asyncio.sleep(0.01)
        del task

    try:
        loop.run_until_complete(orphan_a_failing_task())
        gc.collect()
    finally:
        recorder.uninstall()
        loop.close()
    with pytest.raises(LoopExceptionsRecorded, match="nobody awaited me"):
        recorder.assert_clean()


async def test_loop_guard_lets_a_clean_async_test_pass(loop_guard: LoopExceptionRecorder) -> None:
    await asyncio.sleep(0)
    assert loop_guard.calls == []


# -- config TOML ------------------------------------------------------------------

def test_config_dict_is_written_as_toml_that_reads_back_the_same() -> None:
    config = {
        "server": {"host": "127.0.0.1", "workers": 2, "access_log": False, "shutdown_timeout": 2.5},
        "state": {"redis_url": "redis://127.0.0.1:1/0"},
        "auth": {"master_key": 'sk-"quoted"\\and\nnewline\x01'},
        "models": [
            {"name": "mock-gpt", "provider": "mock", "tags": ["a", "b"], "options": {"x": 1}},
            {"name": "other", "provider": "openai", "headers": {"x-h": "v"}},
        ],
    }
    assert tomllib.loads(to_toml(config)) == config


# -- gateway process (against a stand-in, so the harness is tested on its own) ---

_FAKE_GATEWAY = textwrap.dedent(
    """
    import argparse, http.server, os, signal, sys, time

    def main():
        parser = argparse.ArgumentParser()
        parser.add_argument("command")
        for flag in ("--config", "--data-dir"):
            parser.add_argument(flag)
        parser.add_argument("--port", type=int)
        parser.add_argument("--workers", type=int)
        args = parser.parse_args()
        mode = os.environ.get("FAKE_GATEWAY_MODE", "")
        if mode == "fail":
            print("config error: server.port: expected int, got str", flush=True)
            sys.exit(2)
        workers = []
        for _ in range(args.workers):
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                while True:
                    time.sleep(1)
            workers.append(pid)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/health/ready" else 404)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        def on_term(signum, frame):
            if mode == "hang":
                return
            if mode != "orphan":
                for pid in workers:
                    os.kill(pid, signal.SIGTERM)
                for pid in workers:
                    os.waitpid(pid, 0)
            print("fake gateway stopped", flush=True)
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)
        server = http.server.HTTPServer(("127.0.0.1", args.port), Handler)
        print("fake gateway listening on", args.port, "config", open(args.config).read(), flush=True)
        server.serve_forever()

    if __name__ == "__main__":
        main()
    """
)


@pytest.fixture
def fake_gateway(
    tmp_path: Path, gateway_factory: Callable[..., GatewayProcess]
) -> Callable[..., GatewayProcess]:
    (tmp_path / "fake_gateway.py").write_text(_FAKE_GATEWAY)

    def make(mode: str = "", **kwargs: object) -> GatewayProcess:
        env = {"PYTHONPATH": str(tmp_path), "FAKE_GATEWAY_MODE": mode}
        return gateway_factory(
            {"server": {"access_log": False}}, module="fake_gateway", env=env,
            ready_timeout_s=20.0, **kwargs,
        )

    return make


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_gateway_process_waits_for_readiness_and_sees_its_workers(
    fake_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = fake_gateway()
    assert gateway.url == f"http://127.0.0.1:{gateway.port}"
    assert http_get_status(gateway.port, "/health/ready") == 200
    workers = gateway.wait_worker_pids(2)
    gateway.wait_output("fake gateway listening")
    gateway.wait_output("access_log = false")
    assert gateway.stop() == 0
    assert gateway.stray_pids_at_stop == []
    assert not any(_is_alive(pid) for pid in workers)
    assert "fake gateway stopped" in gateway.output_text()


def test_gateway_process_that_exits_early_raises_with_its_output(
    fake_gateway: Callable[..., GatewayProcess],
) -> None:
    with pytest.raises(GatewayError, match="server.port: expected int"):
        fake_gateway("fail")


def test_gateway_process_stop_kills_workers_a_supervisor_left_behind(
    fake_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = fake_gateway("orphan")
    workers = gateway.wait_worker_pids(2)
    assert gateway.stop() == 0
    assert sorted(gateway.stray_pids_at_stop) == sorted(workers)
    for pid in workers:  # SIGKILLed; give the kernel a moment to finish them
        wait_until_sync(lambda pid=pid: not _is_alive(pid), what=f"left-behind worker {pid} gone")


def test_gateway_process_stop_kills_a_supervisor_that_ignores_sigterm(
    fake_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = fake_gateway("hang")
    gateway.send_signal(signal.SIGTERM)
    assert gateway.is_running
    assert gateway.stop(timeout_s=1.0) == -signal.SIGKILL
    assert not gateway.is_running


# -- the real gateway -------------------------------------------------------------

def test_real_gateway_starts_serves_health_and_stops_cleanly(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    pytest.importorskip("smartflow.cli")
    import httpx

    gateway = gateway_factory({"server": {"access_log": False, "shutdown_timeout": 5}})
    response = httpx.get(f"{gateway.url}/health", timeout=10)
    assert response.status_code == 200
    assert len(gateway.wait_worker_pids(2)) == 2
    assert gateway.stop() == 0
    assert gateway.stray_pids_at_stop == []
    assert "Traceback" not in gateway.output_text()
