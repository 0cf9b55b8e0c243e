"""The upstream HTTP/1.1 client against raw loopback servers, on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from _upstream_helpers import (
    Certificates,
    RawServer,
    make_certificates,
    ok_response,
    read_request,
    run_on_loop,
    server_ssl_context,
    wait_closed_by_peer,
)
from harness.waiting import wait_until

from smartflow.http.client import (
    ConnectError,
    ConnectTimeout,
    FirstByteTimeout,
    InvalidRequest,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    TLSConfig,
    UpstreamError,
    UpstreamPool,
    WriteError,
)

pytestmark = pytest.mark.timeout(60)

# How long a socket may take to close "at once": far beyond any scheduling
# delay, far below the pool's own timeouts (60 s idle, 120 s read), so a
# connection left open until one of those fires still fails the test.
CLOSE_AT_ONCE_S = 10.0


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive server answering each request with its own request line and body."""
    while True:
        head, body = await read_request(reader)
        request_line = head.split(b"\r\n", 1)[0]
        writer.write(ok_response(request_line + b"|" + body))


# -- keep-alive and pooling ----------------------------------------------------------


def test_sequential_requests_reuse_one_kept_alive_connection(loop_name: str) -> None:
    async def scenario() -> None:
        async with RawServer(echo_forever) as server, UpstreamPool() as pool:
            for i in range(5):
                body = b"n=%d" % i
                async with await pool.request("POST", server.url + "/v1/x?q=1", [], body) as resp:
                    assert resp.status == 200
                    assert await resp.read() == b"POST /v1/x?q=1 HTTP/1.1|" + body
            assert server.connections == 1
            stats = pool.statistics()
            assert (stats.open, stats.idle, stats.in_use, stats.waiting) == (1, 1, 0, 0)
            assert stats.for_origin(server.url) is not None

    run_on_loop(loop_name, scenario)


def test_request_carries_host_user_headers_and_content_length(loop_name: str) -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            seen.append(head + body)
            writer.write(ok_response())

    async def scenario() -> None:
        async with RawServer(record) as server, UpstreamPool() as pool:
            headers = [("Authorization", "Bearer k"), ("Content-Length", "999")]
            resp = await pool.request("POST", server.url + "/v1/chat", headers, b'{"a":1}')
            assert await resp.read() == b"ok"
            resp = await pool.request("GET", server.url, [("host", "example.test")])
            assert await resp.read() == b"ok"
        first, second = (request.lower() for request in seen)
        assert first.startswith(b"post /v1/chat http/1.1\r\n")
        assert f"host: 127.0.0.1:{server.port}\r\n".encode() in first
        assert b"authorization: bearer k\r\n" in first
        # (a caller's own Content-Length is dropped; the port may hold "999" by chance)
        assert b"content-length: 7\r\n" in first and b"content-length: 999" not in first
        assert first.endswith(b'\r\n\r\n{"a":1}')
        assert second.startswith(b"get / http/1.1\r\n")
        assert b"host: example.test\r\n" in second and b"127.0.0.1" not in second

    run_on_loop(loop_name, scenario)


def test_concurrent_requests_use_separate_connections(loop_name: str) -> None:
    async def slow_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.2)
            writer.write(ok_response())

    async def scenario() -> None:
        async with RawServer(slow_answer) as server, UpstreamPool() as pool:

            async def call() -> bytes:
                async with await pool.request("GET", server.url, []) as resp:
                    return await resp.read()

            assert await asyncio.gather(*(call() for _ in range(4))) == [b"ok"] * 4
            assert server.connections == 4
            assert pool.statistics().idle == 4

    run_on_loop(loop_name, scenario)


def test_requests_beyond_the_limit_wait_for_a_free_connection(loop_name: str) -> None:
    async def scenario() -> None:
        release = asyncio.Event()  # no answer until the test has seen the queue

        async def held_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                await release.wait()
                writer.write(ok_response())

        async with (
            RawServer(held_answer) as server,
            UpstreamPool(max_connections_per_origin=1, connect_timeout_s=10) as pool,
        ):

            async def call() -> bytes:
                async with await pool.request("GET", server.url, []) as resp:
                    return await resp.read()

            tasks = [asyncio.create_task(call()) for _ in range(3)]
            await wait_until(lambda: pool.statistics().waiting == 2, what="two callers queued")
            stats = pool.statistics()
            assert stats.open == 1 and stats.waiting == 2
            release.set()
            assert await asyncio.gather(*tasks) == [b"ok"] * 3
            assert server.connections == 1
            stats = pool.statistics()
            assert (stats.open, stats.idle, stats.waiting) == (1, 1, 0)

    run_on_loop(loop_name, scenario)


