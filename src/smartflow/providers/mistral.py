"""Mistral La Plateforme: OpenAI-like, with differences that break a blind relay.

Request side: Mistral validates strictly and answers 422 to fields it does not
know, so OpenAI-only fields are dropped (``stream_options``, ``logprobs``,
``user``, ``store``...), ``max_completion_tokens`` becomes ``max_tokens``,
``seed`` becomes ``random_seed``, the ``developer`` role becomes ``system``,
and tool-call ids (Mistral wants exactly 9 ASCII letters or digits) are mapped
to a stable 9-character id, the same in an assistant ``tool_calls`` entry and
in the ``tool`` message that answers it.

Response side: ``content`` may be a list of typed chunks (text, thinking,
references), ``finish_reason`` has extra values (``model_length``, ``error``),
tool calls lack ``type``/``index``, and a stream carries usage on its last
content chunk instead of a separate ``choices: []`` chunk. The decoder turns
all of that into OpenAI's exact shapes, emitting the usage chunk only when the
caller asked for it (``stream_options.include_usage``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from smartflow.providers.base import (
    Headers,
    ProviderError,
    Target,
    UnsupportedOperation,
    UpstreamCall,
    Usage,
)
from smartflow.providers.openai import (
    OpenAIAdapter,
    as_dict,
    as_int,
    as_list,
    as_str,
    call_headers,
    json_object,
    openai_error_from_upstream,
    usage_from,
)
from smartflow.providers.sse import SSEError, SSEParser

MISTRAL_API_BASE = "https://api.mistral.ai/v1"

# OpenAI request fields Mistral's chat endpoint rejects.
_DROPPED_CHAT_FIELDS = frozenset({
    "stream_options", "logprobs", "top_logprobs", "logit_bias", "user", "store", "metadata",
    "service_tier", "modalities", "audio", "reasoning_effort", "functions", "function_call",
    "web_search_options", "verbosity",
})
_DROPPED_EMBEDDING_FIELDS = frozenset({"user", "dimensions"})

# Fields each message role accepts at Mistral.
_MESSAGE_FIELDS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "tool_calls", "prefix"}),
    "tool": frozenset({"role", "content", "tool_call_id", "name"}),
}

_FINISH_REASONS = {"stop": "stop", "length": "length", "model_length": "length",
                   "tool_calls": "tool_calls", "error": "stop", "content_filter": "content_filter"}

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def mistral_tool_call_id(openai_id: str) -> str:
    """A 9-character [A-Za-z0-9] id, stable for a given input id."""
    if len(openai_id) == 9 and openai_id.isascii() and openai_id.isalnum():
        return openai_id
    number = int.from_bytes(hashlib.blake2b(openai_id.encode(), digest_size=8).digest(), "big")
    chars = []
    for _ in range(9):
        number, digit = divmod(number, 62)
        chars.append(_ID_ALPHABET[digit])
    return "".join(chars)


def _message_to_mistral(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    role = message.get("role")
    if role == "developer":
        role = "system"
    allowed = _MESSAGE_FIELDS.get(role) if isinstance(role, str) else None
    if allowed is None:
        return message  # let Mistral name the problem
    out = {key: value for key, value in message.items() if key in allowed}
    out["role"] = role
    tool_calls = out.get("tool_calls")
    if isinstance(tool_calls, list):
        out["tool_calls"] = [
            {**call, "id": mistral_tool_call_id(call["id"])}
            if isinstance(call, dict) and isinstance(call.get("id"), str) else call
            for call in tool_calls
        ]
    tool_call_id = out.get("tool_call_id")
    if isinstance(tool_call_id, str):
        out["tool_call_id"] = mistral_tool_call_id(tool_call_id)
    return out


def _text_of(content: Any) -> str | None:
    """Mistral content (a string, or a list of typed chunks) as OpenAI text."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for chunk in content:
            if isinstance(chunk, str):
                parts.append(chunk)
            elif isinstance(chunk, dict) and chunk.get("type") == "text":
                text = chunk.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "".join(parts)
    return str(content)


