"""The Gemini ingress: Gemini requests in front of non-Gemini models, and back.

Round trips through the provider side (``providers.gemini``) check that the
two directions agree: a hub request survives hub -> Gemini -> hub, a hub
completion survives hub -> Gemini -> hub, and a hub chunk stream encoded as
Gemini frames decodes (split at every byte) to the same text, calls, usage
and finish. Unit tests pin what Gemini CLI and @google/genai send and expect.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from _sse_helpers import random_splits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartflow.dialects import gemini as gemini_dialect
from smartflow.dialects.gemini import (
    GeminiFromOpenAI,
    GeminiTap,
    usage_of_body,
    validate_gemini,
    validate_gemini_count_tokens,
)
from smartflow.gateway_error import GatewayError
from smartflow.providers.base import ProviderError, Usage
from smartflow.providers.gemini import (
    GeminiStreamDecoder,
    gemini_to_openai_response,
    openai_to_gemini_request,
)
from smartflow.providers.gemini_inbound import (
    GeminiStreamEncoder,
    estimate_gemini_tokens,
    gemini_request_to_openai,
    openai_response_to_gemini,
)
from smartflow.providers.openai import OpenAIStreamDecoder

PNG_DATA = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmM"
            "IQAAAABJRU5ErkJggg==")

# -- helpers ----------------------------------------------------------------------


def frames(raw: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of Gemini ``alt=sse`` bytes (asserting the CRLF framing)."""
    assert raw.endswith(b"\r\n\r\n")
    return [orjson.loads(event[len(b"data: "):]) for event in raw.split(b"\r\n\r\n") if event]


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What an OpenAI client accumulates from a stream (first choice)."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(call.get("index", 0),
                                        {"id": None, "name": "", "arguments": ""})
                slot["id"] = slot["id"] or call.get("id")
                function = call.get("function") or {}
                if function.get("name") and not slot["name"]:
                    slot["name"] = function["name"]
                slot["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {"text": "".join(text), "reasoning": "".join(reasoning),
            "tool_calls": [{"id": calls[i]["id"], "name": calls[i]["name"],
                            "args": orjson.loads(calls[i]["arguments"] or "{}")}
                           for i in sorted(calls)],
            "finish_reason": finish, "usage": usage}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          index: int = 0) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": index, "delta": delta or {}, "finish_reason": finish}]}


def usage_chunk(prompt: int, completion: int, cached: int = 0,
                reasoning: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion,
                             "prompt_tokens_details": {"cached_tokens": cached}}
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [], "usage": usage}


def encode(chunks: list[dict[str, Any]], model: str = "gpt-x") -> bytes:
    encoder = GeminiStreamEncoder(model)
    return b"".join(encoder.feed(c) for c in chunks) + encoder.finish()


def decode(pieces: list[bytes]) -> dict[str, Any]:
    decoder = GeminiStreamDecoder("gpt-x", include_usage=True)
    out: list[dict[str, Any]] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.close())
    return assemble(out)


def tap(pieces: list[bytes]) -> Any:
    watcher = GeminiTap(capture_text=True)
    for piece in pieces:
        watcher.observe(piece)
    return watcher.outcome()


# -- (a) request round trip: hub -> Gemini -> hub ---------------------------------

NAMES = ("get_weather", "get_time", "search_docs")
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=20)
json_scalars = st.one_of(st.integers(-1000, 1000), st.booleans(), words, st.none())
json_args = st.dictionaries(st.sampled_from(("city", "zone", "q", "n", "tags")),
                            st.one_of(json_scalars, st.lists(json_scalars, max_size=3)),
                            max_size=4)
leaf_schemas = st.one_of(
    st.sampled_from([{"type": "string"}, {"type": "integer"}, {"type": "number"},
                     {"type": "boolean"}, {"type": ["string", "null"]},
                     {"type": "string", "enum": ["a", "b"]},
                     {"type": "array", "items": {"type": "string"}}]),
    st.builds(lambda d: {"type": "string", "description": d}, words))


@st.composite
def tool_defs(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    tools = []
    for name in names:
        properties = draw(st.dictionaries(st.sampled_from(("city", "zone", "q", "default")),
                                          leaf_schemas, min_size=1, max_size=3))
        parameters: dict[str, Any] = {"type": "object", "properties": properties}
        required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True))
        if required:
            parameters["required"] = required
        function: dict[str, Any] = {"name": name, "parameters": parameters}
        if draw(st.booleans()):
            function["description"] = draw(words)
        tools.append({"type": "function", "function": function})
    return tools


