"""The OpenAI Responses dialect: ``POST /v1/responses``.

Request validation, usage from a whole ``response`` object and from a
relayed stream (the terminal ``response.completed`` / ``.incomplete`` /
``.failed`` event carries it, with the whole response), the ``error`` event
that ends a failed stream, and the encoder that turns another provider's
decoded stream into Responses events (``ResponsesFromOpenAI``, built on
``providers.responses_inbound``'s stream encoder). Errors of a whole
response are OpenAI's JSON error shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from smartflow.dialects import openai
from smartflow.dialects.base import Dialect, StreamOutcome
from smartflow.dialects.checks import ChatRequestFacts, bad_param, check_model, json_type
from smartflow.dialects.openai import find_usage_object
from smartflow.dialects.reencode import ReencodingTransform
from smartflow.gateway_error import GatewayError, Phase, Reason
from smartflow.providers.base import StreamDecoder, Usage
from smartflow.providers.responses_inbound import (
    FINISH_FOR_INCOMPLETE,
    ResponsesStreamEncoder,
    stream_error_code,
    usage_from_responses,
)
from smartflow.providers.sse import SSEError, SSEParser

OnFinal = Callable[[dict[str, Any]], None]
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
TOOL_CALL_ITEMS = frozenset({"function_call", "custom_tool_call", "local_shell_call"})

# -- validation -------------------------------------------------------------------


def validate_responses(body: dict[str, Any]) -> ChatRequestFacts:
    """model; input (a string or an array of item objects; absent only when
    continuing a stored response); stream; tools (objects with a ``type``)."""
    model = check_model(body)
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise bad_param("previous_response_id",
                        f"previous_response_id: expected a string, got {json_type(previous)}")
    items = body.get("input")
    if items is None:
        if not previous:
            raise bad_param("input", "input: required (a string or an array of input items)")
    elif isinstance(items, list):
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise bad_param("input", f"input[{index}]: expected an object, got "
                                         f"{json_type(item)}")
    elif not isinstance(items, str):
        raise bad_param("input", f"input: expected a string or an array, got {json_type(items)}")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_param("instructions",
                        f"instructions: expected a string, got {json_type(instructions)}")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_param("stream", f"stream: expected a boolean, got {json_type(stream)}")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad_param("tools", f"tools: expected an array, got {json_type(tools)}")
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise bad_param("tools", f"tools[{index}]: expected an object with a type")
    return ChatRequestFacts(model, bool(stream), True)


# -- usage ------------------------------------------------------------------------


def usage_of_body(raw: bytes) -> Usage | None:
    """Usage of a whole ``response`` object (input, output and cached input tokens)."""
    found = find_usage_object(raw)
    return usage_from_responses(found) if found is not None else None


def finish_reason_of(response: dict[str, Any]) -> str | None:
    """The chat-style finish reason of a final ``response`` object."""
    output = response.get("output")
    if isinstance(output, list) and any(isinstance(item, dict) and item.get("type")
                                        in TOOL_CALL_ITEMS for item in output):
        return "tool_calls"
    details = response.get("incomplete_details")
    if response.get("status") == "incomplete" and isinstance(details, dict):
        return FINISH_FOR_INCOMPLETE.get(str(details.get("reason")), "length")
    if response.get("status") == "failed":
        return None
    return "stop"


class ResponsesTap:
    """Usage, status and finish reason from a relayed Responses stream's terminal event.

    Relayed chunks may split an event anywhere: only whole events are looked
    at (the bytes after the last event boundary wait for the next chunk).
    When text is not captured, only the terminal event is parsed: the length
    of the text deltas before it (an output estimate for a stream that ends
    without usage) is read off the bytes. The terminal
    event carries the whole response, so it is read whatever its size, and
    handed to ``on_final`` once.
    """

    __slots__ = ("_chars", "_error", "_final", "_finish", "_on_final", "_parser", "_pending",
                 "_text", "_usage")

    def __init__(self, *, capture_text: bool = False, on_final: OnFinal | None = None) -> None:
        self._parser: SSEParser | None = SSEParser()
        self._pending = b""
        self._text: list[str] | None = [] if capture_text else None
        self._on_final = on_final
        self._chars = 0
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._error: GatewayError | None = None
        self._final = False

    def observe(self, data: bytes) -> None:
        if self._parser is None:
            return
        if self._pending:
            data = self._pending + data
        end = _events_end(data)
        self._pending = data[end:]
        if end:
            self._read(data[:end] if end < len(data) else data)

    def _read(self, events: bytes) -> None:
        if self._text is None:
            # Only the terminal event (and what follows it) needs parsing.
            start = _terminal_start(events)
            head = events[:start] if start >= 0 else events
            self._chars += len(b"".join(_DELTA_TEXT.findall(head)))
            if start < 0:
                return
            events = events[start:]
        parser = self._parser
        assert parser is not None
        try:
            parsed = parser.feed(events)
        except SSEError:
            self._parser = None  # a tap never breaks the relay; it stops reading
            return
        for event in parsed:
            self._on_event(event.event, event.data)

    def _on_event(self, name: str, data: str) -> None:
        if name == "response.output_text.delta" or (
                not name and '"response.output_text.delta"' in data[:64]):
            obj = _load(data)
            if obj is not None and isinstance(obj.get("delta"), str):
                self._chars += len(obj["delta"])
                if self._text is not None:
                    self._text.append(obj["delta"])
            return
        if name in TERMINAL_EVENTS or name == "error" or (not name and _is_terminal(data)):
            obj = _load(data)
            if obj is None:
                return
            kind = obj.get("type")
            if kind in TERMINAL_EVENTS and isinstance(obj.get("response"), dict):
                self._on_terminal(obj["response"])
            elif kind == "error" and self._error is None:
                self._error = _stream_error(obj.get("code"), obj.get("message"))

    def _on_terminal(self, response: dict[str, Any]) -> None:
        if self._final:
            return
        self._final = True
        self._usage = usage_from_responses(response.get("usage")) or self._usage
        self._finish = finish_reason_of(response)
        error = response.get("error")
        if response.get("status") == "failed" and self._error is None:
            error = error if isinstance(error, dict) else {}
            self._error = _stream_error(error.get("code"), error.get("message"))
        if self._on_final is not None:
            self._on_final(response)

    def outcome(self) -> StreamOutcome:
        if self._pending and self._parser is not None:  # a last event without its blank line
            pending, self._pending = self._pending, b""
            self._read(pending + b"\n\n")
        text = "".join(self._text) if self._text is not None else None
        return StreamOutcome(self._usage, self._finish, text, self._error,
                             approx_text_chars=self._chars)


# How a terminal event (or an error) begins: its event line, or for a stream
# without event lines its data line.
_TERMINAL_STARTS = tuple(
    prefix + kind
    for kind in (b"response.completed", b"response.incomplete", b"response.failed", b"error")
    for prefix in (b"event: ", b'data: {"type":"'))


def _terminal_start(events: bytes) -> int:
    """Where the first terminal event in ``events`` begins, or -1.

    A stream ends with it (an ``error`` may come just before
    ``response.failed``), so only the last two events are searched. A match
    must begin a line: inside a data line it is only text that looks like one.
    """
    last = events.rfind(b"\n\n", 0, len(events) - 2)
    offset = events.rfind(b"\n\n", 0, last) + 2 if last > 0 else 0
    if offset < 2:
        offset = 0
    first = -1
    for marker in _TERMINAL_STARTS:
        at = events.find(marker, offset)
        while at > 0 and events[at - 1] != 0x0A:  # not at a line start
            at = events.find(marker, at + 1)
        if at >= 0 and (first < 0 or at < first):
            first = at
    return first


# The text of a delta up to its first escape: close enough for an estimate.
_DELTA_TEXT = re.compile(rb'"delta":"([^"\\]*)')
_EVENT_END = re.compile(rb"\r?\n\r?\n")


def _events_end(data: bytes) -> int:
    """Where the whole events in ``data`` end (0: none is whole yet)."""
    end = data.rfind(b"\n\n")
    if end >= 0 and b"\r" not in data:
        return end + 2
    last = 0
    for match in _EVENT_END.finditer(data):
        last = match.end()
    return last


def _is_terminal(data: str) -> bool:
    """For a stream without ``event:`` lines: does this data look like a terminal event?"""
    head = data[:64]
    return '"error"' in head or any(f'"{kind}"' in head for kind in TERMINAL_EVENTS)


def _load(data: str) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _stream_error(code: Any, message: Any) -> GatewayError:
    status = 429 if code == "rate_limit_exceeded" else 502
    return GatewayError(status, str(message or "the upstream response failed"),
                        code=str(code) if code else None, reason=Reason.UPSTREAM_STATUS,
                        phase=Phase.MID_STREAM)


# -- errors -----------------------------------------------------------------------


def error_event(error: GatewayError) -> bytes:
    """The Responses ``error`` event that ends a failed stream."""
    payload = {"type": "error", "code": stream_error_code(error), "message": error.message,
               "param": error.param, "sequence_number": 0}
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"


# -- encoders ---------------------------------------------------------------------


class ResponsesFromOpenAI(ReencodingTransform):
    """A non-OpenAI stream (decoded to hub chunks) re-encoded as Responses events;
    ``on_final`` gets the finished response object (to be stored for the next turn).
    The encoder's own error event keeps the stream's sequence numbers and ends it
    with ``response.failed``."""

    __slots__ = ("_final_encoder", "_on_final")

    def __init__(self, decoder: StreamDecoder, encoder: ResponsesStreamEncoder,
                 on_final: OnFinal | None = None) -> None:
        super().__init__(decoder, encoder)
        self._final_encoder = encoder
        self._on_final = on_final

    def close(self) -> bytes:
        out = super().close()
        response = self._final_encoder.response
        if self._on_final is not None and response is not None:
            self._on_final(response)
        return out


DIALECT = Dialect("responses", openai.error_type, openai.error_body, error_event, ResponsesTap,
                  usage_of_body)
