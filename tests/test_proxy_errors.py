"""Upstream failures become OpenAI-shaped errors: unreachable 502, slow 504, errors mapped."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest
from _proxy_helpers import start_proxy
from upstreams.openai_mock import build_openai_mock
from upstreams.server import start_upstream, stop_upstream
from upstreams.state import UpstreamState

from smartflow.config import ModelConfig, ProxySettings, Settings
from smartflow.proxy import ProxyContext

HELLO = [{"role": "user", "content": "Hello"}]
# Every call of the fixture's gateway runs under this first-byte timeout, so it
# must leave an in-process upstream room to answer on a loaded machine; the
# 504 test makes its upstream far slower than that.
FIRST_BYTE_TIMEOUT_S = 2.0


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[httpx.AsyncClient, UpstreamState, ProxyContext]]:
    state = UpstreamState(latency_s=0.0)
    upstream, port = await start_upstream(build_openai_mock(state))
    # Bound, never listening, held to the end: connections to it are refused,
    # and no other process can take the port meanwhile.
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{port}/v1"
    models = (
        ModelConfig(name="gpt-test", provider="openai", model="gpt-4o-mini", api_base=base,
                    api_key="sk-openai-test"),
        ModelConfig(name="bad-key", provider="openai", model="gpt-4o-mini", api_base=base,
                    api_key="sk-wrong"),
        ModelConfig(name="nowhere", provider="openai", model="gpt-4o-mini",
                    api_base=f"http://127.0.0.1:{refusing.getsockname()[1]}/v1", api_key="k"),
    )
    proxy = replace(ProxySettings(), first_byte_timeout=FIRST_BYTE_TIMEOUT_S)
    settings = Settings(models=models, proxy=proxy)
    server, url, context = await start_proxy(settings)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client, state, context
    finally:
        await server.drain(2.0)
        await context.aclose()
        await stop_upstream(upstream, 0.5)
        refusing.close()


def _error(response: httpx.Response) -> dict[str, object]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


async def test_an_unreachable_upstream_is_a_502(
        gateway: tuple[httpx.AsyncClient, UpstreamState, ProxyContext]) -> None:
    client, _state, _context = gateway
    response = await client.post("/v1/chat/completions",
                                 json={"model": "nowhere", "messages": HELLO})
    assert response.status_code == 502
    assert _error(response)["code"] == "upstream_unavailable"
    assert response.headers["x-smartflow-provider"] == "openai"


async def test_an_upstream_slower_than_first_byte_timeout_is_a_504(
        gateway: tuple[httpx.AsyncClient, UpstreamState, ProxyContext]) -> None:
    client, state, context = gateway
    state.latency_s = FIRST_BYTE_TIMEOUT_S * 10  # also past the client's own 10 s timeout
    response = await client.post("/v1/chat/completions",
                                 json={"model": "gpt-test", "messages": HELLO})
    assert response.status_code == 504
    assert _error(response)["type"] == "timeout_error"
    assert context.pool.statistics().in_use == 0


async def test_an_upstream_401_keeps_its_status_in_openai_shape(
        gateway: tuple[httpx.AsyncClient, UpstreamState, ProxyContext]) -> None:
    client, _state, _context = gateway
    response = await client.post("/v1/chat/completions",
                                 json={"model": "bad-key", "messages": HELLO, "stream": True})
    assert response.status_code == 401
    assert _error(response)["message"]


@pytest.mark.parametrize("status", [400, 403, 404, 500, 503])
async def test_upstream_error_statuses_pass_through(
        gateway: tuple[httpx.AsyncClient, UpstreamState, ProxyContext], status: int) -> None:
    client, _state, _context = gateway
    response = await client.post("/v1/chat/completions",
                                 json={"model": f"openai/fail-{status}", "messages": HELLO})
    assert response.status_code == status
    assert f"Injected failure {status}" in str(_error(response)["message"])


async def test_non_streamed_bytes_are_the_upstream_bytes_and_carry_the_cost(
        gateway: tuple[httpx.AsyncClient, UpstreamState, ProxyContext]) -> None:
    client, _state, _context = gateway
    response = await client.post("/v1/chat/completions",
                                 json={"model": "gpt-test", "messages": HELLO})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "gpt-4o-mini"  # the upstream's id, as OpenAI answers
    usage = body["usage"]
    expected = (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1e6
    assert float(response.headers["x-smartflow-response-cost"]) == pytest.approx(expected)
    assert "x-smartflow-response-cost-final" not in response.headers
