"""The relay through a real (in-process) gateway server and a real upstream server.

Both servers run on the test's loop, so the test can look inside: the
gateway's upstream pool statistics and the tasks left on the loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import orjson
import pytest
from harness.h1_trailers import post_json_h1
from harness.waiting import wait_until
from upstreams.openai_mock import build_openai_mock
from upstreams.server import start_upstream, stop_upstream
from upstreams.state import UpstreamState

from smartflow.config import ModelConfig, ProxySettings, ServerSettings, Settings
from smartflow.http.request import Request
from smartflow.http.response import StreamingResponse
from smartflow.http.router import Router
from smartflow.http.transport import HTTPServer
from smartflow.proxy import ProxyContext, build_proxy_context, register_proxy_routes

# Upstream bytes split mid-event and mid-line, CRLF framing in one event:
# the client must get exactly these bytes.
ODD_CHUNKS = [
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role"',
    (b':"assistant","content":"Hel"},"finish_reason":null}]}\n\ndata: {"id":"c1","object":"chat'
     b'.completion.chunk","choices":[{"index":0,"delta":{"content":"lo \\u00e9"},'
     b'"finish_reason":null}]}\r\n\r\n'),
    (b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
     b'"finish_reason":"stop"}]}\n'),
    b'\n',
    (b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":5,'
     b'"completion_tokens":3,"total_tokens":8}}\n\ndata: [DONE]\n\n'),
]


CUSTOM_COST_USD = (5 * 1.0 + 3 * 2.0) / 1e6


class Custom:
    """A tiny upstream whose stream the test controls."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.endless = False

    def router(self) -> Router:
        router = Router()

        async def chat(request: Request) -> StreamingResponse:
            await request.body()

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    if self.endless:
                        count = 0
                        while True:
                            count += 1
                            yield b'data: {"choices":[{"index":0,"delta":{"content":"tick"}}]}\n\n'
                            await asyncio.sleep(0.02)
                    for piece in ODD_CHUNKS:
                        yield piece
                        await asyncio.sleep(0.01)
                finally:
                    self.closed.set()

            return StreamingResponse(chunks(), 200, [("x-request-id", "req_up_1"),
                                                     ("x-ratelimit-remaining-requests", "99")])

        router.add("POST", "/v1/chat/completions", chat)
        return router


async def start_gateway(settings: Settings) -> tuple[HTTPServer, str, ProxyContext]:
    router = Router()
    context = build_proxy_context(settings)
    register_proxy_routes(router, context)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = HTTPServer(router, ServerSettings(port=0, access_log=False))
    await server.start(sock)
    return server, f"http://127.0.0.1:{port}", context


def settings_for(base_url: str, **proxy: float) -> Settings:
    models = (
        ModelConfig(name="custom", provider="openai", model="gpt-4o-mini",
                    api_base=base_url + "/v1", api_key="sk-openai-test",
                    input_price_per_mtok=1.0, output_price_per_mtok=2.0),
    )
    return Settings(models=models, proxy=replace(ProxySettings(), **proxy))


@pytest.fixture
async def custom_stack() -> AsyncIterator[tuple[Custom, str, ProxyContext]]:
    custom = Custom()
    upstream, port = await start_upstream(custom.router())
    server, url, context = await start_gateway(settings_for(f"http://127.0.0.1:{port}"))
    try:
        yield custom, url, context
    finally:
        await server.drain(2.0)
        await context.aclose()
        await stop_upstream(upstream)


