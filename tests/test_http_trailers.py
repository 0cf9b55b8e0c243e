"""HTTP trailers on streaming responses, against a real HTTPServer on
127.0.0.1:0 (uvloop): raw HTTP/1.1 and HTTP/1.0 sockets, h11 and h2 as bare
clients, httpx over both protocols."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h2.events
import h11
import httpx
import pytest
import uvloop
from _http_helpers import LoopErrors, RawH2Client, bound_socket, make_settings, raw_request

from smartflow.http import HTTPServer, Request, Router, StreamingResponse

pytestmark = pytest.mark.timeout(60)

CHUNKS = [b"data: 0\n\n", b"data: 1\n\n"]
CHUNKED_BODY = b"9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n"
CLOSE = b"Connection: close\r\n"


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


@dataclass
class Calls:
    """How often each route's trailers() ran, and what was left over."""

    trailers: dict[str, int] = field(default_factory=dict)

    def hook(self, route: str, fields: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
        def trailers() -> list[tuple[str, str]]:
            self.trailers[route] = self.trailers.get(route, 0) + 1
            return fields

        return trailers


def build_app(calls: Calls, gone: asyncio.Event) -> Router:
    router = Router()

    def chunks() -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            for chunk in CHUNKS:
                yield chunk

        return gen()

    async def with_trailers(request: Request) -> StreamingResponse:
        return StreamingResponse(
            chunks(),
            trailers=calls.hook("with", [("x-usage", "tokens=42"), ("x-cost", "0.5")]),
            trailer_names=("x-usage", "x-cost"),
        )

    async def empty_trailers(request: Request) -> StreamingResponse:
        return StreamingResponse(
            chunks(), trailers=calls.hook("empty", []), trailer_names=("x-usage",)
        )

    async def hook_only(request: Request) -> StreamingResponse:
        # No names announced: the callback is only the "stream finished" hook.
        return StreamingResponse(chunks(), trailers=calls.hook("hook", []))

    async def raising(request: Request) -> StreamingResponse:
        def trailers() -> list[tuple[str, str]]:
            calls.trailers["raising"] = calls.trailers.get("raising", 0) + 1
            raise RuntimeError("trailers exploded")

        return StreamingResponse(chunks(), trailers=trailers, trailer_names=("x-usage",))

    async def bad_field(request: Request) -> StreamingResponse:
        return StreamingResponse(
            chunks(),
            trailers=calls.hook("bad", [("x-usage", "a\r\nx-evil: 1")]),
            trailer_names=("x-usage",),
        )

    async def failing(request: Request) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            yield CHUNKS[0]
            raise RuntimeError("producer exploded mid-stream")

        return StreamingResponse(
            gen(), trailers=calls.hook("failing", [("x-usage", "1")]), trailer_names=("x-usage",)
        )

    async def hangs(request: Request) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            yield CHUNKS[0]
            try:
                await asyncio.sleep(30)
            finally:
                gone.set()
            yield CHUNKS[1]

        return StreamingResponse(
            gen(), trailers=calls.hook("hangs", [("x-usage", "1")]), trailer_names=("x-usage",)
        )

    async def plain(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks())

    router.add("GET", "/with", with_trailers)
    router.add("GET", "/empty", empty_trailers)
    router.add("GET", "/hook", hook_only)
    router.add("GET", "/raising", raising)
    router.add("GET", "/bad", bad_field)
    router.add("GET", "/failing", failing)
    router.add("GET", "/hangs", hangs)
    router.add("GET", "/plain", plain)
    return router


@dataclass
class Running:
    port: int
    calls: Calls
    gone: asyncio.Event
    server: HTTPServer

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def server() -> AsyncIterator[Running]:
    errors = LoopErrors().install()
    calls = Calls()
    gone = asyncio.Event()
    sock = bound_socket()
    port = sock.getsockname()[1]
    http_server = HTTPServer(build_app(calls, gone), make_settings())
    await http_server.start(sock)
    try:
        yield Running(port, calls, gone, http_server)
    finally:
        await http_server.drain(2.0)
    assert errors.calls == [], errors.calls
    errors.uninstall()


def get(path: str, version: bytes = b"1.1", method: bytes = b"GET") -> bytes:
    return b"%s %s HTTP/%s\r\nHost: x\r\n%s\r\n" % (method, path.encode(), version, CLOSE)


# -- HTTP/1.1 -----------------------------------------------------------------------


async def test_http1_announces_trailers_and_sends_them_after_the_last_chunk(
    server: Running,
) -> None:
    response = await raw_request(server.port, get("/with"))
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\ntrailer: x-usage, x-cost\r\n" in head
    assert b"transfer-encoding: chunked" in head
    assert body == CHUNKED_BODY + b"0\r\nx-usage: tokens=42\r\nx-cost: 0.5\r\n\r\n"
    assert server.calls.trailers == {"with": 1}


async def test_h11_client_parses_the_trailers(server: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client = h11.Connection(h11.CLIENT)
    try:
        request = h11.Request(method="GET", target="/with", headers=[("Host", "x")])
        writer.write(client.send(request))
        writer.write(client.send(h11.EndOfMessage()))
        await writer.drain()
        events: list[object] = []
        while not any(isinstance(e, h11.EndOfMessage) for e in events):
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await asyncio.wait_for(reader.read(65536), 5))
                continue
            events.append(event)
        response = next(e for e in events if isinstance(e, h11.Response))
        assert (b"trailer", b"x-usage, x-cost") in list(response.headers)
        body = b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
        assert body == b"".join(CHUNKS)
        end = events[-1]
        assert isinstance(end, h11.EndOfMessage)
        assert list(end.headers) == [(b"x-usage", b"tokens=42"), (b"x-cost", b"0.5")]
        # The connection is still good for another request.
        client.start_next_cycle()
        request = h11.Request(method="GET", target="/plain", headers=[("Host", "x")])
        writer.write(client.send(request))
        writer.write(client.send(h11.EndOfMessage()))
        await writer.drain()
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await asyncio.wait_for(reader.read(65536), 5))
                continue
            if isinstance(event, h11.EndOfMessage):
                assert list(event.headers) == []
                break
    finally:
        writer.close()


