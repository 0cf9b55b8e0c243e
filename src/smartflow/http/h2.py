"""Sans-IO HTTP/2 server protocol on the `h2` library: bytes in -> events out.

Wraps `h2.connection.H2Connection` and translates its events into the shared
vocabulary of `events.py`.  Faults stay values: a connection-level fault
becomes `GoAway` (h2 has already queued the GOAWAY frame in `data_to_send()`
when it raises); a stream-level fault becomes `StreamReset`.  Flow control is
left to the caller: `Body.flow_controlled_length` is acknowledged (and the
peer's window reopened) only when the handler reads the body.

Outbound header validation in h2 is costly, so it is off; headers are checked
here with the same rules as HTTP/1.1 (names are tokens, lower-cased; values
free of CR/LF/NUL), and connection-specific headers are dropped.

A graceful shutdown GOAWAY is written as a raw frame (`goaway_frame()`) rather
than with `close_connection()`, because h2 refuses to send anything once it has
sent GOAWAY, and in-flight streams must still finish.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

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
from smartflow.http.h1 import check_header

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NO_ERROR = int(h2.errors.ErrorCodes.NO_ERROR)
PROTOCOL_ERROR = int(h2.errors.ErrorCodes.PROTOCOL_ERROR)
INTERNAL_ERROR = int(h2.errors.ErrorCodes.INTERNAL_ERROR)
REFUSED_STREAM = int(h2.errors.ErrorCodes.REFUSED_STREAM)
CANCEL = int(h2.errors.ErrorCodes.CANCEL)

_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
_STATUS_BYTES = {status: str(status).encode() for status in range(100, 600)}


class H2Connection:
    """One HTTP/2 server connection, without I/O."""

    __slots__ = ("_body_bytes", "_conn", "highest_stream_id", "max_body_bytes")

    def __init__(
        self, *, max_concurrent_streams: int, max_header_bytes: int, max_body_bytes: int
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=True,
        )
        self._conn = h2.connection.H2Connection(config=config)
        self._conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_bytes,
            },
        )
        self.max_body_bytes = max_body_bytes
        self._body_bytes: dict[int, int] = {}
        self.highest_stream_id = 0

    def initiate(self) -> None:
        """Queue our SETTINGS (the server preface)."""
        self._conn.initiate_connection()

    def data_to_send(self) -> bytes:
        return self._conn.data_to_send()

    def receive_data(self, data: bytes) -> list[Event]:
        try:
            h2_events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            return [
                GoAway(
                    0,
                    int(getattr(exc, "error_code", PROTOCOL_ERROR)),
                    str(exc) or type(exc).__name__,
                )
            ]
        except Exception as exc:  # noqa: BLE001 - any parser fault is the peer's connection fault
            self._terminate(PROTOCOL_ERROR)
            return [GoAway(0, PROTOCOL_ERROR, f"{type(exc).__name__}: {exc}")]
        events: list[Event] = []
        for event in h2_events:
            if isinstance(event, h2.events.DataReceived):
                stream_id = event.stream_id
                data_bytes = event.data
                seen = self._body_bytes.get(stream_id, 0) + len(data_bytes)
                self._body_bytes[stream_id] = seen
                if seen > self.max_body_bytes:
                    events.append(BadRequest(stream_id, 413, "Request body too large"))
                    # Give the credit back now: nobody will read these bytes.
                    self._conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                else:
                    events.append(Body(stream_id, data_bytes, event.flow_controlled_length))
            elif isinstance(event, h2.events.RequestReceived):
                events.append(self._request_event(event))
            elif isinstance(event, h2.events.StreamEnded):
                self._body_bytes.pop(event.stream_id, None)
                events.append(EndBody(event.stream_id))
            elif isinstance(event, h2.events.WindowUpdated):
                events.append(WindowOpened(event.stream_id))
            elif isinstance(event, h2.events.StreamReset):
                self._body_bytes.pop(event.stream_id, None)
                events.append(
                    StreamReset(event.stream_id, int(event.error_code), not event.remote_reset)
                )
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    events.append(WindowOpened(0))
            elif isinstance(event, h2.events.ConnectionTerminated):
                events.append(ConnectionClosed(0))
            # Ping, settings acks, priority, trailers: h2 answers what needs answering.
        return events

    def _request_event(self, event: h2.events.RequestReceived) -> Event:
        stream_id = event.stream_id
        self.highest_stream_id = max(self.highest_stream_id, stream_id)
        method = b"GET"
        path = b"/"
        authority = b""
        headers: list[tuple[bytes, bytes]] = []
        content_length = 0
        has_host = False
        for name, value in event.headers:  # bytes (header_encoding=None)
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = 0
            elif name == b"host":
                has_host = True
            headers.append((name, value))
        if authority and not has_host:
            headers.append((b"host", authority))
        if content_length > self.max_body_bytes:
            return BadRequest(stream_id, 413, "Request body too large", path)
        has_body = event.stream_ended is None
        if has_body:
            self._body_bytes[stream_id] = 0
        return RequestReceived(stream_id, method, path, headers, "2", False, has_body, True)

    def _terminate(self, error_code: int) -> None:
        try:
            self._conn.close_connection(error_code)
        except Exception:  # noqa: BLE001, S110 - already closed: nothing more to say
            pass

    # -- sending -------------------------------------------------------------

    def send_headers(
        self,
        stream_id: int,
        status: int,
        headers: list[tuple[str, str]],
        content_type: str | None,
        content_length: int | None,
        *,
        date_value: bytes,
        end_stream: bool,
    ) -> None:
        out: list[tuple[bytes, bytes]] = [
            (b":status", _STATUS_BYTES.get(status) or str(status).encode())
        ]
        for name, value in headers:
            check_header(name, value)
            lower = name.lower()
            if lower in _CONNECTION_SPECIFIC:
                continue
            out.append((lower.encode("latin-1"), value.encode("latin-1")))
        if content_type is not None:
            check_header("content-type", content_type)
            out.append((b"content-type", content_type.encode("latin-1")))
        if content_length is not None:
            out.append((b"content-length", str(content_length).encode()))
        out.append((b"date", date_value))
        self._conn.send_headers(stream_id, out, end_stream=end_stream)

    def send_trailers(self, stream_id: int, trailers: list[tuple[str, str]]) -> None:
        """Trailer fields as a HEADERS frame with END_STREAM (ends the stream).
        Checked like headers (HeaderError, before anything is queued)."""
        out: list[tuple[bytes, bytes]] = []
        for name, value in trailers:
            check_header(name, value)
            lower = name.lower()
            if lower in _CONNECTION_SPECIFIC:
                continue
            out.append((lower.encode("latin-1"), value.encode("latin-1")))
        if out:
            self._conn.send_headers(stream_id, out, end_stream=True)
        else:
            self._conn.end_stream(stream_id)

    def send_window(self, stream_id: int) -> int:
        """How many bytes of DATA may be sent on the stream right now."""
        conn = self._conn
        return min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        self._conn.send_data(stream_id, data, end_stream=end_stream)

    def end_stream(self, stream_id: int) -> None:
        self._conn.end_stream(stream_id)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """RST_STREAM unless the stream is already closed."""
        self._body_bytes.pop(stream_id, None)
        try:
            self._conn.reset_stream(stream_id, error_code)
        except h2.exceptions.StreamClosedError:
            pass
        except h2.exceptions.ProtocolError:
            pass

    def is_stream_open(self, stream_id: int) -> bool:
        stream = self._conn.streams.get(stream_id)
        return stream is not None and not stream.closed

    def acknowledge(self, stream_id: int, flow_controlled_length: int) -> None:
        if flow_controlled_length:
            try:
                self._conn.acknowledge_received_data(flow_controlled_length, stream_id)
            except h2.exceptions.ProtocolError:
                pass

    def goaway_frame(self, error_code: int = NO_ERROR) -> bytes:
        """A GOAWAY frame naming the last stream we will process (graceful shutdown)."""
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.highest_stream_id
        frame.error_code = error_code
        return frame.serialize()
