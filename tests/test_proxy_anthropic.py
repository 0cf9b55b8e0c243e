"""Anthropic routes: native passthrough, /v1/messages routing, HEAD probes, auth.

In-process gateway and mock Anthropic upstream on the test's loop, so each
test can use its own configuration and read what the upstream received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from _proxy_helpers import start_proxy
from _sse_helpers import named_events
from harness.h1_trailers import post_json_h1
from upstreams.anthropic_mock import ProviderMockState, build_anthropic_mock
from upstreams.server import start_upstream, stop_upstream

from smartflow.config import AuthSettings, ModelConfig, Settings
from smartflow.proxy import ProxyContext

HELLO = [{"role": "user", "content": "Hello"}]


@dataclass
class Stack:
    url: str
    state: ProviderMockState
    context: ProxyContext
    client: httpx.AsyncClient


def _stack_fixture(api_key: str, master_key: str = ""):  # type: ignore[no-untyped-def]
    async def fixture() -> AsyncIterator[Stack]:
        state = ProviderMockState()
        upstream, port = await start_upstream(build_anthropic_mock(state))
        models = (
            ModelConfig(name="claude-test", provider="anthropic", model="claude-sonnet-4-5",
                        api_base=f"http://127.0.0.1:{port}", api_key=api_key),
            ModelConfig(name="mock-test", provider="mock", model="mock-gpt"),
        )
        server, url, context = await start_proxy(
            Settings(models=models, auth=AuthSettings(master_key=master_key)))
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                yield Stack(url, state, context, client)
        finally:
            await server.drain(2.0)
            await context.aclose()
            await stop_upstream(upstream)

    return pytest.fixture(fixture)


stack = _stack_fixture("sk-ant-test")
keyless_stack = _stack_fixture("")
locked_stack = _stack_fixture("", master_key="sk-master")


async def test_passthrough_keeps_the_callers_headers_and_swaps_in_the_configured_key(
        stack: Stack) -> None:
    response = await stack.client.post(
        "/anthropic/v1/messages?beta=true",
        content=b'{"model": "claude-sonnet-4-5",  "max_tokens": 20, "messages": '
                b'[{"role": "user", "content": "Hello"}]}',
        headers={"x-api-key": "caller-key", "anthropic-version": "2023-06-01",
                 "anthropic-beta": "context-1m-2025-08-07,fine-grained-tool-streaming",
                 "user-agent": "claude-cli/2.0.0 (external, cli)", "x-app": "cli",
                 "content-type": "application/json", "connection": "keep-alive"})
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"]
    received = stack.state.last
    assert received.path == "/v1/messages"
    assert received.query == {"beta": ["true"]}
    assert received.header("x-api-key") == "sk-ant-test"
    assert received.header("anthropic-version") == "2023-06-01"
    assert received.header("anthropic-beta") == "context-1m-2025-08-07,fine-grained-tool-streaming"
    assert received.header("user-agent") == "claude-cli/2.0.0 (external, cli)"
    assert received.header("x-app") == "cli"
    # untouched bodies pass byte for byte (note the two spaces)
    assert received.body == (b'{"model": "claude-sonnet-4-5",  "max_tokens": 20, "messages": '
                             b'[{"role": "user", "content": "Hello"}]}')
    assert response.headers["x-smartflow-provider"] == "anthropic"
    assert float(response.headers["x-smartflow-response-cost"]) > 0


async def test_a_name_the_catalog_does_not_know_goes_to_anthropic_on_its_prefix_only(
        stack: Stack) -> None:
    body = {"model": "team-claude-preview", "max_tokens": 20, "messages": HELLO}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    before = len(stack.state.requests)
    prefixed = await stack.client.post("/anthropic/v1/messages", json=body, headers=headers)
    assert prefixed.status_code == 200, prefixed.text
    assert stack.state.last.json["model"] == "team-claude-preview"  # sent as it came
    native = await stack.client.post("/v1/messages", json=body, headers=headers)
    assert native.status_code == 404
    assert native.json()["error"]["type"] == "not_found_error"
    assert len(stack.state.requests) == before + 1  # the 404 reached no upstream


async def test_the_one_million_suffix_is_stripped_from_the_model_name(stack: Stack) -> None:
    response = await stack.client.post(
        "/anthropic/v1/messages", json={"model": "claude-sonnet-4-5[1m]", "max_tokens": 20,
                                        "messages": HELLO},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert response.status_code == 200, response.text
    assert stack.state.last.json["model"] == "claude-sonnet-4-5"
    assert stack.state.last.json["messages"] == HELLO


async def test_a_passthrough_stream_is_relayed_with_a_usage_tap_and_one_upstream_call(
        stack: Stack) -> None:
    before = len(stack.state.requests)
    async with stack.client.stream(
            "POST", "/anthropic/v1/messages",
            json={"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
                  "messages": HELLO},
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}) as response:
        raw = await response.aread()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"] == "req_mock"
    names = [name for name, _ in named_events(raw)]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "ping" in names
    usage_in = named_events(raw)[0][1]["message"]["usage"]["input_tokens"]
    usage_out = next(d for n, d in named_events(raw) if n == "message_delta")["usage"][
        "output_tokens"]
    expected = (usage_in * 3.0 + usage_out * 15.0) / 1_000_000
    # nothing after the provider's last event
    assert raw.endswith(b'{"type":"message_stop"}\n\n')
    assert len(stack.state.requests) == before + 1
    answer = await post_json_h1(
        stack.url, "/anthropic/v1/messages",
        {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True, "messages": HELLO},
        headers=[("x-api-key", "k"), ("anthropic-version", "2023-06-01")])
    assert [name for name, _ in named_events(answer.body)] == names
    assert answer.body.endswith(b'{"type":"message_stop"}\n\n')
    assert float(answer.trailers["x-smartflow-response-cost"]) == pytest.approx(expected,
                                                                                 rel=1e-6)


async def test_head_probes_answer_200(stack: Stack) -> None:
    for path in ("/", "/anthropic", "/anthropic/", "/v1/messages", "/anthropic/v1/messages"):
        response = await stack.client.head(path)
        assert response.status_code == 200, path


async def test_v1_messages_routes_an_anthropic_model_natively(stack: Stack) -> None:
    response = await stack.client.post(
        "/v1/messages", json={"model": "claude-test", "max_tokens": 20, "messages": HELLO},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert response.status_code == 200, response.text
    assert stack.state.last.json["model"] == "claude-sonnet-4-5"  # the upstream id
    assert stack.state.last.header("x-api-key") == "sk-ant-test"


async def test_v1_messages_translates_for_other_providers_streaming_included(
        stack: Stack) -> None:
    before = len(stack.state.requests)
    response = await stack.client.post(
        "/v1/messages", json={"model": "mock-test", "max_tokens": 20, "messages": HELLO})
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["type"] == "message"
    assert message["content"][0]["text"].startswith("Mock response to: Hello")
    async with stack.client.stream("POST", "/v1/messages", json={
            "model": "mock-test", "max_tokens": 20, "stream": True,
            "messages": HELLO}) as streamed:
        events = named_events(await streamed.aread())
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "content_block_delta" in names
    assert len(stack.state.requests) == before  # the Anthropic upstream was not called


async def test_without_a_configured_key_the_callers_key_is_passed_through(
        keyless_stack: Stack) -> None:
    response = await keyless_stack.client.post(
        "/anthropic/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 20,
                                        "messages": HELLO},
        headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"})
    assert response.status_code == 200, response.text
    assert keyless_stack.state.last.header("x-api-key") == "sk-ant-test"


async def test_with_a_master_key_callers_must_present_it(locked_stack: Stack) -> None:
    client = locked_stack.client
    chat = {"model": "mock-test", "messages": HELLO}
    missing = await client.post("/v1/chat/completions", json=chat)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    wrong = await client.post("/v1/chat/completions", json=chat,
                              headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    for headers in ({"authorization": "Bearer sk-master"}, {"x-api-key": "sk-master"}):
        ok = await client.post("/v1/chat/completions", json=chat, headers=headers)
        assert ok.status_code == 200, ok.text
    anthropic_denied = await client.post("/v1/messages", json={
        "model": "mock-test", "max_tokens": 5, "messages": HELLO})
    assert anthropic_denied.status_code == 401
    assert anthropic_denied.json()["type"] == "error"
    assert anthropic_denied.json()["error"]["type"] == "authentication_error"


async def test_the_master_key_is_never_forwarded_to_anthropic(locked_stack: Stack) -> None:
    response = await locked_stack.client.post(
        "/anthropic/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 5,
                                        "messages": HELLO},
        headers={"x-api-key": "sk-master", "anthropic-version": "2023-06-01"})
    assert response.status_code == 401  # the mock wants its own key; ours never left
    assert locked_stack.state.last.header("x-api-key") is None
    assert response.json()["type"] == "error"


async def test_count_tokens_is_native_for_anthropic_and_a_marked_estimate_elsewhere(
        stack: Stack) -> None:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    body = {"messages": [{"role": "user", "content": "Count these few words, please."}]}
    native = await stack.client.post("/v1/messages/count_tokens", headers=headers,
                                     json={"model": "claude-test", **body})
    assert native.status_code == 200, native.text
    assert native.json()["input_tokens"] > 0
    assert stack.state.last.path == "/v1/messages/count_tokens"
    assert "x-smartflow-tokens-estimated" not in native.headers
    seen = len(stack.state.requests)
    estimated = await stack.client.post("/v1/messages/count_tokens", headers=headers,
                                        json={"model": "mock-test", **body})
    assert estimated.status_code == 200, estimated.text
    assert estimated.json()["input_tokens"] > 0
    assert estimated.headers["x-smartflow-tokens-estimated"] == "true"
    assert len(stack.state.requests) == seen  # nothing went upstream
