"""The Anthropic Messages dialect: ``/v1/messages``, count_tokens and ``/anthropic/*``.

Request validation (checked the way Anthropic checks), usage from a whole
message and from a relayed stream (``message_start`` for input,
the last ``message_delta`` for output), the error table and renderer
(``anthropic_errors``), and the encoder that turns another provider's
decoded stream into Anthropic events (``AnthropicFromOpenAI``, built on
``providers.anthropic_inbound``'s stream encoder).
"""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.dialects import anthropic_errors
from smartflow.dialects.base import Dialect, StreamOutcome
from smartflow.dialects.checks import ANTHROPIC_ROLES, ChatRequestFacts, bad_param, check_model
from smartflow.dialects.reencode import ReencodingTransform
from smartflow.dialects.sse_events import (
    HEAD_BYTES,
    TailBuffer,
    event_data,
    last_events,
    load_json,
    split_events,
)
from smartflow.providers.anthropic_inbound import AnthropicStreamEncoder
from smartflow.providers.base import StreamDecoder, Usage

# -- validation -------------------------------------------------------------------


def validate_anthropic_messages(body: dict[str, Any]) -> ChatRequestFacts:
    """Anthropic's /v1/messages: model, messages, max_tokens (checked like Anthropic does)."""
    model = check_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise bad_param("messages", "messages: Field required (an array of messages)")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_param("messages", f"messages.{index}: expected an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ANTHROPIC_ROLES:
            raise bad_param("messages",
                       f"messages.{index}.role: expected 'user', 'assistant' or 'system'")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int)
                                   or isinstance(max_tokens, bool)):
        raise bad_param("max_tokens", "max_tokens: expected an integer")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_param("stream", "stream: expected a boolean")
    return ChatRequestFacts(model, bool(stream), True)


# -- usage ------------------------------------------------------------------------


def anthropic_usage(obj: Any, base: Usage | None = None) -> Usage | None:
    """Anthropic's usage (input excludes cache reads; we count them as prompt)."""
    if not isinstance(obj, dict):
        return base
    prev = base or Usage()

    def number(name: str) -> int | None:
        value = obj.get(name)
        return value if isinstance(value, int) else None

    input_tokens = number("input_tokens")
    cache_read = number("cache_read_input_tokens")
    cache_write = number("cache_creation_input_tokens")
    output_tokens = number("output_tokens")
    if input_tokens is None and cache_read is None and cache_write is None:
        prompt, cached = prev.prompt_tokens, prev.cached_tokens
    else:
        cached = cache_read or 0
        prompt = (input_tokens or 0) + cached + (cache_write or 0)
    completion = output_tokens if output_tokens is not None else prev.completion_tokens
    return Usage(prompt, completion, cached)


def anthropic_usage_from_message(obj: Any) -> Usage | None:
    """Usage of a whole (non-streamed) Anthropic message."""
    if isinstance(obj, dict):
        return anthropic_usage(obj.get("usage"))
    return None


def usage_of_body(raw: bytes) -> Usage | None:
    if b'"usage"' not in raw:
        return None
    try:
        return anthropic_usage_from_message(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


class AnthropicTap:
    """Usage from ``message_start`` (input) and the last ``message_delta`` (output)."""

    __slots__ = ("_head", "_head_bytes", "_tail", "_text")

    def __init__(self, *, capture_text: bool = False) -> None:
        self._head: list[bytes] = []
        self._head_bytes = 0
        self._tail = TailBuffer()
        self._text: list[str] | None = [] if capture_text else None

    def observe(self, data: bytes) -> None:
        if self._head_bytes < HEAD_BYTES:
            self._head.append(data)
            self._head_bytes += len(data)
        self._tail.add(data)
        if self._text is not None and b"text_delta" in data:
            for event in split_events(data):
                obj = load_json(event_data(event))
                if isinstance(obj, dict):
                    delta = obj.get("delta")
                    if isinstance(delta, dict) and isinstance(delta.get("text"), str):
                        self._text.append(delta["text"])

    def outcome(self) -> StreamOutcome:
        usage: Usage | None = None
        for event in split_events(b"".join(self._head)):
            if b"message_start" in event:
                obj = load_json(event_data(event))
                if isinstance(obj, dict) and isinstance(obj.get("message"), dict):
                    usage = anthropic_usage(obj["message"].get("usage"))
                break
        stop_reason: str | None = None
        for event in reversed(last_events(self._tail.value())):
            if b"message_delta" in event:
                obj = load_json(event_data(event))
                if isinstance(obj, dict):
                    usage = anthropic_usage(obj.get("usage"), usage)
                    delta = obj.get("delta")
                    if isinstance(delta, dict) and delta.get("stop_reason"):
                        stop_reason = str(delta["stop_reason"])
                break
        text = "".join(self._text) if self._text is not None else None
        return StreamOutcome(usage, stop_reason, text)


# -- encoders ---------------------------------------------------------------------


class AnthropicFromOpenAI(ReencodingTransform):
    """A non-Anthropic stream (decoded to OpenAI chunks) re-encoded as Anthropic events."""

    __slots__ = ()

    def __init__(self, decoder: StreamDecoder, encoder: AnthropicStreamEncoder) -> None:
        super().__init__(decoder, encoder)


DIALECT = Dialect("anthropic", anthropic_errors.error_type, anthropic_errors.error_body,
                  anthropic_errors.error_event, AnthropicTap, usage_of_body)
