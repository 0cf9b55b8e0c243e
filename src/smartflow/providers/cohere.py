"""Cohere Chat API v2 adapter (``/v2/chat``, ``/v2/embed``).

v2 messages are close to OpenAI's; the differences handled here:

* ``top_p`` is ``p``, ``stop`` is ``stop_sequences``.
* an assistant turn that calls tools carries its text as ``tool_plan``.
* ``tool_choice`` only has ``REQUIRED`` and ``NONE``; a named tool becomes
  ``REQUIRED`` with the tool list narrowed to that one tool (best effort).
* ``response_format`` json_schema is Cohere's ``json_object`` + ``json_schema``.
* Responses use ``tokens`` usage (what the model actually processed) when
  present, else ``billed_units``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from smartflow.http.errors import error_type_for_status
from smartflow.providers.base import (
    Headers,
    ProviderError,
    Target,
    UpstreamCall,
    Usage,
    join_url,
)
from smartflow.providers.openai import (
    SHAPE_ERRORS,
    bad_request,
    bad_shape,
    bearer_auth,
    call_headers,
    embedding_texts,
    is_context_length_message,
    json_object,
    not_json_event,
    openai_usage,
    retry_after_from,
    stop_sequences,
    text_of,
)
from smartflow.providers.sse_decoder import SSEChunkDecoder

COHERE_API_BASE = "https://api.cohere.com"

FINISH_REASONS: dict[str, str] = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR": "stop",
    "ERROR_TOXIC": "content_filter",
    "ERROR_LIMIT": "length",
    "USER_CANCEL": "stop",
    "TIMEOUT": "stop",
}

_TOKEN_LIMIT_PHRASES = ("too many tokens", "exceeds the context", "context length")


def _user_content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or a list of parts", where)
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise bad_request(f"{where}[{index}]: content part type {kind!r} is not supported "
                              "by Cohere", f"{where}[{index}]")
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"{where}[{index}].function.name: expected a string",
                              f"{where}[{index}]")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments or {}).decode()
        converted.append({"id": str(call.get("id", "")), "type": "function",
                          "function": {"name": function["name"], "arguments": arguments}})
    return converted


def openai_to_cohere_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat request dict as a Cohere v2 chat request dict.

    Raises ProviderError(400) naming the problem for a malformed request."""
    try:
        return _openai_to_cohere_request(body, model)
    except SHAPE_ERRORS as exc:
        raise bad_request(f"the request has a field of the wrong type or shape "
                          f"({type(exc).__name__}: {exc})") from None


