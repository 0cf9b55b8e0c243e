"""OpenAI-family adapters (openai, azure, mistral, ollama, openai_compatible, mock),
the SSE parser, and the mock upstream servers they are checked against."""

from __future__ import annotations

import asyncio
import base64
import math
import random
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartflow.dialects import openai as openai_dialect
from smartflow.gateway_error import GatewayError
from smartflow.providers import get_adapter
from smartflow.providers.base import ProviderError, Target, UnsupportedOperation, UpstreamCall
from smartflow.providers.mistral import mistral_tool_call_id
from smartflow.providers.mock import MockResponse, serve_mock
from smartflow.providers.openai import OpenAIStreamDecoder, openai_error_from_upstream
from smartflow.providers.sse import SSE_DONE, SSEError, SSEEvent, SSEParser, sse_data, sse_event


def openai_type(error: GatewayError) -> str:
    """The error `type` an OpenAI caller sees for this error."""
    return openai_dialect.error_object(error)["error"]["type"]

# -- helpers ---------------------------------------------------------------------


def split_points(data: bytes, seed: int = 7, rounds: int = 40) -> Iterator[list[bytes]]:
    """Every single split point, then random multi-way splits."""
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
    rng = random.Random(seed)
    for _ in range(rounds):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(2, 30))))
        pieces, start = [], 0
        for cut in cuts:
            pieces.append(data[start:cut])
            start = cut
        pieces.append(data[start:])
        yield pieces
    yield [bytes([byte]) for byte in data]


def decode(decoder: Any, pieces: list[bytes]) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    for piece in pieces:
        chunks.extend(decoder.feed(piece))
    chunks.extend(decoder.close())
    return chunks


def assert_split_invariant(make_decoder: Callable[[], Any], data: bytes,
                           normalize: Callable[[list[dict[str, Any]]], Any] = lambda c: c) -> list:
    whole = normalize(decode(make_decoder(), [data]))
    for pieces in split_points(data):
        assert normalize(decode(make_decoder(), pieces)) == whole
    return whole


def target(provider: str, model: str = "upstream-model", **kwargs: Any) -> Target:
    return Target(public_name="public-model", provider=provider, model=model,
                  api_base=kwargs.pop("api_base", ""), **kwargs)


def headers_dict(call: UpstreamCall) -> dict[str, str]:
    return dict(call.headers)


async def collect(response: MockResponse) -> bytes:
    return b"".join([chunk async for chunk in response.body_chunks])


USER_MESSAGES = [{"role": "user", "content": "What is the weather in Paris today?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


# -- SSE ---------------------------------------------------------------------------

SSE_SAMPLE = (
    b"\xef\xbb\xbf: comment to ignore\r\n"
    b"event: message_start\r\n"
    b"data: {\"a\": 1}\r\n\r\n"
    b"data: line one\n"
    b"data: line two \xe2\x9c\x93 caf\xc3\xa9\n"
    b"id: 42\n\n"
    b"data:no-space\r\r"
    b"event: ping\n\n"  # no data: dropped
    b"data\n\n"  # a bare field name: empty data line
    b"data: [DONE]\n\n"
)


def test_sse_parser_gives_the_same_events_wherever_the_bytes_are_split() -> None:
    expected = [
        SSEEvent("message_start", '{"a": 1}'),
        SSEEvent("", "line one\nline two \u2713 caf\u00e9", "42"),
        SSEEvent("", "no-space", "42"),
        SSEEvent("", "", "42"),
        SSEEvent("", "[DONE]", "42"),
    ]
    assert SSEParser().feed(SSE_SAMPLE) + SSEParser().close() == expected
    for pieces in split_points(SSE_SAMPLE):
        parser = SSEParser()
        events = [event for piece in pieces for event in parser.feed(piece)]
        assert events + parser.close() == expected


def test_sse_parser_delivers_a_last_event_that_lacks_its_blank_line_on_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: {\"x\": 1}") == []
    assert parser.close() == [SSEEvent("", '{"x": 1}')]


def test_sse_parser_refuses_an_event_larger_than_its_limit() -> None:
    parser = SSEParser(max_event_bytes=1024)
    with pytest.raises(SSEError):
        parser.feed(b"data: " + b"x" * 2000)
    parser = SSEParser(max_event_bytes=1024)
    with pytest.raises(SSEError):
        for _ in range(40):
            parser.feed(b"data: " + b"y" * 50 + b"\n")


def test_sse_encoders_write_one_event_per_object() -> None:
    assert sse_data({"a": "é"}) == b'data: {"a":"\xc3\xa9"}\n\n'
    assert sse_event("ping", {}) == b"event: ping\ndata: {}\n\n"
    assert SSEParser().feed(sse_event("delta", {"k": 1}) + SSE_DONE) == [
        SSEEvent("delta", '{"k":1}'), SSEEvent("", "[DONE]")]


# -- OpenAI ------------------------------------------------------------------------


def test_openai_request_replaces_the_model_and_keeps_every_other_field() -> None:
    body = {
        "model": "public-model", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}],
        "tools": TOOLS, "tool_choice": "auto", "response_format": {"type": "json_object"},
        "n": 2, "stream_options": {"include_usage": True}, "some_future_field": [1, 2],
    }
    call = get_adapter("openai").chat_request(target("openai", api_key="sk-1"), body, stream=True)
    assert call.method == "POST"
    assert call.url == "https://api.openai.com/v1/chat/completions"
    assert headers_dict(call)["authorization"] == "Bearer sk-1"
    assert headers_dict(call)["accept"] == "text/event-stream"
    sent = orjson.loads(call.body)
    assert sent == {**body, "model": "upstream-model", "stream": True}
    assert body["model"] == "public-model"  # the caller's dict is left alone


def test_openai_non_streaming_request_drops_stream_options_which_openai_would_reject() -> None:
    body = {"model": "m", "messages": USER_MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}
    call = get_adapter("openai").chat_request(
        target("openai", api_base="http://127.0.0.1:9/v1/"), body, stream=False)
    assert call.url == "http://127.0.0.1:9/v1/chat/completions"
    assert orjson.loads(call.body) == {"model": "upstream-model", "messages": USER_MESSAGES}


def test_deployment_headers_are_added_and_override_ours() -> None:
    t = target("openai", api_key="sk-1", headers=(("OpenAI-Organization", "org-1"),
                                                  ("Authorization", "Bearer other")))
    call = get_adapter("openai").embeddings_request(t, {"model": "x", "input": "hi"})
    assert call.url.endswith("/embeddings")
    assert ("OpenAI-Organization", "org-1") in call.headers
    assert [value for name, value in call.headers if name.lower() == "authorization"] == [
        "Bearer other"]


