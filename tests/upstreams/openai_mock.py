"""A mock of OpenAI and the services that copy its API, on one server.

    /v1/...                                 OpenAI (Bearer state.openai_api_key)
    /openai/deployments/{d}/...?api-version Azure OpenAI (api-key header or Bearer)
    /mistral/v1/...                         Mistral (Bearer state.mistral_api_key)
    /compat/v1/...                          an OpenAI-compatible server without auth

Each answers in its own dialect: OpenAI's exact chunks and errors; Azure's
``prompt_filter_results`` chunk, content-filter 400 and api-version check;
Mistral's strict field check (422), 9-character tool-call ids, usage on the
last content chunk and list-shaped content (for "magistral" models).
Replies come from ``smartflow.providers.mock``'s builders, so they are
deterministic: "Mock response to: <the last user message>" and filler.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from smartflow.http.request import Request
from smartflow.http.response import Response, StreamingResponse, json_response
from smartflow.http.router import Router
from smartflow.providers.mock import (
    MockOptions,
    chat_chunks,
    chat_completion,
    embeddings,
    text_completion,
    text_completion_chunks,
)
from smartflow.providers.sse import SSE_DONE, sse_data

from .state import RecordedRequest, UpstreamDied, UpstreamState, record

_OPENAI_CONTEXT_MESSAGE = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in "
    "130000 tokens. Please reduce the length of the messages."
)
_MISTRAL_FIELDS = frozenset({
    "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed",
    "response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n",
    "prediction", "parallel_tool_calls", "safe_prompt", "prompt_mode",
})
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

Dialect = str  # "openai" | "azure" | "mistral" | "compat"


def _openai_error(status: int, message: str, type: str | None = "invalid_request_error",
                  param: str | None = None, code: str | None = None,
                  headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response({"error": {"message": message, "type": type, "param": param,
                                    "code": code}}, status, headers)


def _mistral_error(status: int, message: Any, type: str = "invalid_request_error",
                   code: str | None = None) -> Response:
    return json_response({"object": "error", "message": message, "type": type, "param": None,
                          "code": code}, status)


def _dialect_error(dialect: Dialect, status: int, message: str, code: str | None = None,
                   param: str | None = None) -> Response:
    headers = [("retry-after", "1")] if status == 429 else None
    if dialect == "mistral":
        response = _mistral_error(status, message, "invalid_request_error" if status < 500
                                  else "internal_server_error", code)
        if headers:
            response.headers.extend(headers)
        return response
    if dialect == "azure":
        return json_response({"error": {"code": code or str(status), "message": message,
                                        "param": param, "type": None}}, status, headers)
    error_type = {401: "invalid_request_error", 429: "requests"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return _openai_error(status, message, error_type, param, code, headers)


def _model_of(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return body["model"]
    return ""


def _steered_failure(dialect: Dialect, model: str, body: Any) -> Response | None:
    """A failure the model name asks for."""
    if model.startswith("fail-") and model[5:].isdigit():
        status = int(model[5:])
        code = "rate_limit_exceeded" if status == 429 and dialect != "azure" else None
        return _dialect_error(dialect, status, f"Injected failure {status} for {model}", code)
    if model == "context-overflow":
        if dialect == "mistral":
            return _mistral_error(400, "Prompt contains 40000 tokens and 0 draft tokens, too "
                                       "large for model with 32768 maximum context length")
        return _dialect_error(dialect, 400, _OPENAI_CONTEXT_MESSAGE, "context_length_exceeded",
                              "messages")
    if dialect == "azure" and model == "content-filter":
        return json_response({"error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
                       "content management policy.",
            "type": None, "param": "prompt", "code": "content_filter", "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation",
                           "content_filter_result": {"hate": {"filtered": True,
                                                              "severity": "high"}}}}}, 400)
    return None


def _options(state: UpstreamState) -> MockOptions:
    return MockOptions(chunk_count=state.chunk_count, completion_tokens=state.completion_tokens)


def _stream_plan(state: UpstreamState, model: str) -> tuple[int | None, int | None]:
    stall = 2 if model == "stall-stream" else state.stall_after_chunks
    die = 2 if model == "die-stream" else state.die_after_chunks
    return stall, die


def _sse_response(state: UpstreamState, model: str, frames: list[bytes]) -> StreamingResponse:
    stall_after, die_after = _stream_plan(state, model)
    interval_s = state.chunk_interval_s

    async def chunks() -> AsyncIterator[bytes]:
        for position, frame in enumerate(frames):
            if position == die_after:
                raise UpstreamDied("mock upstream dies mid-stream")
            if position == stall_after:
                await asyncio.sleep(state.stall_s)
            if position and interval_s > 0:
                await asyncio.sleep(interval_s)
            yield frame

    return StreamingResponse(chunks(), 200, [("cache-control", "no-cache")], "text/event-stream")


# -- dialect reshaping ---------------------------------------------------------


def _mistral_id(text: str) -> str:
    number = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    chars = []
    for _ in range(9):
        number, digit = divmod(number, 62)
        chars.append(_ID_CHARS[digit])
    return "".join(chars)


def _mistral_tool_calls(tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": _mistral_id(call.get("id") or ""), "function": dict(call["function"])}
            for call in tool_calls]


def _mistral_content(text: str | None, model: str) -> Any:
    if text is None:
        return ""
    if "magistral" in model:
        return [{"type": "thinking", "thinking": [{"type": "text", "text": "Let me think."}]},
                {"type": "text", "text": text}]
    return text


def _to_mistral_completion(completion: dict[str, Any], model: str) -> dict[str, Any]:
    choices = []
    for choice in completion["choices"]:
        message = choice["message"]
        out: dict[str, Any] = {"role": "assistant",
                               "content": _mistral_content(message.get("content"), model)}
        if message.get("tool_calls"):
            out["tool_calls"] = _mistral_tool_calls(message["tool_calls"])
        reason = "model_length" if choice["finish_reason"] == "length" else choice["finish_reason"]
        choices.append({"index": choice["index"], "message": out, "finish_reason": reason})
    usage = completion["usage"]
    return {"id": completion["id"].replace("chatcmpl-", ""), "object": "chat.completion",
            "created": completion["created"], "model": model, "choices": choices,
            "usage": {"prompt_tokens": usage["prompt_tokens"],
                      "completion_tokens": usage["completion_tokens"],
                      "total_tokens": usage["total_tokens"]}}


def _to_mistral_chunks(chunks: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """Mistral streams: no refusal/logprobs, whole tool calls in one delta, and usage
    on the last chunk that has a finish_reason (never a separate usage chunk)."""
    usage = None
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        if not chunk["choices"]:
            usage = chunk.get("usage")
            continue
        choices = []
        for choice in chunk["choices"]:
            delta = choice["delta"]
            new_delta: dict[str, Any] = {}
            if "role" in delta:
                new_delta["role"] = "assistant"
            if "content" in delta:
                new_delta["content"] = _mistral_content(delta["content"], model)
            if delta.get("tool_calls"):
                call = delta["tool_calls"][0]
                if "id" not in call:
                    continue  # the argument fragment: Mistral sends a tool call whole
                new_delta["tool_calls"] = [{"id": _mistral_id(call["id"]), "index": 0,
                                            "function": {"name": call["function"]["name"],
                                                         "arguments": "{}"}}]
            reason = choice["finish_reason"]
            choices.append({"index": choice["index"], "delta": new_delta,
                            "finish_reason": "model_length" if reason == "length" else reason})
        if choices:
            out.append({"id": chunk["id"].replace("chatcmpl-", ""),
                        "object": "chat.completion.chunk", "created": chunk["created"],
                        "model": model, "choices": choices})
    if out:
        final = out[-1]
        final["usage"] = usage or {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    return out


def _check_mistral_request(body: dict[str, Any]) -> Response | None:
    extra = [key for key in body if key not in _MISTRAL_FIELDS]
    if extra:
        detail = [{"type": "extra_forbidden", "loc": ["body", key],
                   "msg": "Extra inputs are not permitted", "input": body[key]} for key in extra]
        return _mistral_error(422, {"detail": detail}, "invalid_request_message_error")
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        ids = [call.get("id") for call in message.get("tool_calls") or () if isinstance(call, dict)]
        if message.get("role") == "tool":
            ids.append(message.get("tool_call_id"))
        for call_id in ids:
            if not (isinstance(call_id, str) and len(call_id) == 9 and call_id.isalnum()):
                return _mistral_error(400, f"Tool call id was {call_id} but must be a-z, A-Z, "
                                           "0-9, with a length of 9.",
                                      "invalid_request_message_error", "3280")
    return None


# -- auth ------------------------------------------------------------------------


def _check_auth(state: UpstreamState, dialect: Dialect, recorded: RecordedRequest) -> Response | None:
    authorization = recorded.header("authorization") or ""
    token = authorization[7:] if authorization.startswith("Bearer ") else ""
    if dialect == "openai":
        if not token:
            return _openai_error(401, "You didn't provide an API key. You need to provide your "
                                      "API key in an Authorization header using Bearer auth.")
        if token != state.openai_api_key:
            return _openai_error(401, f"Incorrect API key provided: {token[:3]}***. You can find "
                                      "your API key at https://platform.openai.com/account/api-keys.",
                                 code="invalid_api_key")
    elif dialect == "azure":
        if recorded.header("api-key") != state.azure_api_key and token != state.azure_api_key:
            return json_response({"error": {"code": "401", "message": (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                "to provide a valid key for an active subscription and use a correct regional "
                "API endpoint for your resource.")}}, 401)
    elif dialect == "mistral" and token != state.mistral_api_key:
        return json_response({"message": "Unauthorized", "request_id": "mock"}, 401)
    return None


def _check_azure_version(state: UpstreamState, recorded: RecordedRequest) -> Response | None:
    versions = recorded.query.get("api-version")
    if not versions:
        return json_response({"error": {"code": "404", "message": "Resource not found"}}, 404)
    if versions[0] not in state.azure_api_versions:
        return json_response({"error": {"code": "BadRequest",
                                        "message": "API version not supported"}}, 400)
    return None


# -- handlers --------------------------------------------------------------------


Operation = Callable[[UpstreamState, Dialect, dict[str, Any], str], Response | StreamingResponse]


def _chat(state: UpstreamState, dialect: Dialect, body: dict[str, Any],
          model: str) -> Response | StreamingResponse:
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return _dialect_error(dialect, 400, "'messages' must be a non-empty array",
                              param="messages")
    is_stream = body.get("stream") is True
    if dialect == "mistral":
        problem = _check_mistral_request(body)
        if problem is not None:
            return problem
    elif "stream_options" in body and not is_stream:
        return _dialect_error(dialect, 400, "The 'stream_options' parameter is only allowed "
                                            "when 'stream' is enabled.", param="stream_options")
    options = _options(state)
    if not is_stream:
        completion = chat_completion(body, options)
        if dialect == "mistral":
            return json_response(_to_mistral_completion(completion, model))
        if dialect == "azure":
            completion["prompt_filter_results"] = [{"prompt_index": 0,
                                                    "content_filter_results": {}}]
        return json_response(completion)
    if dialect == "mistral":
        # Mistral always reports usage (on its last chunk): build it, then reshape.
        chunks = _to_mistral_chunks(
            chat_chunks({**body, "stream_options": {"include_usage": True}}, options), model)
    else:
        chunks = chat_chunks(body, options)
    if dialect == "azure":
        chunks.insert(0, {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                          "prompt_filter_results": [{"prompt_index": 0,
                                                     "content_filter_results": {}}]})
    frames = [sse_data(chunk) for chunk in chunks]
    frames.append(SSE_DONE)
    return _sse_response(state, model, frames)


def _embeddings(state: UpstreamState, dialect: Dialect, body: dict[str, Any],
                model: str) -> Response | StreamingResponse:
    if dialect == "mistral" and "output_dimension" in body:
        body = {**body, "dimensions": body["output_dimension"]}
    try:
        result = embeddings(body, MockOptions())
    except ValueError as exc:
        return _dialect_error(dialect, 400, str(exc), param="input")
    return json_response(result)


def _completions(state: UpstreamState, dialect: Dialect, body: dict[str, Any],
                 model: str) -> Response | StreamingResponse:
    if dialect == "mistral":
        return _dialect_error(dialect, 404, "Not Found")
    if body.get("stream") is True:
        frames = [sse_data(chunk) for chunk in text_completion_chunks(body, _options(state))]
        frames.append(SSE_DONE)
        return _sse_response(state, model, frames)
    return json_response(text_completion(body, _options(state)))


def _handler(state: UpstreamState, dialect: Dialect, operation: Operation) -> Any:
    async def handle(request: Request) -> Response | StreamingResponse:
        recorded = await record(state, request)
        problem = _check_auth(state, dialect, recorded)
        if problem is None and dialect == "azure":
            problem = _check_azure_version(state, recorded)
        if problem is not None:
            return problem
        if state.fail_next is not None:
            status, body = state.fail_next
            state.fail_next = None
            headers = list(state.fail_next_headers)
            state.fail_next_headers = []
            if isinstance(body, bytes | str):
                raw = body.encode() if isinstance(body, str) else body
                return Response(status, raw, headers)
            return json_response(body, status, headers)
        body = recorded.json
        if not isinstance(body, dict):
            return _dialect_error(dialect, 400, "We could not parse the JSON body of your "
                                                "request.")
        model = request.path_params.get("deployment") or _model_of(body)
        if dialect != "azure" and not model:
            return _dialect_error(dialect, 400, "you must provide a model parameter",
                                  param="model")
        failure = _steered_failure(dialect, model, body)
        if failure is not None:
            return failure
        if state.latency_s > 0:
            await asyncio.sleep(state.latency_s)
        return operation(state, dialect, body, model)

    return handle


def _models_handler(state: UpstreamState) -> Any:
    async def handle(request: Request) -> Response:
        recorded = await record(state, request)
        problem = _check_auth(state, "openai", recorded)
        if problem is not None:
            return problem
        return json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "mock"}
            for name in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")]})

    return handle


def build_openai_mock(state: UpstreamState) -> Router:
    router = Router()
    for prefix, dialect in (("/v1", "openai"), ("/mistral/v1", "mistral"),
                            ("/compat/v1", "compat")):
        router.add("POST", f"{prefix}/chat/completions", _handler(state, dialect, _chat))
        router.add("POST", f"{prefix}/embeddings", _handler(state, dialect, _embeddings))
        router.add("POST", f"{prefix}/completions", _handler(state, dialect, _completions))
    router.add("GET", "/v1/models", _models_handler(state))
    azure = "/openai/deployments/{deployment}"
    router.add("POST", f"{azure}/chat/completions", _handler(state, "azure", _chat))
    router.add("POST", f"{azure}/embeddings", _handler(state, "azure", _embeddings))
    router.add("POST", f"{azure}/completions", _handler(state, "azure", _completions))
    return router


def sse_body(chunks: list[dict[str, Any]]) -> bytes:
    """A whole OpenAI SSE body, for tests that need one without a server."""
    return b"".join(sse_data(chunk) for chunk in chunks) + SSE_DONE