def _openai_to_cohere_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat request dict as a Cohere v2 chat request dict."""
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise bad_request("messages: expected a non-empty list", "messages")
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where}: expected an object", where)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            messages.append({"role": "system", "content": text_of(content, f"{where}.content")})
        elif role == "user":
            messages.append({"role": "user", "content": _user_content(content,
                                                                      f"{where}.content")})
        elif role == "assistant":
            text = text_of(content, f"{where}.content")
            calls = message.get("tool_calls")
            if calls:
                entry: dict[str, Any] = {"role": "assistant",
                                         "tool_calls": _tool_calls(calls, f"{where}.tool_calls")}
                if text:
                    entry["tool_plan"] = text
            else:
                entry = {"role": "assistant", "content": text}
            messages.append(entry)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad_request(f"{where}.tool_call_id: required on tool messages", where)
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": text_of(content, f"{where}.content")})
        else:
            raise bad_request(f"{where}.role: {role!r} is not supported", where)
    request: dict[str, Any] = {"model": model, "messages": messages}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        request["max_tokens"] = max_tokens
    for openai_name, cohere_name in (("temperature", "temperature"), ("top_p", "p"),
                                     ("top_k", "k"), ("seed", "seed"),
                                     ("frequency_penalty", "frequency_penalty"),
                                     ("presence_penalty", "presence_penalty")):
        if body.get(openai_name) is not None:
            request[cohere_name] = body[openai_name]
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = stop_sequences(stop)
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and t.get("type") == "function" for t in tools):
            raise bad_request("tools: only function tools are supported", "tools")
        choice = body.get("tool_choice")
        selected = tools
        if choice == "required":
            request["tool_choice"] = "REQUIRED"
        elif choice == "none":
            request["tool_choice"] = "NONE"
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            name = choice["function"].get("name")
            selected = [t for t in tools if (t.get("function") or {}).get("name") == name]
            if not selected:
                raise bad_request(f"tool_choice: no tool named {name!r}", "tool_choice")
            request["tool_choice"] = "REQUIRED"
        request["tools"] = [{"type": "function", "function": t["function"]} for t in selected]
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_object":
            request["response_format"] = {"type": "json_object"}
        elif kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            request["response_format"] = {"type": "json_object", "json_schema": schema or {}}
    return request


# -- responses ---------------------------------------------------------------


def usage_from_cohere(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    counts = usage.get("tokens") or usage.get("billed_units") or {}
    return Usage(int(counts.get("input_tokens") or 0), int(counts.get("output_tokens") or 0),
                 int(usage.get("cached_tokens") or 0))


def cohere_to_openai_response(response: dict[str, Any], model: str) -> dict[str, Any]:
    message = response.get("message") or {}
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(str(block.get("text", "")) for block in content
                       if isinstance(block, dict) and block.get("type") == "text")
    else:
        text = content if isinstance(content, str) else ""
    tool_calls = [{"id": str(call.get("id", "")), "type": "function",
                   "function": {"name": str((call.get("function") or {}).get("name", "")),
                                "arguments": str((call.get("function") or {}).get(
                                    "arguments") or "{}")}}
                  for call in message.get("tool_calls") or ()]
    reply: dict[str, Any] = {"role": "assistant",
                             "content": text if text or not tool_calls else None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    finish = FINISH_REASONS.get(str(response.get("finish_reason") or "COMPLETE"), "stop")
    if tool_calls:
        finish = "tool_calls"
    return {"id": str(response.get("id") or "chatcmpl-cohere"), "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": reply, "logprobs": None,
                         "finish_reason": finish}],
            "usage": openai_usage(usage_from_cohere(response.get("usage")))}


class CohereStreamDecoder(SSEChunkDecoder):
    """Cohere v2 stream events in, OpenAI chunks out.

    ``message-end`` carries the finish reason and usage; ``tool-plan-delta``
    (the model's reasoning before calling a tool) is passed on as
    ``reasoning_content``. A ``message-end`` with an ``error`` raises
    ``ProviderError`` after the chunks before it have been returned.
    """

    def __init__(self, model: str, *, include_usage: bool) -> None:
        super().__init__("cohere", model, include_usage=include_usage,
                         chunk_id="chatcmpl-cohere")
        self._tool_indexes: dict[int, int] = {}

    def _on_event(self, data: str, out: list[dict[str, Any]]) -> None:
        if data == "[DONE]":
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise not_json_event("cohere", data) from None
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        delta = event.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        message = delta.get("message")
        if not isinstance(message, dict):
            message = {}
        if kind == "content-delta":
            self._start(out)
            text = (message.get("content") or {}).get("text")
            if text:
                out.append(self._chunk({"content": text}))
        elif kind == "tool-call-start":
            self._start(out)
            call = message.get("tool_calls") or {}
            function = call.get("function") or {}
            tool_index = len(self._tool_indexes)
            self._tool_indexes[int(event.get("index", tool_index))] = tool_index
            out.append(self._chunk({"tool_calls": [{
                "index": tool_index, "id": str(call.get("id", "")), "type": "function",
                "function": {"name": str(function.get("name", "")),
                             "arguments": str(function.get("arguments") or "")}}]}))
        elif kind == "tool-call-delta":
            delta_index = self._tool_indexes.get(int(event.get("index", 0)))
            fragment = ((message.get("tool_calls") or {}).get("function") or {}).get("arguments")
            if delta_index is not None and fragment:
                out.append(self._chunk({"tool_calls": [
                    {"index": delta_index, "function": {"arguments": fragment}}]}))
        elif kind == "tool-plan-delta":
            self._start(out)
            plan = message.get("tool_plan")
            if plan:
                out.append(self._chunk({"reasoning_content": plan}))
        elif kind == "message-start":
            if event.get("id"):
                self._id = str(event["id"])
            self._start(out)
        elif kind == "message-end":
            if delta.get("error"):
                self.error = ProviderError(500, str(delta["error"]), None)
            self.usage = usage_from_cohere(delta.get("usage"))
            self._start(out)
            reason = FINISH_REASONS.get(str(delta.get("finish_reason") or "COMPLETE"), "stop")
            if self._tool_indexes:
                reason = "tool_calls"
            self.finish_reason = reason
            out.append(self._chunk({}, reason))
            if self._include_usage:
                out.append(self._usage_chunk(self.usage))


# -- errors ------------------------------------------------------------------


def cohere_error(status: int, headers: Headers, body: bytes) -> ProviderError:
    message = ""
    try:
        payload: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
        message = body[:500].decode("utf-8", "replace").strip()
    if isinstance(payload, dict):
        raw = payload.get("message") or payload.get("error") or payload.get("detail")
        message = raw if isinstance(raw, str) else (orjson.dumps(raw).decode() if raw else "")
    if status in (498, 401):  # Cohere uses 498 for an invalid token on some routes
        return ProviderError(401, message or "invalid api token", "authentication_error",
                             "invalid_api_key")
    if status == 422:
        status = 400
    if not message:
        message = f"cohere returned HTTP {status}"
    lowered = message.lower()
    if is_context_length_message(message) or any(p in lowered for p in _TOKEN_LIMIT_PHRASES):
        return ProviderError(400, message, "invalid_request_error", "context_length_exceeded")
    if status == 499:
        status = 500
    code = "rate_limit_exceeded" if status == 429 else None
    return ProviderError(status, message, error_type_for_status(status), code, None,
                         retry_after_from(headers) if status in (429, 503) else None)


# -- the adapter -------------------------------------------------------------


def cohere_url(target: Target, path: str) -> str:
    base = (target.api_base or COHERE_API_BASE).rstrip("/")
    if base.endswith(("/v2", "/v1")):
        base = base[:-3]
    return join_url(base, path)


class CohereAdapter:
    name = "cohere"
    speaks_openai = False

    def chat_request(self, target: Target, body: dict[str, Any], *, stream: bool) -> UpstreamCall:
        request = openai_to_cohere_request(body, target.model)
        if stream:
            request["stream"] = True
        return UpstreamCall("POST", cohere_url(target, "/v2/chat"),
                            call_headers(target, bearer_auth(target.api_key), stream=stream),
                            orjson.dumps(request))

    def chat_response(self, target: Target, status: int, headers: Headers,
                      body: bytes) -> dict[str, Any]:
        try:
            return cohere_to_openai_response(json_object(body, self.name), target.public_name)
        except SHAPE_ERRORS as exc:
            raise bad_shape("cohere", exc) from None

    def chat_stream_decoder(self, target: Target, *, include_usage: bool) -> CohereStreamDecoder:
        return CohereStreamDecoder(target.public_name, include_usage=include_usage)

    def embeddings_request(self, target: Target, body: dict[str, Any]) -> UpstreamCall:
        texts = embedding_texts(body, "cohere")
        request: dict[str, Any] = {
            "model": target.model, "texts": texts,
            "input_type": str(body.get("input_type") or target.options.get(
                "input_type", "search_document")),
            "embedding_types": ["float"],
        }
        if body.get("dimensions"):
            request["output_dimension"] = body["dimensions"]
        return UpstreamCall("POST", cohere_url(target, "/v2/embed"),
                            call_headers(target, bearer_auth(target.api_key), stream=False),
                            orjson.dumps(request))

    def embeddings_response(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> dict[str, Any]:
        payload = json_object(body, self.name)
        embeddings = payload.get("embeddings") or {}
        vectors = embeddings.get("float") if isinstance(embeddings, dict) else embeddings
        data = [{"object": "embedding", "index": index, "embedding": vector}
                for index, vector in enumerate(vectors or ())]
        billed = ((payload.get("meta") or {}).get("billed_units") or {})
        prompt_tokens = int(billed.get("input_tokens") or 0)
        return {"object": "list", "data": data, "model": target.public_name,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}

    def error_from_upstream(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> ProviderError:
        return cohere_error(status, headers, body)


ADAPTER = CohereAdapter()