@st.composite
def tool_results(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(words)
    return orjson.dumps(draw(st.dictionaries(st.sampled_from(("temp", "ok", "items")),
                                             json_scalars, min_size=1, max_size=3))).decode()


@st.composite
def user_messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(("text", "parts", "image")))
    if kind == "text":
        return {"role": "user", "content": draw(words)}
    parts: list[dict[str, Any]] = [{"type": "text", "text": t}
                                   for t in draw(st.lists(words, min_size=2, max_size=3))]
    if kind == "image":
        parts.insert(draw(st.integers(0, len(parts))), {
            "type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_DATA}"}})
    return {"role": "user", "content": parts}


@st.composite
def hub_requests(draw: st.DrawFn) -> dict[str, Any]:
    tools = draw(st.one_of(st.none(), tool_defs()))
    names = [t["function"]["name"] for t in tools] if tools else list(NAMES)
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(words)})
    messages.append(draw(user_messages()))
    for round_number in range(draw(st.integers(0, 3))):
        calls = [{"id": f"call_{draw(st.text('abcdef0123', min_size=6, max_size=8))}"
                       f"_{round_number}_{i}",
                  "type": "function",
                  "function": {"name": draw(st.sampled_from(names)),
                               "arguments": orjson.dumps(draw(json_args)).decode()}}
                 for i in range(draw(st.integers(0, 2)))]
        assistant: dict[str, Any] = {"role": "assistant",
                                     "content": draw(st.one_of(st.none(), words))
                                     if calls else draw(words)}
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        messages.extend({"role": "tool", "tool_call_id": call["id"],
                         "content": draw(tool_results())} for call in calls)
        if not calls or draw(st.booleans()):
            messages.append(draw(user_messages()))
    request: dict[str, Any] = {"model": "gpt-x", "messages": messages}
    if tools:
        request["tools"] = tools
        choice = draw(st.sampled_from(("auto", "none", "required", "named", None)))
        if choice == "named":
            request["tool_choice"] = {"type": "function",
                                      "function": {"name": draw(st.sampled_from(names))}}
        elif choice is not None:
            request["tool_choice"] = choice
    for name, strategy in (("max_tokens", st.integers(1, 100_000)),
                           ("temperature", st.floats(0, 2, allow_nan=False)),
                           ("top_p", st.floats(0, 1, allow_nan=False)),
                           ("stop", st.lists(words, min_size=1, max_size=3)),
                           ("n", st.integers(2, 4))):
        if draw(st.booleans()):
            request[name] = draw(strategy)
    if draw(st.booleans()):
        request["response_format"] = draw(st.sampled_from([
            {"type": "json_object"},
            {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
                "type": "object", "properties": {"answer": {"type": "string"}},
                "required": ["answer"]}}}]))
    return request


def _content_key(content: Any) -> Any:
    if content in (None, ""):
        return None
    return content


def _tool_result_key(content: str) -> Any:
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content
    return parsed if isinstance(parsed, dict) else content


def canonical_request(request: dict[str, Any]) -> dict[str, Any]:
    """A hub request with what a round trip may rename made comparable: tool
    call ids by order of appearance, empty content, JSON tool results parsed."""
    ids: dict[str, str] = {}
    messages = []
    for message in request["messages"]:
        out: dict[str, Any] = {"role": message["role"]}
        if message["role"] == "tool":
            out["tool_call_id"] = ids[message["tool_call_id"]]
            out["content"] = _tool_result_key(message["content"])
        else:
            out["content"] = _content_key(message.get("content"))
        calls = []
        for call in message.get("tool_calls") or ():
            ids[call["id"]] = f"#{len(ids)}"
            calls.append({"id": ids[call["id"]], "name": call["function"]["name"],
                          "args": orjson.loads(call["function"]["arguments"])})
        if calls:
            out["tool_calls"] = calls
        messages.append(out)
    canonical = {key: value for key, value in request.items()
                 if key not in ("messages", "response_format")}
    canonical["messages"] = messages
    response_format = request.get("response_format")
    if response_format is not None:
        canonical["response_format"] = (response_format["type"],
                                        (response_format.get("json_schema") or {}).get("schema"))
    return canonical


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hub_requests())
def test_a_hub_request_survives_the_trip_through_gemini(request: dict[str, Any]) -> None:
    gemini = orjson.loads(orjson.dumps(openai_to_gemini_request(request)))  # as sent on the wire
    back = gemini_request_to_openai(gemini, model="gpt-x", stream=False)
    assert canonical_request(back) == canonical_request(request)


def test_stream_requests_ask_for_usage() -> None:
    back = gemini_request_to_openai({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                                    model="gpt-x", stream=True)
    assert back == {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}],
                    "stream": True, "stream_options": {"include_usage": True}}


# -- request: what Gemini clients send ----------------------------------------------


