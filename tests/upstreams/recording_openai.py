"""An OpenAI-wire upstream that records each request and always answers with text.

For Claude Code pointed at the gateway's ``/anthropic`` with a model that is
served over OpenAI's wire: the gateway must translate both ways. Unlike the
built-in mock it never calls a tool, so the CLI finishes after one turn.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import orjson
from upstreams.recording_anthropic import RequestLog, _record

from smartflow.http import Request, Response, Router, StreamingResponse, json_response


def _chunk(model: str, delta: dict[str, object], finish: str | None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-recording", "object": "chat.completion.chunk", "created": 1,
        "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }) + b"\n\n"


def build_recording_openai(log: RequestLog, reply_text: str) -> Router:
    router = Router()

    async def chat(request: Request) -> Response | StreamingResponse:
        seen = await _record(log, request)
        body = seen.json if isinstance(seen.json, dict) else {}
        model = str(body.get("model") or "")
        usage = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
        if body.get("stream"):
            frames = [_chunk(model, {"role": "assistant", "content": ""}, None)]
            frames += [_chunk(model, {"content": piece}, None)
                       for piece in re.findall(r"\S+\s*", reply_text)]
            frames.append(_chunk(model, {}, "stop"))
            frames.append(b"data: " + orjson.dumps({
                "id": "chatcmpl-recording", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [], "usage": usage}) + b"\n\n")
            frames.append(b"data: [DONE]\n\n")

            async def stream() -> AsyncIterator[bytes]:
                for frame in frames:
                    yield frame

            return StreamingResponse(stream(), 200, [("x-request-id", "req_recording_openai")])
        return json_response({
            "id": "chatcmpl-recording", "object": "chat.completion", "created": 1,
            "model": model, "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply_text}}],
        })

    router.add("POST", "/v1/chat/completions", chat)
    return router
