"""The translating adapters (Anthropic, Gemini, Cohere) and the Anthropic inbound path.

Sans-IO tests check the wire shapes; the end-to-end tests send what an adapter
builds to a mock upstream that checks requests the way the real API does
(auth, tool call/result pairing, context window) and decode its real framing.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from upstreams.anthropic_mock import ProviderMockState, build_anthropic_mock
from upstreams.cohere_mock import build_cohere_mock
from upstreams.gemini_mock import build_gemini_mock
from upstreams.server import start_upstream, stop_upstream

from smartflow.dialects import openai as openai_dialect
from smartflow.gateway_error import GatewayError
from smartflow.http import Router
from smartflow.providers import get_adapter
from smartflow.providers.anthropic import (
    AnthropicStreamDecoder,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
)
from smartflow.providers.anthropic_inbound import (
    AnthropicStreamEncoder,
    anthropic_error_from_provider_error,
    anthropic_request_to_openai,
    estimate_input_tokens,
    openai_error_to_anthropic,
    openai_response_to_anthropic,
)
from smartflow.providers.base import ProviderError, Target, UnsupportedOperation
from smartflow.providers.cohere import openai_to_cohere_request
from smartflow.providers.gemini import gemini_schema, openai_to_gemini_request
from smartflow.providers.sse import SSEParser


def openai_type(error: GatewayError) -> str:
    """The error `type` an OpenAI caller sees for this error."""
    return openai_dialect.error_object(error)["error"]["type"]

pytestmark = pytest.mark.timeout(30)

WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"], "additionalProperties": False}}}
TIME_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string"}}, "required": ["zone"]}}}

TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather and time in Paris?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_time", "arguments": '{"zone":"CET"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:00"},
    {"role": "developer", "content": "Answer in one line."},
    {"role": "user", "content": "Thanks!"},
]

PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()


def target(provider: str, api_base: str = "https://upstream.example", *, key: str = "k",
           model: str = "upstream-model", **options: Any) -> Target:
    return Target(public_name="public-model", provider=provider, model=model, api_base=api_base,
                  api_key=key, options=options)


def split_everywhere(decoder_factory: Callable[[], Any], body: bytes) -> None:
    """Feeding ``body`` whole and split at every byte boundary decodes identically."""
    whole_decoder = decoder_factory()
    expected = strip_created(whole_decoder.feed(body) + whole_decoder.close())
    assert expected
    for cut in range(1, len(body)):
        decoder = decoder_factory()
        got = decoder.feed(body[:cut]) + decoder.feed(body[cut:]) + decoder.close()
        assert strip_created(got) == expected, f"differs when split at byte {cut}"
    one_by_one = decoder_factory()
    got = [c for i in range(len(body)) for c in one_by_one.feed(body[i:i + 1])]
    assert strip_created(got + one_by_one.close()) == expected


def strip_created(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in chunk.items() if k != "created"} for chunk in chunks]


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What an OpenAI client accumulates from a stream (first choice)."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice["delta"]
            if delta.get("content"):
                text.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {"text": "".join(text), "tool_calls": [calls[i] for i in sorted(calls)],
            "finish_reason": finish, "usage": usage}


def anthropic_sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
                    for e in events)


# -- Anthropic: request ---------------------------------------------------------------------


def test_every_system_and_developer_message_goes_to_the_top_level_system_prompt() -> None:
    request = openai_to_anthropic_request({"messages": TOOL_CONVERSATION,
                                           "tools": [WEATHER_TOOL, TIME_TOOL]}, "claude")
    assert request["system"] == "You are terse.\n\nAnswer in one line."
    assert all(m["role"] in ("user", "assistant") for m in request["messages"])


def test_tool_calls_become_tool_use_blocks_and_results_one_user_turn() -> None:
    request = openai_to_anthropic_request({"messages": TOOL_CONVERSATION}, "claude")
    roles = [m["role"] for m in request["messages"]]
    assert roles == ["user", "assistant", "user"]
    assistant = request["messages"][1]["content"]
    assert assistant[0] == {"type": "text", "text": "Checking."}
    assert assistant[1] == {"type": "tool_use", "id": "call_1", "name": "get_weather",
                            "input": {"city": "Paris"}}
    answer = request["messages"][2]["content"]
    assert [b["type"] for b in answer] == ["tool_result", "tool_result", "text"]
    assert answer[0] == {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}
    assert answer[2] == {"type": "text", "text": "Thanks!"}


def test_tools_and_each_tool_choice_map_to_anthropic_shapes() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]}
    request = openai_to_anthropic_request(base, "claude")
    assert request["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                                 "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    expected = {"auto": {"type": "auto"}, "none": {"type": "none"},
                "required": {"type": "any"}}
    for choice, shape in expected.items():
        assert openai_to_anthropic_request(dict(base, tool_choice=choice),
                                           "claude")["tool_choice"] == shape
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert openai_to_anthropic_request(dict(base, tool_choice=named), "claude")[
        "tool_choice"] == {"type": "tool", "name": "get_weather"}
    no_parallel = openai_to_anthropic_request(dict(base, parallel_tool_calls=False), "claude")
    assert no_parallel["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_images_become_base64_or_url_sources() -> None:
    request = openai_to_anthropic_request({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
        {"type": "image_url", "image_url": {"url": "https://img.example/cat.jpg"}}]}]}, "c")
    blocks = request["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": PNG_DATA_URL.split(",", 1)[1]}}
    assert blocks[2] == {"type": "image", "source": {"type": "url",
                                                     "url": "https://img.example/cat.jpg"}}


def test_sampling_limits_and_stop_sequences_are_carried_over() -> None:
    messages = [{"role": "user", "content": "hi"}]
    request = openai_to_anthropic_request({"messages": messages, "temperature": 1.7,
                                           "top_p": 0.9, "stop": "END",
                                           "max_completion_tokens": 77}, "c")
    assert request["max_tokens"] == 77
    assert request["temperature"] == 1.0  # Anthropic's range is 0..1
    assert request["top_p"] == 0.9
    assert request["stop_sequences"] == ["END"]
    assert openai_to_anthropic_request({"messages": messages}, "c")["max_tokens"] == 4096


def test_a_json_schema_response_format_becomes_a_system_instruction() -> None:
    response_format = {"type": "json_schema",
                       "json_schema": {"name": "x", "schema": {"type": "object"}}}
    request = openai_to_anthropic_request({"messages": [{"role": "user", "content": "hi"}],
                                           "response_format": response_format}, "c")
    assert "JSON" in request["system"] and '{"type":"object"}' in request["system"]


def test_prompt_cache_breakpoints_on_openai_parts_reach_anthropic() -> None:
    cached = {"type": "ephemeral"}
    request = openai_to_anthropic_request({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Long rules.",
                                        "cache_control": cached}]},
        {"role": "user", "content": [{"type": "text", "text": "Big document",
                                      "cache_control": cached}, {"type": "text", "text": "Q?"}]},
    ]}, "claude")
    assert request["system"] == [{"type": "text", "text": "Long rules.", "cache_control": cached}]
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "Big document", "cache_control": cached},
        {"type": "text", "text": "Q?"}]


def test_n_above_one_is_refused_for_anthropic() -> None:
    with pytest.raises(ProviderError) as caught:
        openai_to_anthropic_request({"messages": [{"role": "user", "content": "hi"}], "n": 2},
                                    "c")
    assert caught.value.status == 400 and caught.value.param == "n"


def test_the_anthropic_call_has_the_real_url_and_headers() -> None:
    adapter = get_adapter("anthropic")
    t = Target(public_name="claude", provider="anthropic", model="claude-x",
               api_base="https://api.anthropic.com", api_key="sk-ant",
               headers=(("anthropic-beta", "prompt-caching-2024-07-31"),))
    call = adapter.chat_request(t, {"messages": [{"role": "user", "content": "hi"}],
                                    "stream": True}, stream=True)
    assert call.url == "https://api.anthropic.com/v1/messages"
    headers = dict(call.headers)
    assert headers["x-api-key"] == "sk-ant"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    body = orjson.loads(call.body)
    assert body["model"] == "claude-x" and body["stream"] is True
    assert adapter.speaks_openai is False


def test_bad_input_is_a_clear_400_naming_the_field() -> None:
    cases = [
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "assistant", "tool_calls": [
            {"id": "a", "function": {"name": "f", "arguments": "{not json"}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url",
                                                    "image_url": {"url": "ftp://x"}}]}]},
        {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "code"}]},
    ]
    for body in cases:
        with pytest.raises(ProviderError) as caught:
            openai_to_anthropic_request(body, "c")
        assert caught.value.status == 400
        assert caught.value.type == "invalid_request_error"
        assert caught.value.message


def test_anthropic_has_no_embeddings() -> None:
    with pytest.raises(UnsupportedOperation):
        get_adapter("anthropic").embeddings_request(target("anthropic"), {"input": "x"})


# -- Anthropic: response and stream ---------------------------------------------------------


ANTHROPIC_TOOL_MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
    "content": [{"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 90,
              "cache_creation_input_tokens": 5, "output_tokens": 7}}


def test_an_anthropic_message_becomes_a_chat_completion() -> None:
    completion = get_adapter("anthropic").chat_response(
        target("anthropic"), 200, [], orjson.dumps(ANTHROPIC_TOOL_MESSAGE))
    choice = completion["choices"][0]
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "public-model"
    assert choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [{"id": "toolu_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert choice["finish_reason"] == "tool_calls"
    assert completion["usage"] == {"prompt_tokens": 105, "completion_tokens": 7,
                                   "total_tokens": 112,
                                   "prompt_tokens_details": {"cached_tokens": 90}}


def test_stop_reasons_map_to_openai_finish_reasons() -> None:
    for stop, finish in (("end_turn", "stop"), ("stop_sequence", "stop"),
                         ("max_tokens", "length"), ("tool_use", "tool_calls")):
        message = dict(ANTHROPIC_TOOL_MESSAGE, stop_reason=stop,
                       content=[{"type": "text", "text": "x"}])
        assert anthropic_to_openai_response(message, "m")["choices"][0][
            "finish_reason"] == finish


ANTHROPIC_STREAM = anthropic_sse(
    {"type": "message_start", "message": {
        "id": "msg_s", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "cache_read_input_tokens": 3, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "text_delta", "text": "Héllo ✓ "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 20}},
    {"type": "message_stop"},
)


def test_an_anthropic_stream_becomes_openai_chunks_in_order() -> None:
    decoder = AnthropicStreamDecoder("public-model", include_usage=True)
    chunks = decoder.feed(ANTHROPIC_STREAM) + decoder.close()
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "msg_s" for c in chunks)
    result = assemble(chunks)
    assert result["text"] == "Héllo ✓ there"
    assert result["tool_calls"] == [{"id": "toolu_9", "name": "get_weather",
                                     "arguments": '{"city": "Paris"}'}]
    assert result["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 15
    assert chunks[-1]["usage"]["completion_tokens"] == 20
    assert decoder.usage is not None and decoder.usage.cached_tokens == 3
    assert decoder.finish_reason == "tool_calls"


def test_without_include_usage_no_usage_chunk_is_sent_but_usage_is_kept() -> None:
    decoder = AnthropicStreamDecoder("m", include_usage=False)
    chunks = decoder.feed(ANTHROPIC_STREAM) + decoder.close()
    assert all(c["choices"] for c in chunks)
    assert decoder.usage is not None and decoder.usage.completion_tokens == 20


def test_an_anthropic_stream_split_at_every_byte_decodes_identically() -> None:
    split_everywhere(lambda: AnthropicStreamDecoder("m", include_usage=True), ANTHROPIC_STREAM)


def test_a_mid_stream_anthropic_error_raises_after_the_chunks_before_it() -> None:
    body = ANTHROPIC_STREAM.split(b"event: content_block_stop")[0] + anthropic_sse(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    decoder = AnthropicStreamDecoder("m", include_usage=False)
    chunks = decoder.feed(body)
    assert assemble(chunks)["text"] == "Héllo ✓ there"
    with pytest.raises(ProviderError) as caught:
        decoder.close()
    assert caught.value.status == 503 and caught.value.message == "Overloaded"


# -- Anthropic: errors ----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "anthropic_type", "message", "want_status", "want_type",
                          "want_code"), [
    (400, "invalid_request_error", "messages: Field required", 400, "invalid_request_error",
     None),
    (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", 400,
     "invalid_request_error", "context_length_exceeded"),
    (401, "authentication_error", "invalid x-api-key", 401, "authentication_error", None),
    (403, "permission_error", "no access", 403, "permission_error", None),
    (404, "not_found_error", "model: claude-9", 404, "not_found_error", "model_not_found"),
    (429, "rate_limit_error", "slow down", 429, "rate_limit_error", "rate_limit_exceeded"),
    (500, "api_error", "oops", 500, "server_error", None),
    (529, "overloaded_error", "Overloaded", 503, "server_error", "overloaded"),
])
def test_anthropic_errors_map_to_openai_errors(status: int, anthropic_type: str, message: str,
                                               want_status: int, want_type: str,
                                               want_code: str | None) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": anthropic_type, "message": message}})
    error = get_adapter("anthropic").error_from_upstream(
        target("anthropic"), status, [("retry-after", "7")], body)
    assert (error.status, openai_type(error), error.code) == (want_status, want_type, want_code)
    assert error.message == message
    if status == 429:
        assert error.retry_after == "7"


def test_a_non_json_anthropic_error_keeps_its_text() -> None:
    error = get_adapter("anthropic").error_from_upstream(target("anthropic"), 502, [],
                                                         b"<html>bad gateway</html>")
    assert error.status == 502 and "bad gateway" in error.message


# -- Anthropic inbound ----------------------------------------------------------------------


ANTHROPIC_CONVERSATION: dict[str, Any] = {
    "model": "gpt-x", "max_tokens": 300, "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image", "source": {
                                         "type": "base64", "media_type": "image/png",
                                         "data": PNG_DATA_URL.split(",", 1)[1]}}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "text", "text": "And tomorrow?"}]},
    ],
    "tools": [{"name": "get_weather", "description": "Weather",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                "required": ["city"]}}],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stop_sequences": ["END"], "temperature": 0.3, "metadata": {"user_id": "u1"},
}


def test_an_anthropic_request_becomes_an_openai_chat_request() -> None:
    request = anthropic_request_to_openai(ANTHROPIC_CONVERSATION)
    messages = request["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["content"][1] == {"type": "image_url",
                                         "image_url": {"url": PNG_DATA_URL}}
    assert messages[2]["tool_calls"] == [{"id": "toolu_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert messages[3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}
    assert messages[4] == {"role": "user", "content": "And tomorrow?"}
    assert request["tool_choice"] == "required"
    assert request["parallel_tool_calls"] is False
    assert request["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert (request["max_tokens"], request["stop"], request["temperature"], request["user"]) == (
        300, ["END"], 0.3, "u1")


def test_an_anthropic_server_tool_is_refused_with_a_clear_error() -> None:
    body = dict(ANTHROPIC_CONVERSATION,
                tools=[{"type": "web_search_20250305", "name": "web_search"}])
    with pytest.raises(ProviderError) as caught:
        anthropic_request_to_openai(body)
    assert caught.value.status == 400 and "web_search" in caught.value.message


def test_streaming_inbound_asks_the_upstream_for_usage() -> None:
    request = anthropic_request_to_openai(dict(ANTHROPIC_CONVERSATION, stream=True))
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}


def normalize_anthropic(request: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic request with equivalent spellings made equal."""
    out = dict(request)
    system = out.get("system")
    if isinstance(system, list):
        out["system"] = "".join(b["text"] for b in system)
    messages = []
    for message in out["messages"]:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        messages.append({"role": message["role"], "content": content})
    out["messages"] = messages
    out.pop("stream", None)
    return out