def test_a_gemini_cli_conversation_becomes_a_hub_request() -> None:
    body = {
        "systemInstruction": {"role": "user", "parts": [{"text": "You are a CLI."},
                                                        {"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Context: repo."}, {"text": "List files"},
                                       {"inlineData": {"mimeType": "image/png",
                                                       "data": PNG_DATA}}]},
            {"role": "model", "parts": [
                {"text": "thinking...", "thought": True},
                {"text": "Let me "}, {"text": "look."},
                {"functionCall": {"name": "list_directory", "args": {"path": "."}},
                 "thoughtSignature": "c2ln"},
                {"functionCall": {"name": "read_file", "args": {"path": "a.py"}}}]},
            # Gemini CLI mints ids of its own for calls that came without one
            {"role": "user", "parts": [
                {"functionResponse": {"id": "read_file-1-x", "name": "read_file",
                                      "response": {"output": "print(1)"}}},
                {"functionResponse": {"id": "list_directory-2-y", "name": "list_directory",
                                      "response": {"output": "a.py"}}}]},
            {"role": "model", "parts": [{"functionCall": {"id": "given-7", "name": "read_file",
                                                          "args": {"path": "b.py"}}}]},
            {"role": "user", "parts": [{"functionResponse": {
                "id": "given-7", "name": "read_file", "response": {"error": "missing"}}},
                {"text": "and now?"}]},
        ],
        "tools": [{"functionDeclarations": [
            {"name": "list_directory", "description": "Lists a directory.",
             "parametersJsonSchema": {"type": "object", "properties": {
                 "path": {"type": "string"}}, "required": ["path"]}},
            {"name": "read_file", "parameters": {
                "type": "OBJECT", "properties": {
                    "path": {"type": "STRING", "description": "file"},
                    "limit": {"type": "INTEGER", "nullable": True}},
                "required": ["path"], "propertyOrdering": ["path", "limit"]}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        "generationConfig": {"temperature": 0, "topP": 1, "topK": 64,
                             "maxOutputTokens": 512, "stopSequences": ["END"],
                             "thinkingConfig": {"includeThoughts": True,
                                                "thinkingBudget": -1}},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "OFF"}],
    }
    assert validate_gemini(body, model="gpt-x", stream=True).is_stream
    request = gemini_request_to_openai(body, model="gpt-x", stream=False)
    assert request["messages"] == [
        {"role": "system", "content": "You are a CLI.\n\nBe brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Context: repo."}, {"type": "text", "text": "List files"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_DATA}"}}]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_0", "type": "function",
             "function": {"name": "list_directory", "arguments": '{"path":"."}'}},
            {"id": "call_1", "type": "function",
             "function": {"name": "read_file", "arguments": '{"path":"a.py"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "print(1)"},
        {"role": "tool", "tool_call_id": "call_0", "content": "a.py"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "given-7", "type": "function",
             "function": {"name": "read_file", "arguments": '{"path":"b.py"}'}}]},
        {"role": "tool", "tool_call_id": "given-7", "content": '{"error":"missing"}'},
        {"role": "user", "content": "and now?"},
    ]
    assert request["tools"] == [
        {"type": "function", "function": {
            "name": "list_directory", "description": "Lists a directory.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                           "required": ["path"]}}},
        {"type": "function", "function": {"name": "read_file", "parameters": {
            "type": "object", "properties": {
                "path": {"type": "string", "description": "file"},
                "limit": {"type": ["integer", "null"]}},
            "required": ["path"]}}}]
    assert request["tool_choice"] == "auto"
    assert {k: request[k] for k in ("temperature", "top_p", "max_tokens", "stop")} == {
        "temperature": 0, "top_p": 1, "max_tokens": 512, "stop": ["END"]}
    assert "top_k" not in request and "stream" not in request


def test_the_same_history_gives_the_same_call_ids_every_turn() -> None:
    body = {"contents": [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}
    first = gemini_request_to_openai(body, model="m", stream=False)
    assert first == gemini_request_to_openai(body, model="m", stream=False)
    assert first["messages"][1]["tool_calls"][0]["id"] == first["messages"][2]["tool_call_id"]


@pytest.mark.parametrize(("function_calling", "choice", "offered"), [
    ({"mode": "ANY"}, "required", ["a", "b", "c"]),
    ({"mode": "ANY", "allowedFunctionNames": ["b"]},
     {"type": "function", "function": {"name": "b"}}, ["a", "b", "c"]),
    ({"mode": "ANY", "allowedFunctionNames": ["a", "c"]}, "required", ["a", "c"]),
    ({"mode": "NONE"}, "none", ["a", "b", "c"]),
    ({"mode": "VALIDATED"}, "auto", ["a", "b", "c"]),
])
def test_function_calling_modes(function_calling: dict[str, Any], choice: Any,
                                offered: list[str]) -> None:
    body = {"contents": [{"parts": [{"text": "go"}]}],
            "tools": [{"functionDeclarations": [{"name": n} for n in "abc"]}],
            "toolConfig": {"functionCallingConfig": function_calling}}
    request = gemini_request_to_openai(body, model="m", stream=False)
    assert request["tool_choice"] == choice
    assert [t["function"]["name"] for t in request["tools"]] == offered
    assert request["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}


def test_json_output_becomes_a_response_format() -> None:
    def convert(config: dict[str, Any]) -> Any:
        body = {"contents": [{"parts": [{"text": "go"}]}], "generationConfig": config}
        return gemini_request_to_openai(body, model="m", stream=False).get("response_format")

    assert convert({"responseMimeType": "application/json"}) == {"type": "json_object"}
    assert convert({"responseMimeType": "application/json", "responseSchema": {
        "type": "OBJECT", "properties": {"n": {"type": "NUMBER"}}}}) == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": {
            "type": "object", "properties": {"n": {"type": "number"}}}}}
    raw = {"type": "object", "additionalProperties": False}
    assert convert({"responseMimeType": "application/json", "responseJsonSchema": raw}) == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": raw}}
    assert convert({"responseMimeType": "text/plain"}) is None
    assert gemini_request_to_openai(
        {"contents": [{"parts": [{"text": "go"}]}], "generationConfig": {"candidateCount": 3}},
        model="m", stream=False)["n"] == 3


@pytest.mark.parametrize(("body", "needle"), [
    ({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"googleSearch": {}}]},
     "googleSearch"),
    ({"contents": [{"role": "user", "parts": [
        {"functionResponse": {"name": "nobody_called_me", "response": {}}}]}]},
     "nobody_called_me"),
    ({"contents": [{"parts": [{"fileData": {"mimeType": "application/pdf",
                                            "fileUri": "gs://b/x.pdf"}}]}]}, "fileData"),
    ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "role"),
    ({"contents": [{"parts": [{"text": "x"}]}],
      "generationConfig": {"maxOutputTokens": "many"}}, "maxOutputTokens"),
])
def test_requests_another_model_cannot_take_are_clear_400s(body: dict[str, Any],
                                                          needle: str) -> None:
    with pytest.raises(ProviderError) as caught:
        gemini_request_to_openai(body, model="m", stream=False)
    assert caught.value.status == 400 and needle in caught.value.message
    rendered = orjson.loads(gemini_dialect.error_body(caught.value))
    assert rendered["error"]["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(("body", "field"), [
    ({}, "contents"),
    ({"contents": "hello"}, "contents"),
    ({"contents": []}, "contents"),
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "contents[0].role"),
    ({"contents": [{"role": "user"}]}, "contents[0].parts"),
    ({"contents": [{"role": "user", "parts": []}]}, "contents[0].parts"),
    ({"contents": [{"parts": ["text"]}]}, "contents[0].parts[0]"),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": []}, "generationConfig"),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"temperature": "hot"}},
     "generationConfig.temperature"),
    ({"contents": [{"parts": [{"text": "x"}]}], "tools": {}}, "tools"),
    ({"contents": [{"parts": [{"text": "x"}]}], "systemInstruction": 3},
     "systemInstruction"),
])
def test_malformed_requests_are_refused_in_googles_shape(body: dict[str, Any],
                                                         field: str) -> None:
    with pytest.raises(GatewayError) as caught:
        validate_gemini(body, model="m")
    assert caught.value.status == 400 and caught.value.param == field
    rendered = orjson.loads(gemini_dialect.error_body(caught.value))
    assert rendered == {"error": {"code": 400, "message": caught.value.message,
                                  "status": "INVALID_ARGUMENT"}}
    assert f"GenerateContentRequest.{field}" in rendered["error"]["message"]


