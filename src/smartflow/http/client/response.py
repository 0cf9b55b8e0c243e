"""The response handed to callers: status and headers at once, the body on demand.

Whoever holds an UpstreamResponse owns its connection until the body ends
(the connection goes back to the pool) or the response is closed early (the
connection is closed, since unread body bytes would poison the next cycle).
`iter_bytes()` returns a plain iterator object rather than an async
generator: an abandoned async generator is finalised by a task the loop
schedules later, which is exactly the background work this client avoids.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Self

from .connection import UpstreamConnection

if TYPE_CHECKING:
    from .pool import _OriginPool


class UpstreamResponse:
    """An upstream's answer; use as `async with` or read it to the end."""

    __slots__ = ("__weakref__", "_conn", "_origin_pool", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        conn: UpstreamConnection,
        origin_pool: _OriginPool,
    ) -> None:
        self.status = status
        self.headers = headers  # (lower-case name, value), in arrival order
        self._conn: UpstreamConnection | None = conn
        self._origin_pool = origin_pool

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status}>"

    def header(self, name: str) -> str | None:
        """First value of header `name` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def is_closed(self) -> bool:
        """True once the body was read to the end or the response was closed."""
        return self._conn is None

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        chunks: list[bytes] = []
        while True:
            chunk = await self._next_chunk()
            if chunk is None:
                break
            chunks.append(chunk)
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def iter_bytes(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive from the socket, nothing held back."""
        return _BodyIterator(self)

    async def aclose(self) -> None:
        """Stop: an unfinished body closes the connection instead of pooling it."""
        self.close()

    def close(self) -> None:
        """Synchronous `aclose`, for finally blocks and callbacks."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.abort()
            self._origin_pool.discard(conn)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Safety net for a caller that forgot to close: free the pool slot and
        # the socket rather than leak them. Never raises (runs inside GC).
        if getattr(self, "_conn", None) is not None:
            with contextlib.suppress(Exception):  # the loop may already be closed
                self.close()

    async def _next_chunk(self) -> bytes | None:
        conn = self._conn
        if conn is None:
            return None
        try:
            chunk = await conn.receive_body_chunk()
        except BaseException:
            self.close()
            raise
        if chunk is None:
            self._conn = None
            self._origin_pool.release(conn)
        return chunk


class _BodyIterator:
    __slots__ = ("_response",)

    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response

    def __aiter__(self) -> _BodyIterator:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._response._next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk
