"""Fixtures shared by every test: real servers, started on demand.

Fixtures (all start real processes on 127.0.0.1, on free ports):

  redis_server            session  RedisServer: .url .port .start() .stop() .flush() .ping()
  redis_url               function str, the session server's URL after FLUSHALL
                                   (restarted first if a test left it stopped)
  redis_server_factory    function make(**RedisServer kwargs) -> started private RedisServer
  redis_cluster           session  RedisCluster (3 masters, no replicas): .url .ports .flush()
  redis_cluster_url       function str, any cluster node's URL after FLUSHALL on every node
  postgres_server         session  PostgresServer: .dsn .port .stop(); started only if asked for
  postgres_database       function str, the DSN of a fresh database on it, dropped afterwards
  gateway_factory         function make(config=None, **GatewayProcess kwargs) -> ready GatewayProcess
  tcp_proxy_factory       function make(target_port, target_host="127.0.0.1") -> started TCPProxy
  loop_guard              function (async) LoopExceptionRecorder on the test's loop; the test
                                   errors at teardown if the loop exception handler was called
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from smartflow.store.fast_client import StoreClient, create_store_client

# Make `harness` importable under any pytest import mode (and whether or not
# tests/ becomes a package later): test modules do `from harness.x import Y`.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from harness.gateway import GatewayProcess
from harness.loop_guard import LoopExceptionRecorder
from harness.postgres import PostgresServer
from harness.redis_cluster import RedisCluster
from harness.redis_server import RedisServer
from harness.tcp_proxy import TCPProxy


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.is_running:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    dsn = postgres_server.create_database("test")
    try:
        yield dsn
    finally:
        postgres_server.drop_database(dsn)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    gateways: list[GatewayProcess] = []

    def make(
        config: Mapping[str, object] | str | None = None, *, start: bool = True, **kwargs: Any
    ) -> GatewayProcess:
        kwargs.setdefault("directory", tmp_path / f"gateway-{len(gateways)}")
        gateway = GatewayProcess(config, **kwargs)
        gateways.append(gateway)
        if start:
            gateway.start()
        return gateway

    try:
        yield make
    finally:
        for gateway in gateways:
            gateway.close()


@pytest.fixture
def tcp_proxy_factory() -> Iterator[Callable[..., TCPProxy]]:
    proxies: list[TCPProxy] = []

    def make(target_port: int, target_host: str = "127.0.0.1") -> TCPProxy:
        proxy = TCPProxy(target_port, target_host=target_host)
        proxies.append(proxy)
        proxy.start()
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.close()


@pytest.fixture
async def loop_guard() -> AsyncIterator[LoopExceptionRecorder]:
    recorder = LoopExceptionRecorder()
    recorder.install(asyncio.get_running_loop())
    try:
        yield recorder
        # Let pending callbacks run and dead tasks be collected, so their
        # unretrieved exceptions reach the handler before we look.
        await asyncio.sleep(0)
        recorder.collect_garbage()
        await asyncio.sleep(0)
    finally:
        recorder.uninstall()
    recorder.assert_clean()


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it), never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
async def store_client(redis_url: str) -> AsyncIterator[StoreClient]:
    """Smartflow's own Redis client on the session's Redis, closed after the test."""
    client = create_store_client(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