def test_count_tokens_takes_both_request_forms() -> None:
    contents = [{"role": "user", "parts": [{"text": "word " * 400}]}]
    assert validate_gemini_count_tokens({"contents": contents}).model == ""
    assert validate_gemini_count_tokens({"generateContentRequest": {"contents": contents}},
                                        model="m").model == "m"
    with pytest.raises(GatewayError):
        validate_gemini_count_tokens({})
    plain = estimate_gemini_tokens({"contents": contents})
    wrapped = estimate_gemini_tokens({"generateContentRequest": {
        "model": "models/m", "contents": contents}})
    assert 400 <= plain <= 700 and plain == wrapped
    with_tools = estimate_gemini_tokens({"generateContentRequest": {
        "contents": contents, "tools": [{"functionDeclarations": [{"name": "x" * 400}]}]}})
    assert with_tools > plain
    assert estimate_gemini_tokens({}) == 1


# -- (b) response round trip: hub -> Gemini -> hub ---------------------------------


@st.composite
def hub_completions(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for index in range(draw(st.integers(1, 3))):
        calls = [{"id": f"call_{index}_{i}", "type": "function",
                  "function": {"name": draw(st.sampled_from(NAMES)),
                               "arguments": orjson.dumps(draw(json_args)).decode()}}
                 for i in range(draw(st.integers(0, 2)))]
        message: dict[str, Any] = {"role": "assistant",
                                   "content": draw(st.one_of(st.none(), words))}
        if calls:
            message["tool_calls"] = calls
        if draw(st.booleans()):
            message["reasoning_content"] = draw(words)
        finish = "tool_calls" if calls else draw(st.sampled_from(
            ("stop", "length", "content_filter")))
        choices.append({"index": index, "message": message, "finish_reason": finish})
    prompt = draw(st.integers(0, 10**6))
    completion = draw(st.integers(0, 10**5))
    usage: dict[str, Any] = {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": draw(st.integers(0, prompt))},
        "completion_tokens_details": {"reasoning_tokens": draw(st.integers(0, completion))}}
    return {"id": "chatcmpl-" + draw(st.text("abc123", min_size=1, max_size=8)),
            "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": choices, "usage": usage}


def canonical_completion(completion: dict[str, Any]) -> dict[str, Any]:
    choices = []
    for choice in completion["choices"]:
        message = choice["message"]
        choices.append({
            "index": choice["index"], "finish_reason": choice["finish_reason"],
            "content": _content_key(message.get("content")),
            "reasoning": message.get("reasoning_content"),
            "calls": [(c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
                      for c in message.get("tool_calls") or ()]})
    usage = completion["usage"]
    return {"id": completion["id"], "choices": choices,
            "usage": (usage["prompt_tokens"], usage["completion_tokens"],
                      usage["prompt_tokens_details"]["cached_tokens"])}


@settings(max_examples=150, deadline=None)
@given(hub_completions())
def test_a_hub_completion_survives_the_trip_through_gemini(completion: dict[str, Any]) -> None:
    gemini = orjson.loads(orjson.dumps(openai_response_to_gemini(completion, model="gpt-x")))
    back = gemini_to_openai_response(gemini, "gpt-x")
    assert canonical_completion(back) == canonical_completion(completion)
    assert usage_of_body(orjson.dumps(gemini)) == Usage(
        completion["usage"]["prompt_tokens"], completion["usage"]["completion_tokens"],
        completion["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_a_completion_reads_as_gemini_answers() -> None:
    completion = {"id": "chatcmpl-9", "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": "On it.", "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                  "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 2}}}
    assert openai_response_to_gemini(completion, model="gpt-x") == {
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "On it."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"},
                              "id": "call_a"}}]},
            "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 5,
                          "totalTokenCount": 19, "cachedContentTokenCount": 4,
                          "thoughtsTokenCount": 2},
        "modelVersion": "gpt-x", "responseId": "chatcmpl-9"}
    length = {"choices": [{"index": 0, "finish_reason": "length",
                           "message": {"role": "assistant", "content": "cut"}}]}
    assert openai_response_to_gemini(length, model="m")["candidates"][0]["finishReason"] == (
        "MAX_TOKENS")
    with pytest.raises(ProviderError) as caught:
        openai_response_to_gemini({"choices": ["not a choice"]}, model="m")
    assert caught.value.status == 502


