"""One HTTP/1.1 connection to an upstream: an `asyncio.Protocol` around h11.

The protocol callbacks only stash bytes and wake the one waiting reader; all
parsing happens in the reader's task, on demand, so a slow consumer applies
back-pressure (reading pauses once `_MAX_INBOX_BYTES` sit unparsed) and a
cancelled consumer closes the socket on the spot (`_wait_for_data` aborts the
transport before the CancelledError propagates). Nothing here starts a task.

A connection lives in three states: ACTIVE (one request/response cycle in
flight, owned by one caller), IDLE (in the pool, between cycles) and CLOSED.
Bytes or EOF arriving while IDLE mean the server gave up on it; the pool is
told through `on_idle_lost` so it never hands out a dead connection. The race
where the server closes just as a request goes out is caught later: a reused
connection that closes before a single response byte raises `StaleConnection`,
and the pool retries the request once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

import h11

from .errors import (
    ConnectError,
    ConnectTimeout,
    FirstByteTimeout,
    InvalidRequest,
    ReadTimeout,
    RemoteProtocolError,
    WriteError,
)
from .origin import Origin

_ACTIVE = 0
_IDLE = 1
_CLOSED = 2

_MAX_INBOX_BYTES = 256 * 1024  # unparsed bytes held before reading pauses
_MAX_HEAD_BYTES = 64 * 1024  # largest response head accepted

_NEED_DATA = h11.NEED_DATA
_Data = h11.Data
_EndOfMessage = h11.EndOfMessage
_Response = h11.Response
_InformationalResponse = h11.InformationalResponse
_DONE = h11.DONE


class StaleConnection(RemoteProtocolError):
    """A reused connection closed before any response byte: safe to retry once."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class UpstreamConnection(asyncio.Protocol):
    """An HTTP/1.1 client connection; used by one request at a time."""

    __slots__ = (
        "_h11",
        "_has_response_bytes",
        "_inbox",
        "_inbox_bytes",
        "_is_eof",
        "_is_eof_fed",
        "_is_flushed",
        "_is_reading_paused",
        "_loop",
        "_lost_exc",
        "_on_idle_lost",
        "_origin_url",
        "_read_idle_timeout_s",
        "_state",
        "_transport",
        "_waiter",
        "cycles",
        "idle_since",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        origin_url: str,
        read_idle_timeout_s: float,
        on_idle_lost: Callable[[UpstreamConnection], None],
    ) -> None:
        self._loop = loop
        self._origin_url = origin_url
        self._read_idle_timeout_s = read_idle_timeout_s
        self._on_idle_lost = on_idle_lost
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BYTES)
        self._transport: asyncio.Transport | None = None
        self._state = _ACTIVE
        self._inbox: list[bytes] = []
        self._inbox_bytes = 0
        self._is_reading_paused = False
        self._is_eof = False
        self._is_eof_fed = False
        self._lost_exc: BaseException | None = None
        self._is_flushed = True
        self._has_response_bytes = False
        self._waiter: asyncio.Future[None] | None = None
        self.cycles = 0  # completed request/response cycles; > 0 means reused
        self.idle_since = 0.0  # loop.time() when it last went idle

    # -- asyncio.Protocol callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        # high=1, low=0: pause_writing fires whenever the request is not yet
        # fully handed to the kernel and resume_writing once it is, which is
        # how a broken connection is told apart as WriteError.
        transport.set_write_buffer_limits(high=1, low=0)

    def data_received(self, data: bytes) -> None:
        if self._state != _ACTIVE:
            if self._state == _IDLE:
                # Bytes while idle: the server is closing it (often with a 408).
                self._lose_while_idle()
            return
        self._has_response_bytes = True
        self._inbox.append(data)
        self._inbox_bytes += len(data)
        if self._inbox_bytes > _MAX_INBOX_BYTES and not self._is_reading_paused:
            self._is_reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool | None:
        self._is_eof = True
        if self._state == _IDLE:
            self._lose_while_idle()
        else:
            self._wake()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._is_eof = True
        self._lost_exc = exc
        self._transport = None  # uvloop raises on calls to a closed transport
        if self._state == _IDLE:
            self._lose_while_idle()
        else:
            self._wake()

    def pause_writing(self) -> None:
        self._is_flushed = False

    def resume_writing(self) -> None:
        self._is_flushed = True

    # -- used by the pool and the response --------------------------------------

    @property
    def is_usable(self) -> bool:
        """Idle, open and not told by the server that it is closing."""
        return self._state == _IDLE and not self._is_eof

    def abort(self) -> None:
        """Close the socket now, dropping anything unsent; idempotent."""
        self._state = _CLOSED
        transport = self._transport
        if transport is not None:
            self._transport = None
            transport.abort()

    def send_request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        """Start a cycle: encode with h11 and hand head and body to the socket in one write."""
        transport = self._transport
        if self._is_eof or transport is None or transport.is_closing():
            raise self._closed_before_response()
        conn = self._h11
        try:
            head = conn.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                pieces = conn.send_with_data_passthrough(_Data(data=body))
                conn.send(_EndOfMessage())
                assert head is not None and pieces is not None
                payload = head + pieces[0] if len(pieces) == 1 else b"".join([head, *pieces])
            else:
                end = conn.send(_EndOfMessage())
                assert head is not None
                payload = head + end if end else head
        except (h11.LocalProtocolError, UnicodeError, TypeError) as exc:
            self.abort()
            raise InvalidRequest(f"cannot send request to {self._origin_url}: {exc}") from None
        self._state = _ACTIVE
        self._has_response_bytes = False
        try:
            transport.write(payload)
        except (OSError, RuntimeError):  # uvloop raises on a transport it just closed
            raise self._closed_before_response() from None

    async def receive_response_head(self, first_byte_timeout_s: float) -> h11.Response:
        """Wait for the final response head (1xx heads are skipped)."""
        # A cycle starts with h11's buffer empty (`_end_cycle` checks), so
        # asking h11 before any byte arrived would only say NEED_DATA.
        if (
            not self._inbox
            and not self._is_eof
            and not await self._wait_for_data(first_byte_timeout_s)
        ):
            raise self._first_byte_timeout(first_byte_timeout_s)
        while True:
            event = self._next_event()
            if event is _NEED_DATA:
                if self._is_eof:  # everything received is parsed and more will never come
                    if not self._has_response_bytes:
                        raise self._closed_before_response()
                    self.abort()
                    raise RemoteProtocolError(
                        f"{self._origin_url} closed the connection in the middle of the response head"
                    )
                if self._has_response_bytes:
                    if not await self._wait_for_data(self._read_idle_timeout_s):
                        self.abort()
                        raise ReadTimeout(
                            f"response head from {self._origin_url} stalled for"
                            f" {self._read_idle_timeout_s} s"
                        )
                elif not await self._wait_for_data(first_byte_timeout_s):
                    raise self._first_byte_timeout(first_byte_timeout_s)
                continue
            event_type = type(event)
            if event_type is _Response:
                return cast(h11.Response, event)
            if event_type is _InformationalResponse:
                continue
            self.abort()
            raise RemoteProtocolError(
                f"{self._origin_url} closed the connection before a complete response head"
            )

    async def receive_body_chunk(self) -> bytes | None:
        """The next body chunk as it arrives, or None at the end of the body.

        At the end the cycle is over: the connection is IDLE again (reusable)
        or CLOSED.
        """
        while True:
            event = self._next_event()
            event_type = type(event)
            if event_type is _Data:
                data = event.data
                if data:
                    return bytes(data)
                continue
            if event_type is _EndOfMessage:
                self._end_cycle()
                return None
            if event is _NEED_DATA:
                if self._is_eof:
                    self.abort()
                    raise RemoteProtocolError(
                        f"{self._origin_url} closed the connection in the middle of the body"
                    )
                if not await self._wait_for_data(self._read_idle_timeout_s):
                    self.abort()
                    raise ReadTimeout(
                        f"no body bytes from {self._origin_url} for {self._read_idle_timeout_s} s"
                    )
                continue
            self.abort()
            raise RemoteProtocolError(f"unexpected {event_type.__name__} from {self._origin_url}")

    # -- internals ---------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _lose_while_idle(self) -> None:
        self.abort()
        self._on_idle_lost(self)

    def _next_event(self) -> Any:
        conn = self._h11
        try:
            event = conn.next_event()
            while event is _NEED_DATA:
                inbox = self._inbox
                if inbox:
                    data = inbox[0] if len(inbox) == 1 else b"".join(inbox)
                    inbox.clear()
                    self._inbox_bytes = 0
                    if self._is_reading_paused and self._transport is not None:
                        self._is_reading_paused = False
                        self._transport.resume_reading()
                    conn.receive_data(data)
                elif self._is_eof and not self._is_eof_fed and self._has_response_bytes:
                    self._is_eof_fed = True
                    conn.receive_data(b"")
                else:
                    return _NEED_DATA
                event = conn.next_event()
            return event
        except h11.RemoteProtocolError as exc:
            self.abort()
            raise RemoteProtocolError(f"bad response from {self._origin_url}: {exc}") from None

    async def _wait_for_data(self, timeout_s: float) -> bool:
        """Wait until bytes or EOF arrive; False if timeout_s passed first.

        Cancellation aborts the socket before it propagates, so a cancelled
        consumer never leaves a half-read connection behind.
        """
        if self._inbox or self._is_eof:
            return True
        loop = self._loop
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        except BaseException:
            self.abort()
            raise
        finally:
            timer.cancel()
            self._waiter = None
        return bool(self._inbox) or self._is_eof

    def _first_byte_timeout(self, timeout_s: float) -> FirstByteTimeout:
        self.abort()
        return FirstByteTimeout(f"no response from {self._origin_url} within {timeout_s} s")

    def _closed_before_response(self) -> Exception:
        self.abort()
        lost_exc = self._lost_exc
        if self.cycles > 0:
            return StaleConnection(f"reused connection to {self._origin_url} was closed")
        if isinstance(lost_exc, ssl.SSLError):
            return ConnectError(f"TLS error from {self._origin_url}: {lost_exc}")
        if isinstance(lost_exc, OSError) and not self._is_flushed:
            return WriteError(f"sending the request to {self._origin_url} failed: {lost_exc}")
        hint = ""
        if self._origin_url.startswith("https:"):
            hint = " (a TLS server that rejects the client certificate also does this)"
        return RemoteProtocolError(
            f"{self._origin_url} closed the connection without sending a response{hint}"
        )

    def _end_cycle(self) -> None:
        self.cycles += 1
        conn = self._h11
        if (
            conn.our_state is _DONE
            and conn.their_state is _DONE
            and not self._inbox
            and not self._is_eof
            and not conn.trailing_data[0]
            and self._transport is not None
        ):
            conn.start_next_cycle()
            self._state = _IDLE
        else:
            self.abort()


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    origin: Origin,
    ssl_context: ssl.SSLContext | None,
    connect_timeout_s: float,
    read_idle_timeout_s: float,
    on_idle_lost: Callable[[UpstreamConnection], None],
) -> UpstreamConnection:
    """TCP connect (plus TLS handshake, SNI = host) within connect_timeout_s."""
    url = origin.url
    conn = UpstreamConnection(loop, url, read_idle_timeout_s, on_idle_lost)
    try:
        async with asyncio.timeout(connect_timeout_s):
            await loop.create_connection(
                lambda: conn,
                origin.host,
                origin.port,
                ssl=ssl_context,
                server_hostname=origin.host if ssl_context is not None else None,
            )
    except TimeoutError:
        conn.abort()
        raise ConnectTimeout(
            f"connecting to {url} took longer than {connect_timeout_s} s"
        ) from None
    except (ssl.SSLError, ssl.CertificateError) as exc:
        conn.abort()
        raise ConnectError(f"TLS handshake with {url} failed: {exc}") from None
    except OSError as exc:
        conn.abort()
        raise ConnectError(f"cannot connect to {url}: {exc}") from None
    return conn
