"""OpenAI: the wire format every other adapter translates to.

Requests pass through with ``model`` replaced by the deployment's model id, so
every field the caller sent (tools, response_format, n, stream_options, image
parts, fields we have never heard of) reaches OpenAI untouched. Responses are
already OpenAI-shaped; the decoder here exists for accounting (usage, finish
reason) and for the few paths that must re-shape chunks.

This module also holds the pieces the other OpenAI-family adapters share:
``OpenAIStreamDecoder``, ``openai_error_from_upstream`` (OpenAI's error body,
and the near-misses that OpenAI-compatible servers send), ``json_object``, and
for the translating adapters ``bad_request``, ``stop_sequences``, ``text_of``,
``embedding_texts``, ``SHAPE_ERRORS``/``bad_shape``, ``not_json_event`` and
``openai_usage``.
"""

from __future__ import annotations

import sys
from array import array
from base64 import b64encode
from collections.abc import Iterable
from typing import Any

import orjson

from smartflow.gateway_error import Phase, Reason
from smartflow.providers.base import (
    Headers,
    ProviderError,
    Target,
    UpstreamCall,
    Usage,
    join_url,
)
from smartflow.providers.sse import SSEError, SSEParser

OPENAI_API_BASE = "https://api.openai.com/v1"

_JSON_CONTENT_TYPE = ("content-type", "application/json")
_ACCEPT_JSON = ("accept", "application/json")
_ACCEPT_SSE = ("accept", "text/event-stream")


# Lower-case fragments that providers use for "the prompt does not fit".
_CONTEXT_LENGTH_PHRASES = (
    "maximum context length",
    "context length exceeded",
    "context_length_exceeded",
    "context window",
    "too large for model with",
    "prompt is too long",
    "input is too long",
)

_MAX_ERROR_TEXT_CHARS = 500  # of a body that is not JSON
_MAX_MESSAGE_CHARS = 4000


# -- shared helpers ----------------------------------------------------------


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a dict, else an empty one (upstream JSON is untrusted)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_int(value: Any) -> int:
    """A token count from untrusted JSON: ints only (bools are not counts), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def as_str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def header_value(headers: Headers, name: str) -> str | None:
    """First value of ``name`` (lower-case) in a header list."""
    for key, value in headers:
        if key == name or key.lower() == name:
            return value
    return None


def call_headers(target: Target, auth: Iterable[tuple[str, str]], *, stream: bool) -> Headers:
    """Content type, accept, auth, then the deployment's own headers; a header the
    deployment sets replaces ours of the same name."""
    base = [_JSON_CONTENT_TYPE, _ACCEPT_SSE if stream else _ACCEPT_JSON, *auth]
    if not target.headers:
        return base
    overridden = {name.lower() for name, _ in target.headers}
    headers = [item for item in base if item[0] not in overridden]
    headers.extend(target.headers)
    return headers


def bearer_auth(api_key: str) -> list[tuple[str, str]]:
    return [("authorization", "Bearer " + api_key)] if api_key else []


def json_object(body: bytes, provider: str) -> dict[str, Any]:
    """An upstream body that must be a JSON object; a 502 ProviderError if not."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProviderError(502, f"{provider} returned a body that is not JSON: "
                                 f"{_snippet(body)}", None, "bad_upstream_response") from None
    if not isinstance(parsed, dict):
        raise ProviderError(502, f"{provider} returned JSON that is not an object",
                            None, "bad_upstream_response")
    return parsed


def bad_request(message: str, param: str | None = None) -> ProviderError:
    """A request this provider cannot take, refused before anything is sent."""
    return ProviderError(400, message, "invalid_request_error", None, param,
                         reason=Reason.CLIENT, phase=Phase.BEFORE_SEND)


def stop_sequences(stop: Any) -> list[str]:
    """OpenAI's ``stop`` (a string or a list of strings) as a list."""
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        return stop
    raise bad_request("stop: expected a string or a list of strings", "stop")


