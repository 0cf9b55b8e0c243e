"""The text delta of one SSE event in the caller's dialect, read and rewritten.

Used by the output guardrails on a stream. An event is decoded only when a
cheap byte test says it may carry text, and re-encoded only when masking
changed its text; every other event leaves as the very same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

Getter = Callable[[dict[str, Any]], str | None]
Setter = Callable[[dict[str, Any], str], None]


def _chat_get(obj: dict[str, Any]) -> str | None:
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            return str(delta["content"])
        if isinstance(choices[0].get("text"), str):  # legacy completions
            return str(choices[0]["text"])
    return None


def _chat_set(obj: dict[str, Any], text: str) -> None:
    choice = obj["choices"][0]
    delta = choice.get("delta")
    if isinstance(delta, dict) and "content" in delta:
        delta["content"] = text
    else:
        choice["text"] = text


def _anthropic_get(obj: dict[str, Any]) -> str | None:
    if obj.get("type") == "content_block_delta":
        delta = obj.get("delta")
        if isinstance(delta, dict) and delta.get("type") == "text_delta" and isinstance(
                delta.get("text"), str):
            return str(delta["text"])
    return None


def _anthropic_set(obj: dict[str, Any], text: str) -> None:
    obj["delta"]["text"] = text


def _responses_get(obj: dict[str, Any]) -> str | None:
    if obj.get("type") == "response.output_text.delta" and isinstance(obj.get("delta"), str):
        return str(obj["delta"])
    return None


def _responses_set(obj: dict[str, Any], text: str) -> None:
    obj["delta"] = text


def _gemini_get(obj: dict[str, Any]) -> str | None:
    candidates = obj.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        content = candidates[0].get("content")
        if isinstance(content, dict) and isinstance(content.get("parts"), list):
            texts = [p["text"] for p in content["parts"]
                     if isinstance(p, dict) and isinstance(p.get("text"), str)]
            if texts:
                return "".join(texts)
    return None


def _gemini_set(obj: dict[str, Any], text: str) -> None:
    parts = obj["candidates"][0]["content"]["parts"]
    first = True
    for part in parts:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            part["text"] = text if first else ""
            first = False


# Bytes that an event carrying text must contain (a test before any decoding).
_CODECS: dict[str, tuple[bytes, Getter, Setter]] = {
    "openai": (b'"choices"', _chat_get, _chat_set),
    "anthropic": (b"text_delta", _anthropic_get, _anthropic_set),
    "responses": (b"output_text.delta", _responses_get, _responses_set),
    "gemini": (b'"text"', _gemini_get, _gemini_set),
}


_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def split_events(data: bytes) -> list[bytes]:
    """Whole events, each with its own blank-line ending, the bytes unchanged
    (an upstream relayed natively may frame with CRLF)."""
    if b"\r" not in data:
        # LF framing, the usual case: bytes.split finds the same boundaries
        # (left to right, none overlapping) several times faster than the
        # regular expression, which has no literal to search for.
        pieces = data.split(b"\n\n")
        events = [piece + b"\n\n" for piece in pieces[:-1]]
        if pieces[-1]:
            events.append(pieces[-1])
        return events
    return split_any_framing(data)


def split_any_framing(data: bytes) -> list[bytes]:
    """``split_events`` for any of SSE's three line endings."""
    events = []
    start = 0
    for match in _BOUNDARY.finditer(data):
        events.append(data[start:match.end()])
        start = match.end()
    if start < len(data):
        events.append(data[start:])
    return events


class EventText:
    """Reads and rewrites one dialect's text deltas."""

    __slots__ = ("_get", "_marker", "_set")

    def __init__(self, dialect: str) -> None:
        self._marker, self._get, self._set = _CODECS.get(dialect, _CODECS["openai"])

    @staticmethod
    def _data(event: bytes) -> tuple[int, int] | None:
        """Where the event's (single) ``data:`` payload is."""
        start = event.find(b"data:")
        if start < 0:
            return None
        start += 5
        if event[start:start + 1] == b" ":
            start += 1
        end = event.find(b"\n", start)
        end = len(event) if end < 0 else end
        if event[end - 1:end] == b"\r":  # CRLF framing stays as it came
            end -= 1
        return start, end

    def text_of(self, event: bytes) -> str | None:
        if self._marker not in event:
            return None
        span = self._data(event)
        if span is None:
            return None
        try:
            obj = orjson.loads(event[span[0]:span[1]])
        except orjson.JSONDecodeError:
            return None
        return self._get(obj) if isinstance(obj, dict) else None

    def with_text(self, event: bytes, text: str) -> bytes:
        span = self._data(event)
        if span is None:
            return event
        obj = orjson.loads(event[span[0]:span[1]])
        self._set(obj, text)
        return event[:span[0]] + orjson.dumps(obj) + event[span[1]:]