OPENAI_STREAM = b"".join([
    sse_data({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
              "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                           "finish_reason": None}], "usage": None}),
    b": keep-alive\n\n",
    sse_data({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
              "choices": [{"index": 0, "delta": {"content": "Bonjour \u00e0 toi \U0001f600"},
                           "finish_reason": None}], "usage": None}),
    sse_data({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
              "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}),
    sse_data({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
              "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5,
                                       "total_tokens": 16,
                                       "prompt_tokens_details": {"cached_tokens": 3}}}),
    SSE_DONE,
])


def test_openai_stream_decoder_gives_identical_chunks_however_the_stream_is_split() -> None:
    chunks = assert_split_invariant(lambda: OpenAIStreamDecoder(include_usage=True),
                                    OPENAI_STREAM)
    assert len(chunks) == 4
    assert chunks[1]["choices"][0]["delta"]["content"] == "Bonjour \u00e0 toi \U0001f600"
    decoder = OpenAIStreamDecoder(include_usage=True)
    decode(decoder, [OPENAI_STREAM])
    assert decoder.is_done
    assert decoder.finish_reason == "stop"
    assert (decoder.usage.prompt_tokens, decoder.usage.completion_tokens,
            decoder.usage.cached_tokens) == (11, 5, 3)


def test_openai_stream_decoder_hides_usage_the_caller_did_not_ask_for_but_records_it() -> None:
    decoder = OpenAIStreamDecoder(include_usage=False)
    chunks = decode(decoder, [OPENAI_STREAM])
    assert len(chunks) == 3
    assert all(chunk["choices"] and "usage" not in chunk for chunk in chunks)
    assert decoder.usage is not None and decoder.usage.completion_tokens == 5


def test_an_error_event_inside_an_openai_stream_raises_a_provider_error() -> None:
    decoder = OpenAIStreamDecoder(include_usage=False)
    data = sse_data({"error": {"message": "The server had an error", "type": "server_error",
                               "param": None, "code": None}})
    with pytest.raises(ProviderError) as caught:
        decoder.feed(data)
    assert caught.value.message == "The server had an error"
    assert caught.value.status >= 500


def test_a_stream_event_that_is_not_json_is_a_bad_gateway_error() -> None:
    with pytest.raises(ProviderError) as caught:
        OpenAIStreamDecoder(include_usage=False).feed(b"data: {not json\n\n")
    assert caught.value.status == 502


@pytest.mark.parametrize(("status", "headers", "body", "expected"), [
    (400, [], {"error": {"message": "This model's maximum context length is 8192 tokens.",
                         "type": "invalid_request_error", "param": "messages",
                         "code": "context_length_exceeded"}},
     (400, "invalid_request_error", "context_length_exceeded", "messages", None)),
    (400, [], {"error": {"message": "Please reduce: the maximum context length is 4096",
                         "type": "invalid_request_error", "param": None, "code": None}},
     (400, "invalid_request_error", "context_length_exceeded", None, None)),
    (429, [("retry-after", "20")], {"error": {"message": "Rate limit reached", "type": "requests",
                                              "param": None, "code": "rate_limit_exceeded"}},
     (429, "requests", "rate_limit_exceeded", None, "20")),
    (429, [("retry-after-ms", "1500")], {"error": {"message": "slow down"}},
     (429, "rate_limit_error", None, None, "1.5")),
    (401, [], {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                         "param": None, "code": "invalid_api_key"}},
     (401, "invalid_request_error", "invalid_api_key", None, None)),
    (503, [], b"<html>Service Unavailable</html>",
     (503, "server_error", None, None, None)),
    (500, [], {"error": "boom"}, (500, "server_error", None, None, None)),
    (422, [], {"detail": [{"loc": ["body", "temperature"], "msg": "must be <= 2"}]},
     (400, "invalid_request_error", None, None, None)),
])
def test_openai_errors_map_to_provider_errors(status: int, headers: list[tuple[str, str]],
                                              body: Any, expected: tuple) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    error = get_adapter("openai").error_from_upstream(target("openai"), status, headers, raw)
    assert (error.status, openai_type(error), error.code, error.param, error.retry_after) == expected
    assert error.message
    assert openai_dialect.error_object(error)["error"]["message"] == error.message


def test_an_empty_error_body_still_gives_a_message_naming_the_status() -> None:
    error = openai_error_from_upstream(502, [], b"", "openai")
    assert error.message == "openai returned HTTP 502"


def test_a_successful_body_that_is_not_a_json_object_is_a_bad_gateway_error() -> None:
    with pytest.raises(ProviderError) as caught:
        get_adapter("openai").chat_response(target("openai"), 200, [], b"[1, 2]")
    assert caught.value.status == 502


# -- Azure -------------------------------------------------------------------------


def test_azure_routes_by_deployment_with_an_api_version_and_an_api_key_header() -> None:
    t = target("azure", model="gpt4o-prod", api_base="https://res.openai.azure.com/",
               api_key="az-key")
    adapter = get_adapter("azure")
    assert adapter.speaks_openai
    call = adapter.chat_request(t, {"model": "x", "messages": USER_MESSAGES}, stream=False)
    assert call.url == ("https://res.openai.azure.com/openai/deployments/gpt4o-prod/"
                        "chat/completions?api-version=2024-10-21")
    headers = headers_dict(call)
    assert headers["api-key"] == "az-key"
    assert "authorization" not in headers
    embed = adapter.embeddings_request(
        target("azure", model="emb", api_base="https://r", api_version="2024-06-01"),
        {"model": "x", "input": "hi"})
    assert embed.url == "https://r/openai/deployments/emb/embeddings?api-version=2024-06-01"
    v1 = adapter.chat_request(target("azure", model="gpt", api_base="https://r",
                                     api_version="v1"), {"messages": USER_MESSAGES}, stream=True)
    assert v1.url == "https://r/openai/v1/chat/completions"
    assert orjson.loads(v1.body)["model"] == "gpt"


def test_azure_content_filter_errors_are_a_400_with_code_content_filter() -> None:
    body = orjson.dumps({"error": {"message": "The response was filtered", "type": None,
                                   "param": "prompt", "code": "content_filter", "status": 400,
                                   "innererror": {"code": "ResponsibleAIPolicyViolation"}}})
    error = get_adapter("azure").error_from_upstream(target("azure"), 400, [], body)
    assert (error.status, error.code, openai_type(error)) == (400, "content_filter",
                                                      "invalid_request_error")


def test_azure_without_an_api_base_is_a_clear_configuration_error() -> None:
    with pytest.raises(ProviderError) as caught:
        get_adapter("azure").chat_request(target("azure"), {"messages": []}, stream=False)
    assert "api_base" in caught.value.message


# -- OpenAI-compatible ---------------------------------------------------------------


def test_openai_compatible_sends_no_authorization_without_a_key_and_needs_an_api_base() -> None:
    adapter = get_adapter("openai_compatible")
    call = adapter.chat_request(target("openai_compatible", api_base="http://localhost:8000/v1"),
                                {"model": "m", "messages": USER_MESSAGES}, stream=False)
    assert call.url == "http://localhost:8000/v1/chat/completions"
    assert "authorization" not in headers_dict(call)
    keyed = adapter.chat_request(target("openai_compatible", api_base="http://h/v1",
                                        api_key="gsk"), {"messages": USER_MESSAGES}, stream=True)
    assert headers_dict(keyed)["authorization"] == "Bearer gsk"
    with pytest.raises(ProviderError):
        adapter.chat_request(target("openai_compatible"), {"messages": USER_MESSAGES},
                             stream=False)


# -- Mistral -------------------------------------------------------------------------


def test_mistral_request_drops_and_renames_what_mistral_would_reject() -> None:
    body = {
        "model": "public", "stream": False, "stream_options": {"include_usage": True},
        "max_completion_tokens": 100, "seed": 3, "user": "u1", "logprobs": True, "store": True,
        "n": 2, "response_format": {"type": "json_object"}, "parallel_tool_calls": False,
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "weather?", "name": "alice"},
            {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
                {"id": "call_abc123def456", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_abc123def456", "content": "sunny"},
        ],
    }
    call = get_adapter("mistral").chat_request(target("mistral", api_key="mk"), body, stream=True)
    assert call.url == "https://api.mistral.ai/v1/chat/completions"
    assert headers_dict(call)["authorization"] == "Bearer mk"
    sent = orjson.loads(call.body)
    assert sent["model"] == "upstream-model"
    assert sent["stream"] is True
    assert sent["max_tokens"] == 100 and sent["random_seed"] == 3 and sent["n"] == 2
    for dropped in ("stream_options", "max_completion_tokens", "seed", "user", "logprobs",
                    "store"):
        assert dropped not in sent
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["messages"][1] == {"role": "user", "content": "weather?"}
    call_id = sent["messages"][2]["tool_calls"][0]["id"]
    assert len(call_id) == 9 and call_id.isalnum()
    assert sent["messages"][3]["tool_call_id"] == call_id
    assert "refusal" not in sent["messages"][2]


def test_mistral_tool_call_ids_that_are_already_valid_are_kept() -> None:
    assert mistral_tool_call_id("D681PevKs") == "D681PevKs"
    assert mistral_tool_call_id("call_1") == mistral_tool_call_id("call_1")
    assert mistral_tool_call_id("call_1") != mistral_tool_call_id("call_2")


def test_mistral_response_with_list_content_and_tool_calls_becomes_openai_shaped() -> None:
    body = orjson.dumps({
        "id": "abc", "object": "chat.completion", "created": 5, "model": "magistral-small",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant",
            "content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
                        {"type": "text", "text": "Calling."}],
            "tool_calls": [{"id": "D681PevKs", "function": {"name": "get_weather",
                                                             "arguments": {"city": "Paris"}}}]}},
                    {"index": 1, "finish_reason": "model_length",
                     "message": {"role": "assistant", "content": "cut"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}})
    result = get_adapter("mistral").chat_response(target("mistral"), 200, [], body)
    first, second = result["choices"]
    assert first["message"]["content"] == "Calling."
    assert first["message"]["tool_calls"] == [{"id": "D681PevKs", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert first["finish_reason"] == "tool_calls"
    assert second["finish_reason"] == "length"
    assert result["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    assert result["object"] == "chat.completion"


MISTRAL_STREAM = b"".join([
    sse_data({"id": "m1", "object": "chat.completion.chunk", "created": 2, "model": "mistral-small",
              "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                           "finish_reason": None}]}),
    sse_data({"id": "m1", "object": "chat.completion.chunk", "created": 2, "model": "mistral-small",
              "choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "Sal"}]},
                           "finish_reason": None}]}),
    sse_data({"id": "m1", "object": "chat.completion.chunk", "created": 2, "model": "mistral-small",
              "choices": [{"index": 0, "delta": {"tool_calls": [
                  {"id": "D681PevKs", "function": {"name": "f", "arguments": "{}"}}]},
                  "finish_reason": None}]}),
    sse_data({"id": "m1", "object": "chat.completion.chunk", "created": 2, "model": "mistral-small",
              "choices": [{"index": 0, "delta": {"content": "ut"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}),
    SSE_DONE,
])


def test_mistral_stream_becomes_openai_chunks_with_a_separate_usage_chunk_when_asked() -> None:
    adapter = get_adapter("mistral")
    t = target("mistral")
    chunks = assert_split_invariant(
        lambda: adapter.chat_stream_decoder(t, include_usage=True), MISTRAL_STREAM)
    assert [chunk["choices"][0]["delta"] for chunk in chunks[:4]] == [
        {"role": "assistant", "content": ""}, {"content": "Sal"},
        {"tool_calls": [{"index": 0, "id": "D681PevKs", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
        {"content": "ut"}]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert all(chunk["usage"] is None for chunk in chunks[:4])
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}

    decoder = adapter.chat_stream_decoder(t, include_usage=False)
    plain = decode(decoder, [MISTRAL_STREAM])
    assert len(plain) == 4 and all("usage" not in chunk for chunk in plain)
    assert decoder.usage is not None and decoder.usage.prompt_tokens == 7
    assert decoder.finish_reason == "stop"


def test_mistral_validation_errors_in_either_shape_become_400s() -> None:
    adapter = get_adapter("mistral")
    nested = orjson.dumps({"object": "error", "message": {"detail": [
        {"type": "extra_forbidden", "loc": ["body", "foo"], "msg": "Extra inputs are not "
                                                                   "permitted"}]},
        "type": "invalid_request_message_error", "param": None, "code": None})
    error = adapter.error_from_upstream(target("mistral"), 422, [], nested)
    assert error.status == 400
    assert "body.foo: Extra inputs are not permitted" in error.message
    context = orjson.dumps({"object": "error", "message": "Prompt contains 40000 tokens and 0 "
                            "draft tokens, too large for model with 32768 maximum context length",
                            "type": "invalid_request_error", "param": None, "code": None})
    error = adapter.error_from_upstream(target("mistral"), 400, [], context)
    assert error.code == "context_length_exceeded"
    error = adapter.error_from_upstream(target("mistral"), 401, [],
                                        b'{"message":"Unauthorized","request_id":"x"}')
    assert (error.status, error.message, openai_type(error)) == (401, "Unauthorized",
                                                         "authentication_error")


# -- Ollama --------------------------------------------------------------------------

PNG_B64 = base64.b64encode(b"\x89PNG fake image").decode()


def test_ollama_request_uses_its_native_shape() -> None:
    body = {
        "model": "public", "temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "seed": 1,
        "stop": "END", "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}},
        "tools": TOOLS,
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    }
    t = target("ollama", model="llama3.2", api_base="http://127.0.0.1:11434",
               options={"num_ctx": 8192, "keep_alive": "5m"})
    call = get_adapter("ollama").chat_request(t, body, stream=True)
    assert call.url == "http://127.0.0.1:11434/api/chat"
    assert "authorization" not in headers_dict(call)
    sent = orjson.loads(call.body)
    assert sent["model"] == "llama3.2" and sent["stream"] is True
    assert sent["options"] == {"temperature": 0.2, "top_p": 0.9, "seed": 1, "num_predict": 64,
                               "stop": ["END"], "num_ctx": 8192}
    assert sent["format"] == {"type": "object"}
    assert sent["keep_alive"] == "5m"
    assert sent["tools"] == TOOLS
    assert sent["messages"][1] == {"role": "user", "content": "what is this", "images": [PNG_B64]}
    assert sent["messages"][2]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert sent["messages"][3] == {"role": "tool", "content": "sunny",
                                   "tool_name": "get_weather"}
    json_mode = get_adapter("ollama").chat_request(
        t, {"messages": USER_MESSAGES, "response_format": {"type": "json_object"}}, stream=False)
    assert orjson.loads(json_mode.body)["format"] == "json"
    assert orjson.loads(json_mode.body)["stream"] is False


def test_ollama_refuses_image_urls_it_cannot_fetch_with_a_clear_400() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}
    with pytest.raises(ProviderError) as caught:
        get_adapter("ollama").chat_request(target("ollama"), body, stream=False)
    assert caught.value.status == 400
    assert "data: URL" in caught.value.message


def test_ollama_response_becomes_an_openai_completion() -> None:
    body = orjson.dumps({"model": "llama3.2", "created_at": "2024-01-01T00:00:00Z",
                         "message": {"role": "assistant", "content": "",
                                     "tool_calls": [{"function": {"name": "get_weather",
                                                                  "arguments": {"city": "Oslo"}}}]},
                         "done": True, "done_reason": "stop", "prompt_eval_count": 20,
                         "eval_count": 6})
    result = get_adapter("ollama").chat_response(target("ollama"), 200, [], body)
    assert result["object"] == "chat.completion"
    assert result["id"].startswith("chatcmpl-")
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert result["usage"] == {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}


OLLAMA_STREAM = b"".join(orjson.dumps(line) + b"\n" for line in [
    {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "Hé"},
     "done": False},
    {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "llo \U0001f600"},
     "done": False},
    {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": ""},
     "done": True, "done_reason": "length", "prompt_eval_count": 12, "eval_count": 2},
])


def _without_ids(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in chunk.items() if key not in ("id", "created")}
            for chunk in chunks]


def test_ollama_ndjson_stream_becomes_openai_chunks_however_it_is_split() -> None:
    adapter = get_adapter("ollama")
    t = target("ollama", model="llama3.2")
    chunks = assert_split_invariant(lambda: adapter.chat_stream_decoder(t, include_usage=True),
                                    OLLAMA_STREAM, _without_ids)
    assert [chunk["choices"][0]["delta"] for chunk in chunks[:3]] == [
        {"role": "assistant", "content": "Hé"}, {"content": "llo \U0001f600"}, {}]
    assert chunks[2]["choices"][0]["finish_reason"] == "length"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 14
    decoder = adapter.chat_stream_decoder(t, include_usage=False)
    plain = decode(decoder, [OLLAMA_STREAM])
    assert len(plain) == 3 and len({chunk["id"] for chunk in plain}) == 1
    assert decoder.usage is not None and decoder.usage.completion_tokens == 2
    assert decoder.is_done


def test_an_ollama_error_line_mid_stream_raises_a_provider_error() -> None:
    decoder = get_adapter("ollama").chat_stream_decoder(target("ollama"), include_usage=False)
    with pytest.raises(ProviderError) as caught:
        decoder.feed(b'{"error":"an error was encountered while running the model"}\n')
    assert "running the model" in caught.value.message


def test_ollama_errors_name_a_missing_model() -> None:
    error = get_adapter("ollama").error_from_upstream(
        target("ollama"), 404, [], b'{"error":"model \\"nope\\" not found, try pulling it first"}')
    assert (error.status, error.code, openai_type(error)) == (404, "model_not_found", "not_found_error")
    assert "try pulling it first" in error.message


def test_ollama_embeddings_use_api_embed_and_can_be_encoded_as_base64() -> None:
    adapter = get_adapter("ollama")
    t = target("ollama", model="nomic-embed-text")
    call = adapter.embeddings_request(t, {"model": "x", "input": ["a", "b"]})
    assert call.url == "http://localhost:11434/api/embed"
    assert orjson.loads(call.body) == {"model": "nomic-embed-text", "input": ["a", "b"]}
    raw = orjson.dumps({"model": "nomic-embed-text", "embeddings": [[0.5, -1.0], [0.25, 2.0]],
                        "prompt_eval_count": 4})
    result = adapter.embeddings_response(t, 200, [], raw)
    assert [item["embedding"] for item in result["data"]] == [[0.5, -1.0], [0.25, 2.0]]
    assert result["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    encoded = adapter.embeddings_response(t, 200, [], raw, encoding_format="base64")
    assert struct.unpack("<2f", base64.b64decode(encoded["data"][1]["embedding"])) == (0.25, 2.0)
    with pytest.raises(ProviderError):
        adapter.embeddings_request(t, {"input": [[1, 2, 3]]})
    with pytest.raises(UnsupportedOperation):
        adapter.completions_request(t, {"prompt": "x"}, stream=False)


# -- mock provider -----------------------------------------------------------------


def mock_target(**options: Any) -> Target:
    return target("mock", model="mock-gpt", options=options)


async def test_mock_answers_deterministically_from_the_last_user_message() -> None:
    adapter = get_adapter("mock")
    assert adapter.speaks_openai
    call = adapter.chat_request(mock_target(completion_tokens=12),
                                {"model": "p", "messages": USER_MESSAGES}, stream=False)
    assert call.url.startswith("mock://")
    response = serve_mock(call)
    assert response.status == 200
    assert ("content-type", "application/json") in response.headers
    completion = adapter.chat_response(mock_target(), 200, response.headers,
                                       await collect(response))
    text = completion["choices"][0]["message"]["content"]
    assert text.startswith("Mock response to: What is the weather in Paris today?")
    assert len(text.split()) == 12
    assert completion["model"] == "mock-gpt"
    assert completion["usage"]["completion_tokens"] == 12
    assert completion["usage"]["prompt_tokens"] > 0
    again = await collect(serve_mock(call))
    assert orjson.loads(again)["choices"][0]["message"]["content"] == text


async def test_mock_streams_openai_sse_with_the_configured_chunk_count_and_usage() -> None:
    adapter = get_adapter("mock")
    t = mock_target(chunk_count=5, completion_tokens=20)
    body = {"messages": USER_MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    response = serve_mock(adapter.chat_request(t, body, stream=True))
    assert ("content-type", "text/event-stream") in response.headers
    pieces = [chunk async for chunk in response.body_chunks]
    assert pieces[-1] == SSE_DONE
    decoder = adapter.chat_stream_decoder(t, include_usage=True)
    chunks = decode(decoder, pieces)
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert contents[0] == "" and len([c for c in contents if c]) == 5
    assert len("".join(c for c in contents if c).split()) == 20
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 20
    assert decoder.finish_reason == "stop" and decoder.is_done


async def test_mock_calls_the_first_tool_and_answers_n_choices() -> None:
    adapter = get_adapter("mock")
    body = {"messages": USER_MESSAGES, "tools": TOOLS, "n": 2}
    completion = orjson.loads(await collect(serve_mock(
        adapter.chat_request(mock_target(), body, stream=False))))
    assert [choice["index"] for choice in completion["choices"]] == [0, 1]
    for choice in completion["choices"]:
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                  "arguments": "{}"}
    none = orjson.loads(await collect(serve_mock(adapter.chat_request(
        mock_target(), {**body, "tool_choice": "none", "n": 1}, stream=False))))
    assert none["choices"][0]["message"]["content"].startswith("Mock response")
    streamed = decode(adapter.chat_stream_decoder(mock_target(), include_usage=False),
                      [await collect(serve_mock(adapter.chat_request(
                          mock_target(), {**body, "n": 1}, stream=True)))])
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in streamed
             if c["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(call["function"]["arguments"] for call in calls) == "{}"


async def test_mock_caps_the_reply_at_max_tokens_with_finish_reason_length() -> None:
    completion = orjson.loads(await collect(serve_mock(get_adapter("mock").chat_request(
        mock_target(), {"messages": USER_MESSAGES, "max_tokens": 3}, stream=False))))
    assert completion["choices"][0]["message"]["content"] == "Mock response to:"
    assert completion["choices"][0]["finish_reason"] == "length"


async def test_mock_embeddings_are_deterministic_unit_vectors() -> None:
    adapter = get_adapter("mock")
    call = adapter.embeddings_request(mock_target(), {"model": "e", "input": ["cat", "dog", "cat"]})
    result = orjson.loads(await collect(serve_mock(call)))
    vectors = [item["embedding"] for item in result["data"]]
    assert len(vectors[0]) == 64
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert math.isclose(sum(x * x for x in vectors[1]), 1.0, rel_tol=1e-9)
    sized = orjson.loads(await collect(serve_mock(adapter.embeddings_request(
        mock_target(), {"input": "cat", "dimensions": 8, "encoding_format": "base64"}))))
    assert len(base64.b64decode(sized["data"][0]["embedding"])) == 8 * 4
    bad = serve_mock(adapter.embeddings_request(mock_target(), {"input": {"x": 1}}))
    assert bad.status == 400


async def test_mock_serves_legacy_completions() -> None:
    adapter = get_adapter("mock")
    result = orjson.loads(await collect(serve_mock(adapter.completions_request(
        mock_target(completion_tokens=6), {"prompt": "Say hi", "max_tokens": 50}, stream=False))))
    assert result["object"] == "text_completion"
    assert result["choices"][0]["text"] == " Mock response to: Say hi lorem"
    streamed = await collect(serve_mock(adapter.completions_request(
        mock_target(completion_tokens=6), {"prompt": "Say hi"}, stream=True)))
    events = SSEParser().feed(streamed)
    assert events[-1].data == "[DONE]"
    assert "".join(orjson.loads(e.data)["choices"][0]["text"] for e in events[:-1]) == \
        " Mock response to: Say hi lorem"


@pytest.mark.parametrize(("options", "body_extra", "headers", "status"), [
    ({"fail_status": 503}, {}, (), 503),
    ({}, {"metadata": {"mock_fail": 429}}, (), 429),
    ({}, {}, (("x-mock-fail", "500"),), 500),
    ({"fail_rate": 1.0}, {}, (), 500),
])
async def test_mock_injects_failures_in_openai_error_shape(
        options: dict[str, Any], body_extra: dict[str, Any],
        headers: tuple[tuple[str, str], ...], status: int) -> None:
    adapter = get_adapter("mock")
    t = target("mock", options=options, headers=headers)
    response = serve_mock(adapter.chat_request(t, {"messages": USER_MESSAGES, **body_extra},
                                               stream=True))
    assert response.status == status
    body = await collect(response)
    error = adapter.error_from_upstream(t, status, response.headers, body)
    assert error.status == status and "mock failure" in error.message
    if status == 429:
        assert error.retry_after == "1"


async def test_mock_rejects_bad_options_and_bad_bodies_with_a_400() -> None:
    bad_option = serve_mock(get_adapter("mock").chat_request(
        mock_target(latency_ms="soon"), {"messages": USER_MESSAGES}, stream=False))
    assert bad_option.status == 400
    assert b"latency_ms" in await collect(bad_option)
    for call in (UpstreamCall("POST", "mock://mock/v1/chat/completions", [], b"{nope"),
                 UpstreamCall("POST", "mock://mock/v1/chat/completions", [], b"[]"),
                 UpstreamCall("POST", "mock://mock/v1/chat/completions", [], b'{"messages":[]}'),
                 UpstreamCall("POST", "http://elsewhere/v1/chat/completions", [], b"{}")):
        response = serve_mock(call)
        assert response.status == 400
        assert "error" in orjson.loads(await collect(response))
    assert serve_mock(UpstreamCall("POST", "mock://mock/v1/nowhere", [], b"{}")).status == 404


async def test_mock_waits_its_latency_before_the_first_byte() -> None:
    response = serve_mock(get_adapter("mock").chat_request(
        mock_target(latency_ms=150), {"messages": USER_MESSAGES}, stream=False))
    started = time.monotonic()
    await collect(response)
    assert time.monotonic() - started >= 0.14


async def test_a_mock_stream_can_die_or_stall_mid_way() -> None:
    adapter = get_adapter("mock")
    died = await collect(serve_mock(adapter.chat_request(
        mock_target(die_after_chunks=2), {"messages": USER_MESSAGES}, stream=True)))
    decoder = adapter.chat_stream_decoder(mock_target(), include_usage=False)
    assert len(decode(decoder, [died])) == 2 and not decoder.is_done
    stalled = serve_mock(adapter.chat_request(
        mock_target(stall_after_chunks=1), {"messages": USER_MESSAGES}, stream=True))
    iterator = stalled.body_chunks.__aiter__()
    await iterator.__anext__()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(iterator.__anext__(), 0.2)


def test_every_owned_provider_is_reachable_by_name_with_the_adapter_contract() -> None:
    for name in ("openai", "azure", "mistral", "ollama", "openai_compatible", "mock"):
        adapter = get_adapter(name)
        assert adapter.name == name
        for method in ("chat_request", "chat_response", "chat_stream_decoder",
                       "embeddings_request", "embeddings_response", "error_from_upstream"):
            assert callable(getattr(adapter, method))
    assert not get_adapter("mistral").speaks_openai and not get_adapter("ollama").speaks_openai


# -- untrusted input never crashes ------------------------------------------------

_FUZZ_KEYS = [
    "id", "object", "created", "model", "choices", "delta", "message", "content", "role",
    "tool_calls", "function", "name", "arguments", "index", "finish_reason", "usage",
    "prompt_tokens", "completion_tokens", "prompt_tokens_details", "cached_tokens", "done",
    "done_reason", "prompt_eval_count", "eval_count", "error", "detail", "type", "text",
    "embeddings", "data", "embedding", "messages", "tools", "tool_choice", "tool_call_id",
    "image_url", "url", "n", "max_tokens", "stop", "response_format", "input", "dimensions",
    "encoding_format", "prompt", "metadata", "mock_fail", "stream_options", "include_usage",
]
_FUZZ_SCALARS = (st.none() | st.booleans() | st.integers(-3, 300)
                 | st.floats(allow_nan=False, allow_infinity=False)
                 | st.sampled_from(["", "stop", "length", "tool_calls", "model_length", "user",
                                    "assistant", "tool", "text", "image_url", "none",
                                    "json_object", "base64", "data:image/png;base64,AAAA"]))
_FUZZ_JSON = st.recursive(
    _FUZZ_SCALARS,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(_FUZZ_KEYS), children, max_size=5),
    max_leaves=25)
_FUZZ_OBJECTS = st.dictionaries(st.sampled_from(_FUZZ_KEYS), _FUZZ_JSON, max_size=7)
_FUZZ_PROVIDERS = st.sampled_from(["openai", "azure", "mistral", "ollama", "openai_compatible",
                                   "mock"])
_FUZZ_SETTINGS = settings(max_examples=100, deadline=None,
                          suppress_health_check=list(HealthCheck))


@_FUZZ_SETTINGS
@given(st.binary(max_size=300), st.integers(1, 50))
def test_the_sse_parser_takes_any_bytes_without_crashing(data: bytes, cut: int) -> None:
    parser = SSEParser()
    events = parser.feed(data[:cut]) + parser.feed(data[cut:]) + parser.close()
    assert all(isinstance(event.data, str) for event in events)


@_FUZZ_SETTINGS
@given(st.lists(_FUZZ_OBJECTS, max_size=4), _FUZZ_PROVIDERS, st.booleans())
def test_any_upstream_json_gives_openai_shapes_or_a_provider_error(
        items: list[dict[str, Any]], provider: str, include_usage: bool) -> None:
    adapter = get_adapter(provider)
    t = target(provider, api_base="http://127.0.0.1:9")
    if provider == "ollama":
        data = b"".join(orjson.dumps(item) + b"\n" for item in items)
    else:
        data = b"".join(sse_data(item) for item in items)
    decoder = adapter.chat_stream_decoder(t, include_usage=include_usage)
    try:
        chunks = decode(decoder, [data])
        assert all(isinstance(chunk, dict) for chunk in chunks)
    except ProviderError:
        pass
    for item in items:
        raw = orjson.dumps(item)
        for convert in (adapter.chat_response, adapter.embeddings_response):
            try:
                assert isinstance(convert(t, 200, [], raw), dict)
            except ProviderError:
                pass
        error = adapter.error_from_upstream(t, 400, [], raw)
        assert error.message and openai_dialect.error_body(error)


@_FUZZ_SETTINGS
@given(_FUZZ_OBJECTS, _FUZZ_PROVIDERS, st.booleans())
def test_any_request_body_gives_an_upstream_call_or_a_provider_error(
        body: dict[str, Any], provider: str, stream: bool) -> None:
    adapter = get_adapter(provider)
    t = target(provider, api_base="" if provider == "mock" else "http://127.0.0.1:9",
               options={"chunk_count": 3})
    for build in (lambda: adapter.chat_request(t, body, stream=stream),
                  lambda: adapter.embeddings_request(t, body)):
        try:
            call = build()
        except ProviderError:
            continue
        assert isinstance(call.body, bytes)
        if provider == "mock":
            response = serve_mock(call)
            data = asyncio.run(collect(response))
            if response.status != 200:
                assert "error" in orjson.loads(data)


# -- against the mock upstream servers ----------------------------------------------

upstreams = pytest.importorskip("upstreams.server")
from upstreams.ollama_mock import build_ollama_mock
from upstreams.openai_mock import build_openai_mock
from upstreams.server import UpstreamThread, start_upstream, stop_upstream
from upstreams.state import UpstreamState


class Upstream:
    def __init__(self, state: UpstreamState, base: str, client: httpx.AsyncClient) -> None:
        self.state = state
        self.base = base
        self.client = client

    async def send(self, call: UpstreamCall) -> httpx.Response:
        return await self.client.request(call.method, call.url, headers=call.headers,
                                         content=call.body)


@pytest.fixture
async def openai_upstream() -> AsyncIterator[Upstream]:
    state = UpstreamState()
    server, port = await start_upstream(build_openai_mock(state))
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            yield Upstream(state, f"http://127.0.0.1:{port}", client)
    finally:
        await stop_upstream(server)


@pytest.fixture
async def ollama_upstream() -> AsyncIterator[Upstream]:
    state = UpstreamState()
    server, port = await start_upstream(build_ollama_mock(state))
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            yield Upstream(state, f"http://127.0.0.1:{port}", client)
    finally:
        await stop_upstream(server)


def upstream_targets(upstream: Upstream, model: str = "gpt-4o-mini") -> list[Target]:
    state, base = upstream.state, upstream.base
    return [
        target("openai", model=model, api_base=base + "/v1", api_key=state.openai_api_key),
        target("azure", model=model, api_base=base, api_key=state.azure_api_key),
        target("mistral", model=model, api_base=base + "/mistral/v1",
               api_key=state.mistral_api_key),
        target("openai_compatible", model=model, api_base=base + "/compat/v1"),
    ]


async def test_every_openai_family_adapter_round_trips_through_its_mock_upstream(
        openai_upstream: Upstream) -> None:
    body = {"model": "public-model", "messages": USER_MESSAGES, "max_completion_tokens": 100,
            "stream_options": {"include_usage": True}, "user": "end-user-1"}
    for t in upstream_targets(openai_upstream):
        adapter = get_adapter(t.provider)
        response = await openai_upstream.send(adapter.chat_request(t, body, stream=False))
        assert response.status_code == 200, (t.provider, response.text)
        completion = adapter.chat_response(t, 200, list(response.headers.items()),
                                           response.content)
        assert completion["choices"][0]["message"]["content"].startswith(
            "Mock response to: What is the weather"), t.provider
        assert completion["usage"]["completion_tokens"] == 16

        response = await openai_upstream.send(adapter.chat_request(t, body, stream=True))
        assert response.status_code == 200, (t.provider, response.text)
        assert response.headers["content-type"].startswith("text/event-stream")
        decoder = adapter.chat_stream_decoder(t, include_usage=True)
        chunks = decode(decoder, [response.content])
        text = "".join(choice["delta"].get("content") or ""
                       for chunk in chunks for choice in chunk["choices"])
        assert text.startswith("Mock response to: What is the weather"), t.provider
        assert decoder.usage is not None and decoder.usage.completion_tokens == 16, t.provider
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16
        assert all(chunk["choices"] for chunk in chunks[:-1]), t.provider
        assert decoder.finish_reason == "stop" and decoder.is_done
    paths = openai_upstream.state.paths()
    assert "/openai/deployments/gpt-4o-mini/chat/completions" in paths
    azure_request = next(r for r in openai_upstream.state.requests if r.path.startswith("/openai"))
    assert azure_request.query["api-version"] == ["2024-10-21"]
    assert azure_request.header("api-key") == openai_upstream.state.azure_api_key
    mistral_request = next(r for r in openai_upstream.state.requests
                           if r.path.startswith("/mistral"))
    assert mistral_request.json["max_tokens"] == 100 and "user" not in mistral_request.json


async def test_mistral_mock_accepts_a_translated_tool_conversation_and_lists_content(
        openai_upstream: Upstream) -> None:
    state = openai_upstream.state
    t = target("mistral", model="magistral-medium", api_base=openai_upstream.base + "/mistral/v1",
               api_key=state.mistral_api_key)
    body = {"messages": [
        *USER_MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_Xy12345678901234", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_Xy12345678901234", "content": "sunny"},
        {"role": "user", "content": "thanks"}], "tools": TOOLS, "tool_choice": "none"}
    adapter = get_adapter("mistral")
    response = await openai_upstream.send(adapter.chat_request(t, body, stream=False))
    assert response.status_code == 200, response.text
    completion = adapter.chat_response(t, 200, [], response.content)
    assert completion["choices"][0]["message"]["content"].startswith("Mock response to: thanks")
    raw = await openai_upstream.client.post(
        openai_upstream.base + "/mistral/v1/chat/completions",
        headers={"authorization": f"Bearer {state.mistral_api_key}"},
        content=orjson.dumps({"model": "m", "messages": USER_MESSAGES,
                              "stream_options": {"include_usage": True}}))
    assert raw.status_code == 422
    error = adapter.error_from_upstream(t, 422, [], raw.content)
    assert error.status == 400 and "stream_options" in error.message


async def test_wrong_keys_come_back_as_401_provider_errors(openai_upstream: Upstream) -> None:
    for t in upstream_targets(openai_upstream)[:3]:
        wrong = target(t.provider, model=t.model, api_base=t.api_base, api_key="wrong-key")
        adapter = get_adapter(t.provider)
        response = await openai_upstream.send(
            adapter.chat_request(wrong, {"messages": USER_MESSAGES}, stream=False))
        assert response.status_code == 401
        error = adapter.error_from_upstream(wrong, 401, list(response.headers.items()),
                                            response.content)
        assert error.status == 401 and error.message, t.provider


async def test_injected_failures_keep_status_and_retry_after(openai_upstream: Upstream) -> None:
    state = openai_upstream.state
    t = upstream_targets(openai_upstream)[0]
    adapter = get_adapter("openai")
    state.fail_next = (429, {"error": {"message": "Rate limit reached for requests",
                                       "type": "requests", "param": None,
                                       "code": "rate_limit_exceeded"}})
    state.fail_next_headers = [("retry-after", "7")]
    response = await openai_upstream.send(adapter.chat_request(
        t, {"messages": USER_MESSAGES}, stream=True))
    error = adapter.error_from_upstream(t, response.status_code, list(response.headers.items()),
                                        response.content)
    assert (error.status, error.code, error.retry_after) == (429, "rate_limit_exceeded", "7")
    for provider_target in upstream_targets(openai_upstream, model="context-overflow"):
        provider = get_adapter(provider_target.provider)
        response = await openai_upstream.send(provider.chat_request(
            provider_target, {"messages": USER_MESSAGES}, stream=False))
        error = provider.error_from_upstream(provider_target, response.status_code,
                                             list(response.headers.items()), response.content)
        assert (error.status, error.code) == (400, "context_length_exceeded"), \
            provider_target.provider
    azure = target("azure", model="content-filter", api_base=openai_upstream.base,
                   api_key=state.azure_api_key)
    response = await openai_upstream.send(get_adapter("azure").chat_request(
        azure, {"messages": USER_MESSAGES}, stream=False))
    error = get_adapter("azure").error_from_upstream(azure, response.status_code, [],
                                                     response.content)
    assert (error.status, error.code) == (400, "content_filter")
    bad_version = target("azure", model="d", api_base=openai_upstream.base,
                         api_key=state.azure_api_key, api_version="1999-01-01")
    response = await openai_upstream.send(get_adapter("azure").chat_request(
        bad_version, {"messages": USER_MESSAGES}, stream=False))
    assert response.status_code == 400


async def test_mock_upstream_embeddings_and_legacy_completions(openai_upstream: Upstream) -> None:
    for t in upstream_targets(openai_upstream, model="text-embedding-3-small"):
        adapter = get_adapter(t.provider)
        response = await openai_upstream.send(adapter.embeddings_request(
            t, {"model": "x", "input": ["a", "b"], "dimensions": 16}))
        assert response.status_code == 200, (t.provider, response.text)
        result = adapter.embeddings_response(t, 200, [], response.content)
        assert [len(item["embedding"]) for item in result["data"]] == [16, 16], t.provider
        assert result["usage"]["prompt_tokens"] > 0
    openai_target = upstream_targets(openai_upstream)[0]
    response = await openai_upstream.send(get_adapter("openai").completions_request(
        openai_target, {"prompt": "Once", "max_tokens": 4}, stream=False))
    completion = get_adapter("openai").completions_response(openai_target, 200, [],
                                                            response.content)
    assert completion["object"] == "text_completion"
    assert completion["choices"][0]["text"] == " Mock response to: Once"


async def test_mock_upstream_streams_can_stall_or_die(openai_upstream: Upstream) -> None:
    t = upstream_targets(openai_upstream, model="stall-stream")[0]
    call = get_adapter("openai").chat_request(t, {"messages": USER_MESSAGES}, stream=True)
    received = b""
    with pytest.raises(httpx.ReadTimeout):
        async with openai_upstream.client.stream(
                call.method, call.url, headers=call.headers, content=call.body,
                timeout=httpx.Timeout(10.0, read=2.0)) as response:
            async for piece in response.aiter_bytes():
                received += piece
    assert received.count(b"data: ") == 2
    dying = upstream_targets(openai_upstream, model="die-stream")[0]
    call = get_adapter("openai").chat_request(dying, {"messages": USER_MESSAGES}, stream=True)
    with pytest.raises(httpx.RemoteProtocolError):
        await openai_upstream.send(call)


async def test_ollama_round_trips_through_its_mock_upstream(ollama_upstream: Upstream) -> None:
    adapter = get_adapter("ollama")
    t = target("ollama", model="llama3.2", api_base=ollama_upstream.base)
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe this picture"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]}],
        "max_tokens": 6, "temperature": 0}
    response = await ollama_upstream.send(adapter.chat_request(t, body, stream=False))
    assert response.status_code == 200, response.text
    completion = adapter.chat_response(t, 200, [], response.content)
    assert completion["choices"][0]["message"]["content"] == "Mock response to: Describe this picture"
    assert completion["choices"][0]["finish_reason"] == "length"
    sent = ollama_upstream.state.last.json
    assert sent["messages"][0]["images"] == [PNG_B64]
    assert sent["options"]["num_predict"] == 6

    response = await ollama_upstream.send(adapter.chat_request(t, body, stream=True))
    assert response.headers["content-type"].startswith("application/x-ndjson")
    decoder = adapter.chat_stream_decoder(t, include_usage=True)
    chunks = decode(decoder, [response.content])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Mock response to: Describe this picture"
    assert decoder.usage is not None and decoder.usage.completion_tokens == 6

    tools = await ollama_upstream.send(adapter.chat_request(
        t, {"messages": USER_MESSAGES, "tools": TOOLS}, stream=False))
    message = adapter.chat_response(t, 200, [], tools.content)["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'

    missing = target("ollama", model="missing-model", api_base=ollama_upstream.base)
    response = await ollama_upstream.send(adapter.chat_request(missing, body, stream=False))
    error = adapter.error_from_upstream(missing, response.status_code, [], response.content)
    assert (error.status, error.code) == (404, "model_not_found")

    embed = await ollama_upstream.send(adapter.embeddings_request(
        target("ollama", model="nomic-embed-text", api_base=ollama_upstream.base),
        {"input": ["one", "two"]}))
    result = adapter.embeddings_response(t, 200, [], embed.content)
    assert len(result["data"]) == 2 and result["usage"]["prompt_tokens"] > 0


def test_the_threaded_upstream_serves_the_official_openai_sdk() -> None:
    openai_sdk = pytest.importorskip("openai")
    state = UpstreamState()
    with UpstreamThread(build_openai_mock(state)) as upstream:
        client = openai_sdk.OpenAI(base_url=upstream.url + "/v1", api_key=state.openai_api_key,
                                   max_retries=0, timeout=10.0)
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=USER_MESSAGES)
        assert completion.choices[0].message.content.startswith("Mock response to:")
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=USER_MESSAGES,
                                                stream=True,
                                                stream_options={"include_usage": True})
        pieces = [chunk for chunk in stream]
        assert pieces[-1].usage is not None and pieces[-1].usage.completion_tokens == 16
        with pytest.raises(openai_sdk.AuthenticationError):
            openai_sdk.OpenAI(base_url=upstream.url + "/v1", api_key="bad",
                              max_retries=0).models.list()
        azure = openai_sdk.AzureOpenAI(azure_endpoint=upstream.url, api_key=state.azure_api_key,
                                       api_version="2024-10-21", max_retries=0)
        result = azure.chat.completions.create(model="prod-deployment", messages=USER_MESSAGES)
        assert result.choices[0].message.content.startswith("Mock response to:")
    assert state.requests[0].header("authorization") == f"Bearer {state.openai_api_key}"
