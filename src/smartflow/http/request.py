"""The request a handler sees, and the buffer its body arrives in.

`RequestBody` sits between the transport (which feeds it chunks as they come
off the wire) and the handler (which reads them).  Reading is what tells the
connection to go on: it sends `100 Continue` on the first read, resumes a
paused socket, and acknowledges HTTP/2 flow-control credit, so a slow handler
slows the client instead of growing a buffer.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson

from smartflow.http.errors import HTTPError

Headers = list[tuple[bytes, bytes]]

_REQUEST_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
_MAX_REQUEST_ID_CHARS = 128


class BodyConsumer(Protocol):
    """The connection side of a body: told when the handler starts and keeps reading."""

    def on_body_read_started(self, stream_id: int) -> None: ...

    def on_body_consumed(
        self, stream_id: int, nbytes: int, flow_controlled_length: int
    ) -> None: ...


@functools.lru_cache(maxsize=512)
def _header_key(name: str) -> bytes:
    # Handlers ask for the same few names on every request: lower-case and
    # encode each once, not per lookup.
    return name.lower().encode("latin-1")


def first_header(headers: Headers, key: bytes) -> str | None:
    """The first value of the header named ``key`` (lower-case bytes), or None."""
    for name, value in headers:
        if name == key:
            return value.decode("latin-1")
    return None


class RequestBody:
    """Body chunks received but not yet read by the handler (bounded by the
    connection: it stops reading the socket past a high-water mark)."""

    __slots__ = (
        "_chunks",
        "_consumer",
        "_error",
        "_has_started_reading",
        "_waiter",
        "is_complete",
        "received_bytes",
        "stream_id",
        "unread_bytes",
    )

    def __init__(self, stream_id: int, consumer: BodyConsumer | None) -> None:
        self.stream_id = stream_id
        self._consumer = consumer
        self._chunks: deque[tuple[bytes, int]] = deque()
        self.unread_bytes = 0
        self.received_bytes = 0
        self.is_complete = consumer is None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._has_started_reading = False

    # -- producer side (the transport) ------------------------------------

    def feed(self, data: bytes, flow_controlled_length: int = 0) -> None:
        self._chunks.append((data, flow_controlled_length))
        self.unread_bytes += len(data)
        self.received_bytes += len(data)
        self._wake()

    def end(self) -> None:
        self.is_complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- consumer side (the handler) --------------------------------------

    async def read_chunk(self) -> bytes:
        """The next chunk, or b"" once the body is complete."""
        if not self._has_started_reading:
            self._has_started_reading = True
            if self._consumer is not None and not self.is_complete:
                self._consumer.on_body_read_started(self.stream_id)
        while True:
            if self._chunks:
                data, flow_length = self._chunks.popleft()
                self.unread_bytes -= len(data)
                if self._consumer is not None:
                    self._consumer.on_body_consumed(self.stream_id, len(data), flow_length)
                if data:
                    return data
                continue
            if self._error is not None:
                raise self._error
            if self.is_complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take_unacknowledged(self) -> int:
        """Drop unread chunks; return their flow-controlled length (HTTP/2 credit to give back)."""
        total = 0
        for _data, flow_length in self._chunks:
            total += flow_length
        self._chunks.clear()
        self.unread_bytes = 0
        return total


class Request:
    __slots__ = (
        "_body",
        "_query",
        "_request_id",
        "client",
        "headers",
        "http_version",
        "log_fields",
        "method",
        "path",
        "path_params",
        "query_string",
        "route",
        "stream_id",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: bytes,
        headers: Headers,
        client: tuple[str, int] | None,
        http_version: str,
        body: RequestBody | None = None,
        stream_id: int = 1,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.client = client
        self.http_version = http_version
        self.path_params: dict[str, str] = {}
        self.route = ""  # the matched route template, set by the router
        self.stream_id = stream_id
        # Extra fields for this request's access-log line, filled in by handlers.
        self.log_fields: dict[str, Any] | None = None
        self._body = body if body is not None else RequestBody(stream_id, None)
        self._request_id: str | None = None
        self._query: dict[str, list[str]] | None = None

    def __repr__(self) -> str:
        return f"Request({self.method} {self.path} HTTP/{self.http_version})"

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        return first_header(self.headers, _header_key(name))

    @property
    def request_id(self) -> str:
        """The client's `x-request-id` when it is sane, else a short random id (made on first use)."""
        if self._request_id is None:
            self._request_id = _pick_request_id(self.headers)
        return self._request_id

    @request_id.setter
    def request_id(self, value: str) -> None:
        self._request_id = value

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = (
                parse_qs(self.query_string.decode("latin-1"), keep_blank_values=True)
                if self.query_string
                else {}
            )
        return self._query

    async def body(self) -> bytes:
        """The whole body.  Raises HTTPError(413) past max_body_bytes."""
        first = await self._body.read_chunk()
        if not first:
            return b""
        parts = [first]
        while chunk := await self._body.read_chunk():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def stream(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive."""
        while chunk := await self._body.read_chunk():
            yield chunk

    async def json(self) -> object:
        """The body parsed as JSON; HTTPError(400) when it is not JSON."""
        data = await self.body()
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise HTTPError(
                400, f"We could not parse the JSON body of your request: {exc}"
            ) from None


def _pick_request_id(headers: Headers) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            if 0 < len(value) <= _MAX_REQUEST_ID_CHARS and all(
                c in _REQUEST_ID_CHARS for c in value
            ):
                return value.decode("ascii")
            break
    return f"{random.getrandbits(64):016x}"
