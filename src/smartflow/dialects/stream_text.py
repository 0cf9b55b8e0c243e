"""The text of a streamed answer, read out of its SSE bytes without decoding.

A stream's framing is some fifty times its text (every chunk repeats the id,
model and choice structure). One regular expression over the events picks
each text delta's JSON string content, still escaped (compact JSON, or with
one space after ":" and ","); joined, those pieces are one valid JSON string
body, unescaped once. No event is JSON-decoded.

Two readers:

* the audit record (``escaped_text``): the worker keeps the escaped text, the
  shipper unescapes it (``unescape``);
* the output guardrails (``text_deltas``), which must see every character the
  caller will: it answers None, so that the caller decodes event by event,
  whenever some event may carry text in another layout (a text key found
  without the layout the expression expects after it).
"""

from __future__ import annotations

import re

import orjson

# A JSON string's content, the loop unrolled (several times faster in re).
_STRING_BODY = rb'[^"\\]*(?:\\.[^"\\]*)*'
_JSON_STRING = rb'"(' + _STRING_BODY + rb')"'  # captures the content
# OpenAI chat chunks carry choices[].delta.content; completions chunks choices[].text.
_CHAT = re.compile(rb'"content": ?' + _JSON_STRING)
_COMPLETIONS = re.compile(rb'"text": ?' + _JSON_STRING)
# Anthropic: content_block_delta events with a text_delta.
_ANTHROPIC = re.compile(rb'"type": ?"text_delta", ?"text": ?' + _JSON_STRING)
# Responses: response.output_text.delta events carry it as "delta", a few keys
# after their type (within the event's data line; a key cannot be inside a
# string, whose quotes are escaped).
_RESPONSES = re.compile(rb'"type": ?"response\.output_text\.delta",[^\n]*?"delta": ?'
                        + _JSON_STRING)
# Gemini: candidates[].content.parts[].text (SSE, or a streamed JSON array).
_GEMINI = re.compile(rb'"text": ?' + _JSON_STRING)
_BY_DIALECT = {"anthropic": _ANTHROPIC, "responses": _RESPONSES, "gemini": _GEMINI}

# For the guardrails, per dialect and operation: each text-carrying event's
# key, then (optionally, so that a key in another layout still shows up, as
# an empty match) the rest of the layout and the string, quotes included.
# Inside a JSON string a quote is escaped, so a string's content never
# matches as a key.
_QUOTED = rb'("' + _STRING_BODY + rb'")'  # captures the string, quotes included
_DELTAS: dict[tuple[str, str], re.Pattern[bytes]] = {
    ("openai", "chat"): re.compile(rb'"content"(?:: ?' + _QUOTED + rb")?"),
    ("openai", "completions"): re.compile(rb'"text"(?:: ?' + _QUOTED + rb")?"),
    ("anthropic", "messages"): re.compile(rb'"text_delta"(?:, ?"text": ?' + _QUOTED + rb")?"),
}


def escaped_text(dialect: str, operation: str, sse: bytes) -> bytes:
    """The answer's text deltas, concatenated, as JSON-escaped bytes."""
    pattern = _BY_DIALECT.get(dialect)
    if pattern is None:
        pattern = _COMPLETIONS if operation == "completions" else _CHAT
    return b"".join(pattern.findall(sse))


def text_deltas(dialect: str, operation: str, events: bytes) -> str | None:
    """The text deltas of whole SSE ``events``, joined; None when they must be
    decoded one by one instead (another dialect, or a text key in another
    layout: a null content, other spacing, an invalid string)."""
    pattern = _DELTAS.get((dialect, operation))
    if pattern is None:
        return None
    strings = pattern.findall(events)
    if not strings:
        return ""
    if b"" in strings:
        return None
    try:  # one decode for all: the strings as a JSON array
        texts = orjson.loads(b"[" + b",".join(strings) + b"]")
    except orjson.JSONDecodeError:
        return None
    return "".join(texts)


def unescape(escaped: bytes) -> str:
    """The text ``escaped_text`` found (a cut escape at the end is dropped)."""
    try:
        return str(orjson.loads(b'"' + escaped + b'"'))
    except orjson.JSONDecodeError:
        # Cut at the capture cap, maybe inside an escape: drop the cut tail.
        for trim in range(1, 7):
            try:
                return str(orjson.loads(b'"' + escaped[:-trim] + b'"'))
            except orjson.JSONDecodeError:
                continue
        return escaped.decode("utf-8", "replace")