async def test_stream_bytes_reach_the_client_exactly_as_the_upstream_sent_them(
        custom_stack: tuple[Custom, str, ProxyContext]) -> None:
    _custom, url, context = custom_stack
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
            "POST", url + "/v1/chat/completions", json={
                "model": "custom", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as response:
        raw = b"".join([piece async for piece in response.aiter_raw()])
        headers = response.headers
    # Not one byte more: the final cost travels as an HTTP trailer, not in the stream.
    assert raw == b"".join(ODD_CHUNKS)
    assert headers["x-smartflow-provider"] == "openai"
    assert headers["trailer"] == "x-smartflow-response-cost"
    assert "x-smartflow-response-cost" not in headers
    assert headers["x-request-id"] == "req_up_1"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["x-smartflow-call-id"]
    assert context.pool.statistics().in_use == 0


async def test_the_final_cost_of_a_stream_arrives_as_an_http_trailer(
        custom_stack: tuple[Custom, str, ProxyContext]) -> None:
    _custom, url, _context = custom_stack
    answer = await post_json_h1(url, "/v1/chat/completions", {
        "model": "custom", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status == 200
    assert answer.body == b"".join(ODD_CHUNKS)
    assert answer.headers["trailer"] == "x-smartflow-response-cost"
    # 5 prompt + 3 completion tokens at the configured prices of "custom"
    cost = float(answer.trailers["x-smartflow-response-cost"])
    assert cost == pytest.approx(CUSTOM_COST_USD)


async def test_a_client_disconnect_closes_the_upstream_connection_at_once(
        custom_stack: tuple[Custom, str, ProxyContext]) -> None:
    custom, url, context = custom_stack
    custom.endless = True
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
            "POST", url + "/v1/chat/completions", json={
                "model": "custom", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as response:
        seen = b""
        async for piece in response.aiter_raw():
            seen += piece
            if seen.count(b"tick") >= 3:
                break
    # leaving the block closed the client's connection mid-stream
    await asyncio.wait_for(custom.closed.wait(), 10)  # the upstream saw its connection close
    await wait_until(lambda: context.pool.statistics().in_use == 0
                     and context.pool.statistics().open == 0, what="upstream connection released")
    assert context.pool.statistics().in_use == 0
    assert context.pool.statistics().open == 0  # closed, not pooled


@pytest.fixture
async def mock_stack() -> AsyncIterator[tuple[UpstreamState, str, ProxyContext]]:
    state = UpstreamState()
    upstream, port = await start_upstream(build_openai_mock(state))
    settings = settings_for(f"http://127.0.0.1:{port}", stream_keepalive_interval=0.05,
                            stream_idle_timeout=0.6)
    settings = replace(settings, models=settings.models + tuple(
        ModelConfig(name=name, provider="openai", model=name,
                    api_base=f"http://127.0.0.1:{port}/v1", api_key="sk-openai-test")
        for name in ("die-stream", "stall-stream")))
    server, url, context = await start_gateway(settings)
    try:
        yield state, url, context
    finally:
        await server.drain(2.0)
        await context.aclose()
        await stop_upstream(upstream, 0.5)


async def test_by_default_a_silent_upstream_gets_no_keep_alive_bytes_only_the_idle_error() -> None:
    state = UpstreamState()
    upstream, port = await start_upstream(build_openai_mock(state))
    defaults = ProxySettings()
    assert defaults.stream_keepalive_interval == 0
    settings = replace(Settings(), proxy=replace(defaults, stream_idle_timeout=0.6), models=(
        ModelConfig(name="stall-stream", provider="openai", model="stall-stream",
                    api_base=f"http://127.0.0.1:{port}/v1", api_key="sk-openai-test"),))
    server, url, context = await start_gateway(settings)
    try:
        text = await asyncio.wait_for(_stream_text(url, "stall-stream"), 15)
    finally:
        await server.drain(2.0)
        await context.aclose()
        await stop_upstream(upstream, 0.5)
    events = text.split("\n\n")
    assert not [e for e in events if e.startswith(":")], "comment bytes the provider never sent"
    assert orjson.loads(events[-2][6:])["error"]["code"] == "stream_idle_timeout"


async def _stream_text(url: str, model: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
            "POST", url + "/v1/chat/completions", json={
                "model": model, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as response:
        assert response.status_code == 200
        return (await response.aread()).decode()


async def test_an_upstream_dying_mid_stream_ends_the_stream_with_an_sse_error_event(
        mock_stack: tuple[UpstreamState, str, ProxyContext]) -> None:
    _state, url, context = mock_stack
    text = await asyncio.wait_for(_stream_text(url, "die-stream"), 15)
    events = [e for e in text.split("\n\n") if e.startswith("data: ")]
    error = orjson.loads(events[-1][6:])
    assert "error" in error
    assert "[DONE]" not in text
    assert context.pool.statistics().in_use == 0


async def test_a_silent_upstream_gets_keep_alives_then_an_idle_timeout_error(
        mock_stack: tuple[UpstreamState, str, ProxyContext]) -> None:
    _state, url, context = mock_stack
    text = await asyncio.wait_for(_stream_text(url, "stall-stream"), 15)
    assert ": keep-alive\n\n" in text
    events = [e for e in text.split("\n\n") if e.startswith("data: ")]
    assert orjson.loads(events[-1][6:])["error"]["code"] == "stream_idle_timeout"
    await wait_until(lambda: context.pool.statistics().in_use == 0,
                     what="upstream connection released")