async def test_empty_trailers_end_with_a_plain_last_chunk(server: Running) -> None:
    response = await raw_request(server.port, get("/empty"))
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\ntrailer: x-usage\r\n" in head
    assert body == CHUNKED_BODY + b"0\r\n\r\n"
    assert server.calls.trailers == {"empty": 1}


async def test_http1_0_gets_no_trailer_header_and_a_close_delimited_body(server: Running) -> None:
    response = await raw_request(server.port, b"GET /with HTTP/1.0\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"trailer" not in head.lower()
    assert b"chunked" not in head and b"connection: close" in head
    assert body == b"".join(CHUNKS)
    assert server.calls.trailers == {"with": 1}  # still called: the "finished" hook


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_head_gets_no_trailer_header_and_no_body(server: Running, version: bytes) -> None:
    response = await raw_request(server.port, get("/with", version, b"HEAD"))
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"trailer" not in head.lower()
    assert body == b""
    assert server.calls.trailers == {"with": 1}


async def test_hook_without_names_is_called_and_nothing_is_announced(server: Running) -> None:
    response = await raw_request(server.port, get("/hook"))
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"trailer" not in head.lower()
    assert body == CHUNKED_BODY + b"0\r\n\r\n"
    assert server.calls.trailers == {"hook": 1}


async def test_raising_trailers_still_end_the_stream_cleanly(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="smartflow.http"):
        response = await raw_request(server.port, get("/raising"))
    _, _, body = response.partition(b"\r\n\r\n")
    assert body == CHUNKED_BODY + b"0\r\n\r\n"
    assert server.calls.trailers == {"raising": 1}
    assert [r for r in caplog.records if "trailers callback" in r.getMessage()]


async def test_invalid_trailer_field_is_dropped_and_the_stream_ends_cleanly(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="smartflow.http"):
        response = await raw_request(server.port, get("/bad"))
    _, _, body = response.partition(b"\r\n\r\n")
    assert body == CHUNKED_BODY + b"0\r\n\r\n"
    assert b"x-evil" not in response
    assert [r for r in caplog.records if "invalid trailer fields" in r.getMessage()]


async def test_failing_producer_sends_no_trailers_and_does_not_call_them(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="smartflow.http"):
        response = await raw_request(server.port, get("/failing"))
    assert b"data: 0" in response
    assert b"x-usage:" not in response.partition(b"\r\n\r\n")[2]
    assert not response.endswith(b"0\r\n\r\n")  # cut off visibly
    assert "failing" not in server.calls.trailers


async def test_client_gone_mid_stream_does_not_call_trailers(server: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /hangs HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"data: 0\n\n\r\n"), 5)
    writer.close()
    await asyncio.wait_for(server.gone.wait(), 5)
    for _ in range(50):
        if server.server.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert "hangs" not in server.calls.trailers


async def test_stream_without_trailers_is_byte_identical_to_before(server: Running) -> None:
    response = await raw_request(server.port, get("/plain"))
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert lines[1].startswith(b"date: ")
    assert lines[2:] == [
        b"content-type: text/event-stream",
        b"transfer-encoding: chunked",
        b"connection: close",
    ]
    assert body == CHUNKED_BODY + b"0\r\n\r\n"


