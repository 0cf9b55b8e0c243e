"""The Gemini API's routes (/v1beta/models/{model}:{action}) through an in-process gateway.

A mock Gemini upstream gets requests natively; a mock Anthropic upstream and
the built-in mock provider get them translated through the hub model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
from _proxy_helpers import start_proxy
from upstreams.anthropic_mock import ProviderMockState, build_anthropic_mock
from upstreams.gemini_mock import build_gemini_mock
from upstreams.server import start_upstream, stop_upstream
from upstreams.state import UpstreamState

from smartflow.config import AuthSettings, ModelConfig, Settings
from smartflow.proxy import ProxyContext

MASTER = "sk-master-gemini-routes"
HELLO = {"contents": [{"role": "user", "parts": [{"text": "Hello Gemini"}]}]}
WEATHER_TOOL = {"functionDeclarations": [{
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}},
                   "required": ["city"]}}]}


@dataclass
class Stack:
    client: httpx.AsyncClient
    gemini: UpstreamState
    anthropic: ProviderMockState
    context: ProxyContext


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    gemini = UpstreamState()
    anthropic = ProviderMockState()
    gemini_up, gemini_port = await start_upstream(build_gemini_mock(gemini))
    anthropic_up, anthropic_port = await start_upstream(build_anthropic_mock(anthropic))
    models = (
        ModelConfig(name="gem", provider="gemini", model="gemini-2.5-flash",
                    api_base=f"http://127.0.0.1:{gemini_port}/v1beta", api_key="gemini-test-key"),
        ModelConfig(name="claude", provider="anthropic", model="claude-sonnet-4-5",
                    api_base=f"http://127.0.0.1:{anthropic_port}", api_key="sk-ant-test"),
        ModelConfig(name="mock", provider="mock", model="mock-gpt"),
    )
    server, url, context = await start_proxy(
        Settings(models=models, auth=AuthSettings(master_key=MASTER)))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10,
                                     headers={"x-goog-api-key": MASTER}) as client:
            yield Stack(client, gemini, anthropic, context)
    finally:
        await server.drain(2.0)
        await context.aclose()
        await stop_upstream(gemini_up)
        await stop_upstream(anthropic_up)


def frames(raw: bytes) -> list[dict]:
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                out.append(orjson.loads(line[6:]))
    return out


def text_of(answer: dict) -> str:
    return "".join(part.get("text", "") for candidate in answer.get("candidates", [])
                   for part in candidate["content"]["parts"])


async def test_a_gemini_deployment_gets_the_body_byte_for_byte_with_its_own_key(
        stack: Stack) -> None:
    raw = b'{"contents": [{"role": "user",  "parts": [{"text": "Hello Gemini"}]}]}'
    answer = await stack.client.post("/v1beta/models/gem:generateContent", content=raw,
                                     headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    seen = stack.gemini.last
    assert seen.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert seen.body == raw
    assert seen.header("x-goog-api-key") == "gemini-test-key"
    assert MASTER not in orjson.dumps(seen.headers).decode()
    body = answer.json()
    assert text_of(body) and body["usageMetadata"]["totalTokenCount"] > 0
    assert answer.headers["x-smartflow-provider"] == "gemini"


async def test_a_native_stream_comes_back_as_sse(stack: Stack) -> None:
    answer = await stack.client.post("/v1beta/models/gem:streamGenerateContent?alt=sse",
                                     json=HELLO)
    assert answer.status_code == 200, answer.text
    assert stack.gemini.last.query.get("alt") == ["sse"]
    chunks = frames(answer.content)
    assert len(chunks) >= 1 and chunks[-1]["usageMetadata"]["totalTokenCount"] > 0
    assert "".join(text_of(chunk) for chunk in chunks)


@pytest.mark.parametrize(("model", "version"), [("claude", "v1beta"), ("mock", "v1beta"),
                                              ("claude", "v1")])
async def test_another_provider_answers_in_gemini_shape(stack: Stack, model: str,
                                                        version: str) -> None:
    answer = await stack.client.post(f"/{version}/models/{model}:generateContent", json={
        **HELLO, "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 40, "temperature": 0.2}})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    candidate = body["candidates"][0]
    assert candidate["content"]["role"] == "model"
    assert candidate["finishReason"] in ("STOP", "MAX_TOKENS")
    assert text_of(body)
    usage = body["usageMetadata"]
    assert usage["promptTokenCount"] > 0 and usage["candidatesTokenCount"] > 0
    if model == "claude":
        sent = stack.anthropic.last.json
        assert sent["max_tokens"] == 40 and sent["temperature"] == 0.2
        assert "Be brief." in orjson.dumps(sent["system"]).decode()
        assert text_of(body) == "You said: Hello Gemini"


async def test_a_translated_stream_is_gemini_sse(stack: Stack) -> None:
    answer = await stack.client.post(
        "/v1beta/models/claude:streamGenerateContent?alt=sse", json=HELLO)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    chunks = frames(answer.content)
    assert "".join(text_of(chunk) for chunk in chunks) == "You said: Hello Gemini"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] > 0


async def test_function_calling_round_trip_through_anthropic(stack: Stack) -> None:
    first = await stack.client.post("/v1beta/models/claude:generateContent", json={
        "contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}],
        "tools": [WEATHER_TOOL]})
    assert first.status_code == 200, first.text
    parts = first.json()["candidates"][0]["content"]["parts"]
    call = next(part["functionCall"] for part in parts if "functionCall" in part)
    assert call["name"] == "get_weather" and isinstance(call["args"], dict)
    tools = stack.anthropic.last.json["tools"]
    assert tools[0]["name"] == "get_weather"
    assert tools[0]["input_schema"]["properties"]["city"]["type"] == "string"
    second = await stack.client.post("/v1beta/models/claude:generateContent", json={
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
            {"role": "model", "parts": [{"functionCall": call}]},
            {"role": "user", "parts": [{"functionResponse": {
                "name": "get_weather", "response": {"forecast": "sunny"}}}]}],
        "tools": [WEATHER_TOOL]})
    assert second.status_code == 200, second.text
    assert "sunny" in text_of(second.json())


async def test_count_tokens_native_and_estimated(stack: Stack) -> None:
    native = await stack.client.post("/v1beta/models/gem:countTokens", json=HELLO)
    assert native.status_code == 200, native.text
    assert native.json()["totalTokens"] > 0
    assert "x-smartflow-tokens-estimated" not in native.headers
    estimated = await stack.client.post("/v1beta/models/claude:countTokens", json=HELLO)
    assert estimated.status_code == 200, estimated.text
    assert estimated.json()["totalTokens"] > 0
    assert estimated.headers["x-smartflow-tokens-estimated"] == "true"


async def test_the_key_may_come_as_a_query_parameter(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=str(stack.client.base_url), timeout=10) as bare:
        ok = await bare.post(f"/v1beta/models/mock:generateContent?key={MASTER}", json=HELLO)
        assert ok.status_code == 200, ok.text
        wrong = await bare.post("/v1beta/models/mock:generateContent?key=nope", json=HELLO)
        assert wrong.status_code == 401
        assert wrong.json()["error"]["status"] == "UNAUTHENTICATED"
        missing = await bare.post("/v1beta/models/mock:generateContent", json=HELLO)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == 401


@pytest.mark.parametrize(("path", "body", "status", "google_status"), [
    ("/v1beta/models/mock:generateContent", {"contents": "nope"}, 400, "INVALID_ARGUMENT"),
    ("/v1beta/models/mock:embedEverything", HELLO, 404, "NOT_FOUND"),
    ("/v1beta/models/unknown-model:generateContent", HELLO, 404, "NOT_FOUND"),
])
async def test_errors_are_in_googles_shape(stack: Stack, path: str, body: dict, status: int,
                                          google_status: str) -> None:
    answer = await stack.client.post(path, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == status and error["status"] == google_status and error["message"]


async def test_malformed_json_is_a_google_400(stack: Stack) -> None:
    answer = await stack.client.post("/v1beta/models/mock:generateContent", content=b"{",
                                     headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_an_upstream_error_is_answered_in_googles_shape(stack: Stack) -> None:
    stack.anthropic.fail_next = (529, "overloaded")
    answer = await stack.client.post("/v1beta/models/claude:generateContent", json=HELLO)
    assert answer.status_code >= 500, answer.text
    assert answer.json()["error"]["status"] in ("UNAVAILABLE", "INTERNAL")


async def test_googles_ways_of_sending_a_key_are_the_gemini_apis_only(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=str(stack.client.base_url), timeout=10) as bare:
        chat = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
        in_query = await bare.post(f"/v1/chat/completions?key={MASTER}", json=chat)
        assert in_query.status_code == 401
        in_header = await bare.post("/v1/chat/completions", json=chat,
                                    headers={"x-goog-api-key": MASTER})
        assert in_header.status_code == 401
        bearer = await bare.post("/v1/chat/completions", json=chat,
                                 headers={"authorization": f"Bearer {MASTER}"})
        assert bearer.status_code == 200, bearer.text