def _tool_calls_to_openai(tool_calls: Any, *, with_index: bool) -> list[dict[str, Any]]:
    out = []
    for position, call in enumerate(as_list(tool_calls)):
        if not isinstance(call, dict):
            continue
        function = as_dict(call.get("function"))
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        converted: dict[str, Any] = {}
        if with_index:
            index = call.get("index")
            converted["index"] = index if isinstance(index, int) else position
        converted["id"] = as_str(call.get("id"))
        converted["type"] = "function"
        converted["function"] = {"name": as_str(function.get("name")), "arguments": arguments}
        out.append(converted)
    return out


def _finish_reason(value: Any) -> str | None:
    if value is None:
        return None
    return _FINISH_REASONS.get(value, "stop") if isinstance(value, str) else "stop"


def _usage_dict(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt = as_int(usage.get("prompt_tokens"))
    completion = as_int(usage.get("completion_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": as_int(usage.get("total_tokens")) or prompt + completion}


def completion_from_mistral(obj: dict[str, Any]) -> dict[str, Any]:
    choices = []
    for position, choice in enumerate(as_list(obj.get("choices"))):
        if not isinstance(choice, dict):
            continue
        message = as_dict(choice.get("message"))
        content = _text_of(message.get("content"))
        out_message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        tool_calls = _tool_calls_to_openai(message.get("tool_calls"), with_index=False)
        if tool_calls:
            out_message["tool_calls"] = tool_calls
            if not content:
                out_message["content"] = None
        index = choice.get("index")
        choices.append({
            "index": index if isinstance(index, int) else position,
            "message": out_message,
            "logprobs": None,
            "finish_reason": _finish_reason(choice.get("finish_reason")) or "stop",
        })
    result: dict[str, Any] = {
        "id": as_str(obj.get("id")),
        "object": "chat.completion",
        "created": as_int(obj.get("created")),
        "model": as_str(obj.get("model")),
        "choices": choices,
    }
    usage = _usage_dict(obj.get("usage"))
    if usage is not None:
        result["usage"] = usage
    return result


class MistralStreamDecoder:
    """Mistral SSE in, OpenAI ``chat.completion.chunk`` dicts out."""

    __slots__ = (
        "_head",
        "_parser",
        "_pending_usage",
        "finish_reason",
        "include_usage",
        "is_done",
        "usage",
    )

    def __init__(self, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.is_done = False
        self._parser = SSEParser()
        self._pending_usage: dict[str, Any] | None = None
        self._head: dict[str, Any] | None = None  # id, object, created, model

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        try:
            events = self._parser.feed(data)
        except SSEError as exc:
            raise ProviderError(502, str(exc), None, "bad_upstream_response") from None
        return self._convert(events) if events else []

    def close(self) -> list[dict[str, Any]]:
        chunks = self._convert(self._parser.close())
        chunks.extend(self._flush_usage())
        return chunks

    def _flush_usage(self) -> list[dict[str, Any]]:
        usage, self._pending_usage = self._pending_usage, None
        if usage is None or not self.include_usage or self._head is None:
            return []
        return [{**self._head, "choices": [], "usage": usage}]

    def _convert(self, events: list[Any]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for event in events:
            if event.data == "[DONE]":
                self.is_done = True
                chunks.extend(self._flush_usage())
                continue
            try:
                obj = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                raise ProviderError(502, "mistral sent a stream event that is not JSON",
                                    None, "bad_upstream_response") from None
            if not isinstance(obj, dict):
                continue
            if "choices" not in obj and ("object" in obj and obj["object"] == "error"
                                         or "error" in obj or "detail" in obj):
                raise openai_error_from_upstream(500, [], event.data.encode(), "mistral")
            if self._head is None:
                self._head = {"id": as_str(obj.get("id")), "object": "chat.completion.chunk",
                              "created": as_int(obj.get("created")),
                              "model": as_str(obj.get("model"))}
            choices = []
            for position, choice in enumerate(as_list(obj.get("choices"))):
                if not isinstance(choice, dict):
                    continue
                delta_in = as_dict(choice.get("delta"))
                delta: dict[str, Any] = {}
                if "role" in delta_in:
                    delta["role"] = delta_in["role"]
                if "content" in delta_in:
                    delta["content"] = _text_of(delta_in["content"])
                if delta_in.get("tool_calls"):
                    delta["tool_calls"] = _tool_calls_to_openai(delta_in["tool_calls"],
                                                                with_index=True)
                reason = _finish_reason(choice.get("finish_reason"))
                if reason:
                    self.finish_reason = reason
                index = choice.get("index")
                choices.append({"index": index if isinstance(index, int) else position,
                                "delta": delta, "logprobs": None, "finish_reason": reason})
            chunk: dict[str, Any] = {**self._head, "choices": choices}
            if self.include_usage:
                chunk["usage"] = None
            usage = _usage_dict(obj.get("usage"))
            if usage is not None:
                self.usage = usage_from(usage)
                self._pending_usage = usage
            if choices:
                chunks.append(chunk)
        return chunks


class MistralAdapter(OpenAIAdapter):
    name = "mistral"
    speaks_openai = False
    default_api_base = MISTRAL_API_BASE

    def request_body(self, target: Target, body: dict[str, Any], *,
                     stream: bool | None) -> dict[str, Any]:
        out = {key: value for key, value in body.items() if key not in _DROPPED_CHAT_FIELDS}
        out["model"] = target.model
        if "max_completion_tokens" in out:
            limit = out.pop("max_completion_tokens")
            out.setdefault("max_tokens", limit)
        if "seed" in out:
            seed = out.pop("seed")
            out.setdefault("random_seed", seed)
        messages = out.get("messages")
        if isinstance(messages, list):
            out["messages"] = [_message_to_mistral(message) for message in messages]
        if stream:
            out["stream"] = True
        else:
            out.pop("stream", None)
        return out

    def chat_response(self, target: Target, status: int, headers: Headers,
                      body: bytes) -> dict[str, Any]:
        return completion_from_mistral(json_object(body, self.name))

    def chat_stream_decoder(self, target: Target, *,  # type: ignore[override]
                            include_usage: bool) -> MistralStreamDecoder:
        return MistralStreamDecoder(include_usage=include_usage)

    def embeddings_request(self, target: Target, body: dict[str, Any]) -> UpstreamCall:
        out = {key: value for key, value in body.items() if key not in _DROPPED_EMBEDDING_FIELDS}
        if "dimensions" in body:
            out["output_dimension"] = body["dimensions"]
        return self._raw_call(target, "embeddings", out)

    def _raw_call(self, target: Target, operation: str, body: dict[str, Any]) -> UpstreamCall:
        out = dict(body)
        out["model"] = target.model
        return UpstreamCall("POST", self.url(target, operation),
                            call_headers(target, self.auth_headers(target), stream=False),
                            orjson.dumps(out))

    def embeddings_response(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> dict[str, Any]:
        obj = json_object(body, self.name)
        usage = _usage_dict(obj.get("usage"))
        data = [{"object": "embedding", "index": position, "embedding": item.get("embedding")}
                for position, item in enumerate(as_list(obj.get("data")))
                if isinstance(item, dict)]
        return {"object": "list", "data": data, "model": as_str(obj.get("model"), target.model),
                "usage": {"prompt_tokens": usage["prompt_tokens"] if usage else 0,
                          "total_tokens": usage["total_tokens"] if usage else 0}}

    def completions_request(self, target: Target, body: dict[str, Any], *,
                            stream: bool) -> UpstreamCall:
        raise UnsupportedOperation(self.name, "legacy completions")

    def error_from_upstream(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> ProviderError:
        return openai_error_from_upstream(status, headers, body, self.name)


ADAPTER = MistralAdapter()