def test_pool_timeout_when_no_connection_frees_up(loop_name: str) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async def scenario() -> None:
        async with (
            RawServer(never_answer) as server,
            UpstreamPool(max_connections_per_origin=1, connect_timeout_s=0.3) as pool,
        ):
            hung = asyncio.create_task(pool.request("GET", server.url, []))
            await asyncio.sleep(0.05)
            with pytest.raises(PoolTimeout):
                await pool.request("GET", server.url, [])
            assert pool.statistics().waiting == 0
            hung.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hung
            stats = pool.statistics()
            assert (stats.open, stats.in_use, stats.waiting) == (0, 0, 0)

    run_on_loop(loop_name, scenario)


def test_idle_connections_expire_after_the_pool_idle_timeout(loop_name: str) -> None:
    closed = asyncio.Event

    async def scenario() -> None:
        saw_close = closed()

        async def answer_then_watch(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await read_request(reader)
            writer.write(ok_response())
            if await wait_closed_by_peer(reader):
                saw_close.set()

        async with (
            RawServer(answer_then_watch) as server,
            UpstreamPool(pool_idle_timeout_s=0.2) as pool,
        ):
            assert await (await pool.request("GET", server.url, [])).read() == b"ok"
            assert pool.statistics().idle == 1
            await asyncio.wait_for(saw_close.wait(), 5)
            assert pool.statistics().open == 0

    run_on_loop(loop_name, scenario)


# -- response framing ----------------------------------------------------------------


def test_chunked_content_length_and_close_delimited_bodies_are_read_whole(loop_name: str) -> None:
    async def framed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            path = head.split(b" ")[1]
            if path == b"/chunked":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                )
            elif path == b"/length":
                writer.write(ok_response(b"hello world"))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello ")
                await writer.drain()
                writer.write(b"world")
                writer.close()
                return

    async def scenario() -> None:
        async with RawServer(framed) as server, UpstreamPool() as pool:
            for path in ("/chunked", "/length", "/close"):
                async with await pool.request("GET", server.url + path, []) as resp:
                    assert await resp.read() == b"hello world", path
            assert server.connections == 1
            assert pool.statistics().open == 0  # the close-delimited one is not pooled
            async with await pool.request("HEAD", server.url + "/length", []) as resp:
                assert resp.header("Content-Length") == "11"
                assert await resp.read() == b""

    run_on_loop(loop_name, scenario)


def test_streamed_chunks_arrive_before_the_server_sends_the_next(loop_name: str) -> None:
    async def scenario() -> None:
        first_chunk_seen = asyncio.Event()

        async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"6\r\ndata 1\r\n")
            await asyncio.wait_for(first_chunk_seen.wait(), 10)
            writer.write(b"6\r\ndata 2\r\n0\r\n\r\n")
            await read_request(reader)

        async with RawServer(stream) as server, UpstreamPool() as pool:
            chunks = []
            async with await pool.request("POST", server.url, [], b"{}") as resp:
                assert resp.header("transfer-encoding") == "chunked"
                async for chunk in resp.iter_bytes():
                    chunks.append(chunk)
                    first_chunk_seen.set()
            assert chunks == [b"data 1", b"data 2"]
            assert pool.statistics().idle == 1

    run_on_loop(loop_name, scenario)


# -- stale connections ----------------------------------------------------------------


def test_a_kept_alive_connection_closed_as_the_request_goes_out_is_retried_once(
    loop_name: str,
) -> None:
    async def close_on_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok_response(b"first"))
        await read_request(reader)  # the server gave up on this connection: close, no answer

    async def scenario() -> None:
        async with RawServer(close_on_second) as server, UpstreamPool() as pool:
            assert await (await pool.request("GET", server.url, [])).read() == b"first"
            assert await (await pool.request("POST", server.url, [], b"x")).read() == b"first"
            assert server.connections == 2

    run_on_loop(loop_name, scenario)


