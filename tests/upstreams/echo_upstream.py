"""An upstream whose answers quote the question, on OpenAI's and Anthropic's wires.

For the cache tests: a replayed answer says which question it answered, so
a wrong hit (one question's answer served to another) is visible in the
body, and every upstream call lands in the ``RequestLog``.

Routes: POST /v1/chat/completions, POST /v1/responses (OpenAI), POST
/v1/messages (Anthropic); each plain or ``stream: true``, each with usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from smartflow.http import Request, Response, Router, StreamingResponse, json_response
from upstreams.recording_anthropic import RequestLog, _record, answer_frames
from upstreams.recording_openai import (
    _chunk,
    _message_item,
    _pieces,
    _response_object,
    responses_events,
)


def _last_user_text(turns: Any) -> str:
    if isinstance(turns, str):
        return turns
    if not isinstance(turns, list):
        return ""
    for turn in reversed(turns):
        if isinstance(turn, dict) and turn.get("role") in ("user", "tool"):
            content = turn.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", p.get("content", ""))) for p in content
                                if isinstance(p, dict))
    return ""


def echo_of(question: str) -> str:
    return f"Answer to: {question}"


async def _frames(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


def build_echo_upstream(log: RequestLog) -> Router:
    router = Router()

    async def chat(request: Request) -> Response | StreamingResponse:
        seen = await _record(log, request)
        body = seen.json if isinstance(seen.json, dict) else {}
        model = str(body.get("model") or "")
        reply = echo_of(_last_user_text(body.get("messages")))
        usage = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
        if body.get("stream"):
            frames = [_chunk(model, {"role": "assistant", "content": ""}, None)]
            frames += [_chunk(model, {"content": piece}, None) for piece in _pieces(reply)]
            frames.append(_chunk(model, {}, "stop"))
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                frames.append(b"data: " + orjson.dumps({
                    "id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 1,
                    "model": model, "choices": [], "usage": usage}) + b"\n\n")
            frames.append(b"data: [DONE]\n\n")
            return StreamingResponse(_frames(frames), 200)
        return json_response({
            "id": "chatcmpl-echo", "object": "chat.completion", "created": 1,
            "model": model, "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": reply}}],
        })

    async def responses(request: Request) -> Response | StreamingResponse:
        seen = await _record(log, request)
        body = seen.json if isinstance(seen.json, dict) else {}
        reply = echo_of(_last_user_text(body.get("input")))
        if body.get("stream"):
            return StreamingResponse(_frames(responses_events(body, reply)), 200)
        return json_response(_response_object(body, "completed",
                                              [_message_item(reply, "completed")]))

    async def messages(request: Request) -> Response | StreamingResponse:
        seen = await _record(log, request)
        body = seen.json if isinstance(seen.json, dict) else {}
        model = str(body.get("model") or "")
        reply = echo_of(_last_user_text(body.get("messages")))
        if body.get("stream"):
            return StreamingResponse(_frames(answer_frames(model, reply)), 200)
        return json_response({
            "id": "msg_echo", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 3},
        })

    router.add("POST", "/v1/chat/completions", chat)
    router.add("POST", "/v1/responses", responses)
    router.add("POST", "/v1/messages", messages)
    return router
