"""Shared machinery for the HTTP server tests: a demo app, a running server,
raw-socket clients and a loop-exception recorder."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from smartflow.config import ServerSettings
from smartflow.http import (
    HTTPError,
    HTTPServer,
    Request,
    Response,
    Router,
    StreamingResponse,
    json_response,
)


def make_settings(**overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "access_log": False}
    values.update(overrides)
    return ServerSettings(**values)


@dataclass
class DemoState:
    """What the demo handlers saw, for tests to inspect."""

    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    produced_chunks: int = 0
    body_reads: int = 0


def build_demo_app(state: DemoState) -> Router:
    router = Router()

    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def echo(request: Request) -> Response:
        state.body_reads += 1
        body = await request.body()
        return Response(200, body, content_type="application/octet-stream")

    async def echo_json(request: Request) -> Response:
        return json_response({"received": await request.json()})

    async def ignore_body(request: Request) -> Response:
        return json_response({"ignored": True})

    async def count_stream(request: Request) -> StreamingResponse:
        count = int((request.query.get("n") or ["3"])[0])

        async def chunks() -> AsyncIterator[bytes]:
            for index in range(count):
                yield b"data: %d\n\n" % index

        return StreamingResponse(chunks())

    async def endless(request: Request) -> StreamingResponse:
        size = int((request.query.get("size") or ["65536"])[0])
        block = b"x" * size

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                state.produced_chunks += 1
                yield block

        return StreamingResponse(chunks(), content_type="application/octet-stream")

    async def big(request: Request) -> Response:
        size = int((request.query.get("size") or ["1000000"])[0])
        return Response(200, b"y" * size, content_type="application/octet-stream")

    async def slow(request: Request) -> Response:
        state.slow_started.set()
        try:
            await asyncio.sleep(float((request.query.get("s") or ["30"])[0]))
        except asyncio.CancelledError:
            state.cancelled.set()
            raise
        return json_response({"slept": True})

    async def boom(request: Request) -> Response:
        raise RuntimeError("handler exploded")

    async def teapot(request: Request) -> Response:
        raise HTTPError(418, "I'm a teapot", type="teapot_error", code="short_and_stout")

    async def item(request: Request) -> Response:
        return json_response({"id": request.path_params["item_id"], "route": request.route})

    async def files(request: Request) -> Response:
        return json_response({"rest": request.path_params["rest"]})

    async def info(request: Request) -> Response:
        return json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "http_version": request.http_version,
                "request_id": request.request_id,
                "user_agent": request.header("User-Agent"),
            }
        )

    async def bad_header(request: Request) -> Response:
        return Response(200, b"{}", headers=[("x-evil", "a\r\nset-cookie: pwned=1")])

    async def stream_fail(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            raise RuntimeError("producer exploded mid-stream")

        return StreamingResponse(chunks())

    async def not_a_response(request: Request) -> Response:
        return "oops"  # type: ignore[return-value]

    router.add("GET", "/stream-fail", stream_fail)
    router.add("GET", "/not-a-response", not_a_response)
    router.add("GET", "/health", health)
    router.add("POST", "/echo", echo)
    router.add("POST", "/json", echo_json)
    router.add("POST", "/ignore", ignore_body)
    router.add("GET", "/stream", count_stream)
    router.add("GET", "/endless", endless)
    router.add("GET", "/big", big)
    router.add(["GET", "POST"], "/slow", slow)
    router.add("GET", "/boom", boom)
    router.add("GET", "/teapot", teapot)
    router.add("GET", "/items/{item_id}", item)
    router.add("DELETE", "/items/{item_id}", item)
    router.add("GET", "/files/{rest:path}", files)
    router.add(["GET", "POST"], "/info", info)
    router.add("GET", "/bad-header", bad_header)
    return router


@dataclass
class RunningServer:
    server: HTTPServer
    port: int
    state: DemoState

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@asynccontextmanager
async def running_server(
    settings: ServerSettings | None = None, **server_kwargs: Any
) -> AsyncIterator[RunningServer]:
    state = DemoState()
    sock = bound_socket()
    port = sock.getsockname()[1]
    server = HTTPServer(build_demo_app(state), settings or make_settings(), **server_kwargs)
    await server.start(sock)
    try:
        yield RunningServer(server, port, state)
    finally:
        await server.drain(2.0)


async def raw_request(port: int, data: bytes, *, timeout_s: float = 10.0) -> bytes:
    """Send `data`, read until the server closes (or the timeout passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_until_closed(reader, timeout_s)
    finally:
        writer.close()


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    chunks = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except (TimeoutError, ConnectionError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


class LoopErrors:
    """Records every call of the loop's exception handler."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> LoopErrors:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(lambda _loop, context: self.calls.append(context))
        return self

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.set_exception_handler(None)


class RawH2Client:
    """A bare HTTP/2 client on the h2 library, for what httpx cannot do
    (resetting a stream, refusing to grant flow-control window)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection

        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.events: list[Any] = []

    @classmethod
    async def connect(cls, port: int) -> RawH2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def request(self, method: str, path: str, *, end_stream: bool = True) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"localhost"),
        ]
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        await self.flush()
        return stream_id

    async def receive(self, timeout_s: float = 5.0) -> list[Any]:
        """Read once; return the h2 events (flow control is NOT acknowledged)."""
        data = await asyncio.wait_for(self.reader.read(65536), timeout_s)
        if not data:
            return []
        events = self.conn.receive_data(data)
        self.events.extend(events)
        await self.flush()
        return events

    def close(self) -> None:
        self.writer.close()