def test_a_connection_the_server_closed_while_idle_is_not_reused(loop_name: str) -> None:
    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok_response())  # keep-alive promised, then closed anyway

    async def scenario() -> None:
        async with RawServer(answer_and_close) as server, UpstreamPool() as pool:
            assert await (await pool.request("GET", server.url, [])).read() == b"ok"
            await wait_until(lambda: pool.statistics().open == 0, what="the closed idle "
                             "connection dropped from the pool")
            assert await (await pool.request("GET", server.url, [])).read() == b"ok"
            assert server.connections == 2

    run_on_loop(loop_name, scenario)


def test_a_fresh_connection_closed_without_answer_is_not_retried(loop_name: str) -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async def scenario() -> None:
        async with RawServer(close_at_once) as server, UpstreamPool() as pool:
            with pytest.raises(RemoteProtocolError, match="without sending a response"):
                await pool.request("POST", server.url, [], b"{}")
            assert server.connections == 1
            assert pool.statistics().open == 0

    run_on_loop(loop_name, scenario)


# -- failures and timeouts -------------------------------------------------------------


def test_refused_connection_raises_connect_error(loop_name: str) -> None:
    # Bound but never listening, and held for the whole test: the kernel
    # refuses every connection, and no other process can take the port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

        async def scenario() -> None:
            async with UpstreamPool() as pool:
                with pytest.raises(ConnectError, match="cannot connect"):
                    await pool.request("GET", f"http://127.0.0.1:{port}/", [])
                assert pool.statistics().open == 0

        run_on_loop(loop_name, scenario)


def test_a_listener_whose_backlog_is_full_gives_connect_timeout(loop_name: str) -> None:
    async def scenario() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            fillers: list[socket.socket] = []
            try:
                # Never accepted: once the accept queue is full the kernel
                # drops further SYNs and connect() hangs.
                for _ in range(8):
                    filler = socket.socket()
                    filler.setblocking(False)
                    filler.connect_ex(("127.0.0.1", port))
                    fillers.append(filler)
                async with UpstreamPool(connect_timeout_s=0.3) as pool:
                    with pytest.raises(ConnectTimeout):
                        await pool.request("GET", f"http://127.0.0.1:{port}/", [])
                    assert pool.statistics().open == 0
            finally:
                for filler in fillers:
                    filler.close()

    run_on_loop(loop_name, scenario)


