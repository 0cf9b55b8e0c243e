"""An OpenAI-wire upstream that records each request and always answers with text.

For real clients pointed at the gateway with a model that is served over
OpenAI's wire: Claude Code through ``/anthropic`` (the gateway translates
both ways), Codex CLI and the Agents SDK through ``/v1/responses``, and the
chat-completions clients. Unlike the built-in mock it never calls a tool, so
a client finishes after one turn.

Routes:

  POST /v1/chat/completions   a chat completion, plain or ``stream: true``
  POST /v1/responses          a Responses API answer, plain or ``stream: true``
                              (the full typed SSE sequence, ``event:`` lines included)
  GET  /v1/models             a one-entry model list
  anything else               recorded, answered 404 in OpenAI's error shape

Every request, unknown paths included, lands in the ``RequestLog`` (see
``recording_anthropic``). The Responses answer is hand-written here, on
purpose independent of the gateway's own encoder.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from smartflow.http import Request, Response, Router, StreamingResponse, json_response
from upstreams.recording_anthropic import ANY_METHOD, RequestLog, _record

RESPONSE_ID = "resp_recording"
MESSAGE_ID = "msg_recording"


def _chunk(model: str, delta: dict[str, object], finish: str | None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-recording", "object": "chat.completion.chunk", "created": 1,
        "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }) + b"\n\n"


def _pieces(reply_text: str) -> list[str]:
    return re.findall(r"\S+\s*", reply_text) or [reply_text]


# -- Responses API ------------------------------------------------------------------

def _responses_usage() -> dict[str, Any]:
    return {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 16}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(text: str | None, status: str) -> dict[str, Any]:
    return {"id": MESSAGE_ID, "type": "message", "status": status, "role": "assistant",
            "content": [] if text is None else [_output_text(text)]}


def _response_object(body: dict[str, Any], status: str,
                     output: list[dict[str, Any]]) -> dict[str, Any]:
    """A Response as the API returns it, echoing the request's settings."""
    return {
        "id": RESPONSE_ID, "object": "response", "created_at": 1, "status": status,
        "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": str(body.get("model") or ""),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": _responses_usage() if status == "completed" else None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def responses_events(body: dict[str, Any], reply_text: str) -> list[bytes]:
    """The typed SSE events of a one-message answer, as the real API frames them."""
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response_object(body, "in_progress", [])},
        {"type": "response.in_progress", "response": _response_object(body, "in_progress", [])},
        {"type": "response.output_item.added", "output_index": 0,
         "item": _message_item(None, "in_progress")},
        {"type": "response.content_part.added", "item_id": MESSAGE_ID, "output_index": 0,
         "content_index": 0, "part": _output_text("")},
    ]
    events += [{"type": "response.output_text.delta", "item_id": MESSAGE_ID, "output_index": 0,
                "content_index": 0, "delta": piece, "logprobs": []}
               for piece in _pieces(reply_text)]
    events += [
        {"type": "response.output_text.done", "item_id": MESSAGE_ID, "output_index": 0,
         "content_index": 0, "text": reply_text, "logprobs": []},
        {"type": "response.content_part.done", "item_id": MESSAGE_ID, "output_index": 0,
         "content_index": 0, "part": _output_text(reply_text)},
        {"type": "response.output_item.done", "output_index": 0,
         "item": _message_item(reply_text, "completed")},
        {"type": "response.completed", "response": _response_object(
            body, "completed", [_message_item(reply_text, "completed")])},
    ]
    frames = []
    for number, event in enumerate(events):
        event["sequence_number"] = number
        frames.append(b"event: " + event["type"].encode() + b"\ndata: "
                      + orjson.dumps(event) + b"\n\n")
    return frames


async def _replay(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


def build_recording_openai(log: RequestLog, reply_text: str) -> Router:
    router = Router()

    async def chat(request: Request) -> Response | StreamingResponse:
        seen = await _record(log, request)
        body = seen.json if isinstance(seen.json, dict) else {}
        model = str(body.get("model") or "")
        usage = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
        if body.get("stream"):
            frames = [_chunk(model, {"role": "assistant", "content": ""}, None)]
            frames += [_chunk(model, {"content": piece}, None) for piece in _pieces(reply_text)]
            frames.append(_chunk(model, {}, "stop"))
            frames.append(b"data: " + orjson.dumps({
                "id": "chatcmpl-recording", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [], "usage": usage}) + b"\n\n")
            frames.append(b"data: [DONE]\n\n")
            return StreamingResponse(_replay(frames), 200,
                                     [("x-request-id", "req_recording_openai")])
        return json_response({
            "id": "chatcmpl-recording", "object": "chat.completion", "created": 1,
            "model": model, "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply_text}}],
        })

    async def responses(request: Request) -> Response | StreamingResponse:
        seen = await _record(log, request)
        body = seen.json if isinstance(seen.json, dict) else {}
        if body.get("stream"):
            return StreamingResponse(_replay(responses_events(body, reply_text)), 200,
                                     [("x-request-id", "req_recording_openai")])
        return json_response(
            _response_object(body, "completed", [_message_item(reply_text, "completed")]),
            200, [("x-request-id", "req_recording_openai")])

    async def models(request: Request) -> Response:
        await _record(log, request)
        return json_response({"object": "list", "data": [
            {"id": "gpt-4o-mini", "object": "model", "created": 1, "owned_by": "recording"}]})

    async def anything_else(request: Request) -> Response:
        seen = await _record(log, request)
        return json_response({"error": {
            "message": f"no route {seen.method} {seen.path}", "type": "invalid_request_error",
            "param": None, "code": "not_found"}}, 404)

    router.add("POST", "/v1/chat/completions", chat)
    router.add("POST", "/v1/responses", responses)
    router.add("GET", "/v1/models", models)
    router.add(ANY_METHOD, "/", anything_else)
    router.add(ANY_METHOD, "/{rest:path}", anything_else)
    return router
