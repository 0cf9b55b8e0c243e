"""What a handler returns: a whole `Response` or a `StreamingResponse`.

Plain mutable objects with slots (handlers and middleware may add headers
before the server writes them).  Header names and values are checked for
CR/LF/NUL when the server encodes them, not here, so building one stays cheap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
    (back-pressure) while the client is not reading."""

    __slots__ = ("chunks", "content_type", "headers", "status")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        content_type: str | None = "text/event-stream",
    ) -> None:
        self.chunks = chunks
        self.status = status
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self.content_type = content_type

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