def test_a_server_that_never_completes_the_tls_handshake_gives_connect_timeout(
    loop_name: str,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def scenario() -> None:
        async with RawServer(silent) as server, UpstreamPool(connect_timeout_s=0.3) as pool:
            with pytest.raises(ConnectTimeout):
                await pool.request("GET", f"https://127.0.0.1:{server.port}/", [])
            assert pool.statistics().open == 0

    run_on_loop(loop_name, scenario)


def test_no_response_head_in_time_gives_first_byte_timeout(loop_name: str) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async def scenario() -> None:
        async with RawServer(never_answer) as server, UpstreamPool() as pool:
            with pytest.raises(FirstByteTimeout):
                await pool.request("GET", server.url, [], first_byte_timeout_s=0.3)
            assert pool.statistics().open == 0

    run_on_loop(loop_name, scenario)


def test_a_body_that_stalls_gives_read_timeout(loop_name: str) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await asyncio.sleep(30)

    async def scenario() -> None:
        async with RawServer(stall) as server, UpstreamPool(read_idle_timeout_s=0.3) as pool:
            resp = await pool.request("GET", server.url, [])
            with pytest.raises(ReadTimeout):
                await resp.read()
            assert pool.statistics().open == 0

    run_on_loop(loop_name, scenario)


def test_a_server_closing_mid_body_gives_remote_protocol_error(loop_name: str) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async def scenario() -> None:
        async with RawServer(cut) as server, UpstreamPool() as pool:
            resp = await pool.request("GET", server.url, [])
            with pytest.raises(RemoteProtocolError):
                await resp.read()
            assert pool.statistics().open == 0

    run_on_loop(loop_name, scenario)


def test_garbage_instead_of_http_gives_remote_protocol_error(loop_name: str) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await asyncio.sleep(30)

    async def scenario() -> None:
        async with RawServer(garbage) as server, UpstreamPool() as pool:
            with pytest.raises(RemoteProtocolError):
                await pool.request("GET", server.url, [])
            assert pool.statistics().open == 0

    run_on_loop(loop_name, scenario)


def test_bad_urls_and_headers_raise_invalid_request(loop_name: str) -> None:
    async def scenario() -> None:
        async with RawServer(echo_forever) as server, UpstreamPool() as pool:
            for url in ("ftp://h/", "/relative", "http://:80/", "http://h:99999/", "http://u@h/"):
                with pytest.raises(InvalidRequest):
                    await pool.request("GET", url, [])
            with pytest.raises(InvalidRequest):
                await pool.request("GET", server.url, [("bad header", "x")])
            with pytest.raises(InvalidRequest):
                await pool.request("GET", server.url, [("x", "line\r\nbreak")])
            assert pool.statistics().open == 0
            assert await (await pool.request("GET", server.url, [])).read() == b"GET / HTTP/1.1|"
        with pytest.raises(InvalidRequest, match="closed"):
            await pool.request("GET", server.url, [])

    run_on_loop(loop_name, scenario)


# -- early close and cancellation ------------------------------------------------------


async def _slow_stream_server(closed: asyncio.Event):
    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\ntick\n\r\n")
        send_more = asyncio.create_task(_tick_forever(writer))
        try:
            if await wait_closed_by_peer(reader, timeout_s=20):
                closed.set()
        finally:
            send_more.cancel()
            await asyncio.gather(send_more, return_exceptions=True)

    return RawServer(stream)


async def _tick_forever(writer: asyncio.StreamWriter) -> None:
    while True:
        await asyncio.sleep(0.05)
        writer.write(b"5\r\ntick\n\r\n")


def test_closing_a_response_early_closes_its_connection(loop_name: str) -> None:
    async def scenario() -> None:
        closed = asyncio.Event()
        async with await _slow_stream_server(closed) as server, UpstreamPool() as pool:
            async with await pool.request("GET", server.url, []) as resp:
                async for chunk in resp.iter_bytes():
                    assert chunk == b"tick\n"
                    break
            await asyncio.wait_for(closed.wait(), CLOSE_AT_ONCE_S)
            stats = pool.statistics()
            assert (stats.open, stats.in_use) == (0, 0)

    run_on_loop(loop_name, scenario)


def test_cancelling_the_consumer_closes_the_socket_at_once(loop_name: str) -> None:
    async def scenario() -> None:
        closed = asyncio.Event()
        reading = asyncio.Event()
        async with await _slow_stream_server(closed) as server, UpstreamPool() as pool:

            async def consume() -> None:
                resp = await pool.request("GET", server.url, [])
                async for _ in resp.iter_bytes():
                    reading.set()

            consumer = asyncio.create_task(consume())
            await asyncio.wait_for(reading.wait(), 5)
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
            await asyncio.wait_for(closed.wait(), CLOSE_AT_ONCE_S)
            stats = pool.statistics()
            assert (stats.open, stats.in_use, stats.idle) == (0, 0, 0)

    run_on_loop(loop_name, scenario)


def test_cancelling_a_request_waiting_for_its_head_closes_the_socket(loop_name: str) -> None:
    async def scenario() -> None:
        closed = asyncio.Event()
        received = asyncio.Event()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            received.set()
            if await wait_closed_by_peer(reader, timeout_s=20):
                closed.set()

        async with RawServer(hold) as server, UpstreamPool() as pool:
            request = asyncio.create_task(pool.request("POST", server.url, [], b"{}"))
            # The request is out: the client now waits for the head.
            await asyncio.wait_for(received.wait(), 10)
            assert not request.done()
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await asyncio.wait_for(closed.wait(), CLOSE_AT_ONCE_S)
            stats = pool.statistics()
            assert (stats.open, stats.in_use) == (0, 0)

    run_on_loop(loop_name, scenario)


# -- TLS -------------------------------------------------------------------------------


def test_tls_with_a_custom_ca_file(loop_name: str, certs: Certificates) -> None:
    async def scenario() -> None:
        server_names: list[str | None] = []
        context = server_ssl_context(certs)
        context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)
        async with RawServer(echo_forever, context) as server, UpstreamPool() as pool:
            tls = TLSConfig(ca_file=certs.ca_file)
            for _ in range(2):
                resp = await pool.request("GET", server.url + "/a", [], tls=tls)
                assert await resp.read() == b"GET /a HTTP/1.1|"
            assert server.connections == 1
            resp = await pool.request("GET", f"https://localhost:{server.port}/", [], tls=tls)
            assert resp.status == 200
            await resp.aclose()
            assert "localhost" in server_names  # SNI is the URL's host
            with pytest.raises(ConnectError, match="certificate"):
                await pool.request(
                    "GET", server.url, [], tls=TLSConfig(ca_file=certs.other_ca_file)
                )
            with pytest.raises(ConnectError, match="certificate"):
                await pool.request("GET", server.url, [])  # system CAs do not know our CA
            with pytest.raises(ConnectError, match="ca_file"):
                await pool.request("GET", server.url, [], tls=TLSConfig(ca_file="/nonexistent.pem"))

    run_on_loop(loop_name, scenario)