# -- (c) stream round trip: hub chunks -> Gemini SSE -> hub -----------------------


@st.composite
def hub_streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A chunk stream (first choice) and what a client should assemble from it."""
    chunks = [chunk({"role": "assistant", "content": ""})]
    reasoning = draw(st.lists(words, max_size=3))
    chunks.extend(chunk({"reasoning_content": r}) for r in reasoning)
    texts = draw(st.lists(words, max_size=6))
    chunks.extend(chunk({"content": t}) for t in texts)
    calls = [(f"call_{i}", draw(st.sampled_from(NAMES)), draw(json_args))
             for i in range(draw(st.integers(0, 3)))]
    # argument fragments cut anywhere, parallel calls' fragments interleaved
    fragments: list[tuple[int, str]] = []
    for position, (_, _, args) in enumerate(calls):
        text = orjson.dumps(args).decode()
        cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
        fragments.extend((position, text[a:b]) for a, b in zip([0, *cuts], [*cuts, len(text)],
                                                               strict=True))
    order = draw(st.permutations(range(len(fragments))))
    started: set[int] = set()
    # each call's own fragments keep their order; only calls interleave
    queues = {p: [f for q, f in fragments if q == p] for p in range(len(calls))}
    for which in order:
        position = fragments[which][0]
        fragment = queues[position].pop(0)
        call_id, name, _ = calls[position]
        delta: dict[str, Any] = {"index": position, "function": {"arguments": fragment}}
        if position not in started:
            started.add(position)
            delta.update(id=call_id, type="function")
            delta["function"]["name"] = name
        chunks.append(chunk({"tool_calls": [delta]}))
    finish = "tool_calls" if calls else draw(st.sampled_from(("stop", "length",
                                                             "content_filter")))
    chunks.append(chunk({}, finish))
    prompt, completion = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**5))
    cached = draw(st.integers(0, prompt))
    chunks.append(usage_chunk(prompt, completion, cached, draw(st.integers(0, completion))))
    expected = {"text": "".join(texts), "reasoning": "".join(reasoning),
                "tool_calls": [{"id": c, "name": n, "args": a} for c, n, a in calls],
                "finish_reason": finish,
                "usage": Usage(prompt, completion, cached)}
    return chunks, expected


def check_decoded(result: dict[str, Any], expected: dict[str, Any]) -> None:
    usage = result["usage"]
    assert Usage(usage["prompt_tokens"], usage["completion_tokens"],
                 usage["prompt_tokens_details"]["cached_tokens"]) == expected["usage"]
    assert {k: v for k, v in result.items() if k != "usage"} == {
        k: v for k, v in expected.items() if k != "usage"}


def check_tapped(outcome: Any, expected: dict[str, Any]) -> None:
    assert (outcome.usage, outcome.finish_reason, outcome.text) == (
        expected["usage"], expected["finish_reason"], expected["text"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hub_streams(), st.randoms(use_true_random=False))
def test_an_encoded_stream_decodes_to_the_original(
        stream: tuple[list[dict[str, Any]], dict[str, Any]], rng: random.Random) -> None:
    chunks, expected = stream
    raw = encode(chunks)
    sent = frames(raw)
    assert "finishReason" in sent[-1]["candidates"][0] and "usageMetadata" in sent[-1]
    assert all("finishReason" not in c for f in sent[:-1] for c in f["candidates"])
    check_decoded(decode([raw]), expected)
    check_tapped(tap([raw]), expected)
    for cuts in (1, 3, 20):
        pieces = random_splits(raw, rng, cuts)
        check_decoded(decode(pieces), expected)
        check_tapped(tap(pieces), expected)


SAMPLE_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "Hmm."}),
    chunk({"content": "Grüße "}),
    chunk({"content": "aus 🌍 "}),
    chunk({"tool_calls": [{"index": 0, "id": "call_w", "type": "function",
                           "function": {"name": "get_weather", "arguments": '{"ci'}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "call_t", "type": "function",
                           "function": {"name": "get_time", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Köln"}'}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"zone": "CET"}'}}]}),
    chunk({}, "tool_calls"),
    usage_chunk(30, 12, cached=10, reasoning=3),
]
SAMPLE_EXPECTED = {
    "text": "Grüße aus 🌍 ", "reasoning": "Hmm.",
    "tool_calls": [{"id": "call_w", "name": "get_weather", "args": {"city": "Köln"}},
                   {"id": "call_t", "name": "get_time", "args": {"zone": "CET"}}],
    "finish_reason": "tool_calls", "usage": Usage(30, 12, 10)}


def test_a_stream_split_at_every_byte_decodes_and_taps_identically() -> None:
    raw = encode(SAMPLE_STREAM)
    for cut in range(1, len(raw)):
        pieces = [raw[:cut], raw[cut:]]
        check_decoded(decode(pieces), SAMPLE_EXPECTED)
        check_tapped(tap(pieces), SAMPLE_EXPECTED)
    one_by_one = [raw[i:i + 1] for i in range(len(raw))]
    check_decoded(decode(one_by_one), SAMPLE_EXPECTED)
    check_tapped(tap(one_by_one), SAMPLE_EXPECTED)


def test_text_goes_out_at_once_and_function_calls_whole() -> None:
    encoder = GeminiStreamEncoder("gpt-x")
    assert encoder.feed(SAMPLE_STREAM[0]) == b""  # a role chunk says nothing in Gemini
    thought = frames(encoder.feed(SAMPLE_STREAM[1]))
    assert thought == [{"candidates": [{"content": {"role": "model", "parts": [
        {"text": "Hmm.", "thought": True}]}, "index": 0}],
        "modelVersion": "gpt-x", "responseId": "chatcmpl-1"}]
    assert frames(encoder.feed(SAMPLE_STREAM[2]))[0]["candidates"][0]["content"]["parts"] == [
        {"text": "Grüße "}]
    encoder.feed(SAMPLE_STREAM[3])
    for fragment in SAMPLE_STREAM[4:9]:
        assert encoder.feed(fragment) == b""  # partial arguments are never sent
    assert encoder.feed(SAMPLE_STREAM[9]) == b""
    last = frames(encoder.finish())
    assert last == [{"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Köln"}, "id": "call_w"}},
        {"functionCall": {"name": "get_time", "args": {"zone": "CET"}, "id": "call_t"}}]},
        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 9,
                          "totalTokenCount": 42, "cachedContentTokenCount": 10,
                          "thoughtsTokenCount": 3},
        "modelVersion": "gpt-x", "responseId": "chatcmpl-1"}]
    assert encoder.finish() == b"" and encoder.feed(SAMPLE_STREAM[2]) == b""


def test_a_call_is_sent_when_text_follows_it_and_candidates_stay_apart() -> None:
    encoder = GeminiStreamEncoder("m", include_thoughts=False)
    assert encoder.feed(chunk({"reasoning_content": "hidden"})) == b""
    encoder.feed(chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {
        "name": "f", "arguments": "{}"}}]}))
    sent = frames(encoder.feed(chunk({"content": "after"})))
    assert sent[0]["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "f", "args": {}, "id": "c1"}}, {"text": "after"}]
    assert frames(encoder.feed(chunk({"content": "second"}, index=1)))[0]["candidates"] == [
        {"content": {"role": "model", "parts": [{"text": "second"}]}, "index": 1}]
    encoder.feed(chunk({}, "stop"))
    encoder.feed(chunk({}, "length", index=1))
    last = frames(encoder.finish())[0]
    assert [(c["index"], c["finishReason"], c["content"]["parts"]) for c in
            last["candidates"]] == [(0, "STOP", [{"text": ""}]),
                                    (1, "MAX_TOKENS", [{"text": ""}])]
    assert "usageMetadata" not in last  # the upstream sent none


def test_an_empty_stream_still_ends_with_a_finish_reason() -> None:
    assert frames(GeminiStreamEncoder("m").finish()) == [{"candidates": [{
        "content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP",
        "index": 0}], "modelVersion": "m"}]


def test_a_mid_stream_error_is_one_google_error_frame() -> None:
    encoder = GeminiStreamEncoder("m")
    encoder.feed(chunk({"content": "partial"}))
    raw = encoder.error(GatewayError(503, "upstream went away", "server_error"))
    assert raw == (b'data: {"error":{"code":503,"message":"upstream went away",'
                   b'"status":"UNAVAILABLE"}}\r\n\r\n')
    assert encoder.finish() == b""
    decoder = GeminiStreamDecoder("m", include_usage=True)
    with pytest.raises(ProviderError) as caught:
        decoder.feed(raw)
    assert caught.value.status == 503
    upstream = GeminiStreamEncoder("m")
    sent = frames(upstream.feed({"error": {"message": "slow down", "type": "rate_limit_error"}}))
    assert sent == [{"error": {"code": 429, "message": "slow down",
                               "status": "RESOURCE_EXHAUSTED"}}]


def test_another_providers_stream_becomes_gemini_frames() -> None:
    upstream = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in SAMPLE_STREAM)
    upstream += b"data: [DONE]\n\n"
    transform = GeminiFromOpenAI(OpenAIStreamDecoder(include_usage=True),
                                 GeminiStreamEncoder("gpt-x"))
    out = b"".join(transform.feed(upstream[i:i + 7]) for i in range(0, len(upstream), 7))
    out += transform.close()
    check_decoded(decode([out]), SAMPLE_EXPECTED)
    outcome = transform.outcome()
    assert outcome.usage == Usage(30, 12, 10) and outcome.finish_reason == "tool_calls"
    assert outcome.approx_text_chars == len("Grüße aus 🌍 ")
    error = transform.error_event(GatewayError(500, "boom"))
    assert frames(error) == [{"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}]


# -- the tap on a stream relayed from Gemini itself --------------------------------


NATIVE_STREAM = b"".join(b"data: " + orjson.dumps(frame) + b"\r\n\r\n" for frame in [
    {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "plan", "thought": True}]}, "index": 0}],
     "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "responseId": "g1"},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Bonjour "}]},
                     "index": 0}],
     "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1,
                       "thoughtsTokenCount": 4}, "responseId": "g1"},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "à tous"}]},
                     "finishReason": "MAX_TOKENS", "index": 0}],
     "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3,
                       "cachedContentTokenCount": 5, "thoughtsTokenCount": 4},
     "responseId": "g1"},
])


def test_the_tap_reads_a_native_gemini_stream_split_anywhere() -> None:
    want = (Usage(9, 7, 5), "length", "Bonjour à tous")
    for cut in range(1, len(NATIVE_STREAM)):
        outcome = tap([NATIVE_STREAM[:cut], NATIVE_STREAM[cut:]])
        assert (outcome.usage, outcome.finish_reason, outcome.text) == want, cut
    outcome = tap([NATIVE_STREAM[i:i + 1] for i in range(len(NATIVE_STREAM))])
    assert (outcome.usage, outcome.finish_reason, outcome.text) == want
    quiet = GeminiTap()
    quiet.observe(NATIVE_STREAM)
    assert quiet.outcome().text is None and quiet.outcome().usage == Usage(9, 7, 5)


@pytest.mark.parametrize(("reason", "hub"), [("STOP", "stop"), ("SAFETY", "content_filter"),
                                             ("RECITATION", "content_filter"),
                                             ("MALFORMED_FUNCTION_CALL", "stop")])
def test_the_tap_names_finish_reasons_as_the_hub_does(reason: str, hub: str) -> None:
    raw = b"data: " + orjson.dumps({"candidates": [{"content": {"parts": [{"text": "x"}]},
                                                    "finishReason": reason}]}) + b"\r\n\r\n"
    assert tap([raw]).finish_reason == hub
    call = b"data: " + orjson.dumps({"candidates": [{"content": {"parts": [
        {"functionCall": {"name": "f", "args": {}}}]}, "finishReason": "STOP"}]}) + b"\r\n\r\n"
    assert tap([call[:20], call[20:]]).finish_reason == "tool_calls"


def test_usage_of_a_whole_answer() -> None:
    body = {"candidates": [], "usageMetadata": {"promptTokenCount": 40,
                                                "candidatesTokenCount": 6,
                                                "thoughtsTokenCount": 10,
                                                "cachedContentTokenCount": 30}}
    assert usage_of_body(orjson.dumps(body)) == Usage(40, 16, 30)
    assert usage_of_body(orjson.dumps([{"candidates": []}, body])) == Usage(40, 16, 30)
    assert usage_of_body(b'{"candidates": []}') is None
    assert usage_of_body(b'{"usageMetadata": ') is None


# -- (d) errors ---------------------------------------------------------------------


@pytest.mark.parametrize(("status", "openai_type", "google"), [
    (400, "invalid_request_error", "INVALID_ARGUMENT"),
    (401, "authentication_error", "UNAUTHENTICATED"),
    (402, "insufficient_quota", "FAILED_PRECONDITION"),
    (403, "permission_error", "PERMISSION_DENIED"),
    (404, "invalid_request_error", "NOT_FOUND"),
    (408, "timeout_error", "DEADLINE_EXCEEDED"),
    (409, "invalid_request_error", "ABORTED"),
    (413, "invalid_request_error", "INVALID_ARGUMENT"),
    (418, "invalid_request_error", "INVALID_ARGUMENT"),
    (429, "rate_limit_error", "RESOURCE_EXHAUSTED"),
    (499, None, "CANCELLED"),
    (500, "server_error", "INTERNAL"),
    (501, "server_error", "NOT_IMPLEMENTED"),
    (502, "server_error", "UNAVAILABLE"),
    (503, "server_error", "UNAVAILABLE"),
    (504, "timeout_error", "DEADLINE_EXCEEDED"),
    (529, "overloaded_error", "INTERNAL"),
])
def test_errors_render_by_status_in_googles_shape(status: int, openai_type: str | None,
                                                  google: str) -> None:
    error = GatewayError(status, f"failed with {status}", openai_type)
    assert gemini_dialect.DIALECT.error_type(status) == google
    assert orjson.loads(gemini_dialect.DIALECT.error_body(error)) == {
        "error": {"code": status, "message": f"failed with {status}", "status": google}}
    event = gemini_dialect.DIALECT.error_event(error)
    assert event.startswith(b"data: {") and event.endswith(b"}\r\n\r\n")
    assert orjson.loads(event[6:]) == orjson.loads(gemini_dialect.DIALECT.error_body(error))


def test_a_rate_limit_says_when_to_retry_the_way_google_clients_read_it() -> None:
    error = GatewayError(429, "budget exhausted", "rate_limit_error", retry_after="30")
    assert orjson.loads(gemini_dialect.error_body(error))["error"]["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}]
    dated = GatewayError(429, "x", retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    assert "details" not in orjson.loads(gemini_dialect.error_body(dated))["error"]
    assert gemini_dialect.DIALECT.name == "gemini"
