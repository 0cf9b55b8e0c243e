"""The OpenAI dialect: chat completions, legacy completions and embeddings.

What the gateway must know about OpenAI's API on the caller's side: request
validation, usage (from a whole answer, and from a relayed stream by a tap
that decodes only the last few events), the error table and renderer, and
the encoder that writes another provider's decoded stream as OpenAI chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from smartflow.dialects.base import Dialect, StreamOutcome
from smartflow.dialects.checks import (
    CHAT_ROLES,
    ChatRequestFacts,
    bad_param,
    check_model,
    check_n,
    check_optional_list,
    check_stream,
    check_text_or_array,
    json_type,
)
from smartflow.dialects.sse_events import (
    TailBuffer,
    event_data,
    last_events,
    load_json,
    split_events,
)
from smartflow.gateway_error import GatewayError
from smartflow.http.errors import error_type_for_status
from smartflow.providers.base import StreamDecoder, Usage
from smartflow.providers.openai import usage_from as openai_usage

SSE_DONE = b"data: [DONE]\n\n"


# -- validation -------------------------------------------------------------------


def validate_chat(body: dict[str, Any]) -> ChatRequestFacts:
    model = check_model(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_param("messages", "messages: required")
    if not isinstance(messages, list):
        raise bad_param("messages", f"messages: expected an array, got {json_type(messages)}")
    if not messages:
        raise bad_param("messages", "messages: must contain at least one message")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_param("messages",
                       f"messages[{index}]: expected an object, got {json_type(message)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise bad_param("messages",
                       f"messages[{index}].role: expected one of "
                       f"{', '.join(sorted(CHAT_ROLES))}, got {role!r}"[:300])
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_param("messages",
                       f"messages[{index}].content: expected a string or an array of parts")
    stream, wants_usage = check_stream(body)
    check_n(body)
    check_optional_list(body, "tools")
    return ChatRequestFacts(model, stream, wants_usage)


def validate_completions(body: dict[str, Any]) -> ChatRequestFacts:
    model = check_model(body)
    check_text_or_array(body, "prompt")
    stream, wants_usage = check_stream(body)
    check_n(body)
    return ChatRequestFacts(model, stream, wants_usage)


def validate_embeddings(body: dict[str, Any]) -> str:
    model = check_model(body)
    check_text_or_array(body, "input")
    return model


# -- usage ------------------------------------------------------------------------


MAX_USAGE_PARSE_TRIES = 6
MAX_USAGE_BRACES = 32


def _matching_brace(body: bytes, start: int) -> int:
    """Index of the ``}`` closing the object opened at ``start``, by counting
    braces with C-level finds (a usage object holds numbers and nested
    objects, no strings); -1 when unbalanced within reach."""
    depth = 0
    position = start
    for _ in range(MAX_USAGE_BRACES):
        opening = body.find(b"{", position)
        closing = body.find(b"}", position)
        if closing < 0:
            return -1
        if 0 <= opening < closing:
            depth += 1
            position = opening + 1
            continue
        depth -= 1
        if depth == 0:
            return closing
        position = closing + 1
    return -1


def find_usage_object(body: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of a JSON completion, decoding only that object.

    The last ``"usage":`` key is found from the end (a key inside a string
    value would be escaped, so an unescaped one is a real key), then the
    object after it is cut out by counting braces and decoded. Should that
    not parse (a brace inside a string value), the shortest prefix object
    that parses is taken. None when absent.
    """
    key = body.rfind(b'"usage"')
    if key < 0:
        return None
    start = body.find(b"{", key + 7)
    if start < 0 or body[key + 7:start].strip(b" \t\r\n:") != b"":
        return None
    end = _matching_brace(body, start)
    if end > 0:
        try:
            found = orjson.loads(body[start:end + 1])
        except orjson.JSONDecodeError:
            pass
        else:
            return found if isinstance(found, dict) else None
    end = start
    for _ in range(MAX_USAGE_PARSE_TRIES):
        end = body.find(b"}", end + 1)
        if end < 0:
            return None
        try:
            found = orjson.loads(body[start:end + 1])
        except orjson.JSONDecodeError:
            continue
        return found if isinstance(found, dict) else None
    return None


def usage_of_body(raw: bytes) -> Usage | None:
    """Usage of a whole chat/text completion or embeddings answer."""
    found = find_usage_object(raw)
    return openai_usage(found) if found is not None else None