def test_mutual_tls_needs_the_client_certificate(loop_name: str, certs: Certificates) -> None:
    async def scenario() -> None:
        context = server_ssl_context(certs, require_client_cert=True)
        async with RawServer(echo_forever, context) as server, UpstreamPool() as pool:
            with pytest.raises(UpstreamError):
                resp = await pool.request(
                    "GET", server.url, [], tls=TLSConfig(ca_file=certs.ca_file)
                )
                await resp.read()
            mtls = TLSConfig(certs.ca_file, certs.client_cert_file, certs.client_key_file)
            resp = await pool.request("GET", server.url + "/m", [], tls=mtls)
            assert await resp.read() == b"GET /m HTTP/1.1|"
            stats = pool.statistics()
            assert stats.open == 1 and stats.idle == 1

    run_on_loop(loop_name, scenario)


# -- big bodies, interim responses, idle chatter ---------------------------------------------


def test_large_bodies_cross_in_both_directions_intact(loop_name: str) -> None:
    request_body = bytes(range(256)) * 16384  # 4 MiB
    response_body = b"0123456789abcdef" * 262144  # 4 MiB

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, body = await read_request(reader)
            assert body == request_body
            writer.write(ok_response(response_body))
            await writer.drain()

    async def scenario() -> None:
        async with RawServer(big) as server, UpstreamPool() as pool:
            for _ in range(2):
                resp = await pool.request("PUT", server.url, [], request_body)
                received = bytearray()
                async for chunk in resp.iter_bytes():
                    received += chunk
                    await asyncio.sleep(0)  # a slowish consumer
                assert received == response_body
            assert server.connections == 1

    run_on_loop(loop_name, scenario)


def test_interim_1xx_responses_are_skipped(loop_name: str) -> None:
    async def continue_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok_response(b"final"))

    async def scenario() -> None:
        async with RawServer(continue_first) as server, UpstreamPool() as pool:
            for _ in range(2):
                resp = await pool.request("POST", server.url, [], b"x")
                assert resp.status == 200
                assert await resp.read() == b"final"
            assert server.connections == 1

    run_on_loop(loop_name, scenario)


def test_bytes_from_the_server_while_idle_retire_the_connection(loop_name: str) -> None:
    async def timeout_notice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok_response())
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
        await asyncio.sleep(30)

    async def scenario() -> None:
        async with RawServer(timeout_notice) as server, UpstreamPool() as pool:
            assert await (await pool.request("GET", server.url, [])).read() == b"ok"
            await wait_until(lambda: pool.statistics().open == 0, what="the chattering idle "
                             "connection retired")
            resp = await pool.request("GET", server.url, [])
            assert resp.status == 200 and await resp.read() == b"ok"
            assert server.connections == 2

    run_on_loop(loop_name, scenario)


def test_a_response_dropped_without_closing_frees_its_slot(loop_name: str) -> None:
    async def scenario() -> None:
        async with (
            RawServer(echo_forever) as server,
            UpstreamPool(max_connections_per_origin=1, connect_timeout_s=2) as pool,
        ):
            resp = await pool.request("GET", server.url, [])
            del resp  # never read nor closed: the pool must not leak the slot
            async with await pool.request("GET", server.url, []) as resp:
                assert await resp.read() == b"GET / HTTP/1.1|"

    run_on_loop(loop_name, scenario)


def test_a_connection_reset_while_the_body_is_still_going_out_gives_write_error(
    loop_name: str,
) -> None:
    async def reset_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST with most of the body unread

    async def scenario() -> None:
        async with RawServer(reset_after_head) as server, UpstreamPool() as pool:
            with pytest.raises(WriteError):
                await pool.request("POST", server.url, [], b"x" * (32 * 1024 * 1024))
            assert pool.statistics().open == 0

    run_on_loop(loop_name, scenario)
