"""A mock of Anthropic's Messages API, served by our own HTTP server.

It behaves like the real thing where a gateway could get it wrong: the real
paths, auth (``x-api-key`` or ``Authorization: Bearer``) with the real error
shape, the ``anthropic-version`` requirement, tool_use/tool_result pairing
checks, a context window ("prompt is too long"), SSE framing with
``event:`` lines and pings, and usage numbers. Answers are deterministic: with
tools offered it calls the first (or the forced) tool with arguments built from
the tool's schema, like a model would; after a tool result it reports the
result; otherwise it answers ``You said: <last user text>``.

Also home of the pieces the Gemini and Cohere mocks share:
``ProviderMockState``, ``sample_arguments``, ``estimate_tokens``, ``paced``.

Usage::

    state = ProviderMockState(anthropic_api_key="sk-ant-test")
    router = build_anthropic_mock(state)
    # serve router (tests/upstreams/server.py), then assert on state.requests
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from smartflow.http import Request, Response, Router, StreamingResponse, json_response

from .state import UpstreamDied, UpstreamState, record

DEFAULT_KEYS = {"anthropic": "sk-ant-test", "gemini": "gemini-test-key",
                "cohere": "cohere-test-key"}


@dataclass
class ProviderMockState(UpstreamState):
    """``UpstreamState`` plus the knobs of the translating mocks.

    A plain ``UpstreamState`` works too (the defaults below apply). Honoured
    from ``UpstreamState``: requests, fail_next (+ fail_next_headers; a str
    body is put in the provider's own error shape), latency_s,
    chunk_interval_s, stall_after_chunks, die_after_chunks, stall_s.
    """

    anthropic_api_key: str = DEFAULT_KEYS["anthropic"]
    gemini_api_key: str = DEFAULT_KEYS["gemini"]
    cohere_api_key: str = DEFAULT_KEYS["cohere"]
    reply_text: str | None = None  # replaces the deterministic text answer
    context_window_tokens: int = 200_000
    cached_tokens: int = 0  # reported as cached prompt tokens in usage
    anthropic_models: tuple[str, ...] = ("claude-sonnet-4-5", "claude-haiku-4-5")


def api_key_of(state: UpstreamState, provider: str) -> str:
    return str(getattr(state, f"{provider}_api_key", DEFAULT_KEYS[provider]))


def knob(state: UpstreamState, name: str, default: Any) -> Any:
    return getattr(state, name, default)


def take_failure(state: UpstreamState) -> tuple[int, Any, list[tuple[str, str]]] | None:
    failure, state.fail_next = state.fail_next, None
    if failure is None:
        return None
    headers, state.fail_next_headers = list(state.fail_next_headers), []
    return int(failure[0]), failure[1], headers


async def before_answer(state: UpstreamState) -> None:
    if state.latency_s > 0:
        await asyncio.sleep(state.latency_s)


async def paced(state: UpstreamState, frames: list[bytes]) -> AsyncIterator[bytes]:
    """Stream ``frames`` honouring chunk_interval_s, stall_after_chunks and die_after_chunks."""
    for position, frame in enumerate(frames):
        if position == state.die_after_chunks:
            raise UpstreamDied("mock upstream dies mid-stream")
        if position == state.stall_after_chunks:
            await asyncio.sleep(state.stall_s)
        if position and state.chunk_interval_s > 0:
            await asyncio.sleep(state.chunk_interval_s)
        yield frame


def estimate_tokens(obj: Any) -> int:
    """Deterministic stand-in for a tokenizer: about four bytes of JSON a token."""
    return max(1, len(orjson.dumps(obj)) // 4)


def sample_value(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "example"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in ("integer",):
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [sample_value(schema.get("items"))]
    if kind == "object":
        return sample_arguments(schema)
    return "example"


def sample_arguments(schema: Any) -> dict[str, Any]:
    """Arguments a model would plausibly send: every required property (all of
    them when none are marked required), with a value of the right type."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties") or {}
    required = schema.get("required") or list(properties)
    return {name: sample_value(properties.get(name)) for name in required if name in properties}


