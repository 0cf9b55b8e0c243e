"""POST /v1/responses and its stored answers, through an in-process gateway.

Three upstreams: a recording OpenAI upstream (native relay to its
/v1/responses), a mock Anthropic upstream and a mock Gemini upstream (both
translated through the hub model). Stored answers live in a real Redis;
two gateway contexts on one Redis stand for two workers or nodes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
from _proxy_helpers import start_proxy
from _sse_helpers import named_events
from upstreams.anthropic_mock import ProviderMockState, build_anthropic_mock
from upstreams.gemini_mock import build_gemini_mock
from upstreams.recording_anthropic import RequestLog
from upstreams.recording_openai import build_recording_openai
from upstreams.server import start_upstream, stop_upstream
from upstreams.state import UpstreamState

from smartflow.config import ModelConfig, Settings
from smartflow.http.transport import HTTPServer
from smartflow.proxy import ProxyContext
from smartflow.store.fast_client import StoreClient

NATIVE_REPLY = "Native answer from the recording upstream."
PROVIDERS = {"claude": "anthropic", "gem": "gemini", "mock": "mock"}


@dataclass
class Gateway:
    url: str
    server: HTTPServer
    context: ProxyContext
    client: httpx.AsyncClient


@dataclass
class Stack:
    gateways: list[Gateway]
    openai_log: RequestLog
    anthropic: ProviderMockState

    @property
    def client(self) -> httpx.AsyncClient:
        return self.gateways[0].client


async def _gateway(settings: Settings, store: StoreClient) -> Gateway:
    server, url, context = await start_proxy(settings, store=store)
    return Gateway(url, server, context, httpx.AsyncClient(base_url=url, timeout=10))


@pytest.fixture
async def stack(store_client: StoreClient) -> AsyncIterator[Stack]:
    openai_log = RequestLog()
    anthropic = ProviderMockState()
    openai_up, openai_port = await start_upstream(build_recording_openai(openai_log,
                                                                         NATIVE_REPLY))
    anthropic_up, anthropic_port = await start_upstream(build_anthropic_mock(anthropic))
    gemini_up, gemini_port = await start_upstream(build_gemini_mock(UpstreamState()))
    models = (
        ModelConfig(name="gpt-native", provider="openai", model="gpt-5",
                    api_base=f"http://127.0.0.1:{openai_port}/v1", api_key="sk-openai-up"),
        ModelConfig(name="claude", provider="anthropic", model="claude-sonnet-4-5",
                    api_base=f"http://127.0.0.1:{anthropic_port}", api_key="sk-ant-test"),
        ModelConfig(name="gem", provider="gemini", model="gemini-2.5-flash",
                    api_base=f"http://127.0.0.1:{gemini_port}/v1beta", api_key="gemini-test-key"),
        ModelConfig(name="mock", provider="mock", model="mock-gpt"),
    )
    settings = Settings(models=models)
    gateways = [await _gateway(settings, store_client), await _gateway(settings, store_client)]
    try:
        yield Stack(gateways, openai_log, anthropic)
    finally:
        for gateway in gateways:
            await gateway.client.aclose()
            await gateway.server.drain(2.0)
            await gateway.context.aclose()
        for upstream in (openai_up, anthropic_up, gemini_up):
            await stop_upstream(upstream)


def output_text(response: dict) -> str:
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


@pytest.mark.parametrize("model", ["claude", "gem", "mock"])
async def test_a_plain_response_from_a_translated_provider(stack: Stack, model: str) -> None:
    answer = await stack.client.post("/v1/responses", json={
        "model": model, "input": "Hello there", "instructions": "Be brief.",
        "max_output_tokens": 50})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] == "completed"
    assert body["model"] == model
    assert output_text(body)
    usage = body["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert answer.headers["x-smartflow-provider"] == PROVIDERS[model]


async def test_instructions_and_input_reach_anthropic_as_system_and_user(stack: Stack) -> None:
    answer = await stack.client.post("/v1/responses", json={
        "model": "claude", "instructions": "Answer in French.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]})
    assert answer.status_code == 200, answer.text
    sent = stack.anthropic.last.json
    assert sent["system"] in ("Answer in French.",
                              [{"type": "text", "text": "Answer in French."}])
    assert sent["messages"][-1]["role"] == "user"
    assert "Hi" in orjson.dumps(sent["messages"][-1]["content"]).decode()
    assert output_text(answer.json()) == "You said: Hi"


async def test_a_streamed_translated_response_is_the_full_typed_event_sequence(
        stack: Stack) -> None:
    answer = await stack.client.post("/v1/responses", json={
        "model": "claude", "input": "Stream this please", "stream": True})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = named_events(answer.content)
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[1] == "response.in_progress"
    assert names[-1] == "response.completed"
    for expected in ("response.output_item.added", "response.content_part.added",
                     "response.output_text.delta", "response.output_item.done"):
        assert expected in names
    assert all(data["type"] == name for name, data in events)
    numbers = [data["sequence_number"] for _, data in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    text = "".join(data["delta"] for name, data in events
                   if name == "response.output_text.delta")
    assert text == "You said: Stream this please"
    completed = events[-1][1]["response"]
    assert output_text(completed) == text
    assert completed["usage"]["output_tokens"] > 0


async def test_function_tools_are_called_and_the_result_goes_back(stack: Stack) -> None:
    tool = {"type": "function", "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}
    first = await stack.client.post("/v1/responses", json={
        "model": "claude", "input": "Weather in Paris?", "tools": [tool]})
    assert first.status_code == 200, first.text
    calls = [item for item in first.json()["output"] if item["type"] == "function_call"]
    assert len(calls) == 1 and calls[0]["name"] == "get_weather"
    assert isinstance(orjson.loads(calls[0]["arguments"]), dict)
    sent_tools = stack.anthropic.last.json["tools"]
    assert sent_tools[0]["name"] == "get_weather"
    second = await stack.client.post("/v1/responses", json={
        "model": "claude", "tools": [tool], "previous_response_id": first.json()["id"],
        "input": [{"type": "function_call_output", "call_id": calls[0]["call_id"],
                   "output": "sunny, 21C"}]})
    assert second.status_code == 200, second.text
    assert output_text(second.json()) == "The tool returned: sunny, 21C"
    messages = stack.anthropic.last.json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]


async def test_a_chain_continues_on_another_gateway_sharing_the_store(stack: Stack) -> None:
    first = await stack.gateways[0].client.post("/v1/responses", json={
        "model": "claude", "input": "My name is Ada."})
    assert first.status_code == 200, first.text
    second = await stack.gateways[1].client.post("/v1/responses", json={
        "model": "claude", "input": "What is my name?",
        "previous_response_id": first.json()["id"]})
    assert second.status_code == 200, second.text
    messages = stack.anthropic.last.json["messages"]
    flat = orjson.dumps(messages).decode()
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "My name is Ada." in flat and "You said: My name is Ada." in flat
    assert "What is my name?" in flat
    assert second.json()["previous_response_id"] == first.json()["id"]


async def test_get_input_items_and_delete_a_stored_response(stack: Stack) -> None:
    created = await stack.client.post("/v1/responses", json={
        "model": "mock", "input": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"}]})
    assert created.status_code == 200, created.text
    response_id = created.json()["id"]
    other = stack.gateways[1].client
    got = await other.get(f"/v1/responses/{response_id}")
    assert got.status_code == 200 and got.json() == created.json()
    items = await other.get(f"/v1/responses/{response_id}/input_items?order=asc")
    assert items.status_code == 200, items.text
    page = items.json()
    assert page["object"] == "list" and page["has_more"] is False
    assert [orjson.dumps(item["content"]).decode().count(word)
            for item, word in zip(page["data"], ("one", "two"), strict=True)] == [1, 1]
    limited = (await other.get(f"/v1/responses/{response_id}/input_items?limit=1")).json()
    assert limited["has_more"] is True and len(limited["data"]) == 1
    bad = await other.get(f"/v1/responses/{response_id}/input_items?limit=0")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
    deleted = await other.delete(f"/v1/responses/{response_id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": response_id, "object": "response", "deleted": True}
    gone = await stack.client.get(f"/v1/responses/{response_id}")
    assert gone.status_code == 404
    assert gone.json()["error"]["type"] == "invalid_request_error"


async def test_store_false_keeps_nothing(stack: Stack) -> None:
    created = await stack.client.post("/v1/responses", json={
        "model": "mock", "input": "private", "store": False})
    assert created.status_code == 200, created.text
    assert (await stack.client.get(f"/v1/responses/{created.json()['id']}")).status_code == 404
    chained = await stack.client.post("/v1/responses", json={
        "model": "claude", "input": "again", "previous_response_id": created.json()["id"]})
    assert chained.status_code == 404
    assert chained.json()["error"]["param"] == "previous_response_id"


async def test_hosted_tools_are_dropped_unless_forced(stack: Stack) -> None:
    dropped = await stack.client.post("/v1/responses", json={
        "model": "claude", "input": "Hello", "tools": [{"type": "web_search"}]})
    assert dropped.status_code == 200, dropped.text
    assert not stack.anthropic.last.json.get("tools")
    forced = await stack.client.post("/v1/responses", json={
        "model": "claude", "input": "Hello", "tools": [{"type": "web_search"}],
        "tool_choice": {"type": "web_search"}})
    assert forced.status_code == 400, forced.text
    error = forced.json()["error"]
    assert error["code"] == "unsupported_hosted_tool" and "web_search" in error["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "no model"}, "model"),
    ({"model": "mock", "input": 42}, "input"),
    ({"model": "mock", "input": "x", "stream": "yes"}, "stream"),
])
async def test_bad_requests_get_openai_shaped_400s(stack: Stack, body: dict, param: str) -> None:
    answer = await stack.client.post("/v1/responses", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


async def test_malformed_json_is_a_400_and_the_gateway_keeps_serving(stack: Stack) -> None:
    answer = await stack.client.post("/v1/responses", content=b"{not json",
                                     headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    again = await stack.client.post("/v1/responses", json={"model": "mock", "input": "ok"})
    assert again.status_code == 200


# -- native relay to an OpenAI upstream ----------------------------------------------


async def test_an_openai_deployment_gets_the_request_natively(stack: Stack) -> None:
    raw = (b'{"model": "gpt-native",  "input": "Hi", "reasoning": {"effort": "low"}, '
           b'"tools": [{"type": "web_search"}]}')
    answer = await stack.client.post("/v1/responses", content=raw, headers={
        "content-type": "application/json", "authorization": "Bearer caller-key",
        "openai-beta": "responses=experimental"})
    assert answer.status_code == 200, answer.text
    seen = stack.openai_log.of("POST", "/v1/responses")
    assert len(seen) == 1
    assert seen[0].json["model"] == "gpt-5"
    assert seen[0].json["reasoning"] == {"effort": "low"}
    assert seen[0].json["tools"] == [{"type": "web_search"}]  # the upstream runs it
    assert seen[0].header("authorization") == "Bearer sk-openai-up"
    assert seen[0].header("openai-beta") == "responses=experimental"
    assert output_text(answer.json()) == NATIVE_REPLY


async def test_a_native_stream_is_relayed_byte_for_byte(stack: Stack) -> None:
    answer = await stack.client.post("/v1/responses", json={
        "model": "gpt-native", "input": "Hi", "stream": True})
    assert answer.status_code == 200, answer.text
    events = named_events(answer.content)
    assert events[-1][0] == "response.completed"
    text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert text == NATIVE_REPLY
    assert float(answer.headers.get("x-smartflow-response-cost", "0")) >= 0


async def test_a_native_chain_is_expanded_from_the_store(stack: Stack) -> None:
    first = await stack.client.post("/v1/responses", json={"model": "gpt-native",
                                                           "input": "Remember 7."})
    assert first.status_code == 200, first.text
    second = await stack.gateways[1].client.post("/v1/responses", json={
        "model": "gpt-native", "input": "Which number?",
        "previous_response_id": first.json()["id"]})
    assert second.status_code == 200, second.text
    sent = stack.openai_log.of("POST", "/v1/responses")[-1].json
    assert "previous_response_id" not in sent
    flat = orjson.dumps(sent["input"]).decode()
    assert "Remember 7." in flat and NATIVE_REPLY in flat and "Which number?" in flat
    assert all("id" not in item for item in sent["input"] if isinstance(item, dict)
               and item.get("type") == "message" and item.get("role") == "assistant")
