"""Fuzzing: random, truncated and mutated HTTP/1.1 requests and HTTP/2 frames.

The server must answer or close, never raise into the event loop, and keep
serving afterwards; the sans-IO HTTP/1.1 layer must turn any bytes into events
or one protocol-error value, never an exception."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import httpx
import pytest
import uvloop
from _http_helpers import DemoState, bound_socket, build_demo_app, make_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartflow.http import HTTPServer
from smartflow.http.events import BadRequest, EndBody
from smartflow.http.h1 import H1Connection

pytestmark = pytest.mark.timeout(120)

H1_SEEDS = [
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /stream?n=2 HTTP/1.0\r\n\r\n",
    b"POST /json HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /items/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /files/a/b HTTP/1.1\r\nHost: x\r\n\r\n",
]


def _h2_seeds() -> list[bytes]:
    seeds = []
    for method, path, body in [
        ("GET", "/health", b""),
        ("POST", "/echo", b"hello" * 10),
        ("GET", "/stream", b""),
    ]:
        client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        client.initiate_connection()
        headers = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"x"),
        ]
        client.send_headers(1, headers, end_stream=not body)
        if body:
            client.send_data(1, body, end_stream=True)
        client.ping(b"12345678")
        client.reset_stream(1) if method == "GET" and path == "/stream" else None
        seeds.append(client.data_to_send())
    return seeds


H2_SEEDS = _h2_seeds()


# Edits are drawn as raw bytes (6 per edit) and decoded: hypothesis draws flat
# binary far faster than lists of tuples, which keeps thousands of examples quick.
EDITS = st.binary(max_size=24)


def apply_edits(seed: bytes, edits: bytes, keep_prefix: int = 0) -> bytes:
    """`seed` after a few edits: flip, insert, delete, duplicate, truncate."""
    data = bytearray(seed)
    for offset in range(0, len(edits) - 5, 6):
        record = edits[offset : offset + 6]
        kind, where, payload = record[0] % 5, record[1] << 8 | record[2], record[3:]
        if len(data) <= keep_prefix:
            break
        position = keep_prefix + where % (len(data) - keep_prefix)
        if kind == 0:
            data[position] = payload[0]
        elif kind == 1:
            data[position:position] = payload
        elif kind == 2:
            del data[position : position + 1 + payload[0] % 8]
        elif kind == 3:
            data[position:position] = data[position : position + 1 + payload[0] % 32]
        else:
            del data[position:]
    return bytes(data)


def mutated(seeds: list[bytes], keep_prefix: int = 0) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda seed, edits: apply_edits(seed, edits, keep_prefix), st.sampled_from(seeds), EDITS
    )


ANY_BYTES = st.binary(max_size=256)
H1_INPUT = st.one_of(ANY_BYTES, mutated(H1_SEEDS))
H2_INPUT = st.one_of(
    st.binary(max_size=128).map(lambda tail: H2_SEEDS[0][:24] + tail),
    mutated(H2_SEEDS, keep_prefix=24),
    mutated(H2_SEEDS),
)


class ServerThread:
    """The server on its own uvloop in a thread, so hypothesis can drive it
    with plain blocking sockets."""

    def __init__(self) -> None:
        self.loop_errors: list[dict[str, Any]] = []
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _main(self) -> None:
        uvloop.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self._stop = asyncio.Event()
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        settings_ = make_settings(header_timeout=1.0, keepalive_timeout=1.0, max_body_bytes=4096)
        server = HTTPServer(build_demo_app(DemoState()), settings_)
        await server.start(sock)
        self._ready.set()
        await self._stop.wait()
        await server.drain(2.0)


@pytest.fixture(scope="module")
def server_thread() -> Iterator[ServerThread]:
    thread = ServerThread()
    thread.start()
    yield thread
    thread.stop()


def send_and_read(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)
        except (ConnectionError, TimeoutError, OSError):
            return b""


def assert_healthy(server_thread: ServerThread) -> None:
    base = f"http://127.0.0.1:{server_thread.port}"
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{base}/health").status_code == 200
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        response = client.get(f"{base}/health")
        assert response.status_code == 200 and response.http_version == "HTTP/2"
    assert server_thread.loop_errors == []


FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(data=H1_INPUT)
def test_server_survives_random_and_mutated_http1_requests(
    server_thread: ServerThread, data: bytes
) -> None:
    response = send_and_read(server_thread.port, data)
    if response and not data.startswith(H2_SEEDS[0][:24]):  # random bytes can spell the h2 preface
        assert response.startswith(b"HTTP/1.1 "), response[:100]


@FUZZ
@given(data=H2_INPUT)
def test_server_survives_random_and_mutated_http2_frames(
    server_thread: ServerThread, data: bytes
) -> None:
    send_and_read(server_thread.port, data)


def test_server_still_answers_health_on_both_protocols_after_fuzzing(
    server_thread: ServerThread,
) -> None:
    assert_healthy(server_thread)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=H1_INPUT, cuts=st.binary(max_size=8))
def test_any_bytes_give_h1_events_or_one_protocol_error(data: bytes, cuts: bytes) -> None:
    connection = H1Connection(max_header_bytes=256, max_body_bytes=64)
    boundaries = sorted({0, len(data), *[c * 3 for c in cuts if c * 3 < len(data)]})
    events = []
    for start, end in itertools.pairwise(boundaries):
        new = connection.receive_data(data[start:end])
        while True:
            events.extend(new)
            if new and isinstance(new[-1], EndBody):
                new = connection.start_next_request()
                continue
            break
    errors = [e for e in events if isinstance(e, BadRequest)]
    assert len(errors) <= 1
    if errors:
        assert events[-1] is errors[0]
        assert errors[0].status in (400, 413, 431, 505)
        assert connection.receive_data(b"more") == []