class OpenAITap:
    """Reads usage and finish reason from the end of an OpenAI stream; text if asked.

    Without the text it still counts bytes and events (two C-level calls per
    chunk), enough to estimate the output's length when no usage comes.
    """

    __slots__ = ("_nbytes", "_nevents", "_tail", "_text")

    def __init__(self, *, capture_text: bool = False) -> None:
        self._tail = TailBuffer()
        self._text: list[str] | None = [] if capture_text else None
        self._nbytes = 0
        self._nevents = 0

    def observe(self, data: bytes) -> None:
        self._tail.add(data)
        self._nbytes += len(data)
        self._nevents += data.count(b"\n\n")
        if self._text is not None:
            self._collect_text(data)

    def _collect_text(self, data: bytes) -> None:
        # Called with framed output (whole events); cheap skip for events with no text.
        if b'"content"' not in data:
            return
        for event in split_events(data):
            payload = event_data(event)
            if not payload or payload == b"[DONE]":
                continue
            chunk = load_json(payload)
            if not isinstance(chunk, dict):
                continue
            for choice in chunk.get("choices") or ():
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    delta = choice.get("delta")
                    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                        self._text.append(delta["content"])  # type: ignore[union-attr]

    def outcome(self) -> StreamOutcome:
        usage: Usage | None = None
        finish_reason: str | None = None
        tail = self._tail.value()
        events = last_events(tail)
        for event in reversed(events):  # at most TAIL_EVENTS: few to decode
            if usage is not None and finish_reason is not None:
                break
            # Substring checks first: only events carrying a non-null usage or
            # finish reason are decoded (every chunk has "finish_reason":null).
            has_usage = usage is None and (b'"usage":{' in event or b'"usage": {' in event)
            has_finish = finish_reason is None and (b'"finish_reason":"' in event
                                                    or b'"finish_reason": "' in event)
            if not (has_usage or has_finish):
                continue
            chunk = load_json(event_data(event))
            if not isinstance(chunk, dict):
                continue
            if has_usage and chunk.get("usage") is not None:
                usage = openai_usage(chunk["usage"])
            if has_finish:
                for choice in chunk.get("choices") or ():
                    if isinstance(choice, dict) and choice.get("finish_reason"):
                        finish_reason = str(choice["finish_reason"])
                        break
        text = "".join(self._text) if self._text is not None else None
        # The estimate wants the smallest event of the whole tail (the framing
        # alone); the last few are no sample of it.
        approx_chars = self._approx_text_chars(split_events(tail)) if usage is None else 0
        return StreamOutcome(usage, finish_reason, text, approx_text_chars=approx_chars)

    def _approx_text_chars(self, tail_events: list[bytes]) -> int:
        # Every chunk event carries the same JSON framing (id, model, ...); the
        # smallest one seen is about that framing with no text in it.
        sizes = [len(e) + 2 for e in tail_events if e.strip() and b"[DONE]" not in e]
        if not sizes or not self._nevents:
            return 0
        framing = min(sizes)
        done = 16 if any(b"[DONE]" in e for e in tail_events) else 0
        events = self._nevents - (1 if done else 0)
        return max(0, self._nbytes - done - events * framing)


# -- errors -----------------------------------------------------------------------


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for ``status`` (the server's default table)."""
    return error_type_for_status(status)


def error_object(error: GatewayError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type or error_type(error.status),
                      "param": error.param, "code": error.code}}


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(error_object(error))


def error_event(error: GatewayError) -> bytes:
    """OpenAI ends a failed stream with an error object as a ``data:`` event."""
    return b"data: " + orjson.dumps(error_object(error)) + b"\n\n"


# -- encoders ---------------------------------------------------------------------


def delta_texts(chunk: dict[str, Any]) -> Iterator[str]:
    """The text deltas of one decoded ``chat.completion.chunk``."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str):
                yield content


class DecodingTransform:
    """Another provider's stream, decoded by its adapter, re-encoded as OpenAI SSE."""

    __slots__ = ("_chars", "_decoder", "_reshape", "_text")

    def __init__(self, decoder: StreamDecoder, *, capture_text: bool = False,
                 reshape: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
                 ) -> None:
        self._decoder = decoder
        self._text: list[str] | None = [] if capture_text else None
        self._chars = 0
        self._reshape = reshape  # e.g. chat chunk -> legacy text_completion chunk

    def _encode(self, chunks: list[dict[str, Any]]) -> bytes:
        if not chunks:
            return b""
        out = []
        for chunk in chunks:
            for text in delta_texts(chunk):
                self._chars += len(text)
                if self._text is not None:
                    self._text.append(text)
            if self._reshape is not None:
                reshaped = self._reshape(chunk)
                if reshaped is None:
                    continue
                chunk = reshaped
            out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        return b"".join(out)

    def feed(self, data: bytes) -> bytes:
        return self._encode(self._decoder.feed(data))

    def close(self) -> bytes:
        return self._encode(self._decoder.close()) + SSE_DONE

    def error_event(self, error: GatewayError) -> bytes:
        return error_event(error)

    def outcome(self) -> StreamOutcome:
        text = "".join(self._text) if self._text is not None else None
        return StreamOutcome(self._decoder.usage, self._decoder.finish_reason, text,
                             approx_text_chars=self._chars)


DIALECT = Dialect("openai", error_type, error_body, error_event, OpenAITap, usage_of_body)
