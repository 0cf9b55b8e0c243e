"""The text of a streamed answer, pulled out of its SSE bytes for the record.

A stream's framing is some fifty times its text (every chunk repeats the id,
model and choice structure), so the worker keeps only the text: one regular
expression over the joined chunks picks each text delta's JSON string
content, still escaped (compact JSON, or with one space after ":" and ","). Joined, those pieces are one valid JSON string body:
the shipper unescapes it once (``unescape``). No event is JSON-decoded on the
request path.
"""

from __future__ import annotations

import re

import orjson

# A JSON string's content, the loop unrolled (several times faster in re).
_JSON_STRING = rb'"([^"\\]*(?:\\.[^"\\]*)*)"'
# OpenAI chat chunks carry choices[].delta.content; completions chunks choices[].text.
_CHAT = re.compile(rb'"content": ?' + _JSON_STRING)
_COMPLETIONS = re.compile(rb'"text": ?' + _JSON_STRING)
# Anthropic: content_block_delta events with a text_delta.
_ANTHROPIC = re.compile(rb'"type": ?"text_delta", ?"text": ?' + _JSON_STRING)


def escaped_text(dialect: str, operation: str, sse: bytes) -> bytes:
    """The answer's text deltas, concatenated, as JSON-escaped bytes."""
    if dialect == "anthropic":
        pattern = _ANTHROPIC
    else:
        pattern = _COMPLETIONS if operation == "completions" else _CHAT
    return b"".join(pattern.findall(sse))


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
