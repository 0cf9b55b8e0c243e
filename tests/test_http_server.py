"""A real HTTPServer on 127.0.0.1:0 (uvloop), exercised by real clients:
httpx over HTTP/1.1 and HTTP/2, raw sockets, curl."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
from collections.abc import AsyncIterator
from typing import Any

import h2.events
import h2.settings
import httpx
import pytest
import uvloop
from _http_helpers import (
    DemoState,
    LoopErrors,
    RawH2Client,
    RunningServer,
    bound_socket,
    build_demo_app,
    make_settings,
    raw_request,
    read_until_closed,
    running_server,
    status_of,
)
from harness.waiting import wait_until, wait_until_steady

from smartflow.http import HTTPServer, Request, Response

pytestmark = pytest.mark.timeout(60)

PROTOCOLS = ["http/1.1", "h2"]
H2_INITIAL_WINDOW = 65535  # RFC 9113 6.9.2: connection and stream windows before any update


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    errors = LoopErrors().install()
    async with running_server() as running:
        yield running
    assert errors.calls == [], errors.calls
    errors.uninstall()


def client_for(running: RunningServer, protocol: str, **kwargs: Any) -> httpx.AsyncClient:
    if protocol == "h2":
        return httpx.AsyncClient(
            base_url=running.base_url, http1=False, http2=True, timeout=20, **kwargs
        )
    return httpx.AsyncClient(base_url=running.base_url, timeout=20, **kwargs)


def expected_version(protocol: str) -> str:
    return "HTTP/2" if protocol == "h2" else "HTTP/1.1"


# -- the basics, over both protocols ------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_get_returns_json_over_each_protocol(server: RunningServer, protocol: str) -> None:
    async with client_for(server, protocol) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.http_version == expected_version(protocol)
    assert response.json() == {"status": "ok"}
    assert response.headers["content-type"] == "application/json"
    assert "date" in response.headers


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_post_body_is_echoed_small_and_large(server: RunningServer, protocol: str) -> None:
    async with client_for(server, protocol) as client:
        small = await client.post("/echo", content=b"hello")
        large_body = bytes(range(256)) * 8192  # 2 MiB: many flow-control windows on h2
        large = await client.post("/echo", content=large_body)
    assert small.content == b"hello"
    assert large.status_code == 200 and large.content == large_body


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_large_response_body_arrives_whole(server: RunningServer, protocol: str) -> None:
    async with client_for(server, protocol) as client:
        response = await client.get("/big", params={"size": "3000000"})
    assert len(response.content) == 3_000_000


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_chunked_request_body_is_read_as_a_stream(
    server: RunningServer, protocol: str
) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for index in range(5):
            yield b"part%d;" % index

    async with client_for(server, protocol) as client:
        response = await client.post("/echo", content=parts())
    assert response.content == b"part0;part1;part2;part3;part4;"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_streaming_response_arrives_chunk_by_chunk(
    server: RunningServer, protocol: str
) -> None:
    async with (
        client_for(server, protocol) as client,
        client.stream("GET", "/stream", params={"n": "5"}) as response,
    ):
        assert response.headers["content-type"] == "text/event-stream"
        received = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert received == b"".join(b"data: %d\n\n" % i for i in range(5))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_path_parameters_are_passed_to_the_handler(
    server: RunningServer, protocol: str
) -> None:
    async with client_for(server, protocol) as client:
        item = await client.get("/items/abc%20d")
        files = await client.get("/files/a/b/c.txt")
    assert item.json() == {"id": "abc d", "route": "/items/{item_id}"}
    assert files.json() == {"rest": "a/b/c.txt"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_unknown_path_is_404_in_the_openai_error_shape(
    server: RunningServer, protocol: str
) -> None:
    async with client_for(server, protocol) as client:
        response = await client.get("/nope")
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_wrong_method_is_405_with_allow(server: RunningServer, protocol: str) -> None:
    async with client_for(server, protocol) as client:
        response = await client.put("/items/1")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD"
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_head_falls_back_to_get_without_a_body(server: RunningServer, protocol: str) -> None:
    async with client_for(server, protocol) as client:
        response = await client.head("/health")
        after = await client.get("/health")  # the connection is still in a sane state
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(b'{"status":"ok"}'))
    assert after.json() == {"status": "ok"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_handler_exception_is_500_logged_once_and_the_server_lives_on(
    server: RunningServer, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="smartflow.http")
    async with client_for(server, protocol) as client:
        response = await client.get("/boom")
        healthy = await client.get("/health")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "exploded" not in response.text
    assert healthy.status_code == 200
    logged = [r for r in caplog.records if r.exc_info and "handler exploded" in str(r.exc_info[1])]
    assert len(logged) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_stream_that_fails_midway_is_cut_off_visibly_and_logged_once(
    server: RunningServer, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="smartflow.http")
    async with client_for(server, protocol) as client:
        with pytest.raises(httpx.HTTPError):
            async with client.stream("GET", "/stream-fail") as response:
                async for _chunk in response.aiter_bytes():
                    pass
    async with client_for(server, protocol) as client:
        assert (await client.get("/health")).status_code == 200
    logged = [r for r in caplog.records if r.exc_info and "mid-stream" in str(r.exc_info[1])]
    assert len(logged) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_handler_returning_something_else_is_500(
    server: RunningServer, protocol: str
) -> None:
    async with client_for(server, protocol) as client:
        response = await client.get("/not-a-response")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_http_error_from_a_handler_keeps_its_status_and_fields(
    server: RunningServer, protocol: str
) -> None:
    async with client_for(server, protocol) as client:
        response = await client.get("/teapot")
    assert response.status_code == 418
    assert response.json() == {
        "error": {
            "message": "I'm a teapot",
            "type": "teapot_error",
            "param": None,
            "code": "short_and_stout",
        }
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_bad_json_body_is_400(server: RunningServer, protocol: str) -> None:
    async with client_for(server, protocol) as client:
        bad = await client.post("/json", content=b"{nope")
        good = await client.post("/json", content=b'{"a": [1, 2]}')
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert good.json() == {"received": {"a": [1, 2]}}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_request_id_is_taken_from_a_sane_header_else_generated(
    server: RunningServer, protocol: str
) -> None:
    async with client_for(server, protocol) as client:
        sane = await client.get("/info", headers={"x-request-id": "req-123_abc.9"})
        insane = await client.get("/info", headers={"x-request-id": "bad id with spaces"})
        missing = await client.get("/info?a=1&a=2&b=", headers={"user-agent": "tester"})
    assert sane.json()["request_id"] == "req-123_abc.9"
    generated = insane.json()["request_id"]
    assert generated != "bad id with spaces" and len(generated) >= 8
    body = missing.json()
    assert body["query"] == {"a": ["1", "2"], "b": [""]}
    assert body["user_agent"] == "tester"
    assert body["http_version"] == ("2" if protocol == "h2" else "1.1")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_response_header_with_crlf_is_not_sent(server: RunningServer, protocol: str) -> None:
    async with client_for(server, protocol) as client:
        response = await client.get("/bad-header")
        healthy = await client.get("/health")
    assert response.status_code == 500
    assert "set-cookie" not in response.headers
    assert healthy.status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_body_over_max_body_bytes_is_413(protocol: str) -> None:
    async with running_server(make_settings(max_body_bytes=1000)) as running:
        async with client_for(running, protocol) as client:
            declared = await client.post("/echo", content=b"a" * 5000)

            async def streamed() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b"b" * 500

            chunked = await client.post("/echo", content=streamed())
        async with client_for(running, protocol) as client:
            healthy = await client.get("/health")
    assert declared.status_code == 413
    assert declared.json()["error"]["message"] == "Request body too large"
    assert chunked.status_code == 413
    assert healthy.status_code == 200


async def test_many_concurrent_http2_streams_on_one_connection(server: RunningServer) -> None:
    async with client_for(server, "h2") as client:
        responses = await asyncio.gather(*[client.get(f"/items/{i}") for i in range(100)])
    assert [r.json()["id"] for r in responses] == [str(i) for i in range(100)]


async def test_a_client_keeping_to_a_small_stream_limit_gets_every_answer() -> None:
    async with (
        running_server(make_settings(h2_max_concurrent_streams=4)) as running,
        client_for(running, "h2") as client,
    ):
        responses = await asyncio.gather(*[client.get("/slow?s=0.05") for _ in range(20)])
    assert all(r.json() == {"slept": True} for r in responses)


# -- HTTP/1.1 details over raw sockets ---------------------------------------------


async def test_pipelined_requests_are_answered_in_order(server: RunningServer) -> None:
    data = (
        b"GET /items/1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /items/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    response = await raw_request(server.port, data)
    assert response.count(b"HTTP/1.1 200 OK") == 3
    first, second, third = (
        response.index(b'"id":"1"'),
        response.index(b"\r\n\r\nabc"),
        response.index(b'"id":"3"'),
    )
    assert first < second < third


async def test_keep_alive_serves_several_requests_on_one_connection(server: RunningServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for index in range(3):
            writer.write(b"GET /items/%d HTTP/1.1\r\nHost: x\r\n\r\n" % index)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await asyncio.wait_for(reader.readexactly(length), 5)
            assert b'"id":"%d"' % index in body
    finally:
        writer.close()


async def test_chunked_response_framing_on_the_wire(server: RunningServer) -> None:
    response = await raw_request(
        server.port, b"GET /stream?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n"


async def test_http_1_0_gets_a_close_delimited_stream_and_a_closed_connection(
    server: RunningServer,
) -> None:
    response = await raw_request(server.port, b"GET /stream?n=2 HTTP/1.0\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head and b"connection: close" in head
    assert body == b"data: 0\n\ndata: 1\n\n"


async def test_100_continue_is_sent_when_the_handler_reads_the_body(server: RunningServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    finally:
        writer.close()


async def test_100_continue_not_sent_when_body_not_consumed(server: RunningServer) -> None:
    response = await raw_request(
        server.port,
        b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    assert b"100 Continue" not in response
    assert response.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in response  # the unsent body makes the connection unusable


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
        (b"GET /health HTTP/3.0\r\nHost: x\r\n\r\n", 505),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ],
    ids=["cl-and-te", "differing-cl", "obs-fold", "http-3", "garbage", "huge-header"],
)
async def test_malformed_and_smuggling_requests_are_refused_and_closed(
    server: RunningServer, data: bytes, status: int
) -> None:
    response = await raw_request(server.port, data + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == status
    assert response.count(b"HTTP/1.1") == 1  # closed: the smuggled request is never answered
    assert b'"error"' in response


async def test_slowloris_head_gets_408_and_the_connection_closes() -> None:
    async with running_server(make_settings(header_timeout=0.5)) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            response = await read_until_closed(reader, 10)
        finally:
            writer.close()
    assert status_of(response) == 408


async def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout() -> None:
    async with running_server(make_settings(keepalive_timeout=0.5)) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            response = await read_until_closed(reader, 10)
        finally:
            writer.close()
        assert status_of(response) == 200
        # The server's connection_lost is a callback of its own: wait for it.
        await wait_until(lambda: running.server.connection_count == 0,
                         what="server forgets the closed connection")


async def test_client_disconnect_cancels_the_handler_over_http1(server: RunningServer) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(server.state.slow_started.wait(), 5)
    assert server.server.in_flight == 1
    writer.close()
    await asyncio.wait_for(server.state.cancelled.wait(), 5)
    await wait_until(lambda: server.server.in_flight == 0, what="in_flight back to 0")


async def test_stream_reset_cancels_the_handler_over_http2(server: RunningServer) -> None:
    client = await RawH2Client.connect(server.port)
    try:
        slow_id = await client.request("GET", "/slow")
        await asyncio.wait_for(server.state.slow_started.wait(), 5)
        client.conn.reset_stream(slow_id)
        await client.flush()
        await asyncio.wait_for(server.state.cancelled.wait(), 5)
        # The connection itself carries on.
        health_id = await client.request("GET", "/health")
        for _ in range(20):
            events = await client.receive()
            if any(
                isinstance(e, h2.events.StreamEnded) and e.stream_id == health_id for e in events
            ):
                break
        data = b"".join(
            e.data
            for e in client.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == health_id
        )
        assert data == b'{"status":"ok"}'
    finally:
        client.close()


async def test_slow_reader_pauses_the_streaming_producer_over_http1(server: RunningServer) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    try:
        sock.send(b"GET /endless?size=65536 HTTP/1.1\r\nHost: x\r\n\r\n")
        # However long a busy machine takes to fill the buffers, production must stop.
        produced = await wait_until_steady(
            lambda: server.state.produced_chunks, what="chunks produced for a non-reader"
        )
        await asyncio.sleep(1.0)
        # Bounded by socket buffers plus the transport's high-water mark, never a growing heap.
        assert server.state.produced_chunks - produced <= 2
        assert produced < 200  # < 13 MiB produced for a client that read nothing
    finally:
        sock.close()


async def test_slow_reader_pauses_the_streaming_producer_over_http2(server: RunningServer) -> None:
    client = await RawH2Client.connect(server.port)
    try:
        stream_id = await client.request("GET", "/endless?size=16384")
        received = 0
        while received < H2_INITIAL_WINDOW:  # read but never acknowledge: the window closes
            events = await client.receive(timeout_s=10)
            assert events, "connection closed before the flow-control window was used up"
            received += sum(
                e.flow_controlled_length
                for e in events
                if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
            )
        assert received == H2_INITIAL_WINDOW  # never a byte past the window
        produced = await wait_until_steady(
            lambda: server.state.produced_chunks, what="chunks produced for a closed window"
        )
        await asyncio.sleep(0.8)
        assert server.state.produced_chunks == produced
        assert produced <= 8  # 65535-byte initial window / 16 KiB chunks, plus one waiting
    finally:
        client.close()


async def test_unread_request_body_pauses_reading_from_the_client() -> None:
    async with running_server(make_settings(max_body_bytes=256 * 1024 * 1024)) as running:
        _reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        try:
            total = 128 * 1024 * 1024
            writer.write(
                b"POST /slow?s=30 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total
            )
            chunk = b"z" * (1024 * 1024)
            sent = 0
            with pytest.raises(asyncio.TimeoutError):
                async with asyncio.timeout(2.0):
                    while sent < total:
                        writer.write(chunk)
                        await writer.drain()
                        sent += len(chunk)
            assert sent < total
        finally:
            writer.close()


async def test_http2_protocol_error_gets_goaway_and_the_server_lives_on(
    server: RunningServer,
) -> None:
    client = await RawH2Client.connect(server.port)
    try:
        await client.receive()  # server preface
        # A DATA frame on stream 0 is a connection error (RFC 9113 6.1).
        client.writer.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        await client.writer.drain()
        raw = await read_until_closed(client.reader, 5)
    finally:
        client.close()
    assert raw[3:4] == b"\x07"  # frame type GOAWAY
    async with client_for(server, "h2") as h2_client:
        assert (await h2_client.get("/health")).status_code == 200


async def test_http2_settings_advertise_the_configured_stream_limit() -> None:
    async with running_server(make_settings(h2_max_concurrent_streams=7)) as running:
        client = await RawH2Client.connect(running.port)
        try:
            events = await client.receive()
        finally:
            client.close()
    changed = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
    assert (
        changed[0].changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 7
    )


async def test_drain_sends_goaway_to_an_idle_http2_connection() -> None:
    async with running_server() as running:
        client = await RawH2Client.connect(running.port)
        try:
            await client.receive()
            await running.server.drain(5)
            events = []
            for _ in range(5):
                new = await client.receive()
                events.extend(new)
                if not new or any(isinstance(e, h2.events.ConnectionTerminated) for e in new):
                    break
        finally:
            client.close()
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated and terminated[0].error_code == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_204_response_has_no_body_and_no_content_length(protocol: str) -> None:
    state = DemoState()
    router = build_demo_app(state)

    async def no_content(request: Request) -> Response:
        return Response(204, b"ignored", content_type=None)

    router.add("DELETE", "/thing", no_content)
    sock = bound_socket()
    server = HTTPServer(router, make_settings())
    await server.start(sock)
    try:
        running = RunningServer(server, sock.getsockname()[1], state)
        async with client_for(running, protocol) as client:
            response = await client.delete("/thing")
            after = await client.get("/health")
    finally:
        await server.drain(2)
    assert response.status_code == 204 and response.content == b""
    assert "content-length" not in response.headers
    assert after.status_code == 200


# -- drain, backlog, observer ------------------------------------------------------


async def test_drain_lets_in_flight_requests_finish_and_closes_idle_connections() -> None:
    errors = LoopErrors().install()
    state = DemoState()
    sock = bound_socket()
    port = sock.getsockname()[1]
    server = HTTPServer(build_demo_app(state), make_settings())
    await server.start(sock)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(idle_reader.readuntil(b'"ok"}'), 5)
    async with httpx.AsyncClient(http1=False, http2=True, timeout=20) as h2_client:
        # The handlers sleep long enough to still be running when drain starts,
        # however slowly the two requests get going; drain's deadline is far beyond.
        slow_h2 = asyncio.create_task(h2_client.get(f"http://127.0.0.1:{port}/slow?s=2"))
        slow_h1 = asyncio.create_task(
            raw_request(port, b"GET /slow?s=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        )
        await wait_until(lambda: server.in_flight == 2, what="both slow requests in flight")
        await server.drain(10)
        h2_response = await slow_h2
        h1_response = await slow_h1
    assert h2_response.json() == {"slept": True}
    assert status_of(h1_response) == 200 and b"connection: close" in h1_response
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # idle keep-alive closed
    idle_writer.close()
    assert server.in_flight == 0 and server.connection_count == 0
    assert errors.calls == []
    errors.uninstall()


async def test_drain_force_closes_at_the_deadline() -> None:
    async with running_server() as running:
        task = asyncio.create_task(
            raw_request(running.port, b"GET /slow?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        )
        await asyncio.wait_for(running.state.slow_started.wait(), 5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await running.server.drain(0.3)
        assert loop.time() - started < 5
        assert await asyncio.wait_for(task, 5) == b""
        assert running.state.cancelled.is_set()


async def test_accept_backlog_takes_queued_connections_then_stops_listening() -> None:
    state = DemoState()
    sock = bound_socket()
    port = sock.getsockname()[1]
    # Connections completed by the kernel but not yet accepted by anyone.
    queued = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    server = HTTPServer(build_demo_app(state), make_settings())
    loop = asyncio.get_running_loop()
    await server.start(sock)
    await server.accept_backlog_and_close_listener()
    try:
        for client in queued:
            client.setblocking(False)
            await loop.sock_sendall(
                client, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
        for client in queued:
            data = b""
            while chunk := await asyncio.wait_for(loop.sock_recv(client, 65536), 5):
                data += chunk
            assert status_of(data) == 200
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        for client in queued:
            client.close()
        await server.drain(2)


async def test_drain_answers_the_first_request_of_a_connection_it_accepted_from_the_backlog(
) -> None:
    """A retiring worker accepts what the kernel queued for it; a client whose
    request bytes arrive only after the drain began must still be answered."""
    state = DemoState()
    sock = bound_socket()
    port = sock.getsockname()[1]
    slow_senders = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    silent = socket.create_connection(("127.0.0.1", port))
    server = HTTPServer(build_demo_app(state), make_settings())
    loop = asyncio.get_running_loop()
    await server.start(sock)
    try:
        drain = asyncio.create_task(server.drain(30))
        await wait_until(lambda: server.connection_count == 4, what="the backlog accepted")
        await asyncio.sleep(0.2)  # the drain has begun; these clients were slow to send
        assert not drain.done()
        answers = []
        for client in slow_senders:
            client.setblocking(False)
            await loop.sock_sendall(client, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        for client in slow_senders:
            data = b""
            while chunk := await asyncio.wait_for(loop.sock_recv(client, 65536), 5):
                data += chunk
            answers.append(data)
        # The silent one is closed after a short grace, not held to the deadline.
        started = loop.time()
        await asyncio.wait_for(drain, 10)
        assert loop.time() - started < 8
        silent.setblocking(False)
        assert await asyncio.wait_for(loop.sock_recv(silent, 100), 5) == b""
    finally:
        for client in [*slow_senders, silent]:
            client.close()
        if not drain.done():
            drain.cancel()
    for data in answers:
        assert status_of(data) == 200 and b"connection: close" in data.lower()
    assert server.connection_count == 0


class RecordingObserver:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[tuple[str, int, float, int, str]] = []

    def on_request_start(self, request: Request) -> None:
        self.started.append(request.path)

    def on_request_end(
        self, request: Request, status: int, duration_s: float, bytes_sent: int, route: str
    ) -> None:
        self.ended.append((request.path, status, duration_s, bytes_sent, route))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_observer_sees_each_request_with_status_route_and_bytes(protocol: str) -> None:
    observer = RecordingObserver()
    async with (
        running_server(observer=observer) as running,
        client_for(running, protocol) as client,
    ):
        await client.get("/items/7")
        await client.get("/missing")
        await client.get("/stream?n=3")
    assert observer.started == ["/items/7", "/missing", "/stream"]
    by_path = {
        path: (status, duration, sent, route)
        for path, status, duration, sent, route in observer.ended
    }
    assert by_path["/items/7"][0] == 200 and by_path["/items/7"][3] == "/items/{item_id}"
    assert by_path["/missing"][0] == 404 and by_path["/missing"][3] == ""
    assert by_path["/stream"][2] > 0
    assert all(duration >= 0 for _s, duration, _b, _r in by_path.values())


# -- curl ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize(
    ("flag", "version"), [("--http1.1", "HTTP/1.1"), ("--http2-prior-knowledge", "HTTP/2")]
)
async def test_curl_gets_answers_over_each_protocol(
    server: RunningServer, flag: str, version: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        "curl", "-s", "-i", flag, "-d", "from-curl", f"{server.base_url}/echo",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(process.communicate(), 20)
    assert stdout.startswith(version.encode() + b" 200")
    assert stdout.endswith(b"from-curl")


async def test_pipelining_client_that_never_reads_cannot_grow_server_memory() -> None:
    observer = RecordingObserver()
    async with running_server(observer=observer) as running:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", running.port))
        try:
            request = b"GET /big?size=200000 HTTP/1.1\r\nHost: x\r\n\r\n"
            await loop.sock_sendall(sock, request * 2000)
            answered = await wait_until_steady(
                lambda: len(observer.ended), what="requests answered for a non-reader"
            )
            await asyncio.sleep(0.5)
            # 2000 answers would be 400 MB; the server stopped at what the socket buffers hold.
            assert len(observer.ended) == answered
            assert answered < 100
        finally:
            sock.close()
