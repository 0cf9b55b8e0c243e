"""One JSON line per request, written in batches off the request path.

`on_request_end` only appends a tuple to a list; `flush()` (called by the
worker's flush task every ~50 ms, and at once past a high-water mark) turns
the batch into JSON lines and writes them with one `write()`.

Destination: the file `access.log` in the data dir, opened with O_APPEND by
every worker. Each batch is a single write() to an O_APPEND file, so lines
from different workers interleave whole, never torn. It is a file rather than
stderr so the supervisor's operational log stays readable under load.

Extra fields (the proxy adds model, provider, tokens, cost): a handler puts
them in `request.log_fields` (a dict, when the Request has that slot); they
are merged into the request's line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from smartflow.http.request import Request

ACCESS_LOG_FILE_NAME = "access.log"
MAX_BUFFERED_LINES = 4096

_Entry = tuple[float, str, str, str, str, int, float, int, Any, str, Any]


class AccessLog:
    """Buffers entries and writes them to one file descriptor in batches.

    Implements the `RequestObserver` protocol of `smartflow.http`.
    """

    def __init__(self, fd: int, *, owns_fd: bool = True) -> None:
        self._fd = fd
        self._owns_fd = owns_fd
        self._buffer: list[_Entry] = []

    @classmethod
    def open_in(cls, data_dir: Path) -> AccessLog:
        fd = os.open(
            data_dir / ACCESS_LOG_FILE_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640
        )
        return cls(fd)

    def on_request_start(self, request: Request) -> None:
        pass

    def on_request_end(
        self, request: Request, status: int, duration_s: float, bytes_sent: int, route: str
    ) -> None:
        self._buffer.append((
            time.time(), request.request_id, request.method, request.path, route, status,
            duration_s, bytes_sent, request.client, request.http_version,
            getattr(request, "log_fields", None),
        ))
        if len(self._buffer) >= MAX_BUFFERED_LINES:
            self.flush()

    def flush(self) -> None:
        """Write every buffered line now (one write() call)."""
        if not self._buffer:
            return
        entries, self._buffer = self._buffer, []
        data = format_entries(entries)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            pass  # a full disk must not take requests down with it

    def close(self) -> None:
        self.flush()
        if self._owns_fd:
            os.close(self._fd)


def format_entries(entries: list[_Entry]) -> bytes:
    """JSON lines for a batch.

    Built from a bytes template rather than a dict per line: orjson is used
    only for the free-text values (path, request id, extra fields), and the
    timestamp's date-time part is formatted once per second. This keeps the
    flush at a few microseconds per line.
    """
    lines = []
    second = -1
    prefix = b""
    quoted: dict[str, bytes] = {}  # method and route templates repeat: quote once
    dumps = orjson.dumps
    for ts, request_id, method, path, route, status, duration_s, nbytes, client, protocol, extra \
            in entries:
        whole = int(ts)
        if whole != second:
            second = whole
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode()
        method_json = quoted.get(method)
        if method_json is None:
            method_json = quoted[method] = dumps(method)
        route_json = quoted.get(route)
        if route_json is None:
            route_json = quoted[route] = dumps(route)
        lines.append(_LINE % (
            prefix, int((ts - whole) * 1000), dumps(request_id), method_json, dumps(path),
            route_json, status, duration_s * 1000.0, nbytes,
            b'"%s:%d"' % (client[0].encode(), client[1]) if client else b"null",
            protocol.encode(),
            _extra_fields(extra) if extra else b"",
        ))
    return b"".join(lines)


def _extra_fields(extra: Any) -> bytes:
    try:
        encoded = orjson.dumps(extra, default=str, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return b',"log_fields_error":"not JSON-serialisable"'
    if not encoded.startswith(b"{") or encoded == b"{}":
        return b""
    return b"," + encoded[1:-1]


_LINE = (
    b'{"ts":"%s.%03dZ","request_id":%s,"method":%s,"path":%s,"route":%s,"status":%d,'
    b'"duration_ms":%.3f,"bytes":%d,"client":%s,"protocol":"HTTP/%s"%s}\n'
)


def format_entry(entry: _Entry) -> bytes:
    """One JSON line (with its newline) for one entry."""
    return format_entries([entry])