def text_of(content: Any, where: str) -> str:
    """The text parts of an OpenAI message ``content``, joined; other part types are skipped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content
                       if isinstance(part, dict) and part.get("type") == "text")
    raise bad_request(f"{where}: content must be a string or a list of parts", where)


def embedding_texts(body: dict[str, Any], provider: str) -> list[str]:
    """The ``input`` of an embeddings request, for an upstream that takes text only."""
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad_request(f"input: {provider} embeddings take a string or a list of strings",
                          "input")
    return texts


def not_json_event(provider: str, data: str) -> ProviderError:
    return ProviderError(502, f"{provider} sent a stream event that is not JSON: "
                              f"{data[:200]!r}", None, "bad_upstream_response")


# What reading a JSON body of an unexpected shape raises (a dict where a list
# was expected, a string where a number was); callers turn it into a clear
# error (a 400 for a request, ``bad_shape``'s 502 for a response), never a traceback.
SHAPE_ERRORS = (AttributeError, TypeError, ValueError, KeyError, IndexError)


def bad_shape(provider: str, exc: Exception) -> ProviderError:
    return ProviderError(502, f"{provider} sent a response we cannot read "
                              f"({type(exc).__name__}: {exc})", None,
                         "bad_upstream_response")


def is_context_length_message(message: str) -> bool:
    lowered = message.lower()
    return any(phrase in lowered for phrase in _CONTEXT_LENGTH_PHRASES)


def retry_after_from(headers: Headers) -> str | None:
    """``Retry-After`` as sent, or ``retry-after-ms`` turned into seconds."""
    value = header_value(headers, "retry-after")
    if value:
        return value.strip()
    millis = header_value(headers, "retry-after-ms")
    if millis:
        try:
            return str(max(0.0, float(millis) / 1000.0))
        except ValueError:
            return None
    return None


def _snippet(body: bytes) -> str:
    return body[:_MAX_ERROR_TEXT_CHARS].decode("utf-8", "replace").strip()


def _detail_text(detail: Any) -> str:
    """FastAPI/pydantic's ``detail``: a string, or a list of {loc, msg}."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = item.get("loc")
                where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
                msg = str(item.get("msg", ""))
                parts.append(f"{where}: {msg}" if where else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, dict) and "detail" in detail:
        return _detail_text(detail["detail"])
    return orjson.dumps(detail).decode()


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def openai_error_from_upstream(
    status: int, headers: Headers, body: bytes, provider: str = "openai"
) -> ProviderError:
    """Map an OpenAI-style error response to a ``ProviderError``.

    Understands ``{"error": {message, type, param, code}}`` (OpenAI, Azure,
    vLLM), ``{"error": "text"}`` (Ollama, some compatible servers),
    ``{"message": ..., "type": ...}`` (Mistral, API gateways) and
    ``{"detail": ...}`` (FastAPI 422s). The status is kept, except 422 which
    OpenAI callers know as 400.
    """
    message = ""
    error_type: str | None = None
    code: str | None = None
    param: str | None = None
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
        message = _snippet(body)
    if isinstance(parsed, dict):
        error = parsed.get("error")
        source: dict[str, Any] = parsed
        if isinstance(error, dict):
            source = error
        elif isinstance(error, str):
            message = error
        raw_message = source.get("message")
        if raw_message and not message:
            message = raw_message if isinstance(raw_message, str) else _detail_text(raw_message)
        if not message and "detail" in parsed:
            message = _detail_text(parsed["detail"])
        raw_type = source.get("type")
        error_type = raw_type if isinstance(raw_type, str) and raw_type else None
        code = _optional_str(source.get("code"))
        param = _optional_str(source.get("param"))
    if status == 422:
        status = 400
    if not message:
        message = f"{provider} returned HTTP {status}"
    elif len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    if code == "context_length_exceeded" or is_context_length_message(message):
        return ProviderError(400 if status < 500 else status, message,
                             error_type or "invalid_request_error",
                             "context_length_exceeded", param)
    retry_after = retry_after_from(headers) if status in (429, 503) else None
    return ProviderError(status, message, error_type,
                         code, param, retry_after)


def usage_from(obj: Any) -> Usage | None:
    """OpenAI's usage object as a ``Usage``; None when absent or malformed."""
    if not isinstance(obj, dict):
        return None
    return Usage(as_int(obj.get("prompt_tokens")), as_int(obj.get("completion_tokens")),
                 as_int(as_dict(obj.get("prompt_tokens_details")).get("cached_tokens")))


def openai_usage(usage: Usage) -> dict[str, Any]:
    """A ``Usage`` as OpenAI's usage object (the reverse of ``usage_from``)."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    """OpenAI's ``encoding_format``: floats as they are, or base64 of little-endian float32."""
    if encoding_format != "base64":
        return vector
    packed = array("f", vector)
    if sys.byteorder != "little":  # pragma: no cover - every host we run on is little-endian
        packed.byteswap()
    return b64encode(packed.tobytes()).decode()


# -- the stream decoder ------------------------------------------------------


