"""Server-sent events: an incremental parser and the encoders we write with.

The parser follows the WHATWG event-stream rules that matter for LLM APIs:
lines end in LF, CRLF or a lone CR; ``:`` starts a comment (keep-alives);
``data`` lines of one event are joined with LF; a blank line dispatches the
event; an event with no data is dropped. ``feed`` takes bytes split anywhere:
a CR at the very end of a chunk is held back because the next chunk may start
with its LF. Lines are decoded only once complete, so a UTF-8 sequence split
across chunks is never seen in halves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024

SSE_DONE = b"data: [DONE]\n\n"
SSE_KEEPALIVE = b": keep-alive\n\n"


class SSEError(ValueError):
    """The stream broke the framing rules we can live with (an event too large)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str  # "" when the stream named none (the spec's default "message")
    data: str
    id: str | None = None


class SSEParser:
    """Bytes in (split anywhere), complete ``SSEEvent``s out."""

    __slots__ = (
        "_data_lines",
        "_event",
        "_event_bytes",
        "_id",
        "_is_first",
        "_pending",
        "max_event_bytes",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._pending = b""
        self._data_lines: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._is_first = True
        self._event_bytes = 0

    def feed(self, data: bytes) -> list[SSEEvent]:
        buffer = self._pending + data if self._pending else data
        if self._is_first and buffer:
            if len(buffer) < 3 and b"\xef\xbb\xbf".startswith(buffer):
                self._pending = buffer
                return []
            self._is_first = False
            if buffer.startswith(b"\xef\xbb\xbf"):
                buffer = buffer[3:]
        held_cr = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
                held_cr = b"\r"
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buffer.rfind(b"\n")
        if end < 0:
            self._pending = buffer + held_cr
            self._check_size(len(self._pending))
            return []
        self._pending = buffer[end + 1 :] + held_cr
        events: list[SSEEvent] = []
        data_lines = self._data_lines
        # The two lines an LLM stream is made of are handled inline; the rest
        # (comments, event:, id:, "data:" without a space) take the general path.
        for line in buffer[:end].split(b"\n"):
            if line.startswith(b"data: "):
                data_lines.append(line[6:].decode("utf-8", "replace"))
                self._event_bytes += len(line)
            elif not line:
                if data_lines:
                    text = data_lines[0] if len(data_lines) == 1 else "\n".join(data_lines)
                    events.append(SSEEvent(self._event, text, self._id))
                    data_lines.clear()
                self._event = ""
                self._event_bytes = 0
            else:
                self._line(line, events)
        self._check_size(len(self._pending))
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a last event not followed by a blank line still counts
        (servers that close right after the final ``data:`` line exist)."""
        events: list[SSEEvent] = []
        pending, self._pending = self._pending, b""
        if pending:
            for line in pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
                self._line(line, events)
        self._line(b"", events)
        return events

    def _check_size(self, nbytes: int) -> None:
        if nbytes + self._event_bytes > self.max_event_bytes:
            raise SSEError(f"server-sent event larger than {self.max_event_bytes} bytes")

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data_lines:
                events.append(SSEEvent(self._event, "\n".join(self._data_lines), self._id))
            self._data_lines.clear()
            self._event = ""
            self._event_bytes = 0
            return
        if line[0] == 0x3A:  # ":" comment
            return
        text = line.decode("utf-8", "replace")
        name, sep, value = text.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_lines.append(value)
            self._event_bytes += len(line)
            self._check_size(0)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value


def sse_data(obj: Any) -> bytes:
    """One unnamed event carrying ``obj`` as JSON (OpenAI's framing)."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_event(event: str, obj: Any) -> bytes:
    """One named event carrying ``obj`` as JSON (Anthropic's framing)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"
