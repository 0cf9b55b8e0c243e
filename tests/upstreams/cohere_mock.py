"""A mock of Cohere's v2 API (``/v2/chat``, ``/v2/embed``) on our own HTTP server.

Bearer auth with Cohere's ``{"message": ...}`` errors, tool-call pairing
checks, a token limit ("too many tokens"), SSE streaming with ``event:`` and
``data:`` lines (message-start, content-start/delta/end, tool-plan-delta,
tool-call-start/delta/end, message-end with finish reason and usage) and
deterministic answers (the first tool is called when tools are offered).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from smartflow.http import Request, Response, Router, StreamingResponse, json_response

from .anthropic_mock import (
    api_key_of,
    before_answer,
    estimate_tokens,
    failure_response,
    knob,
    paced,
    sample_arguments,
    take_failure,
    words,
)
from .state import UpstreamState, record


def cohere_error(status: int, message: str) -> dict[str, Any]:
    return {"id": "mock-error", "message": message}


def _error(status: int, message: str) -> Response:
    return json_response(cohere_error(status, message), status)


def _check_auth(state: UpstreamState, request: Request) -> Response | None:
    header = request.header("authorization") or ""
    if not header.lower().startswith("bearer "):
        return _error(401, "no api key supplied")
    if header[7:] != api_key_of(state, "cohere"):
        return _error(401, "invalid api token")
    return None


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "invalid request: body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "invalid request: model must be specified"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "invalid request: messages cannot be empty"
    known_calls: set[str] = set()
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            return f"invalid request: messages[{index}].role must be one of system, user, " \
                   "assistant, tool"
        if role == "assistant":
            for call in message.get("tool_calls") or ():
                known_calls.add(call.get("id"))
                arguments = (call.get("function") or {}).get("arguments")
                if not isinstance(arguments, str):
                    return f"invalid request: messages[{index}].tool_calls arguments must be " \
                           "a string"
        if role == "tool" and message.get("tool_call_id") not in known_calls:
            return (f"invalid request: messages[{index}].tool_call_id "
                    f"{message.get('tool_call_id')!r} does not match any previous tool call")
    for tool in body.get("tools") or ():
        if tool.get("type") != "function" or not (tool.get("function") or {}).get("name"):
            return "invalid request: tools must be of type function with a name"
    return None


def _plan(state: UpstreamState, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    last = body["messages"][-1]
    tools = body.get("tools") or []
    if tools and last.get("role") != "tool" and body.get("tool_choice") != "NONE":
        function = tools[0]["function"]
        return "I will call a tool.", {"name": function["name"], "arguments": orjson.dumps(
            sample_arguments(function.get("parameters"))).decode()}
    reply_text = knob(state, "reply_text", None)
    if reply_text is not None:
        return reply_text, None
    content = last.get("content")
    text = content if isinstance(content, str) else "".join(
        str(p.get("text", "")) for p in content or () if isinstance(p, dict))
    if last.get("role") == "tool":
        return f"The tool returned: {text}", None
    return f"You said: {text[:200]}", None


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    payload = {"type": kind, **payload}
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def build_cohere_mock(state: UpstreamState) -> Router:
    router = Router()

    async def chat(request: Request) -> Response | StreamingResponse:
        recorded = await record(state, request)
        denied = _check_auth(state, request)
        if denied is not None:
            return denied
        failure = take_failure(state)
        if failure is not None:
            return failure_response(failure, cohere_error)
        body = recorded.json
        problem = _validate(body)
        if problem is not None:
            return _error(400, problem)
        input_tokens = estimate_tokens([body["messages"], body.get("tools")])
        window = int(knob(state, "context_window_tokens", 256_000))
        if input_tokens > window:
            return _error(400, f"too many tokens: total number of tokens in the prompt cannot "
                               f"exceed {window} - received {input_tokens}. "
                               "Try using a shorter prompt or a smaller max_tokens value.")
        await before_answer(state)
        text, call = _plan(state, body)
        message_id = f"mock-{len(state.requests):04d}"
        call_id = f"mockcall{len(state.requests):04d}"
        pieces = words(text)
        finish = "TOOL_CALL" if call is not None else "COMPLETE"
        limit = body.get("max_tokens")
        if call is None and limit and len(pieces) > limit:
            pieces, finish = pieces[:limit], "MAX_TOKENS"
        output_tokens = len(pieces) + (estimate_tokens(call) if call else 0)
        usage = {"billed_units": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                 "tokens": {"input_tokens": input_tokens + 7, "output_tokens": output_tokens}}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant"}
            if call is not None:
                message["tool_plan"] = text
                message["tool_calls"] = [{"id": call_id, "type": "function", "function": call}]
            else:
                message["content"] = [{"type": "text", "text": "".join(pieces)}]
            return json_response({"id": message_id, "finish_reason": finish,
                                  "message": message, "usage": usage})

        frames = [_sse("message-start", {"id": message_id, "delta": {"message": {
            "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [],
            "citations": []}}})]
        if call is not None:
            frames.extend(_sse("tool-plan-delta", {"delta": {"message": {"tool_plan": piece}}})
                          for piece in pieces)
            frames.append(_sse("tool-call-start", {"index": 0, "delta": {"message": {
                "tool_calls": {"id": call_id, "type": "function",
                               "function": {"name": call["name"], "arguments": ""}}}}}))
            arguments = call["arguments"]
            frames.extend(_sse("tool-call-delta", {"index": 0, "delta": {"message": {
                "tool_calls": {"function": {"arguments": arguments[start:start + 5]}}}}})
                for start in range(0, len(arguments), 5))
            frames.append(_sse("tool-call-end", {"index": 0}))
        else:
            frames.append(_sse("content-start", {"index": 0, "delta": {"message": {
                "content": {"type": "text", "text": ""}}}}))
            frames.extend(_sse("content-delta", {"index": 0, "delta": {"message": {
                "content": {"text": piece}}}}) for piece in pieces)
            frames.append(_sse("content-end", {"index": 0}))
        frames.append(_sse("message-end", {"delta": {"finish_reason": finish, "usage": usage}}))
        return StreamingResponse(paced(state, frames))

    async def embed(request: Request) -> Response:
        recorded = await record(state, request)
        denied = _check_auth(state, request)
        if denied is not None:
            return denied
        failure = take_failure(state)
        if failure is not None:
            return failure_response(failure, cohere_error)
        body = recorded.json
        texts = body.get("texts") if isinstance(body, dict) else None
        if not isinstance(texts, list) or not texts:
            return _error(400, "invalid request: texts must be a non-empty list")
        if not body.get("input_type"):
            return _error(400, "invalid request: input_type is required for embed models v3 "
                               "and higher.")
        dimensions = int(body.get("output_dimension") or 8)
        vectors = []
        for text in texts:
            digest = hashlib.sha256(str(text).encode()).digest()
            vectors.append([round((digest[i % 32] - 128) / 128, 6) for i in range(dimensions)])
        return json_response({"id": f"mock-embed-{len(state.requests):04d}",
                              "embeddings": {"float": vectors}, "texts": texts,
                              "meta": {"api_version": {"version": "2"},
                                       "billed_units": {"input_tokens": estimate_tokens(texts)}},
                              "response_type": "embeddings_by_type"})

    router.add("POST", "/v2/chat", chat)
    router.add("POST", "/v2/embed", embed)
    return router