async def test_keep_alive_carries_trailers_on_consecutive_responses(server: Running) -> None:
    # Keep-alive: two trailer-carrying responses back to back on one connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /with HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        await writer.drain()
        tail = b"0\r\nx-usage: tokens=42\r\nx-cost: 0.5\r\n\r\n"
        first = await asyncio.wait_for(reader.readuntil(tail), 5)
        second = await asyncio.wait_for(reader.readuntil(tail), 5)
        for response in (first, second):
            assert response.startswith(b"HTTP/1.1 200")
            assert response.endswith(CHUNKED_BODY + tail)
        assert server.calls.trailers == {"with": 2}
    finally:
        writer.close()


# -- HTTP/2 -------------------------------------------------------------------------


async def h2_exchange(port: int, path: str, method: str = "GET") -> tuple[int, list[object]]:
    client = await RawH2Client.connect(port)
    try:
        stream_id = await client.request(method, path)
        for _ in range(50):
            events = await client.receive()
            ended = any(
                isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                and e.stream_id == stream_id
                for e in events
            )
            if ended or not events:
                break
        return stream_id, [e for e in client.events if getattr(e, "stream_id", None) == stream_id]
    finally:
        client.close()


async def test_h2_sends_data_then_trailers_ending_the_stream(server: Running) -> None:
    _stream_id, events = await h2_exchange(server.port, "/with")
    kinds = [type(e) for e in events]
    response = events[0]
    assert isinstance(response, h2.events.ResponseReceived)
    assert (b"trailer", b"x-usage, x-cost") in response.headers
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == b"".join(CHUNKS)
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert len(trailers) == 1
    assert trailers[0].headers == [(b"x-usage", b"tokens=42"), (b"x-cost", b"0.5")]
    assert trailers[0].stream_ended is not None
    assert kinds.index(h2.events.TrailersReceived) > max(
        i for i, k in enumerate(kinds) if k is h2.events.DataReceived
    )
    assert h2.events.StreamEnded in kinds and h2.events.StreamReset not in kinds
    assert server.calls.trailers == {"with": 1}


@pytest.mark.parametrize("path", ["/empty", "/raising", "/bad", "/plain"])
async def test_h2_without_trailer_fields_ends_with_a_plain_end_stream(
    server: Running, path: str
) -> None:
    _, events = await h2_exchange(server.port, path)
    kinds = [type(e) for e in events]
    assert h2.events.TrailersReceived not in kinds
    assert h2.events.StreamEnded in kinds and h2.events.StreamReset not in kinds
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == b"".join(CHUNKS)
    response = events[0]
    assert isinstance(response, h2.events.ResponseReceived)
    has_trailer_header = any(name == b"trailer" for name, _ in response.headers)
    assert has_trailer_header is (path != "/plain")


async def test_h2_head_gets_no_trailer_header_and_no_trailers(server: Running) -> None:
    _, events = await h2_exchange(server.port, "/with", "HEAD")
    response = events[0]
    assert isinstance(response, h2.events.ResponseReceived)
    assert not any(name == b"trailer" for name, _ in response.headers)
    kinds = [type(e) for e in events]
    assert h2.events.TrailersReceived not in kinds and h2.events.DataReceived not in kinds
    assert h2.events.StreamEnded in kinds
    assert server.calls.trailers == {"with": 1}


async def test_h2_failing_producer_resets_without_trailers(server: Running) -> None:
    _, events = await h2_exchange(server.port, "/failing")
    kinds = [type(e) for e in events]
    assert h2.events.TrailersReceived not in kinds
    assert h2.events.StreamReset in kinds
    assert "failing" not in server.calls.trailers


# -- real clients ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
@pytest.mark.parametrize("path", ["/with", "/raising", "/plain"])
async def test_httpx_reads_the_whole_body(server: Running, protocol: str, path: str) -> None:
    http2 = protocol == "h2"
    async with httpx.AsyncClient(
        base_url=server.base_url, http1=not http2, http2=http2, timeout=20
    ) as client:
        for _ in range(2):  # and the connection stays usable
            response = await client.get(path)
            assert response.status_code == 200
            assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert response.content == b"".join(CHUNKS)
            async with client.stream("GET", path) as streamed:
                assert b"".join([c async for c in streamed.aiter_bytes()]) == b"".join(CHUNKS)


async def test_h2_reset_mid_stream_does_not_call_trailers(server: Running) -> None:
    client = await RawH2Client.connect(server.port)
    try:
        stream_id = await client.request("GET", "/hangs")
        for _ in range(20):
            await client.receive()
            if any(isinstance(e, h2.events.DataReceived) for e in client.events):
                break
        client.conn.reset_stream(stream_id)
        await client.flush()
        await asyncio.wait_for(server.gone.wait(), 5)
        for _ in range(50):
            if server.server.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert server.server.in_flight == 0
        assert "hangs" not in server.calls.trailers
    finally:
        client.close()
