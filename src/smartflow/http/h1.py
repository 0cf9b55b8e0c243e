"""Sans-IO HTTP/1.1 server protocol: bytes in -> events out, responses -> bytes.

Request heads are parsed by h11.  This layer splits the byte stream into
heads itself and checks each raw head for the shapes h11 tolerates but a proxy
must not (both Content-Length and Transfer-Encoding, obsolete line folding,
bare LF line ends, versions other than 1.0/1.1) before a fresh
`h11.Connection` parses it.  A chunked body is framed by that h11 connection
(its `trailing_data` is the start of the next pipelined request); a
Content-Length body is framed here by counting bytes.  The last head parsed on
a connection is remembered with its result: clients repeat the same head byte
for byte, and the same bytes need not be parsed (or checked) twice.

Responses are framed here (status line + headers + Content-Length or chunked,
trailer fields in the last chunk) instead of through `h11.Connection.send`,
which costs about as much as all the rest of a request; outgoing header (and
trailer) names and values are checked for CR/LF/NUL.

Requests on one connection are strictly sequential: after `RequestReceived`
(and its body events) the connection waits in `State.RESPONDING` until the
transport calls `start_next_request()`; bytes arriving meanwhile are only
buffered (the transport pauses reading past a high-water mark).
"""

from __future__ import annotations

import enum
import operator
import re
from dataclasses import dataclass
from http import HTTPStatus

import h11

from smartflow.http.events import (
    BadRequest,
    Body,
    ConnectionClosed,
    EndBody,
    Event,
    RequestReceived,
)

STREAM_ID = 1
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_STR_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION_RE = re.compile(rb"HTTP/[0-9]\.[0-9]")
_KNOWN_RESPONSE_HEADER_NAMES = frozenset(
    {
        "content-type", "cache-control", "x-request-id", "allow", "location", "retry-after",
        "www-authenticate", "set-cookie", "vary", "etag", "last-modified", "server",
        "access-control-allow-origin", "access-control-allow-headers",
        "access-control-allow-methods", "x-accel-buffering", "openai-model",
        "openai-processing-ms", "x-smartflow-call-id", "x-smartflow-response-cost",
        "x-smartflow-cache-hit", "x-smartflow-duration-ms", "x-smartflow-provider",
        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
        "x-smartflow-budget-limit", "x-smartflow-budget-remaining", "x-smartflow-budget-reset",
        "x-smartflow-attempts", "x-smartflow-deployment", "x-smartflow-tokens-estimated",
        "x-smartflow-cache-key", "x-smartflow-cache-tier", "x-smartflow-cache-similarity",
        "x-smartflow-policies", "x-smartflow-guardrails", "x-smartflow-virtual-key",
        "content-encoding", "content-language", "request-id", "openai-version",
        "openai-organization", "x-content-type-options",
    }
)  # fmt: skip
_name_of = operator.itemgetter(0)


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS_LINES: dict[int, bytes] = {int(s): _status_line(int(s)) for s in HTTPStatus}


class State(enum.Enum):
    HEAD = "head"  # waiting for (the rest of) a request head
    BODY = "body"  # h11 is framing the current request's body
    RESPONDING = "responding"  # request fully received; waiting for the response to finish
    ERROR = "error"  # a BadRequest was emitted; nothing more is parsed


