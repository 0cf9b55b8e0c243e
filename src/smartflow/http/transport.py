"""The only module of `smartflow.http` that touches sockets.

`HTTPServer` owns a listening socket (accepting with a non-blocking accept loop
of its own, so a retiring worker can take everything already queued before it
closes the listener) and one `_Connection` (an `asyncio.Protocol`) per client.

A connection starts undecided: without TLS the first 24 bytes are compared
with the HTTP/2 preface (h2c prior knowledge) and pick the protocol; with TLS,
ALPN decides.  The sans-IO layer (`h1.py` / `h2.py`) turns bytes into events;
each request becomes an `_Exchange` run by one handler task the connection
owns and cancels when the client goes away (or resets the stream).

Back-pressure, both ways:
  - reading: past `_BODY_HIGH_WATER_BYTES` of body the handler has not read
    (HTTP/1.1) the socket is paused until the handler catches up; HTTP/2 is
    bounded by flow control, credit is returned only as the handler reads.
  - writing: `pause_writing`/`resume_writing` gate `_wait_writable()`, awaited
    after each streamed chunk, so a client that does not read stops the
    producer; HTTP/2 additionally waits for flow-control window per stream.

Streaming responses may end with trailer fields (`StreamingResponse.trailers`):
in the last chunk on HTTP/1.1, as a trailing HEADERS frame on HTTP/2.

Timers are not per request: one server tick (a few times a second) updates the
cached `date` header and closes connections whose deadline passed (no complete
head within header_timeout -> 408; idle keep-alive past keepalive_timeout ->
close).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote

from smartflow.http import h1 as h1_protocol
from smartflow.http import h2 as h2_protocol
from smartflow.http.errors import HTTPError, error_type_for_status
from smartflow.http.events import (
    BadRequest,
    Body,
    ConnectionClosed,
    EndBody,
    Event,
    GoAway,
    RequestReceived,
    StreamReset,
    WindowOpened,
)
from smartflow.http.request import Request, RequestBody
from smartflow.http.response import Response, StreamingResponse, error_body, error_response

if TYPE_CHECKING:
    from smartflow.config import ServerSettings

logger = logging.getLogger("smartflow.http")

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]

_BODY_HIGH_WATER_BYTES = 64 * 1024
_BODY_LOW_WATER_BYTES = 16 * 1024
_PREFACE = h2_protocol.PREFACE
_PREFACE_LENGTH = len(_PREFACE)
_STATUS_CLIENT_GONE = 499
_LINGER_S = 2.0
# How long a draining server waits for the first request of a connection it
# accepted but has read nothing from yet (see _Connection.begin_drain).
_FIRST_REQUEST_GRACE_S = 2.0
_NO_BODY_STATUSES = frozenset({204, 304})


class RequestObserver(Protocol):
    def on_request_start(self, request: Request) -> None: ...

    def on_request_end(
        self, request: Request, status: int, duration_s: float, bytes_sent: int, route: str
    ) -> None: ...


# (status, message, request path or None) -> the error body a protocol-level
# refusal is answered with; the default is the OpenAI shape.
ErrorBodyRenderer = Callable[[int, str, str | None], bytes]


class _StreamGone(Exception):
    """The stream or connection went away while a response was being written."""


def _split_target(target: bytes) -> tuple[str, bytes]:
    question = target.find(b"?")
    if question >= 0:
        raw_path, query = target[:question], target[question + 1 :]
    else:
        raw_path, query = target, b""
    path = raw_path.decode("latin-1")
    if path[:1] != "/" and "://" in path:  # absolute-form target
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if "%" in path:
        path = unquote(path)
    return path, query


def _with_trailer_header(
    headers: list[tuple[str, str]], trailer_names: tuple[str, ...]
) -> list[tuple[str, str]]:
    """A copy of `headers` announcing `trailer_names` (the response's own list is
    left alone)."""
    return [*headers, ("trailer", ", ".join(trailer_names))]


def _encode_h1_last_chunk(fields: list[tuple[str, str]]) -> bytes:
    """The last chunk with `fields` as trailers; invalid fields are logged and
    dropped (the body is already on the wire and must still end properly)."""
    if not fields:
        return h1_protocol.LAST_CHUNK
    try:
        return h1_protocol.encode_last_chunk(fields)
    except (ValueError, TypeError):  # HeaderError, UnicodeEncodeError, bad shapes
        logger.exception("invalid trailer fields from a streaming response; not sent")
        return h1_protocol.LAST_CHUNK


class _Exchange:
    """Per-request state: one request, its body buffer, its handler task."""

    __slots__ = (
        "body",
        "bytes_sent",
        "expects_continue",
        "is_head",
        "keep_alive",
        "request",
        "response_started",
        "started_at",
        "status",
        "stream_id",
        "task",
        "window_waiter",
    )

    def __init__(
        self, stream_id: int, request: Request, body: RequestBody, keep_alive: bool
    ) -> None:
        self.stream_id = stream_id
        self.request = request
        self.body = body
        self.task: asyncio.Task[None] | None = None
        self.keep_alive = keep_alive
        self.expects_continue = False
        self.is_head = request.method == "HEAD"
        self.response_started = False
        self.status = 0
        self.bytes_sent = 0
        self.started_at = 0.0
        self.window_waiter: asyncio.Future[None] | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self._loop = server._loop
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._h1: h1_protocol.H1Connection | None = None
        self._h2: h2_protocol.H2Connection | None = None
        self._preface_bytes = b""
        self._current: _Exchange | None = None  # HTTP/1.1: the one request in progress
        self._streams: dict[int, _Exchange] = {}  # HTTP/2: open streams
        self._is_closed = False
        self._is_reading_paused = False
        self._is_writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._is_draining = False
        self._goaway_stream_id = -1  # HTTP/2: set when GOAWAY is sent; higher streams are refused
        self.deadline = 0.0  # 0: no deadline
        self._deadline_is_header = False
        self._is_lingering = False
        self._is_h1_waiting_for_writable = False
        self._has_had_request = False

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        server = self._server
        server._connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = (str(peer[0]), int(peer[1]))
        self._set_deadline(server._settings.header_timeout, is_header=True)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            if ssl_object.selected_alpn_protocol() == "h2":
                self._start_h2(b"")
            else:
                self._start_h1()
        if server._is_draining:
            self.begin_drain()

    def data_received(self, data: bytes) -> None:
        try:
            self._data_received(data)
        except Exception:
            # A bug of ours must cost one connection, never reach the loop.
            logger.exception("internal error while handling received data; closing the connection")
            self.abort()

    def _data_received(self, data: bytes) -> None:
        h1 = self._h1
        if h1 is not None:
            if self._is_lingering:
                return  # discarding the rest of a request we already answered
            if self._deadline_is_header is False and self.deadline and h1.is_waiting_for_head:
                # First bytes of the next request on an idle keep-alive connection.
                self._set_deadline(self._server._settings.header_timeout, is_header=True)
            self._handle_h1_events(h1.receive_data(data))
            return
        if self._h2 is not None:
            self._receive_h2(data)
            return
        # Undecided: peek at the first bytes for the HTTP/2 preface.
        seen = self._preface_bytes + data if self._preface_bytes else data
        if len(seen) < _PREFACE_LENGTH and _PREFACE.startswith(seen):
            self._preface_bytes = seen
            return
        self._preface_bytes = b""
        if seen[:_PREFACE_LENGTH] == _PREFACE:
            self._start_h2(seen)
        else:
            self._start_h1()
            self._data_received(seen)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost cleans up

    def connection_lost(self, exc: Exception | None) -> None:
        self._is_closed = True
        self._server._connections.discard(self)
        self._server._on_connection_closed()
        self._wake_writers()
        current = self._current
        if current is not None:
            self._abandon(current)
        for exchange in list(self._streams.values()):
            self._abandon(exchange)

    def pause_writing(self) -> None:
        self._is_writing_paused = True

    def resume_writing(self) -> None:
        self._is_writing_paused = False
        self._wake_writers()
        if self._is_h1_waiting_for_writable:
            self._is_h1_waiting_for_writable = False
            try:
                self._start_next_h1_request()
            except Exception:
                logger.exception("internal error resuming a connection; closing it")
                self.abort()

    # -- shared --------------------------------------------------------------

    def _set_deadline(self, timeout_s: float, *, is_header: bool) -> None:
        self.deadline = self._server._now + timeout_s
        self._deadline_is_header = is_header

    def _clear_deadline(self) -> None:
        self.deadline = 0.0
        self._deadline_is_header = False

    def on_deadline(self) -> None:
        """Called by the server tick once `deadline` has passed."""
        self.deadline = 0.0
        if self._is_closed or self._transport is None:
            return
        if self._is_lingering:
            self._close()
            return
        if self._h1 is not None and self._deadline_is_header and self._h1.has_partial_head:
            self._answer_bad_request(self._h1.timeout_event())
            return
        if self._h2 is not None:
            self._send_goaway()
            if self._streams:
                return
        self._close()

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not self._is_closed and not self._is_lingering:
            transport.write(data)

    def _close(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _linger_close(self) -> None:
        """Close after answering while the client may still be sending: closing
        with unread input makes the kernel send RST, which can destroy the answer
        before the client reads it.  Half-close, discard input for a moment, close."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._is_lingering = True
        self._resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._set_deadline(_LINGER_S, is_header=False)

    def abort(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.abort()

    def _wake_writers(self) -> None:
        waiters = self._drain_waiters
        if waiters:
            self._drain_waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        for exchange in self._streams.values():
            self._wake_window(exchange)

    async def _wait_writable(self) -> None:
        while self._is_writing_paused:
            if self._is_closed:
                raise _StreamGone()
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self._is_closed:
            raise _StreamGone()

    def _take_trailers(
        self, trailers: Callable[[], list[tuple[str, str]]]
    ) -> list[tuple[str, str]]:
        """Call a streaming response's `trailers` once its body ended normally.
        A failing callback is logged and yields no fields."""
        if self._is_closed:
            raise _StreamGone()  # ended abnormally after all: no trailers
        try:
            fields = trailers()
        except Exception:
            logger.exception("trailers callback of a streaming response failed")
            return []
        return fields or []

    def _abandon(self, exchange: _Exchange) -> None:
        """The client is gone (or reset the stream): cancel the handler."""
        exchange.body.fail(_StreamGone())
        self._wake_window(exchange)
        task = exchange.task
        if task is not None and not task.done():
            task.cancel()

    def _new_exchange(self, event: RequestReceived, body: RequestBody) -> _Exchange:
        path, query = _split_target(event.target)
        request = Request(
            event.method.decode("latin-1"),
            path,
            query,
            event.headers,
            self._client,
            event.http_version,
            body,
            event.stream_id,
        )
        return _Exchange(event.stream_id, request, body, event.keep_alive)

    def _dispatch(self, exchange: _Exchange) -> None:
        exchange.task = self._loop.create_task(self._run(exchange))

    async def _run(self, exchange: _Exchange) -> None:
        server = self._server
        # Counted here, not at dispatch: a task cancelled before its first step
        # never runs its `finally`.
        server.in_flight_count += 1
        observer = server._observer
        request = exchange.request
        if observer is not None:
            # perf_counter, not loop.time(): uvloop's clock ticks in whole
            # milliseconds, too coarse for sub-millisecond latency buckets.
            exchange.started_at = time.perf_counter()
            try:
                observer.on_request_start(request)
            except Exception:
                logger.exception("request observer failed in on_request_start")
        try:
            try:
                response = await server._app(request)
            except HTTPError as exc:
                response = error_response(
                    exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers
                )
            except (asyncio.CancelledError, _StreamGone):
                raise
            except Exception:
                logger.exception(
                    "unhandled error in handler for %s %s", request.method, request.path
                )
                response = error_response(500, "Internal server error", "server_error")
            if not isinstance(response, (Response, StreamingResponse)):
                logger.error(
                    "handler for %s %s returned %r, not a Response",
                    request.method,
                    request.path,
                    type(response),
                )
                response = error_response(500, "Internal server error", "server_error")
            try:
                await self._send_response(exchange, response)
            except (h1_protocol.HeaderError, UnicodeEncodeError):
                if exchange.response_started:
                    raise
                logger.exception(
                    "bad response headers from handler for %s %s", request.method, request.path
                )
                await self._send_response(
                    exchange, error_response(500, "Internal server error", "server_error")
                )
        except (asyncio.CancelledError, _StreamGone):
            if exchange.status == 0:
                exchange.status = _STATUS_CLIENT_GONE
        except Exception:
            logger.exception(
                "error while writing the response to %s %s", request.method, request.path
            )
            if exchange.status == 0:
                exchange.status = 500
            self._fail_stream(exchange)
        finally:
            server.in_flight_count -= 1
            if observer is not None:
                try:
                    observer.on_request_end(
                        request,
                        exchange.status,
                        time.perf_counter() - exchange.started_at,
                        exchange.bytes_sent,
                        request.route,
                    )
                except Exception:
                    logger.exception("request observer failed in on_request_end")
            self._finish_exchange(exchange)
            server._on_request_done()

    def _send_response(
        self, exchange: _Exchange, response: Response | StreamingResponse
    ) -> Awaitable[None]:
        if self._h2 is not None:
            return self._send_h2_response(exchange, response)
        return self._send_h1_response(exchange, response)

    def _fail_stream(self, exchange: _Exchange) -> None:
        """A response could not be completed: the peer must not take it as whole."""
        if self._h2 is not None:
            if not self._is_closed:
                self._h2.reset_stream(exchange.stream_id, h2_protocol.INTERNAL_ERROR)
                self._flush_h2()
        elif exchange.response_started:
            self.abort()
        else:
            exchange.keep_alive = False

    def _finish_exchange(self, exchange: _Exchange) -> None:
        if self._h2 is not None:
            self._finish_h2_stream(exchange)
        else:
            self._finish_h1_request(exchange)

    # -- BodyConsumer ----------------------------------------------------------

    def on_body_read_started(self, stream_id: int) -> None:
        exchange = self._current
        if exchange is not None and exchange.expects_continue and not exchange.response_started:
            exchange.expects_continue = False
            self._write(h1_protocol.CONTINUE_100)

    def on_body_consumed(self, stream_id: int, nbytes: int, flow_controlled_length: int) -> None:
        h2 = self._h2
        if h2 is not None:
            if flow_controlled_length and not self._is_closed:
                h2.acknowledge(stream_id, flow_controlled_length)
                self._flush_h2()
            return
        exchange = self._current
        if (
            self._is_reading_paused
            and exchange is not None
            and exchange.body.unread_bytes <= _BODY_LOW_WATER_BYTES
        ):
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._is_reading_paused and self._transport is not None:
            self._is_reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._is_reading_paused and self._transport is not None and not self._is_closed:
            self._is_reading_paused = False
            self._transport.resume_reading()

    # -- HTTP/1.1 --------------------------------------------------------------

    def _start_h1(self) -> None:
        settings = self._server._settings
        self._h1 = h1_protocol.H1Connection(
            max_header_bytes=settings.max_header_bytes, max_body_bytes=settings.max_body_bytes
        )

    def _handle_h1_events(self, events: list[Event]) -> None:
        exchange: _Exchange | None
        for event in events:
            event_type = type(event)
            if event_type is RequestReceived:
                assert isinstance(event, RequestReceived)
                self._clear_deadline()
                self._has_had_request = True
                body = RequestBody(1, self if event.has_body else None)
                new_exchange = self._new_exchange(event, body)
                new_exchange.expects_continue = event.expects_continue
                if self._is_draining:
                    new_exchange.keep_alive = False
                self._current = new_exchange
                self._dispatch(new_exchange)
            elif event_type is Body:
                exchange = self._current
                if exchange is not None:
                    exchange.body.feed(event.data)  # type: ignore[union-attr]
                    if exchange.body.unread_bytes > _BODY_HIGH_WATER_BYTES:
                        self._pause_reading()
            elif event_type is EndBody:
                exchange = self._current
                if exchange is not None:
                    exchange.body.end()
            elif event_type is BadRequest:
                assert isinstance(event, BadRequest)
                exchange = self._current
                if exchange is None:
                    self._answer_bad_request(event)
                else:
                    # Mid-body fault (413 as a chunked body grows, bad chunk framing):
                    # the handler's next read raises; the connection closes after.
                    exchange.keep_alive = False
                    exchange.body.fail(HTTPError(event.status, event.message))
            elif event_type is ConnectionClosed:
                self._close()
        h1 = self._h1
        if (
            h1 is not None
            and self._current is not None
            and h1.buffered_bytes > _BODY_HIGH_WATER_BYTES
        ):
            self._pause_reading()  # pipelined requests pile up while one is answered

    def _answer_bad_request(self, event: BadRequest) -> None:
        body = self._server._bad_request_body(event)
        self._write(h1_protocol.encode_error_response(event.status, body,
                                                      self._server._date_line))
        self._linger_close()

    async def _send_h1_response(
        self, exchange: _Exchange, response: Response | StreamingResponse
    ) -> None:
        date_line = self._server._date_line
        if type(response) is Response or isinstance(response, Response):
            body = response.body
            status = exchange.status = response.status
            content_length: int | None = len(body)
            if status in _NO_BODY_STATUSES:
                body, content_length = b"", None
            keep_alive = exchange.keep_alive and not self._is_draining
            if exchange.expects_continue or not exchange.body.is_complete:
                keep_alive = False  # the rest of the body is still on the wire
            exchange.keep_alive = keep_alive
            head = h1_protocol.encode_response_head(
                status,
                response.headers,
                response.content_type,
                content_length,
                keep_alive=keep_alive,
                chunked=False,
                date_line=date_line,
            )
            exchange.response_started = True
            if exchange.is_head or not body:
                self._write(head)
                exchange.bytes_sent = len(head)
            else:
                data = head + body
                self._write(data)
                exchange.bytes_sent = len(data)
            return
        chunks = response.chunks
        trailers = response.trailers
        try:
            is_chunked = exchange.request.http_version == "1.1"
            keep_alive = exchange.keep_alive and is_chunked and not self._is_draining
            exchange.keep_alive = keep_alive
            exchange.status = response.status
            headers = response.headers
            if response.trailer_names and is_chunked and not exchange.is_head:
                headers = _with_trailer_header(headers, response.trailer_names)
            head = h1_protocol.encode_response_head(
                response.status,
                headers,
                response.content_type,
                None,
                keep_alive=keep_alive,
                chunked=is_chunked,
                date_line=date_line,
            )
            exchange.response_started = True
            self._write(head)
            sent = len(head)
            if not exchange.is_head:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    if self._is_closed:
                        raise _StreamGone()
                    data = h1_protocol.encode_chunk(chunk) if is_chunked else chunk
                    self._write(data)
                    sent += len(data)
                    exchange.bytes_sent = sent
                    if self._is_writing_paused:
                        await self._wait_writable()
                if is_chunked:
                    last_chunk = h1_protocol.LAST_CHUNK
                    if trailers is not None:
                        last_chunk = _encode_h1_last_chunk(self._take_trailers(trailers))
                    self._write(last_chunk)
                    sent += len(last_chunk)
                elif trailers is not None:
                    self._take_trailers(trailers)  # close-delimited: nowhere to put them
            elif trailers is not None:
                self._take_trailers(trailers)
            exchange.bytes_sent = sent
            if self._is_closed:
                raise _StreamGone()
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    logger.exception("error closing a streaming response")

    def _finish_h1_request(self, exchange: _Exchange) -> None:
        if self._current is exchange:
            self._current = None
        if self._is_closed:
            return
        h1 = self._h1
        assert h1 is not None
        if not exchange.body.is_complete:
            self._linger_close()
            return
        if not exchange.keep_alive or self._is_draining:
            self._close()
            return
        if self._is_writing_paused:
            # The client is not reading its answers: take no further pipelined
            # request (and read nothing) until it does.
            self._is_h1_waiting_for_writable = True
            self._pause_reading()
            return
        self._start_next_h1_request()

    def _start_next_h1_request(self) -> None:
        h1 = self._h1
        assert h1 is not None
        self._resume_reading()
        self._set_deadline(self._server._settings.keepalive_timeout, is_header=False)
        events = h1.start_next_request()
        if h1.has_partial_head:
            self._set_deadline(self._server._settings.header_timeout, is_header=True)
        if events:
            self._handle_h1_events(events)

    # -- HTTP/2 ----------------------------------------------------------------

    def _start_h2(self, first_bytes: bytes) -> None:
        settings = self._server._settings
        h2 = h2_protocol.H2Connection(
            max_concurrent_streams=settings.h2_max_concurrent_streams,
            max_header_bytes=settings.max_header_bytes,
            max_body_bytes=settings.max_body_bytes,
        )
        self._h2 = h2
        h2.initiate()
        self._set_deadline(settings.keepalive_timeout, is_header=False)
        if first_bytes:
            self._receive_h2(first_bytes)
        else:
            self._flush_h2()
        if self._is_draining:
            self.begin_drain()

    def _flush_h2(self) -> None:
        h2 = self._h2
        if h2 is not None:
            data = h2.data_to_send()
            if data:
                self._write(data)

    def _receive_h2(self, data: bytes) -> None:
        h2 = self._h2
        assert h2 is not None
        streams = self._streams
        for event in h2.receive_data(data):
            event_type = type(event)
            if event_type is Body:
                exchange = streams.get(event.stream_id)
                if exchange is not None:
                    exchange.body.feed(event.data, event.flow_controlled_length)  # type: ignore[union-attr]
                else:
                    h2.acknowledge(event.stream_id, event.flow_controlled_length)  # type: ignore[union-attr]
            elif event_type is RequestReceived:
                assert isinstance(event, RequestReceived)
                if 0 <= self._goaway_stream_id < event.stream_id:
                    h2.reset_stream(event.stream_id, h2_protocol.REFUSED_STREAM)
                    continue
                self._clear_deadline()
                body = RequestBody(event.stream_id, self if event.has_body else None)
                exchange = self._new_exchange(event, body)
                streams[event.stream_id] = exchange
                self._dispatch(exchange)
            elif event_type is EndBody:
                exchange = streams.get(event.stream_id)
                if exchange is not None:
                    exchange.body.end()
            elif event_type is WindowOpened:
                if event.stream_id == 0:
                    for exchange in streams.values():
                        self._wake_window(exchange)
                else:
                    exchange = streams.get(event.stream_id)
                    if exchange is not None:
                        self._wake_window(exchange)
            elif event_type is StreamReset:
                exchange = streams.get(event.stream_id)
                if exchange is not None:
                    self._abandon(exchange)
            elif event_type is BadRequest:
                assert isinstance(event, BadRequest)
                exchange = streams.get(event.stream_id)
                if exchange is not None:
                    exchange.body.fail(HTTPError(event.status, event.message))
                else:
                    self._answer_h2_bad_request(event)
            elif event_type is GoAway or event_type is ConnectionClosed:
                self._flush_h2()
                self._close()
                return
        self._flush_h2()

    def _answer_h2_bad_request(self, event: BadRequest) -> None:
        h2 = self._h2
        assert h2 is not None
        body = self._server._bad_request_body(event)
        try:
            h2.send_headers(
                event.stream_id,
                event.status,
                [],
                "application/json",
                len(body),
                date_value=self._server._date_value,
                end_stream=False,
            )
            h2.send_data(event.stream_id, body, end_stream=True)
        except Exception:  # noqa: BLE001, S110 - window too small or stream gone: reset instead
            pass
        h2.reset_stream(event.stream_id, h2_protocol.NO_ERROR)

    def _wake_window(self, exchange: _Exchange) -> None:
        waiter = exchange.window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _send_h2_response(
        self, exchange: _Exchange, response: Response | StreamingResponse
    ) -> None:
        h2 = self._h2
        assert h2 is not None
        stream_id = exchange.stream_id
        date_value = self._server._date_value
        if isinstance(response, Response):
            body = response.body
            status = exchange.status = response.status
            content_length: int | None = len(body)
            if status in _NO_BODY_STATUSES:
                body, content_length = b"", None
            no_body = exchange.is_head or not body
            self._h2_call(
                h2.send_headers,
                stream_id,
                status,
                response.headers,
                response.content_type,
                content_length,
                date_value=date_value,
                end_stream=no_body,
            )
            exchange.response_started = True
            self._flush_h2()
            if not no_body:
                await self._send_h2_data(exchange, body, end_stream=True)
            return
        chunks = response.chunks
        trailers = response.trailers
        try:
            exchange.status = response.status
            headers = response.headers
            if response.trailer_names and not exchange.is_head:
                headers = _with_trailer_header(headers, response.trailer_names)
            self._h2_call(
                h2.send_headers,
                stream_id,
                response.status,
                headers,
                response.content_type,
                None,
                date_value=date_value,
                end_stream=exchange.is_head,
            )
            exchange.response_started = True
            self._flush_h2()
            if exchange.is_head:
                if trailers is not None:
                    self._take_trailers(trailers)
                return
            async for chunk in chunks:
                if chunk:
                    await self._send_h2_data(exchange, chunk, end_stream=False)
            if trailers is None:
                self._h2_call(h2.end_stream, stream_id)
            else:
                if not h2.is_stream_open(stream_id):
                    raise _StreamGone()
                self._end_h2_stream_with_trailers(stream_id, self._take_trailers(trailers))
            self._flush_h2()
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    logger.exception("error closing a streaming response")

    def _end_h2_stream_with_trailers(
        self, stream_id: int, fields: list[tuple[str, str]]
    ) -> None:
        h2 = self._h2
        assert h2 is not None
        if fields:
            try:
                self._h2_call(h2.send_trailers, stream_id, fields)
                return
            except (ValueError, TypeError):  # HeaderError, UnicodeEncodeError, bad shapes
                logger.exception("invalid trailer fields from a streaming response; not sent")
        self._h2_call(h2.end_stream, stream_id)

    def _h2_call(self, method: Callable[..., None], *args: object, **kwargs: object) -> None:
        if self._is_closed:
            raise _StreamGone()
        try:
            method(*args, **kwargs)
        except h2_protocol.h2.exceptions.ProtocolError as exc:  # stream reset or connection closed
            raise _StreamGone() from exc

    async def _send_h2_data(self, exchange: _Exchange, data: bytes, *, end_stream: bool) -> None:
        h2 = self._h2
        assert h2 is not None
        stream_id = exchange.stream_id
        while True:
            if self._is_closed:
                raise _StreamGone()
            try:
                window = h2.send_window(stream_id)
            except h2_protocol.h2.exceptions.ProtocolError as exc:
                raise _StreamGone() from exc
            if window <= 0:
                waiter = self._loop.create_future()
                exchange.window_waiter = waiter
                try:
                    await waiter
                finally:
                    exchange.window_waiter = None
                continue
            if len(data) <= window:
                self._h2_call(h2.send_data, stream_id, data, end_stream=end_stream)
                exchange.bytes_sent += len(data)
                self._flush_h2()
                if self._is_writing_paused:
                    await self._wait_writable()
                return
            self._h2_call(h2.send_data, stream_id, data[:window], end_stream=False)
            exchange.bytes_sent += window
            data = data[window:]
            self._flush_h2()
            if self._is_writing_paused:
                await self._wait_writable()

    def _finish_h2_stream(self, exchange: _Exchange) -> None:
        stream_id = exchange.stream_id
        self._streams.pop(stream_id, None)
        h2 = self._h2
        if self._is_closed or h2 is None:
            return
        unacknowledged = exchange.body.take_unacknowledged()
        if unacknowledged:
            h2.acknowledge(stream_id, unacknowledged)
        if h2.is_stream_open(stream_id):
            # Response done but the request body is still coming (or the handler
            # failed mid-response): end the stream for both sides.
            h2.reset_stream(
                stream_id, h2_protocol.NO_ERROR if exchange.status else h2_protocol.CANCEL
            )
        self._flush_h2()
        if not self._streams:
            if self._is_draining:
                self._send_goaway()
                self._close()
            else:
                self._set_deadline(self._server._settings.keepalive_timeout, is_header=False)

    # -- shutdown --------------------------------------------------------------

    def begin_drain(self) -> None:
        """Stop taking new requests; close once the ones in progress are answered
        (and a connection with nothing read yet once its first one is).

        HTTP/2: an idle connection gets GOAWAY and is closed now; a busy one gets
        GOAWAY once its streams are done or after the server's GOAWAY grace,
        whichever comes first.  (Some clients, httpcore among them, fail every
        open stream on GOAWAY even when the stream is at or below last_stream_id;
        the grace lets their in-flight requests finish first.)"""
        self._is_draining = True
        if self._is_closed:
            return
        h2 = self._h2
        if h2 is not None:
            if not self._streams:
                self._send_goaway()
                self._close()
            else:
                self._set_deadline(self._server._goaway_grace_s, is_header=False)
            return
        exchange = self._current
        if exchange is not None:
            exchange.keep_alive = False
            return
        if self._h1 is not None and self._h1.has_partial_head:
            return  # its header deadline bounds it; it is answered with Connection: close
        if not self._has_had_request:
            # Accepted (perhaps from the backlog as this worker retires) but
            # nothing read yet: its client has sent, or is about to send, a
            # request and would see the connection dropped unanswered.  Serve
            # that one request, with Connection: close, if it comes soon.
            deadline = self._loop.time() + _FIRST_REQUEST_GRACE_S  # not the tick's stale _now
            if not self.deadline or deadline < self.deadline:
                self.deadline = deadline
                self._deadline_is_header = True
            return
        self._close()

    def _send_goaway(self) -> None:
        h2 = self._h2
        if h2 is None or self._goaway_stream_id >= 0 or self._is_closed:
            return
        self._flush_h2()
        self._goaway_stream_id = h2.highest_stream_id
        self._write(h2.goaway_frame())


class HTTPServer:
    """HTTP/1.1 + HTTP/2 server on a listening socket the caller bound."""

    def __init__(
        self,
        app: Handler,
        settings: ServerSettings,
        *,
        ssl_context: ssl.SSLContext | None = None,
        observer: RequestObserver | None = None,
        error_body_for: ErrorBodyRenderer | None = None,
    ) -> None:
        self._app = app
        self._error_body_for = error_body_for
        self._settings = settings
        self._ssl_context = ssl_context
        self._observer = observer
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._listener: socket.socket | None = None
        self._aio_server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._tick_handle: asyncio.TimerHandle | None = None
        self._now = 0.0
        self._date_value = b""
        self._date_line = b""
        self._date_second = -1
        self._is_draining = False
        self._goaway_grace_s = 0.0
        self._quiet: asyncio.Event | None = None
        self.in_flight_count = 0
        ticks = [1.0, settings.header_timeout / 4, settings.keepalive_timeout / 4]
        self._tick_s = max(
            0.02, min(t for t in ticks if t > 0) if any(t > 0 for t in ticks) else 1.0
        )

    def _bad_request_body(self, event: BadRequest) -> bytes:
        renderer = self._error_body_for
        if renderer is not None:
            path = _split_target(event.target)[0] if event.target is not None else None
            return renderer(event.status, event.message, path)
        return error_body(event.message, error_type_for_status(event.status))

    @property
    def in_flight(self) -> int:
        """Requests (and streams) whose handler has not finished."""
        return self.in_flight_count

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self, sock: socket.socket) -> None:
        """Serve on `sock` (bound; listen() is called if it is not listening yet)."""
        self._loop = asyncio.get_running_loop()
        sock.setblocking(False)
        try:
            sock.listen(1024)
        except OSError:
            pass
        # The loop's own accept path is much faster than adopting sockets one by
        # one, so it gets a duplicate of the listener; the original stays with us
        # so that a retiring worker can accept what is still queued (see
        # accept_backlog_and_close_listener) after the loop's server is closed.
        self._listener = sock
        self._tick()
        self._aio_server = await self._loop.create_server(
            lambda: _Connection(self),
            sock=sock.dup(),
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._settings.header_timeout
            if self._ssl_context is not None
            else None,
            backlog=1024,
        )

    def _adopt(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        task = self._loop.create_task(self._connect(conn))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            if self._ssl_context is not None:
                await self._loop.connect_accepted_socket(
                    lambda: _Connection(self),
                    conn,
                    ssl=self._ssl_context,
                    ssl_handshake_timeout=self._settings.header_timeout,
                )
            else:
                await self._loop.connect_accepted_socket(lambda: _Connection(self), conn)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError):
            conn.close()  # failed handshake / client gone before we started
        except Exception:
            logger.exception("could not set up a client connection")
            conn.close()

    async def accept_backlog_and_close_listener(self) -> None:
        """Accept every connection already queued on the listener, then close it
        (a retiring SO_REUSEPORT worker must not reset connections the kernel
        already queued for it)."""
        listener = self._listener
        if listener is None:
            return
        self._listener = None
        if self._aio_server is not None:
            self._aio_server.close()  # stops the loop's accepting; our listener fd stays open
            self._aio_server = None
            await asyncio.sleep(0)
        while True:
            try:
                conn, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            self._adopt(conn)
        listener.close()
        if self._handshakes:
            await asyncio.gather(*list(self._handshakes), return_exceptions=True)

    async def drain(self, timeout_s: float) -> None:
        """Finish in-flight requests and streams (GOAWAY to HTTP/2 peers, close
        idle keep-alives), force-closing whatever is left at the deadline."""
        loop = self._loop
        deadline = loop.time() + timeout_s
        if self._listener is not None:
            await self.accept_backlog_and_close_listener()
        self._is_draining = True
        self._goaway_grace_s = timeout_s / 2
        for connection in list(self._connections):
            connection.begin_drain()
        self._quiet = asyncio.Event()
        if self._is_quiet():
            self._quiet.set()
        try:
            await asyncio.wait_for(self._quiet.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            pass
        for connection in list(self._connections):
            connection.abort()
        # Let cancelled handlers run their cleanup.
        for _ in range(3):
            await asyncio.sleep(0)
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def _is_quiet(self) -> bool:
        return self.in_flight_count == 0 and not self._connections

    def _on_request_done(self) -> None:
        if self._quiet is not None and self._is_quiet():
            self._quiet.set()

    def _on_connection_closed(self) -> None:
        if self._quiet is not None and self._is_quiet():
            self._quiet.set()

    def _tick(self) -> None:
        loop = self._loop
        now = loop.time()
        self._now = now
        wall = time.time()
        second = int(wall)
        if second != self._date_second:
            self._date_second = second
            self._date_value = email.utils.formatdate(wall, usegmt=True).encode("ascii")
            self._date_line = b"date: " + self._date_value + b"\r\n"
        for connection in list(self._connections):
            if connection.deadline and connection.deadline <= now:
                connection.on_deadline()
        self._tick_handle = loop.call_later(self._tick_s, self._tick)
