"""A mock of Ollama's native API: /api/chat (JSON or NDJSON stream), /api/embed,
/api/tags, /api/version. No auth, as Ollama has none. A model whose name
starts with "missing" is not pulled (404 in Ollama's words); the model names
of ``openai_mock`` ("fail-<status>", "stall-stream", "die-stream") work here too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator
from typing import Any

import orjson

from smartflow.http.request import Request
from smartflow.http.response import Response, StreamingResponse, json_response
from smartflow.http.router import Router
from smartflow.providers.mock import (
    embedding_vector,
    estimate_prompt_tokens,
    last_user_text,
    reply_words,
    split_reply,
)

from .state import UpstreamDied, UpstreamState, record

_CREATED_AT = "2024-11-01T12:00:00.000000000Z"


def _error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _final_fields(prompt_tokens: int, completion_tokens: int, done_reason: str) -> dict[str, Any]:
    return {"done": True, "done_reason": done_reason, "total_duration": 1_000_000,
            "load_duration": 100_000, "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 200_000, "eval_count": completion_tokens,
            "eval_duration": 700_000}


def _check_model(model: Any) -> Response | None:
    if not isinstance(model, str) or not model:
        return _error(400, "model is required")
    if model.startswith("missing"):
        return _error(404, f'model "{model}" not found, try pulling it first')
    if model.startswith("fail-") and model[5:].isdigit():
        return _error(int(model[5:]), f"injected failure for {model}")
    return None


def _check_images(messages: list[Any]) -> Response | None:
    for message in messages:
        if not isinstance(message, dict):
            return _error(400, "invalid message format")
        for image in message.get("images") or ():
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError, TypeError):
                return _error(400, "illegal base64 data at input byte 0")
    return None


def _take_failure(state: UpstreamState) -> Response | None:
    """``state.fail_next`` once: a dict/list body is sent as JSON, str/bytes as they are."""
    if state.fail_next is None:
        return None
    (status, body), state.fail_next = state.fail_next, None
    headers, state.fail_next_headers = list(state.fail_next_headers), []
    if isinstance(body, str):
        body = body.encode()
    return Response(status, body if isinstance(body, bytes) else orjson.dumps(body), headers)


def build_ollama_mock(state: UpstreamState) -> Router:
    router = Router()

    async def chat(request: Request) -> Response | StreamingResponse:
        recorded = await record(state, request)
        failure = _take_failure(state)
        if failure is not None:
            return failure
        body = recorded.json
        if not isinstance(body, dict):
            return _error(400, "invalid character 'x' looking for beginning of value")
        model = body.get("model")
        problem = _check_model(model)
        if problem is not None:
            return problem
        messages = body.get("messages")
        if not isinstance(messages, list):
            return _error(400, "messages is required")
        problem = _check_images(messages)
        if problem is not None:
            return problem
        if state.latency_s > 0:
            await asyncio.sleep(state.latency_s)
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        words = reply_words(last_user_text(messages), state.completion_tokens)
        done_reason = "stop"
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 < limit < len(words):
            words, done_reason = words[:limit], "length"
        prompt_tokens = estimate_prompt_tokens(messages)
        tools = body.get("tools")
        tool_calls = None
        if isinstance(tools, list) and tools:
            name = tools[0].get("function", {}).get("name") if isinstance(tools[0], dict) else None
            tool_calls = [{"function": {"name": name, "arguments": {"city": "Paris"}}}]
        if body.get("stream") is False:
            message: dict[str, Any] = {"role": "assistant",
                                       "content": "" if tool_calls else " ".join(words)}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return json_response({"model": model, "created_at": _CREATED_AT, "message": message,
                                  **_final_fields(prompt_tokens, len(words), done_reason)})
        lines: list[bytes] = []
        if tool_calls:
            lines.append(orjson.dumps({"model": model, "created_at": _CREATED_AT,
                                       "message": {"role": "assistant", "content": "",
                                                   "tool_calls": tool_calls},
                                       "done": False}) + b"\n")
        else:
            for piece in split_reply(words, state.chunk_count):
                lines.append(orjson.dumps({"model": model, "created_at": _CREATED_AT,
                                           "message": {"role": "assistant", "content": piece},
                                           "done": False}) + b"\n")
        lines.append(orjson.dumps({"model": model, "created_at": _CREATED_AT,
                                   "message": {"role": "assistant", "content": ""},
                                   **_final_fields(prompt_tokens, len(words), done_reason)})
                     + b"\n")
        stall_after = 2 if model == "stall-stream" else state.stall_after_chunks
        die_after = 2 if model == "die-stream" else state.die_after_chunks

        async def chunks() -> AsyncIterator[bytes]:
            for position, line in enumerate(lines):
                if position == die_after:
                    raise UpstreamDied("mock upstream dies mid-stream")
                if position == stall_after:
                    await asyncio.sleep(state.stall_s)
                if position and state.chunk_interval_s > 0:
                    await asyncio.sleep(state.chunk_interval_s)
                yield line

        return StreamingResponse(chunks(), 200, None, "application/x-ndjson")

    async def embed(request: Request) -> Response:
        recorded = await record(state, request)
        failure = _take_failure(state)
        if failure is not None:
            return failure
        body = recorded.json
        if not isinstance(body, dict):
            return _error(400, "invalid request body")
        problem = _check_model(body.get("model"))
        if problem is not None:
            return problem
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return _error(400, "invalid input type")
        dimensions = body.get("dimensions") or 32
        vectors = [embedding_vector(text, dimensions) for text in texts]
        tokens = sum(max(1, len(text) // 4) for text in texts)
        return json_response({"model": body["model"], "embeddings": vectors,
                              "total_duration": 1_000_000, "load_duration": 1000,
                              "prompt_eval_count": tokens})

    async def tags(request: Request) -> Response:
        await record(state, request)
        return json_response({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest",
                                          "modified_at": _CREATED_AT, "size": 2019393189}]})

    async def version(request: Request) -> Response:
        return json_response({"version": "0.5.7"})

    router.add("POST", "/api/chat", chat)
    router.add("POST", "/api/embed", embed)
    router.add("GET", "/api/tags", tags)
    router.add("GET", "/api/version", version)
    return router