def words(text: str) -> list[str]:
    """Text split into stream-sized pieces that join back to the original."""
    pieces = text.split(" ")
    return [piece + (" " if i < len(pieces) - 1 else "") for i, piece in enumerate(pieces)]


def failure_response(failure: tuple[int, Any, list[tuple[str, str]]],
                     shape: Any) -> Response:
    status, body, headers = failure
    if isinstance(body, bytes):
        return Response(status, body, headers)
    if isinstance(body, str):
        return json_response(shape(status, body), status, headers)
    return json_response(body, status, headers)


# -- Anthropic specifics --------------------------------------------------------

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error",
            "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


def _error(status: int, message: str) -> Response:
    return json_response(anthropic_error(status, message), status,
                         [("request-id", "req_mock")])


def _check_auth(state: UpstreamState, request: Request) -> Response | None:
    key = request.header("x-api-key")
    if key is None:
        bearer = request.header("authorization") or ""
        key = bearer[7:] if bearer.lower().startswith("bearer ") else None
    if key is None:
        return _error(401, "x-api-key header is required")
    if key != api_key_of(state, "anthropic"):
        return _error(401, "invalid x-api-key")
    return None


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _validate(body: Any) -> str | None:
    """The first thing the real API would reject, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
        blocks = _blocks(message.get("content"))
        if not blocks:
            return f"messages.{index}: all messages must have non-empty content"
        asked = [b.get("id") for b in blocks if b.get("type") == "tool_use"]
        if asked:
            following = messages[index + 1] if index + 1 < len(messages) else None
            answered = {b.get("tool_use_id") for b in _blocks((following or {}).get("content"))
                        if b.get("type") == "tool_result"}
            missing = [str(i) for i in asked if i not in answered]
            if following is not None and missing:
                return (f"messages.{index + 1}: `tool_use` ids were found without "
                        f"`tool_result` blocks immediately after: {', '.join(missing)}. Each "
                        "`tool_use` block must have a corresponding `tool_result` block in the "
                        "next message.")
        for block in blocks:
            if block.get("type") == "tool_result":
                previous = messages[index - 1] if index > 0 else {}
                ids = {b.get("id") for b in _blocks(previous.get("content"))
                       if b.get("type") == "tool_use"}
                if block.get("tool_use_id") not in ids:
                    return (f"messages.{index}.content: unexpected `tool_use_id` found in "
                            "`tool_result` blocks: " + str(block.get("tool_use_id")) +
                            ". Each `tool_result` block must have a corresponding `tool_use` "
                            "block in the previous message.")
    return None


def _plan(state: UpstreamState, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """(text, tool call {name, input} or None) the mock model answers with."""
    last = body["messages"][-1]
    last_blocks = _blocks(last.get("content"))
    results = [b for b in last_blocks if b.get("type") == "tool_result"]
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if tools and not results and choice.get("type") != "none":
        tool = tools[0]
        if choice.get("type") == "tool":
            tool = next((t for t in tools if t.get("name") == choice.get("name")), tool)
        return "", {"name": tool.get("name", ""),
                    "input": sample_arguments(tool.get("input_schema"))}
    reply_text = knob(state, "reply_text", None)
    if reply_text is not None:
        return reply_text, None
    if results:
        content = results[0].get("content")
        text = content if isinstance(content, str) else "".join(
            b.get("text", "") for b in _blocks(content))
        return f"The tool returned: {text}", None
    said = "".join(b.get("text", "") for b in last_blocks if b.get("type") == "text")
    return f"You said: {said[:200]}", None


def _usage(state: UpstreamState, input_tokens: int, output_tokens: int) -> dict[str, int]:
    cached = int(knob(state, "cached_tokens", 0))
    return {"input_tokens": max(input_tokens - cached, 0),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": output_tokens}


def _event(payload: dict[str, Any]) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def build_anthropic_mock(state: UpstreamState) -> Router:
    router = Router()

    async def head_ok(request: Request) -> Response:
        return Response(200, b"", content_type="text/plain")

    async def list_models(request: Request) -> Response:
        denied = _check_auth(state, request)
        if denied is not None:
            return denied
        data = [{"type": "model", "id": name, "display_name": name,
                 "created_at": "2025-01-01T00:00:00Z"}
                for name in knob(state, "anthropic_models", ("claude-sonnet-4-5",))]
        return json_response({"data": data, "has_more": False,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})

    async def count_tokens(request: Request) -> Response:
        recorded = await record(state, request)
        denied = _check_auth(state, request)
        if denied is not None:
            return denied
        body = recorded.json
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "messages: Field required")
        return json_response({"input_tokens": estimate_tokens(
            [body.get("system"), body["messages"], body.get("tools")])})

    async def messages(request: Request) -> Response | StreamingResponse:
        recorded = await record(state, request)
        denied = _check_auth(state, request)
        if denied is not None:
            return denied
        if request.header("anthropic-version") is None:
            return _error(400, "anthropic-version: header is required")
        failure = take_failure(state)
        if failure is not None:
            return failure_response(failure, anthropic_error)
        body = recorded.json
        if recorded.body and body is None:
            return _error(400, "There was an error parsing the body of your request")
        problem = _validate(body)
        if problem is not None:
            return _error(400, problem)
        input_tokens = estimate_tokens([body.get("system"), body["messages"], body.get("tools")])
        window = int(knob(state, "context_window_tokens", 200_000))
        if input_tokens > window:
            return _error(400, f"prompt is too long: {input_tokens} tokens > {window} maximum")
        await before_answer(state)
        text, tool_call = _plan(state, body)
        message_id = f"msg_mock{len(state.requests):04d}"
        model = body["model"]
        if tool_call is not None:
            tool_id = f"toolu_mock{len(state.requests):04d}"
            arguments = orjson.dumps(tool_call["input"]).decode()
            output_tokens = max(1, len(arguments) // 4)
            stop_reason = "tool_use"
        else:
            pieces = words(text)
            limit = body["max_tokens"]
            stop_reason = "end_turn"
            if len(pieces) > limit:
                pieces, stop_reason = pieces[:limit], "max_tokens"
            text = "".join(pieces)
            output_tokens = len(pieces)
        usage = _usage(state, input_tokens, output_tokens)
        if not body.get("stream"):
            content: list[dict[str, Any]] = (
                [{"type": "tool_use", "id": tool_id, "name": tool_call["name"],
                  "input": tool_call["input"]}] if tool_call is not None
                else [{"type": "text", "text": text}])
            return json_response({"id": message_id, "type": "message", "role": "assistant",
                                  "model": model, "content": content,
                                  "stop_reason": stop_reason, "stop_sequence": None,
                                  "usage": usage})

        frames = [_event({"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": dict(usage, output_tokens=1)}})]
        if tool_call is not None:
            frames.append(_event({"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": tool_id, "name": tool_call["name"], "input": {}}}))
            frames.append(_event({"type": "ping"}))
            # like the real API: an empty first fragment, then small pieces
            fragments = [""] + [arguments[i:i + 7] for i in range(0, len(arguments), 7)]
            frames.extend(_event({"type": "content_block_delta", "index": 0, "delta": {
                "type": "input_json_delta", "partial_json": fragment}}) for fragment in fragments)
        else:
            frames.append(_event({"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}))
            frames.append(_event({"type": "ping"}))
            frames.extend(_event({"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": piece}})
                          for piece in words(text))
        frames.append(_event({"type": "content_block_stop", "index": 0}))
        frames.append(_event({"type": "message_delta",
                              "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                              "usage": {"output_tokens": output_tokens}}))
        frames.append(_event({"type": "message_stop"}))
        return StreamingResponse(paced(state, frames), headers=[("cache-control", "no-cache"),
                                                    ("request-id", "req_mock")])

    router.add("POST", "/v1/messages", messages)
    router.add("POST", "/v1/messages/count_tokens", count_tokens)
    router.add("GET", "/v1/models", list_models)
    # Claude Code and other clients probe reachability with HEAD on any path
    router.add("HEAD", "/", head_ok)
    router.add("HEAD", "/{rest:path}", head_ok)
    return router