def test_anthropic_to_openai_to_anthropic_keeps_the_meaning() -> None:
    openai_request = anthropic_request_to_openai(ANTHROPIC_CONVERSATION)
    back = openai_to_anthropic_request(openai_request, "gpt-x")
    assert normalize_anthropic(back) == normalize_anthropic(ANTHROPIC_CONVERSATION)


def normalize_openai(request: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI request with system/developer folded together (Anthropic cannot keep
    their positions) and empty-looking fields dropped."""
    system = "\n\n".join(m["content"] for m in request["messages"]
                         if m["role"] in ("system", "developer"))
    rest = []
    for message in request["messages"]:
        if message["role"] in ("system", "developer"):
            continue
        entry = {k: v for k, v in message.items() if v not in (None, "")}
        if entry.get("tool_calls"):
            entry["tool_calls"] = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["function"]["name"],
                              "arguments": orjson.loads(c["function"]["arguments"])}}
                for c in entry["tool_calls"]]
        rest.append(entry)
    return {"system": system, "messages": rest,
            "tools": request.get("tools"), "tool_choice": request.get("tool_choice")}


def test_openai_to_anthropic_to_openai_keeps_tools_and_multi_turn_meaning() -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    for choice in ("auto", "required", "none",
                   {"type": "function", "function": {"name": "get_time"}}):
        original = {"messages": TOOL_CONVERSATION, "tools": tools, "tool_choice": choice}
        anthropic_request = openai_to_anthropic_request(original, "claude")
        back = anthropic_request_to_openai(anthropic_request)
        assert normalize_openai(back) == normalize_openai(original)


def test_an_openai_completion_becomes_an_anthropic_message() -> None:
    completion = anthropic_to_openai_response(ANTHROPIC_TOOL_MESSAGE, "m")
    message = openai_response_to_anthropic(completion, model="claude-public")
    assert message["type"] == "message" and message["model"] == "claude-public"
    assert message["content"] == ANTHROPIC_TOOL_MESSAGE["content"]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["cache_read_input_tokens"] == 90
    assert message["usage"]["input_tokens"] == 15  # prompt minus cached reads
    assert message["usage"]["output_tokens"] == 7


def test_finish_reasons_map_back_to_stop_reasons() -> None:
    for finish, stop in (("stop", "end_turn"), ("length", "max_tokens"),
                         ("tool_calls", "tool_use"), ("content_filter", "refusal")):
        completion = {"id": "c", "choices": [{"message": {"role": "assistant", "content": "x"},
                                              "finish_reason": finish}]}
        assert openai_response_to_anthropic(completion)["stop_reason"] == stop


def openai_chunks(*deltas: dict[str, Any], finish: str = "stop",
                  usage: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                            "model": "gpt-x"}
    chunks = [dict(base, choices=[{"index": 0, "delta": d, "finish_reason": None}])
              for d in deltas]
    chunks.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": finish}]))
    if usage:
        chunks.append(dict(base, choices=[], usage=usage))
    return chunks


def encoded_events(encoder: AnthropicStreamEncoder, chunks: list[dict[str, Any]]) -> bytes:
    return encoder.start() + b"".join(encoder.feed(c) for c in chunks) + encoder.finish()


def test_the_stream_encoder_writes_the_anthropic_event_sequence() -> None:
    chunks = openai_chunks(
        {"role": "assistant", "content": ""}, {"content": "Hi "}, {"content": "there"},
        {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        finish="tool_calls",
        usage={"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16})
    raw = encoded_events(AnthropicStreamEncoder("claude-public"), chunks)
    events = SSEParser().feed(raw)
    names = [e.event for e in events]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta",
                     "content_block_delta", "content_block_stop", "content_block_start",
                     "content_block_delta", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    payloads = [orjson.loads(e.data) for e in events]
    assert all(p["type"] == e.event for p, e in zip(payloads, events, strict=True))
    assert payloads[0]["message"]["model"] == "claude-public"
    assert payloads[6]["content_block"] == {"type": "tool_use", "id": "call_a",
                                            "name": "get_weather", "input": {}}
    assert payloads[10]["delta"]["stop_reason"] == "tool_use"
    assert payloads[10]["usage"]["output_tokens"] == 5
    assert payloads[10]["usage"]["input_tokens"] == 11


def test_openai_chunks_through_the_encoder_and_back_through_the_decoder_are_unchanged() -> None:
    chunks = openai_chunks(
        {"role": "assistant", "content": ""}, {"content": "Paris "}, {"content": "is sunny."},
        {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"ci'}}]},
        {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                         "function": {"name": "get_time", "arguments": '{"zone":"CET"}'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Paris"}'}}]},
        finish="tool_calls",
        usage={"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49,
               "prompt_tokens_details": {"cached_tokens": 8}})
    raw = encoded_events(AnthropicStreamEncoder("m"), chunks)
    decoder = AnthropicStreamDecoder("m", include_usage=True)
    back = assemble(decoder.feed(raw) + decoder.close())
    original = assemble(chunks)
    assert back["text"] == original["text"]
    assert back["tool_calls"] == original["tool_calls"]
    assert back["finish_reason"] == "tool_calls"
    assert back["usage"]["prompt_tokens"] == 40 and back["usage"]["completion_tokens"] == 9
    assert back["usage"]["prompt_tokens_details"]["cached_tokens"] == 8


def anthropic_sdk_client(status: int, content: bytes, content_type: str) -> Any:
    """The official SDK, answered by ``content`` instead of a server."""
    import anthropic
    import httpx2  # the HTTP client this SDK version is built on

    def answer(request: Any) -> Any:
        return httpx2.Response(status, content=content, headers={"content-type": content_type})

    return anthropic.Anthropic(api_key="sk-test", base_url="http://gateway.test",
                               http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
                               max_retries=0)


def test_the_anthropic_sdk_reads_the_encoded_stream_as_a_complete_message() -> None:
    chunks = openai_chunks(
        {"role": "assistant", "content": ""}, {"content": "Let me "}, {"content": "check."},
        {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]},
        finish="tool_calls",
        usage={"prompt_tokens": 21, "completion_tokens": 6, "total_tokens": 27})
    raw = encoded_events(AnthropicStreamEncoder("claude-public", input_tokens=20), chunks)
    client = anthropic_sdk_client(200, raw, "text/event-stream")
    with client.messages.stream(model="claude-public", max_tokens=50,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        streamed_text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert streamed_text == "Let me check."
    assert message.content[0].type == "text" and message.content[0].text == "Let me check."
    assert message.content[1].type == "tool_use"
    assert (message.content[1].name, message.content[1].input) == ("get_weather",
                                                                   {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 6 and message.usage.input_tokens == 21


def test_the_anthropic_sdk_reads_a_translated_completion() -> None:
    completion = anthropic_to_openai_response(ANTHROPIC_TOOL_MESSAGE, "m")
    client = anthropic_sdk_client(200, orjson.dumps(openai_response_to_anthropic(completion)),
                                  "application/json")
    message = client.messages.create(model="m", max_tokens=50,
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "Let me check."
    assert message.content[1].input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"


def test_reasoning_deltas_become_a_thinking_block_before_the_text() -> None:
    chunks = openai_chunks({"reasoning_content": "Think "}, {"reasoning_content": "hard."},
                           {"content": "Answer."})
    events = SSEParser().feed(encoded_events(AnthropicStreamEncoder("m"), chunks))
    starts = [orjson.loads(e.data)["content_block"]["type"] for e in events
              if e.event == "content_block_start"]
    deltas = [orjson.loads(e.data)["delta"] for e in events if e.event == "content_block_delta"]
    assert starts == ["thinking", "text"]
    assert deltas == [{"type": "thinking_delta", "thinking": "Think "},
                      {"type": "thinking_delta", "thinking": "hard."},
                      {"type": "text_delta", "text": "Answer."}]


def test_count_tokens_for_a_non_anthropic_model_is_a_positive_estimate() -> None:
    small = estimate_input_tokens({"messages": [{"role": "user", "content": "hi"}]})
    large = estimate_input_tokens({"messages": [{"role": "user", "content": "hi " * 1000}]})
    assert 0 < small < large


def test_an_empty_stream_still_ends_as_a_complete_anthropic_message() -> None:
    encoder = AnthropicStreamEncoder("m")
    names = [e.event for e in SSEParser().feed(encoder.finish())]
    assert names == ["message_start", "ping", "message_delta", "message_stop"]
    assert encoder.feed({"choices": []}) == b"" and encoder.finish() == b""


def test_a_mid_stream_failure_becomes_an_anthropic_error_event() -> None:
    encoder = AnthropicStreamEncoder("m")
    encoder.feed(openai_chunks({"content": "Hi"})[0])
    raw = encoder.error(ProviderError(429, "slow down", "rate_limit_error"))
    event = SSEParser().feed(raw)[-1]
    assert event.event == "error"
    assert orjson.loads(event.data) == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "slow down"}}


@pytest.mark.parametrize(("status", "anthropic_type"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"),
    (500, "api_error"), (503, "overloaded_error"), (529, "overloaded_error")])
def test_openai_errors_become_anthropic_errors(status: int, anthropic_type: str) -> None:
    body = orjson.dumps({"error": {"message": "nope", "type": "x", "param": None, "code": None}})
    assert openai_error_to_anthropic(status, body) == {
        "type": "error", "error": {"type": anthropic_type, "message": "nope"}}
    assert anthropic_error_from_provider_error(ProviderError(status, "nope")) == (
        status, {"type": "error", "error": {"type": anthropic_type, "message": "nope"}})


# -- Gemini ---------------------------------------------------------------------------------


def test_an_openai_conversation_becomes_gemini_contents() -> None:
    request = openai_to_gemini_request({
        "messages": TOOL_CONVERSATION[:2] + [
            {"role": "user", "content": [{"type": "image_url",
                                          "image_url": {"url": PNG_DATA_URL}}]}]
        + TOOL_CONVERSATION[2:],
        "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "required", "temperature": 0.2,
        "top_p": 0.5, "max_tokens": 99, "stop": ["X"], "n": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {
            "type": "object", "properties": {"default": {"type": "string"}},
            "additionalProperties": False}}}})
    assert request["systemInstruction"] == {"parts": [{"text":
                                                       "You are terse.\n\nAnswer in one line."}]}
    contents = request["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[0]["parts"][1] == {"inlineData": {
        "mimeType": "image/png", "data": PNG_DATA_URL.split(",", 1)[1]}}
    assert contents[1]["parts"] == [
        {"text": "Checking."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_time", "args": {"zone": "CET"}}}]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"result": "18C"}}},
        {"functionResponse": {"name": "get_time", "response": {"result": "14:00"}}},
        {"text": "Thanks!"}]
    assert request["generationConfig"] == {
        "temperature": 0.2, "topP": 0.5, "maxOutputTokens": 99, "stopSequences": ["X"],
        "candidateCount": 2, "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"default": {"type": "string"}}}}
    declaration = request["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "get_weather"
    assert "additionalProperties" not in declaration["parameters"]
    assert request["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


def test_json_schema_keywords_gemini_rejects_are_removed_or_rewritten() -> None:
    schema = {"$schema": "x", "type": "object", "additionalProperties": False,
              "properties": {"strict": {"type": ["string", "null"]},
                             "tags": {"type": "array", "items": {"type": "string",
                                                                 "default": "a"}}},
              "required": ["strict"]}
    assert gemini_schema(schema) == {
        "type": "object", "required": ["strict"],
        "properties": {"strict": {"type": "string", "nullable": True},
                       "tags": {"type": "array", "items": {"type": "string"}}}}


def test_gemini_tool_choice_variants() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]}
    for choice, config in (("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}),
                           ({"type": "function", "function": {"name": "get_weather"}},
                            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]})):
        assert openai_to_gemini_request(dict(base, tool_choice=choice))["toolConfig"] == {
            "functionCallingConfig": config}


def test_a_tool_result_for_an_unknown_call_is_a_clear_400() -> None:
    with pytest.raises(ProviderError) as caught:
        openai_to_gemini_request({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "nope", "content": "x"}]})
    assert caught.value.status == 400 and "nope" in caught.value.message


def test_the_gemini_call_has_the_real_urls_and_key_header() -> None:
    adapter = get_adapter("gemini")
    t = target("gemini", "https://generativelanguage.googleapis.com", model="gemini-2.5-flash",
               key="g-key")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert adapter.chat_request(t, body, stream=False).url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent")
    streaming = adapter.chat_request(t, body, stream=True)
    assert streaming.url.endswith("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert dict(streaming.headers)["x-goog-api-key"] == "g-key"


def test_a_gemini_response_becomes_a_chat_completion() -> None:
    response = {"candidates": [
        {"content": {"role": "model", "parts": [
            {"text": "Let me look."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
         "finishReason": "STOP", "index": 0},
        {"content": {"role": "model", "parts": [{"text": "Too long"}]},
         "finishReason": "MAX_TOKENS", "index": 1}],
        "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 8,
                          "cachedContentTokenCount": 20, "totalTokenCount": 38},
        "responseId": "r1"}
    completion = get_adapter("gemini").chat_response(target("gemini"), 200, [],
                                                     orjson.dumps(response))
    first, second = completion["choices"]
    assert first["message"]["content"] == "Let me look."
    assert first["message"]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                             "arguments": '{"city":"Paris"}'}
    assert first["finish_reason"] == "tool_calls"
    assert second["finish_reason"] == "length"
    assert completion["usage"]["prompt_tokens"] == 30
    assert completion["usage"]["prompt_tokens_details"]["cached_tokens"] == 20


def test_a_gemini_thought_signature_survives_the_round_trip_through_the_tool_call_id() -> None:
    adapter = get_adapter("gemini")
    response = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}},
         "thoughtSignature": "c2lnbmF0dXJl"}]}, "finishReason": "STOP"}], "responseId": "r7"}
    completion = adapter.chat_response(target("gemini"), 200, [], orjson.dumps(response))
    message = completion["choices"][0]["message"]
    call_id = message["tool_calls"][0]["id"]
    request = openai_to_gemini_request({"messages": [
        {"role": "user", "content": "Weather in Rome?"}, message,
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp": 21}'}]})
    model_turn, answer = request["contents"][1], request["contents"][2]
    assert model_turn["parts"] == [{"functionCall": {"name": "get_weather",
                                                     "args": {"city": "Rome"}},
                                    "thoughtSignature": "c2lnbmF0dXJl"}]
    assert answer["parts"] == [{"functionResponse": {"name": "get_weather",
                                                     "response": {"temp": 21}}}]


def test_gemini_safety_finish_is_a_content_filter() -> None:
    for reason in ("SAFETY", "RECITATION"):
        response = {"candidates": [{"content": {"parts": [{"text": ""}]},
                                    "finishReason": reason}]}
        completion = get_adapter("gemini").chat_response(target("gemini"), 200, [],
                                                         orjson.dumps(response))
        assert completion["choices"][0]["finish_reason"] == "content_filter"


GEMINI_STREAM = b"".join(b"data: " + orjson.dumps(frame) + b"\r\n\r\n" for frame in [
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Bonjour "}]},
                     "index": 0}],
     "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1}, "responseId": "g1"},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "à tous"}]},
                     "index": 0}],
     "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3}, "responseId": "g1"},
    {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Lyon"}}}]},
        "finishReason": "STOP", "index": 0}],
     "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 6}, "responseId": "g1"},
])


def test_a_gemini_stream_becomes_openai_chunks() -> None:
    decoder = get_adapter("gemini").chat_stream_decoder(target("gemini"), include_usage=True)
    chunks = decoder.feed(GEMINI_STREAM) + decoder.close()
    result = assemble(chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert result["text"] == "Bonjour à tous"
    assert result["tool_calls"][0]["name"] == "get_weather"
    assert orjson.loads(result["tool_calls"][0]["arguments"]) == {"city": "Lyon"}
    assert result["finish_reason"] == "tool_calls"
    assert result["usage"]["prompt_tokens"] == 9 and result["usage"]["completion_tokens"] == 6


def test_a_gemini_stream_split_at_every_byte_decodes_identically() -> None:
    adapter = get_adapter("gemini")
    split_everywhere(lambda: adapter.chat_stream_decoder(target("gemini"), include_usage=True),
                     GEMINI_STREAM)


@pytest.mark.parametrize(("status", "google_status", "message", "want_status", "want_type",
                          "want_code"), [
    (400, "INVALID_ARGUMENT", "Invalid value at 'contents'", 400, "invalid_request_error",
     "invalid_argument"),
    (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", 401,
     "authentication_error", "invalid_api_key"),
    (400, "INVALID_ARGUMENT", ("The input token count (2000000) exceeds the maximum number "
                               "of tokens allowed (1048576)."),
     400, "invalid_request_error", "context_length_exceeded"),
    (401, "UNAUTHENTICATED", "bad credentials", 401, "authentication_error", "unauthenticated"),
    (403, "PERMISSION_DENIED", "denied", 403, "permission_error", "permission_denied"),
    (404, "NOT_FOUND", "models/x is not found", 404, "not_found_error", "not_found"),
    (429, "RESOURCE_EXHAUSTED", "quota", 429, "rate_limit_error", "rate_limit_exceeded"),
    (503, "UNAVAILABLE", "overloaded", 503, "server_error", "unavailable"),
    (504, "DEADLINE_EXCEEDED", "deadline", 504, "timeout_error", "deadline_exceeded"),
])
def test_gemini_errors_map_to_openai_errors(status: int, google_status: str, message: str,
                                            want_status: int, want_type: str,
                                            want_code: str) -> None:
    body = orjson.dumps({"error": {"code": status, "message": message, "status": google_status}})
    error = get_adapter("gemini").error_from_upstream(target("gemini"), status,
                                                      [("retry-after", "3")], body)
    assert (error.status, openai_type(error), error.code) == (want_status, want_type, want_code)
    assert error.message == message
    assert error.retry_after == ("3" if status in (429, 503) else None)


def test_gemini_embeddings_use_batch_embed_contents() -> None:
    adapter = get_adapter("gemini")
    t = target("gemini", model="text-embedding-004")
    call = adapter.embeddings_request(t, {"input": ["a", "b"], "dimensions": 4})
    assert call.url.endswith("/v1beta/models/text-embedding-004:batchEmbedContents")
    assert orjson.loads(call.body) == {"requests": [
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]},
         "outputDimensionality": 4},
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]},
         "outputDimensionality": 4}]}
    result = adapter.embeddings_response(t, 200, [], orjson.dumps(
        {"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}))
    assert [d["embedding"] for d in result["data"]] == [[0.1, 0.2], [0.3, 0.4]]
    assert result["object"] == "list" and result["data"][1]["index"] == 1


# -- Cohere ---------------------------------------------------------------------------------


def test_an_openai_conversation_becomes_a_cohere_v2_request() -> None:
    request = openai_to_cohere_request({
        "messages": TOOL_CONVERSATION, "tools": [WEATHER_TOOL], "top_p": 0.7,
        "stop": "END", "max_tokens": 50, "temperature": 0.1,
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
        "command-a")
    messages = request["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool",
                                             "system", "user"]
    assert messages[2]["tool_plan"] == "Checking."
    assert messages[2]["tool_calls"][0] == {"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}
    assert messages[3] == {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
    assert (request["p"], request["stop_sequences"], request["max_tokens"]) == (0.7, ["END"], 50)
    assert request["tools"] == [WEATHER_TOOL]
    assert request["response_format"] == {"type": "json_object",
                                          "json_schema": {"type": "object"}}


def test_a_cohere_response_becomes_a_chat_completion() -> None:
    response = {"id": "c1", "finish_reason": "TOOL_CALL", "message": {
        "role": "assistant", "tool_plan": "I will check.",
        "tool_calls": [{"id": "tc1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 3},
                  "tokens": {"input_tokens": 12, "output_tokens": 3}}}
    completion = get_adapter("cohere").chat_response(target("cohere"), 200, [],
                                                     orjson.dumps(response))
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Oslo"}'
    assert completion["usage"]["prompt_tokens"] == 12
    for reason, finish in (("COMPLETE", "stop"), ("MAX_TOKENS", "length"),
                           ("STOP_SEQUENCE", "stop")):
        text_response = {"id": "c2", "finish_reason": reason, "message": {
            "role": "assistant", "content": [{"type": "text", "text": "hi"}]}}
        done = get_adapter("cohere").chat_response(target("cohere"), 200, [],
                                                   orjson.dumps(text_response))
        assert done["choices"][0]["finish_reason"] == finish
        assert done["choices"][0]["message"]["content"] == "hi"


def cohere_sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
                    for e in events)


COHERE_STREAM = cohere_sse(
    {"type": "message-start", "id": "co1", "delta": {"message": {"role": "assistant"}}},
    {"type": "content-start", "index": 0,
     "delta": {"message": {"content": {"type": "text", "text": ""}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hej "}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "då"}}}},
    {"type": "content-end", "index": 0},
    {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
        "id": "tc9", "type": "function", "function": {"name": "get_time", "arguments": ""}}}}},
    {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {
        "function": {"arguments": '{"zone":'}}}}},
    {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {
        "function": {"arguments": '"UTC"}'}}}}},
    {"type": "tool-call-end", "index": 0},
    {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {
        "billed_units": {"input_tokens": 4, "output_tokens": 6},
        "tokens": {"input_tokens": 10, "output_tokens": 6}}}},
)


def test_a_cohere_stream_becomes_openai_chunks() -> None:
    decoder = get_adapter("cohere").chat_stream_decoder(target("cohere"), include_usage=True)
    chunks = decoder.feed(COHERE_STREAM) + decoder.close()
    result = assemble(chunks)
    assert result["text"] == "Hej då"
    assert result["tool_calls"] == [{"id": "tc9", "name": "get_time",
                                     "arguments": '{"zone":"UTC"}'}]
    assert result["finish_reason"] == "tool_calls"
    assert result["usage"]["prompt_tokens"] == 10 and chunks[-1]["choices"] == []


def test_a_cohere_stream_split_at_every_byte_decodes_identically() -> None:
    adapter = get_adapter("cohere")
    split_everywhere(lambda: adapter.chat_stream_decoder(target("cohere"), include_usage=True),
                     COHERE_STREAM)


@pytest.mark.parametrize(("status", "message", "want_status", "want_type", "want_code"), [
    (400, "invalid request: messages cannot be empty", 400, "invalid_request_error", None),
    (400, "too many tokens: total number of tokens in the prompt cannot exceed 4096", 400,
     "invalid_request_error", "context_length_exceeded"),
    (401, "invalid api token", 401, "authentication_error", "invalid_api_key"),
    (404, "model not found", 404, "not_found_error", None),
    (422, "unprocessable", 400, "invalid_request_error", None),
    (429, "trial key limit", 429, "rate_limit_error", "rate_limit_exceeded"),
    (500, "internal", 500, "server_error", None),
])
def test_cohere_errors_map_to_openai_errors(status: int, message: str, want_status: int,
                                            want_type: str, want_code: str | None) -> None:
    error = get_adapter("cohere").error_from_upstream(
        target("cohere"), status, [], orjson.dumps({"id": "e", "message": message}))
    assert (error.status, openai_type(error), error.code) == (want_status, want_type, want_code)
    assert error.message == message


def test_cohere_embeddings_use_v2_embed() -> None:
    adapter = get_adapter("cohere")
    t = target("cohere", "https://api.cohere.com", model="embed-v4.0")
    call = adapter.embeddings_request(t, {"input": "hello"})
    assert call.url == "https://api.cohere.com/v2/embed"
    assert orjson.loads(call.body) == {"model": "embed-v4.0", "texts": ["hello"],
                                       "input_type": "search_document",
                                       "embedding_types": ["float"]}
    result = adapter.embeddings_response(t, 200, [], orjson.dumps(
        {"embeddings": {"float": [[0.5, 0.25]]}, "meta": {"billed_units": {"input_tokens": 2}}}))
    assert result["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]
    assert result["usage"]["prompt_tokens"] == 2


# -- end to end against the mock upstreams --------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20.0) as shared:
        yield shared


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Router], Any]]:
    servers: list[Any] = []

    async def start(router: Router) -> str:
        server, port = await start_upstream(router)
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        await stop_upstream(server)


async def send(client: httpx.AsyncClient, call: Any) -> httpx.Response:
    return await client.request(call.method, call.url, headers=call.headers, content=call.body)


async def stream_chunks(client: httpx.AsyncClient, adapter: Any, t: Target,
                        body: dict[str, Any]) -> list[dict[str, Any]]:
    call = adapter.chat_request(t, body, stream=True)
    decoder = adapter.chat_stream_decoder(t, include_usage=True)
    chunks: list[dict[str, Any]] = []
    async with client.stream(call.method, call.url, headers=call.headers,
                             content=call.body) as response:
        assert response.status_code == 200
        async for data in response.aiter_raw():
            chunks.extend(decoder.feed(data))
    return chunks + decoder.close()


PROVIDERS: dict[str, tuple[Callable[[Any], Router], str, str]] = {
    "anthropic": (build_anthropic_mock, "anthropic_api_key", "claude-sonnet-4-5"),
    "gemini": (build_gemini_mock, "gemini_api_key", "gemini-2.5-flash"),
    "cohere": (build_cohere_mock, "cohere_api_key", "command-a-03-2025"),
}


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_a_tool_round_trip_through_the_mock_upstream_is_accepted_and_answered(
        provider: str, serve: Callable[[Router], Any], client: httpx.AsyncClient) -> None:
    build, key_field, model = PROVIDERS[provider]
    state = ProviderMockState()
    url = await serve(build(state))
    t = target(provider, url, key=getattr(state, key_field), model=model)
    adapter = get_adapter(provider)
    question: dict[str, Any] = {"messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Weather in Paris?"}],
                "tools": [WEATHER_TOOL, TIME_TOOL]}
    response = await send(client, adapter.chat_request(t, question, stream=False))
    assert response.status_code == 200, response.text
    first = adapter.chat_response(t, 200, [], response.content)
    call = first["choices"][0]["message"]["tool_calls"][0]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "example"}

    follow_up = dict(question, messages=question["messages"] + [
        first["choices"][0]["message"],
        {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"}])
    response = await send(client, adapter.chat_request(t, follow_up, stream=False))
    assert response.status_code == 200, response.text
    second = adapter.chat_response(t, 200, [], response.content)
    assert "18C and sunny" in second["choices"][0]["message"]["content"]
    assert second["choices"][0]["finish_reason"] == "stop"
    assert second["usage"]["prompt_tokens"] > 0 and second["usage"]["completion_tokens"] > 0
    assert second["model"] == "public-model"


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_streaming_from_the_mock_upstream_matches_the_whole_answer(
        provider: str, serve: Callable[[Router], Any], client: httpx.AsyncClient) -> None:
    build, key_field, model = PROVIDERS[provider]
    state = ProviderMockState()
    url = await serve(build(state))
    t = target(provider, url, key=getattr(state, key_field), model=model)
    adapter = get_adapter(provider)
    for body in ({"messages": [{"role": "user", "content": "tell me something"}]},
                 {"messages": [{"role": "user", "content": "weather?"}],
                  "tools": [WEATHER_TOOL]}):
        response = await send(client, adapter.chat_request(t, body, stream=False))
        whole = adapter.chat_response(t, 200, [], response.content)["choices"][0]
        streamed = assemble(await stream_chunks(client, adapter, t, body))
        assert streamed["text"] == (whole["message"]["content"] or "")
        assert [(c["name"], orjson.loads(c["arguments"])) for c in streamed["tool_calls"]] == [
            (c["function"]["name"], orjson.loads(c["function"]["arguments"]))
            for c in whole["message"].get("tool_calls") or ()]
        assert streamed["finish_reason"] == whole["finish_reason"]
        assert streamed["usage"]["completion_tokens"] > 0
    if provider == "gemini":
        assert state.requests[-1].query == {"alt": ["sse"]}


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_a_wrong_key_at_the_mock_upstream_maps_to_a_401(
        provider: str, serve: Callable[[Router], Any], client: httpx.AsyncClient) -> None:
    build, _key_field, model = PROVIDERS[provider]
    url = await serve(build(ProviderMockState()))
    t = target(provider, url, key="wrong", model=model)
    adapter = get_adapter(provider)
    response = await send(client, adapter.chat_request(
        t, {"messages": [{"role": "user", "content": "hi"}]}, stream=False))
    assert response.status_code in (400, 401)  # Gemini says 400 API_KEY_INVALID
    error = adapter.error_from_upstream(t, response.status_code,
                                        list(response.headers.items()), response.content)
    assert error.status == 401 and openai_type(error) == "authentication_error"


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_a_prompt_over_the_context_window_is_context_length_exceeded(
        provider: str, serve: Callable[[Router], Any], client: httpx.AsyncClient) -> None:
    build, key_field, model = PROVIDERS[provider]
    state = ProviderMockState(context_window_tokens=50)
    url = await serve(build(state))
    t = target(provider, url, key=getattr(state, key_field), model=model)
    adapter = get_adapter(provider)
    response = await send(client, adapter.chat_request(
        t, {"messages": [{"role": "user", "content": "word " * 400}]}, stream=False))
    error = adapter.error_from_upstream(t, response.status_code,
                                        list(response.headers.items()), response.content)
    assert (error.status, error.code) == (400, "context_length_exceeded")


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_an_injected_rate_limit_keeps_its_retry_after(
        provider: str, serve: Callable[[Router], Any], client: httpx.AsyncClient) -> None:
    build, key_field, model = PROVIDERS[provider]
    state = ProviderMockState()
    state.fail_next = (429, "Too many requests")
    state.fail_next_headers = [("retry-after", "12")]
    url = await serve(build(state))
    t = target(provider, url, key=getattr(state, key_field), model=model)
    adapter = get_adapter(provider)
    response = await send(client, adapter.chat_request(
        t, {"messages": [{"role": "user", "content": "hi"}]}, stream=False))
    assert response.status_code == 429
    error = adapter.error_from_upstream(t, 429, list(response.headers.items()),
                                        response.content)
    assert (error.status, openai_type(error), error.retry_after) == (429, "rate_limit_error", "12")
    assert error.message == "Too many requests"


async def test_the_anthropic_mock_answers_head_probes_and_counts_tokens(
        serve: Callable[[Router], Any], client: httpx.AsyncClient) -> None:
    state = ProviderMockState()
    url = await serve(build_anthropic_mock(state))
    assert (await client.head(url + "/")).status_code == 200
    assert (await client.head(url + "/v1/messages")).status_code == 200
    counted = await client.post(url + "/v1/messages/count_tokens", json={
        "model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": state.anthropic_api_key, "anthropic-version": "2023-06-01"})
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0


async def test_the_anthropic_mock_rejects_an_unanswered_tool_use_like_the_real_api(
        serve: Callable[[Router], Any], client: httpx.AsyncClient) -> None:
    state = ProviderMockState()
    url = await serve(build_anthropic_mock(state))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_x", "name": "f",
                                           "input": {}}]},
        {"role": "user", "content": "no result"}]}
    response = await client.post(url + "/v1/messages", json=body, headers={
        "x-api-key": state.anthropic_api_key, "anthropic-version": "2023-06-01"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "toolu_x" in response.json()["error"]["message"]
    assert state.requests[-1].json == body


async def test_embeddings_through_the_gemini_and_cohere_mocks(
        serve: Callable[[Router], Any], client: httpx.AsyncClient) -> None:
    state = ProviderMockState()
    for provider, build, key, model in (
            ("gemini", build_gemini_mock, state.gemini_api_key, "text-embedding-004"),
            ("cohere", build_cohere_mock, state.cohere_api_key, "embed-v4.0")):
        url = await serve(build(state))
        t = target(provider, url, key=key, model=model)
        adapter = get_adapter(provider)
        response = await send(client, adapter.embeddings_request(t, {"input": ["one", "two"]}))
        assert response.status_code == 200, response.text
        result = adapter.embeddings_response(t, 200, [], response.content)
        assert len(result["data"]) == 2 and len(result["data"][0]["embedding"]) == 8
        assert result["data"][0]["embedding"] != result["data"][1]["embedding"]


# -- bad input never escapes as a traceback -------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "content", "type", "text", "messages", "tool_calls", "id",
                         "function", "name", "arguments", "tools", "tool_choice", "candidates",
                         "parts", "message", "delta", "usage", "index", "input", "source",
                         "tool_use_id", "finish_reason", "functionCall", "error",
                         "choices", "reasoning_content", "prompt_tokens_details"]),
        children, max_size=4),
    max_leaves=12)

PARTS = st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "image", "tool_use", "tool_result", "file",
                              "document", "thinking"])},
    optional={"text": JSON_VALUES, "image_url": JSON_VALUES, "source": JSON_VALUES,
              "id": JSON_VALUES, "name": JSON_VALUES, "input": JSON_VALUES,
              "tool_use_id": JSON_VALUES, "content": JSON_VALUES, "file": JSON_VALUES}),
    max_size=3)
MESSAGES = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])},
    optional={"content": st.one_of(JSON_VALUES, PARTS), "tool_call_id": JSON_VALUES,
              "tool_calls": st.lists(st.fixed_dictionaries(
                  {"id": JSON_VALUES, "function": st.fixed_dictionaries(
                      {}, optional={"name": JSON_VALUES, "arguments": JSON_VALUES})}),
                  max_size=2)}),
    min_size=1, max_size=4)

REQUEST_TRANSLATORS: list[Callable[[Any], Any]] = [
    lambda body: openai_to_anthropic_request(body, "m"),
    openai_to_gemini_request,
    lambda body: openai_to_cohere_request(body, "m"),
    anthropic_request_to_openai,
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(
    st.dictionaries(st.sampled_from(["messages", "tools", "tool_choice", "stop",
                                     "response_format", "system"]), JSON_VALUES, max_size=4),
    st.fixed_dictionaries({"messages": MESSAGES}, optional={
        "tools": JSON_VALUES, "tool_choice": JSON_VALUES, "system": JSON_VALUES,
        "response_format": JSON_VALUES, "stop": JSON_VALUES, "max_tokens": JSON_VALUES}),
    st.fixed_dictionaries({"messages": st.just([{"role": "user", "content": "hi"}])}, optional={
        name: JSON_VALUES for name in (
            "tools", "tool_choice", "system", "response_format", "stop", "stop_sequences",
            "max_tokens", "temperature", "top_p", "n", "user", "metadata", "thinking",
            "parallel_tool_calls", "max_completion_tokens")})))
def test_any_malformed_request_is_a_400_not_a_crash(body: dict[str, Any]) -> None:
    for translate in REQUEST_TRANSLATORS:
        try:
            translate(body)
        except ProviderError as exc:
            assert exc.status == 400 and exc.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=JSON_VALUES)
def test_any_malformed_upstream_body_is_a_provider_error_not_a_crash(payload: Any) -> None:
    raw = orjson.dumps(payload)
    for provider in ("anthropic", "gemini", "cohere"):
        adapter = get_adapter(provider)
        try:
            adapter.chat_response(target(provider), 200, [], raw)
        except ProviderError as exc:
            assert exc.status >= 400
        decoder = adapter.chat_stream_decoder(target(provider), include_usage=True)
        try:
            decoder.feed(b"event: message_start\ndata: " + raw + b"\n\ndata: " + raw + b"\n\n")
            decoder.close()
        except ProviderError as exc:
            assert exc.status >= 400
        assert isinstance(adapter.error_from_upstream(target(provider), 500, [], raw),
                          ProviderError)
    for completion in ({"choices": [payload]}, {"choices": [{"message": payload}]},
                       payload if isinstance(payload, dict) else {}):
        try:
            openai_response_to_anthropic(completion)
        except ProviderError as exc:
            assert exc.status == 502
        encoder = AnthropicStreamEncoder("m")
        for chunk in (completion, {"choices": [{"delta": payload}]}):
            try:
                encoder.feed(chunk)
            except ProviderError as exc:
                assert exc.status == 502
        encoder.finish()


def test_a_system_message_inside_anthropic_messages_becomes_an_openai_system_message() -> None:
    # Claude Code sends these under its mid-conversation-system beta.
    request = anthropic_request_to_openai({
        "model": "gpt-test", "max_tokens": 16, "system": "Rules.",
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "system", "content": [{"type": "text", "text": "Now be brief."}]}],
    })
    assert request["messages"] == [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "Now be brief."},
    ]