@dataclass(frozen=True, slots=True)
class _ParsedHead:
    """What a request head says, as parsed by h11."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    http_version: str
    keep_alive: bool
    expects_continue: bool
    has_body: bool
    is_chunked: bool
    content_length: int

    @classmethod
    def from_h11(cls, event: h11.Request) -> _ParsedHead:
        full_items = getattr(event.headers, "_full_items", None)
        headers = (
            tuple([(name, value) for _raw, name, value in full_items])
            if full_items is not None
            else tuple(event.headers)
        )
        http_version = "1.1" if event.http_version == b"1.1" else "1.0"
        keep_alive = http_version == "1.1"
        expects_continue = False
        is_chunked = False
        content_length = 0
        for name, value in headers:
            if name == b"content-length":
                content_length = int(value)
            elif name == b"transfer-encoding":
                is_chunked = True
            elif name == b"connection":
                if keep_alive and b"close" in value.lower():
                    keep_alive = False
            elif name == b"expect":
                expects_continue = http_version == "1.1" and value.lower() == b"100-continue"
        has_body = is_chunked or content_length > 0
        return cls(
            event.method,
            event.target,
            headers,
            http_version,
            keep_alive,
            expects_continue and has_body,
            has_body,
            is_chunked,
            content_length,
        )


class H1Connection:
    """One HTTP/1.1 server connection, without I/O."""

    __slots__ = (
        "_body_bytes",
        "_body_remaining",
        "_buffer",
        "_last_head",
        "_last_parsed",
        "_parser",
        "_scanned",
        "is_body_complete",
        "max_body_bytes",
        "max_header_bytes",
        "state",
    )

    def __init__(self, *, max_header_bytes: int, max_body_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.state = State.HEAD
        self._buffer = bytearray()  # unparsed bytes: a partial head, or pipelined requests
        self._scanned = 0  # how far self._buffer was searched for the end of the head
        self._parser: h11.Connection | None = None  # framing a chunked body
        self._body_remaining = 0  # framing a Content-Length body (when no parser)
        self._body_bytes = 0
        self.is_body_complete = False
        # The last head parsed without a chunked body, and what h11 made of it:
        # clients send the same head again and again on a connection, and the
        # same bytes parse the same way.
        self._last_head = b""
        self._last_parsed: _ParsedHead | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet parsed (pipelined requests)."""
        return len(self._buffer)

    @property
    def is_waiting_for_head(self) -> bool:
        return self.state is State.HEAD

    @property
    def has_partial_head(self) -> bool:
        return self.state is State.HEAD and bool(self._buffer)

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer (b"" = end of stream); return the events they complete."""
        state = self.state
        if not data:
            if state is State.BODY:
                if self._parser is None:
                    return self._fail(400, "Connection closed mid-body")
                self._parser.receive_data(b"")
                return self._body_events()
            return [ConnectionClosed(STREAM_ID)]
        if state is State.HEAD:
            if self._buffer:
                self._buffer += data
                return self._head_events(self._buffer)
            return self._head_events(data)
        if state is State.BODY:
            if self._parser is None:
                return self._content_length_events(data)
            self._parser.receive_data(data)
            return self._body_events()
        if state is State.RESPONDING:
            self._buffer += data
        return []

    def start_next_request(self) -> list[Event]:
        """The response to the current request is complete; parse what is buffered."""
        self.state = State.HEAD
        self._parser = None
        self.is_body_complete = False
        self._scanned = 0
        if self._buffer:
            return self._head_events(self._buffer)
        return []

    def timeout_event(self) -> BadRequest:
        """The header timeout fired while waiting for a head: answer 408."""
        self.state = State.ERROR
        return BadRequest(STREAM_ID, 408, "Request head not received in time")

    # -- parsing -------------------------------------------------------------

    def _fail(self, status: int, message: str, target: str | None = None) -> list[Event]:
        self.state = State.ERROR
        self._buffer = bytearray()
        self._parser = None
        return [BadRequest(STREAM_ID, status, message, target)]

    def _head_events(self, buffer: bytes | bytearray) -> list[Event]:
        if buffer[:1] in (b"\r", b"\n"):
            # RFC 9112 2.2: ignore empty lines before a request line.
            buffer = bytearray(buffer.lstrip(b"\r\n"))
            self._buffer = buffer
            self._scanned = 0
            if not buffer:
                return []
        end = buffer.find(b"\r\n\r\n", self._scanned)
        if end < 0:
            if len(buffer) > self.max_header_bytes:
                return self._fail(431, "Request header fields too large")
            if b"\n\n" in buffer or b"\n\r\n" in buffer:
                return self._fail(400, "Bare LF in request head")
            if buffer is not self._buffer:
                self._buffer = bytearray(buffer)
            # Resume the search where it stopped (a slow client sends byte by byte).
            self._scanned = max(0, len(buffer) - 3)
            return []
        head_end = end + 4
        if head_end > self.max_header_bytes:
            return self._fail(431, "Request header fields too large")
        head = bytes(buffer[:head_end])
        rest = buffer[head_end:]
        self._scanned = 0
        if head == self._last_head and self._last_parsed is not None:
            parsed = self._last_parsed
        else:
            problem = _raw_head_problem(head)
            if problem is not None:
                return self._fail(*problem)
            parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes + 1)
            parser.receive_data(head)
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                status = 431 if exc.error_status_hint == 431 else 400
                return self._fail(status, str(exc) or "Malformed request")
            if type(event) is not h11.Request:
                return self._fail(400, "Malformed request")
            parsed = _ParsedHead.from_h11(event)
            if parsed.is_chunked:
                # h11 frames chunked bodies; it has the head, give it the rest.
                self._parser = parser
            else:
                self._last_head = head
                self._last_parsed = parsed
        if parsed.content_length > self.max_body_bytes:
            return self._fail(413, "Request body too large", parsed.target)
        request_event = RequestReceived(
            STREAM_ID,
            parsed.method,
            parsed.target,
            list(parsed.headers),
            parsed.http_version,
            parsed.expects_continue,
            parsed.has_body,
            parsed.keep_alive,
        )
        self._body_bytes = 0
        if not parsed.has_body:
            # No Content-Length and no Transfer-Encoding: the body is empty and
            # the next request starts right after the head.
            self.state = State.RESPONDING
            self.is_body_complete = True
            self._parser = None
            self._buffer = bytearray(rest)
            return [request_event, EndBody(STREAM_ID)]
        self._buffer = bytearray()
        self.is_body_complete = False
        self.state = State.BODY
        events: list[Event] = [request_event]
        if parsed.is_chunked:
            assert self._parser is not None
            if rest:
                self._parser.receive_data(bytes(rest))
            events.extend(self._body_events())
            return events
        self._parser = None
        self._body_remaining = parsed.content_length
        if rest:
            events.extend(self._content_length_events(bytes(rest)))
        return events

    def _content_length_events(self, data: bytes) -> list[Event]:
        remaining = self._body_remaining
        if len(data) < remaining:
            self._body_remaining = remaining - len(data)
            return [Body(STREAM_ID, data)]
        self._body_remaining = 0
        self.state = State.RESPONDING
        self.is_body_complete = True
        self._buffer = bytearray(data[remaining:])
        return [Body(STREAM_ID, data[:remaining]), EndBody(STREAM_ID)]

    def _body_events(self) -> list[Event]:
        parser = self._parser
        assert parser is not None
        events: list[Event] = []
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                return events + self._fail(400, str(exc) or "Malformed request body")
            event_type = type(event)
            if event_type is h11.Data:
                data = bytes(event.data)  # type: ignore[union-attr]
                self._body_bytes += len(data)
                if self._body_bytes > self.max_body_bytes:
                    return events + self._fail(413, "Request body too large")
                events.append(Body(STREAM_ID, data))
            elif event_type is h11.EndOfMessage:
                events.append(EndBody(STREAM_ID))
                self.state = State.RESPONDING
                self.is_body_complete = True
                trailing, _closed = parser.trailing_data
                self._buffer = bytearray(trailing)
                self._scanned = 0
                self._parser = None
                return events
            elif event is h11.NEED_DATA:
                return events
            elif event_type is h11.ConnectionClosed:
                return events + self._fail(400, "Connection closed mid-body")
            else:  # PAUSED cannot happen before EndOfMessage; anything else is a fault
                return events + self._fail(400, "Malformed request")


def _raw_head_problem(head: bytes) -> tuple[int, str] | None:
    """Faults in a raw request head that h11 lets through (or reports vaguely)."""
    line_end = head.find(b"\r\n")
    request_line = head[:line_end]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return 400, "Malformed request line"
    version = parts[2]
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        if _VERSION_RE.fullmatch(version):
            return 505, "HTTP version not supported"
        return 400, "Malformed request line"
    if head.count(b"\n") != head.count(b"\r\n"):
        return 400, "Bare LF in request head"
    if b"\r\n " in head or b"\r\n\t" in head:
        return 400, "Obsolete line folding in request head"
    lower = head.lower()
    has_transfer_encoding = b"\r\ntransfer-encoding:" in lower
    if has_transfer_encoding and b"\r\ncontent-length:" in lower:
        return 400, "Both Content-Length and Transfer-Encoding"
    if lower.count(b"\r\ncontent-length:") > 1:
        lengths = set()
        for line in lower.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                lengths.add(line[15:].strip())
        if len(lengths) > 1:
            return 400, "Conflicting Content-Length headers"
    if has_transfer_encoding and lower.count(b"\r\ntransfer-encoding:") > 1:
        return 400, "Multiple Transfer-Encoding headers"
    return None


# -- response framing ------------------------------------------------------------


class HeaderError(ValueError):
    """An outgoing header name or value that would corrupt the response framing."""


def check_header(name: str, value: str) -> None:
    if name not in _KNOWN_RESPONSE_HEADER_NAMES and _TOKEN_STR_RE.fullmatch(name) is None:
        raise HeaderError(f"invalid response header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise HeaderError(f"invalid response header value for {name!r}")


def encode_response_head(
    status: int,
    headers: list[tuple[str, str]],
    content_type: str | None,
    content_length: int | None,
    *,
    keep_alive: bool,
    chunked: bool,
    date_line: bytes,
) -> bytes:
    """Status line + headers + blank line.  `content_length` None and not
    `chunked` means the body is delimited by closing the connection."""
    status_line = _STATUS_LINES.get(status) or _status_line(status)
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    lines = len(headers)
    if content_type is not None:
        text += f"content-type: {content_type}\r\n"
        lines += 1
    # One scan of the joined lines, not a check per header (a response
    # carries a dozen): each line ends in the one CR LF written here, so any
    # other CR, LF or NUL came from a name or a value. A name we do not know
    # is checked (and the culprit named) one header at a time.
    if (text.count("\n") != lines or text.count("\r") != lines or "\0" in text
            or not _KNOWN_RESPONSE_HEADER_NAMES.issuperset(map(_name_of, headers))):
        for name, value in headers:
            check_header(name, value)
        if content_type is not None:
            check_header("content-type", content_type)
    if content_length is not None:
        text += f"content-length: {content_length}\r\n"
    elif chunked:
        text += "transfer-encoding: chunked\r\n"
    if not keep_alive:
        text += "connection: close\r\n"
    return b"".join((status_line, date_line, text.encode("latin-1"), b"\r\n"))


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode_last_chunk(trailers: list[tuple[str, str]]) -> bytes:
    """The last chunk of a chunked body, carrying `trailers` as trailer fields
    (RFC 9112 7.1.2); the fields are checked like headers (HeaderError)."""
    if not trailers:
        return LAST_CHUNK
    parts = ["0\r\n"]
    for name, value in trailers:
        check_header(name, value)
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def encode_error_response(status: int, body: bytes, date_line: bytes) -> bytes:
    """A complete close-delimited error answer (protocol faults)."""
    head = encode_response_head(
        status,
        [],
        "application/json",
        len(body),
        keep_alive=False,
        chunked=False,
        date_line=date_line,
    )
    return head + body