class OpenAIStreamDecoder:
    """OpenAI SSE bytes in, ``chat.completion.chunk`` dicts out (as sent).

    Keeps the usage and the last finish reason it saw. With ``include_usage``
    false, the usage-only chunk (``choices: []`` plus usage) is swallowed and a
    ``"usage": null`` field is dropped, so the caller sees the stream it asked
    for even when the proxy asked the upstream for usage. Other choices-less
    chunks (Azure's ``prompt_filter_results``) are dropped too. An ``{"error": ...}``
    event (sent by OpenAI and vLLM mid-stream) raises ``ProviderError``.
    """

    __slots__ = ("_parser", "_provider", "finish_reason", "include_usage", "is_done", "usage")

    def __init__(self, *, include_usage: bool, provider: str = "openai") -> None:
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.is_done = False
        self._parser = SSEParser()
        self._provider = provider

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        try:
            events = self._parser.feed(data)
        except SSEError as exc:
            raise ProviderError(502, str(exc), None, "bad_upstream_response") from None
        return self._chunks(events) if events else []

    def close(self) -> list[dict[str, Any]]:
        return self._chunks(self._parser.close())

    def _chunks(self, events: list[Any]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for event in events:
            data = event.data
            if data == "[DONE]":
                self.is_done = True
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise not_json_event(self._provider, data) from None
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk and "choices" not in chunk:
                raise openai_error_from_upstream(500, [], data.encode(), self._provider)
            choices = chunk.get("choices")
            if isinstance(choices, list):
                for choice in choices:
                    if isinstance(choice, dict):
                        reason = choice.get("finish_reason")
                        if reason and isinstance(reason, str):
                            self.finish_reason = reason
            usage = chunk.get("usage")
            if usage is not None:
                self.usage = usage_from(usage)
                if not self.include_usage:
                    if not choices:
                        continue
                    del chunk["usage"]
            elif not choices:
                # Azure opens with a choices-less prompt_filter_results chunk; in
                # OpenAI's shape only the usage chunk has no choices.
                continue
            elif "usage" in chunk and not self.include_usage:
                del chunk["usage"]
            chunks.append(chunk)
        return chunks


# -- the adapter -------------------------------------------------------------


class OpenAIAdapter:
    """OpenAI's own API. Subclasses change the URL, the auth header and the name."""

    name = "openai"
    speaks_openai = True
    default_api_base = OPENAI_API_BASE

    def api_base(self, target: Target) -> str:
        return target.api_base or self.default_api_base

    def auth_headers(self, target: Target) -> list[tuple[str, str]]:
        return bearer_auth(target.api_key)

    def url(self, target: Target, operation: str) -> str:
        """``operation`` is ``chat/completions``, ``embeddings`` or ``completions``."""
        return join_url(self.api_base(target), operation)

    def request_body(self, target: Target, body: dict[str, Any], *,
                     stream: bool | None) -> dict[str, Any]:
        out = dict(body)
        out["model"] = target.model
        if stream is not None:
            if stream:
                out["stream"] = True
            else:
                out.pop("stream", None)
                # OpenAI rejects stream_options on a non-streaming call.
                out.pop("stream_options", None)
        return out

    def _call(self, target: Target, operation: str, body: dict[str, Any], *,
              stream: bool | None) -> UpstreamCall:
        return UpstreamCall(
            "POST",
            self.url(target, operation),
            call_headers(target, self.auth_headers(target), stream=bool(stream)),
            orjson.dumps(self.request_body(target, body, stream=stream)),
        )

    def chat_request(self, target: Target, body: dict[str, Any], *, stream: bool) -> UpstreamCall:
        return self._call(target, "chat/completions", body, stream=stream)

    def chat_response(self, target: Target, status: int, headers: Headers,
                      body: bytes) -> dict[str, Any]:
        return json_object(body, self.name)

    def chat_stream_decoder(self, target: Target, *, include_usage: bool) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder(include_usage=include_usage, provider=self.name)

    def embeddings_request(self, target: Target, body: dict[str, Any]) -> UpstreamCall:
        return self._call(target, "embeddings", body, stream=None)

    def embeddings_response(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> dict[str, Any]:
        return json_object(body, self.name)

    def completions_request(self, target: Target, body: dict[str, Any], *,
                            stream: bool) -> UpstreamCall:
        return self._call(target, "completions", body, stream=stream)

    def completions_response(self, target: Target, status: int, headers: Headers,
                             body: bytes) -> dict[str, Any]:
        return json_object(body, self.name)

    def error_from_upstream(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> ProviderError:
        return openai_error_from_upstream(status, headers, body, self.name)


ADAPTER = OpenAIAdapter()
