"""Ollama's native API (``/api/chat``, ``/api/embed``) behind OpenAI shapes.

``api_base`` is the host root (``http://localhost:11434``); there is no auth
(a deployment may still add headers, e.g. for a reverse proxy). Sampling
parameters move into ``options`` (``max_tokens`` is ``num_predict``), images
travel as bare base64 in a per-message ``images`` list (only ``data:`` URLs can
be converted: an adapter does no I/O), tool-call arguments are JSON objects
rather than strings, and ``response_format`` becomes ``format`` (``"json"`` or
a JSON schema). Streams are NDJSON: one object per line, the last with
``done: true`` and the token counts. Errors are ``{"error": "text"}``.

Deployment options (``target.options``): ``num_ctx`` and any other Ollama
option under ``ollama_options`` (a table), and ``keep_alive``.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson

from smartflow.providers.base import (
    Headers,
    ProviderError,
    Target,
    UnsupportedOperation,
    UpstreamCall,
    Usage,
    join_url,
)
from smartflow.providers.openai import (
    as_dict,
    as_int,
    as_list,
    as_str,
    bad_request,
    call_headers,
    encode_embedding,
    is_context_length_message,
    json_object,
)

DEFAULT_API_BASE = "http://localhost:11434"
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

_OPTION_FIELDS = (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                  ("presence_penalty", "presence_penalty"),
                  ("frequency_penalty", "frequency_penalty"))
_FINISH_REASONS = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}


def _finish_reason(done_reason: Any) -> str:
    return _FINISH_REASONS.get(done_reason, "stop") if isinstance(done_reason, str) else "stop"


def _completion_id() -> str:
    return f"chatcmpl-{random.getrandbits(96):024x}"


def _messages_to_ollama(messages: list[Any]) -> list[dict[str, Any]]:
    # OpenAI tool results carry only the call id; Ollama wants the tool's name.
    tool_names: dict[str, str] = {}
    out = []
    for message in messages:
        converted = _message_to_ollama(message)
        for call in as_dict(message).get("tool_calls") or ():
            call_id = as_dict(call).get("id")
            name = as_dict(as_dict(call).get("function")).get("name")
            if isinstance(call_id, str) and isinstance(name, str):
                tool_names[call_id] = name
        if converted.get("role") == "tool" and "tool_name" not in converted:
            name = tool_names.get(as_str(message.get("tool_call_id")))
            if name is not None:
                converted["tool_name"] = name
        out.append(converted)
    return out


def _message_to_ollama(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise bad_request("each message must be an object", "messages")
    role = message.get("role")
    out: dict[str, Any] = {"role": "system" if role == "developer" else role}
    content = message.get("content")
    if isinstance(content, list):
        texts: list[str] = []
        images: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if not isinstance(url, str) or not url.startswith("data:"):
                    raise bad_request("ollama accepts images only as data: URLs (base64)",
                                      "messages")
                _, sep, payload = url.partition(";base64,")
                if not sep:
                    raise bad_request("image data: URL must be base64-encoded", "messages")
                images.append(payload)
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content if isinstance(content, str) else ""
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list) and tool_calls:
        converted = []
        for call in tool_calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = orjson.loads(arguments) if arguments else {}
                except orjson.JSONDecodeError:
                    raise bad_request("tool call arguments must be JSON", "messages") from None
            converted.append({"function": {"name": function.get("name"),
                                           "arguments": arguments}})
        out["tool_calls"] = converted
    if role == "tool" and isinstance(message.get("name"), str):
        out["tool_name"] = message["name"]
    return out


def _format_of(response_format: Any) -> Any:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = response_format.get("json_schema")
        if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
            return schema["schema"]
        return "json"
    return None


def _tool_calls_to_openai(tool_calls: Any, *, with_index: bool) -> list[dict[str, Any]]:
    out = []
    for position, call in enumerate(as_list(tool_calls)):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        arguments = function.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        converted: dict[str, Any] = {"index": position} if with_index else {}
        converted["id"] = as_str(call.get("id")) or f"call_{random.getrandbits(96):024x}"
        converted["type"] = "function"
        converted["function"] = {"name": as_str(function.get("name")), "arguments": arguments}
        out.append(converted)
    return out


def _usage_of(obj: dict[str, Any]) -> dict[str, int]:
    prompt = as_int(obj.get("prompt_eval_count"))
    completion = as_int(obj.get("eval_count"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _raise_if_error(obj: dict[str, Any], status: int) -> None:
    error = obj.get("error")
    if error is not None:
        raise _error(status, str(error))


def _error(status: int, message: str) -> ProviderError:
    if is_context_length_message(message):
        return ProviderError(400, message, "invalid_request_error", "context_length_exceeded")
    if status == 404:
        return ProviderError(404, message, "not_found_error", "model_not_found", "model")
    if status == 400:
        return bad_request(message)
    return ProviderError(status, message, None if status >= 500 else
                         "invalid_request_error")


class OllamaStreamDecoder:
    """Ollama NDJSON in, OpenAI ``chat.completion.chunk`` dicts out."""

    __slots__ = (
        "_created",
        "_has_sent_role",
        "_id",
        "_model",
        "_pending",
        "_tool_call_count",
        "finish_reason",
        "include_usage",
        "is_done",
        "max_line_bytes",
        "usage",
    )

    def __init__(self, model: str, *, include_usage: bool,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.is_done = False
        self.max_line_bytes = max_line_bytes
        self._pending = b""
        self._id = _completion_id()
        self._created = int(time.time())
        self._model = model
        self._has_sent_role = False
        self._tool_call_count = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buffer = self._pending + data if self._pending else data
        end = buffer.rfind(b"\n")
        if end < 0:
            if len(buffer) > self.max_line_bytes:
                raise ProviderError(502, "ollama sent a stream line that is too long",
                                    None, "bad_upstream_response")
            self._pending = buffer
            return []
        self._pending = buffer[end + 1 :]
        chunks: list[dict[str, Any]] = []
        for line in buffer[:end].split(b"\n"):
            self._line(line, chunks)
        return chunks

    def close(self) -> list[dict[str, Any]]:
        pending, self._pending = self._pending, b""
        chunks: list[dict[str, Any]] = []
        self._line(pending, chunks)
        return chunks

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _line(self, line: bytes, chunks: list[dict[str, Any]]) -> None:
        line = line.strip()
        if not line:
            return
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ProviderError(502, "ollama sent a stream line that is not JSON",
                                None, "bad_upstream_response") from None
        if not isinstance(obj, dict):
            return
        _raise_if_error(obj, 500)
        if isinstance(obj.get("model"), str):
            self._model = obj["model"]
        message = as_dict(obj.get("message"))
        delta: dict[str, Any] = {}
        if not self._has_sent_role:
            self._has_sent_role = True
            delta["role"] = "assistant"
        content = message.get("content")
        if content or (delta and not message.get("tool_calls")):
            delta["content"] = content or ""
        tool_calls = _tool_calls_to_openai(message.get("tool_calls"), with_index=True)
        if tool_calls:
            for call in tool_calls:
                call["index"] = self._tool_call_count
                self._tool_call_count += 1
            delta["tool_calls"] = tool_calls
        if delta:
            chunks.append(self._chunk(delta, None))
        if obj.get("done"):
            self.is_done = True
            reason = ("tool_calls" if self._tool_call_count else
                      _finish_reason(obj.get("done_reason")))
            self.finish_reason = reason
            chunks.append(self._chunk({}, reason))
            usage = _usage_of(obj)
            self.usage = Usage(usage["prompt_tokens"], usage["completion_tokens"])
            if self.include_usage:
                chunks.append({"id": self._id, "object": "chat.completion.chunk",
                               "created": self._created, "model": self._model,
                               "choices": [], "usage": usage})


class OllamaAdapter:
    name = "ollama"
    speaks_openai = False

    def _url(self, target: Target, path: str) -> str:
        return join_url(target.api_base or DEFAULT_API_BASE, path)

    def chat_request(self, target: Target, body: dict[str, Any], *, stream: bool) -> UpstreamCall:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise bad_request("messages must be a list", "messages")
        out: dict[str, Any] = {
            "model": target.model,
            "messages": _messages_to_ollama(messages),
            "stream": stream,
        }
        options: dict[str, Any] = {}
        for source, name in _OPTION_FIELDS:
            value = body.get(source)
            if value is not None:
                options[name] = value
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        stop = body.get("stop")
        if stop is not None:
            options["stop"] = [stop] if isinstance(stop, str) else stop
        num_ctx = target.options.get("num_ctx")
        if num_ctx is not None:
            options["num_ctx"] = num_ctx
        extra = target.options.get("ollama_options")
        if isinstance(extra, dict):
            options.update(extra)
        if options:
            out["options"] = options
        response_format = _format_of(body.get("response_format"))
        if response_format is not None:
            out["format"] = response_format
        tools = body.get("tools")
        if tools and body.get("tool_choice") != "none":
            out["tools"] = tools
        keep_alive = target.options.get("keep_alive")
        if keep_alive is not None:
            out["keep_alive"] = keep_alive
        return UpstreamCall("POST", self._url(target, "/api/chat"),
                            call_headers(target, (), stream=False), orjson.dumps(out))

    def chat_response(self, target: Target, status: int, headers: Headers,
                      body: bytes) -> dict[str, Any]:
        obj = json_object(body, self.name)
        _raise_if_error(obj, 502)
        message = as_dict(obj.get("message"))
        tool_calls = _tool_calls_to_openai(message.get("tool_calls"), with_index=False)
        content = message.get("content")
        out_message: dict[str, Any] = {
            "role": "assistant",
            "content": content if isinstance(content, str) and (content or not tool_calls)
            else None,
            "refusal": None,
        }
        if tool_calls:
            out_message["tool_calls"] = tool_calls
            finish_reason = "tool_calls"
        else:
            finish_reason = _finish_reason(obj.get("done_reason"))
        return {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": as_str(obj.get("model"), target.model),
            "choices": [{"index": 0, "message": out_message, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": _usage_of(obj),
        }

    def chat_stream_decoder(self, target: Target, *, include_usage: bool) -> OllamaStreamDecoder:
        return OllamaStreamDecoder(target.model, include_usage=include_usage)

    def embeddings_request(self, target: Target, body: dict[str, Any]) -> UpstreamCall:
        text_input = body.get("input")
        is_text = isinstance(text_input, str) or (
            isinstance(text_input, list) and all(isinstance(item, str) for item in text_input))
        if not is_text:
            raise bad_request("ollama embeddings take a string or a list of strings", "input")
        out: dict[str, Any] = {"model": target.model, "input": text_input}
        if body.get("dimensions") is not None:
            out["dimensions"] = body["dimensions"]
        keep_alive = target.options.get("keep_alive")
        if keep_alive is not None:
            out["keep_alive"] = keep_alive
        return UpstreamCall("POST", self._url(target, "/api/embed"),
                            call_headers(target, (), stream=False), orjson.dumps(out))

    def embeddings_response(self, target: Target, status: int, headers: Headers,
                            body: bytes, *, encoding_format: str = "float") -> dict[str, Any]:
        obj = json_object(body, self.name)
        _raise_if_error(obj, 502)
        vectors = obj.get("embeddings")
        if not isinstance(vectors, list):
            raise ProviderError(502, "ollama returned no embeddings", None,
                                "bad_upstream_response")
        try:
            data = [{"object": "embedding", "index": index,
                     "embedding": encode_embedding(vector, encoding_format)}
                    for index, vector in enumerate(vectors) if isinstance(vector, list)]
        except (TypeError, OverflowError):
            data = []
        if len(data) != len(vectors):
            raise ProviderError(502, "ollama returned embeddings that are not lists of numbers",
                                None, "bad_upstream_response")
        tokens = as_int(obj.get("prompt_eval_count"))
        return {"object": "list", "data": data, "model": as_str(obj.get("model"), target.model),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def completions_request(self, target: Target, body: dict[str, Any], *,
                            stream: bool) -> UpstreamCall:
        raise UnsupportedOperation(self.name, "legacy completions")

    def error_from_upstream(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> ProviderError:
        message = ""
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("error") is not None:
            message = str(parsed["error"])
        elif body:
            message = body[:500].decode("utf-8", "replace").strip()
        return _error(status, message or f"ollama returned HTTP {status}")


ADAPTER = OllamaAdapter()
