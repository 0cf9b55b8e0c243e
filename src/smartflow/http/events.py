"""The event vocabulary shared by the sans-IO HTTP/1.1 (`h1.py`) and HTTP/2
(`h2.py`) layers.

Bytes go into a protocol object and these values come out; the transport turns
them into handler tasks and socket writes.  Every event names the stream it
belongs to (HTTP/1.1 uses stream 1 for every request on a connection; the
transport handles them strictly one after another).

A peer fault is a value, never an exception:
  - `BadRequest(status)` — HTTP/1.1: answer `status` (400, 408, 413, 431, 505)
    and close the connection.
  - `StreamReset` — HTTP/2: the stream is gone (the peer sent RST_STREAM, or we
    queued one for a stream-level fault); cancel that stream's handler.
  - `GoAway` — HTTP/2: a connection-level fault; GOAWAY is already queued in
    the protocol's outgoing bytes, flush them and close.
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    method: bytes
    target: bytes  # path + "?" + query, as sent
    headers: Headers  # names lower-case, pseudo-headers removed
    http_version: str  # "1.0" | "1.1" | "2"
    expects_continue: bool  # HTTP/1.1 `Expect: 100-continue`
    has_body: bool  # False when the request is known to carry no body
    keep_alive: bool  # HTTP/1.x: the client allows reuse of the connection


@dataclass(frozen=True, slots=True)
class Body:
    stream_id: int
    data: bytes
    flow_controlled_length: int = 0  # HTTP/2: bytes to acknowledge once read


@dataclass(frozen=True, slots=True)
class EndBody:
    stream_id: int


@dataclass(frozen=True, slots=True)
class BadRequest:
    """HTTP/1.1 protocol fault: answer `status` and close the connection."""

    stream_id: int
    status: int  # 400 | 408 | 413 | 431 | 505
    message: str
    # The request target when the head was readable (a 413 for a declared
    # length): lets the app answer in the shape of the route it was meant for.
    target: bytes | None = None


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    error_code: int
    sent_by_us: bool = False  # True: a stream fault we answered with RST_STREAM


@dataclass(frozen=True, slots=True)
class GoAway:
    """HTTP/2 connection fault; GOAWAY is queued in the protocol's output."""

    stream_id: int  # always 0
    error_code: int
    message: str


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """HTTP/2 flow-control window grew (stream_id 0: the connection's)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer ended the connection (HTTP/2 GOAWAY from the client)."""

    stream_id: int = 0


Event = (
    RequestReceived
    | Body
    | EndBody
    | BadRequest
    | StreamReset
    | GoAway
    | WindowOpened
    | ConnectionClosed
)
