"""What a handler returns: a whole `Response` or a `StreamingResponse`.

Plain mutable objects with slots (handlers and middleware may add headers
before the server writes them).  Header names and values are checked for
CR/LF/NUL when the server encodes them, not here, so building one stays cheap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        content_type: str | None = "application/json",
    ) -> None:
        self.status = status
        self.body = body
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"Response(status={self.status}, body={len(self.body)} bytes)"


class StreamingResponse:
    """Each chunk of `chunks` is written as it is produced; the producer waits
    (back-pressure) while the client is not reading.

    Trailers: `trailer_names` (non-empty) announces, in a `trailer` response
    header, fields that will follow the body where the response can carry
    them (HTTP/1.1 chunked, HTTP/2; not HTTP/1.0, not HEAD).  `trailers` is
    called exactly once after `chunks` is exhausted normally (or, for HEAD,
    once the head is sent) and returns the fields to send; it is called even
    when they cannot be sent, so it doubles as the "stream finished" hook.  It
    is not called when the stream ends abnormally (client gone, producer
    failed).  If it raises, the error is logged and the stream ends without
    trailer fields."""

    __slots__ = ("chunks", "content_type", "headers", "status", "trailer_names", "trailers")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        content_type: str | None = "text/event-stream",
        *,
        trailers: Callable[[], list[tuple[str, str]]] | None = None,
        trailer_names: tuple[str, ...] = (),
    ) -> None:
        self.chunks = chunks
        self.status = status
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self.content_type = content_type
        self.trailers = trailers
        self.trailer_names = trailer_names

    def __repr__(self) -> str:
        return f"StreamingResponse(status={self.status})"


def json_response(
    obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(status, orjson.dumps(obj), headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """A response in the OpenAI error shape {"error": {message, type, param, code}}."""
    return Response(status, error_body(message, type, param, code), headers)
