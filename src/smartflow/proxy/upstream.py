"""Sending one ``UpstreamCall``: through the pool, or to the built-in mock.

Both kinds of answer look the same to the routes (status, headers, body as
bytes or chunks, ``aclose``), so the mock provider exercises the real relay
path. Transport failures come back as ``GatewayError`` (502 / 504).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from smartflow.gateway_error import Phase
from smartflow.http.client import TLSConfig, UpstreamError
from smartflow.providers.base import Target, UpstreamCall
from smartflow.providers.mock import MOCK_SCHEME, MockResponse, serve_mock
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.errors import error_from_upstream_failure

MAX_ERROR_BODY_BYTES = 1024 * 1024


class Upstream(Protocol):
    status: int
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None: ...

    async def read(self) -> bytes: ...

    def iter_bytes(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class MockUpstream:
    __slots__ = ("_chunks", "headers", "status")

    def __init__(self, response: MockResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self._chunks = response.body_chunks

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self._chunks])

    def iter_bytes(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


def tls_for(target: Target) -> TLSConfig | None:
    if target.tls_ca_file or target.tls_client_cert_file or target.tls_client_key_file:
        return TLSConfig(target.tls_ca_file, target.tls_client_cert_file,
                         target.tls_client_key_file)
    return None


async def send(context: ProxyContext, target: Target, call: UpstreamCall,
               first_byte_timeout_s: float | None = None) -> Upstream:
    """The upstream's answer (head in, body on demand); GatewayError on transport failure."""
    if call.url.startswith(MOCK_SCHEME):
        return MockUpstream(serve_mock(call))
    try:
        return await context.pool.request(call.method, call.url, call.headers, call.body,
                                          tls=tls_for(target),
                                          first_byte_timeout_s=first_byte_timeout_s)
    except UpstreamError as exc:
        raise error_from_upstream_failure(exc, Phase.BEFORE_FIRST_BYTE) from None


class PeekedUpstream:
    """An upstream whose first body chunk was read ahead (so a stream that breaks
    before its first byte can still fail over); the chunk is replayed first."""

    __slots__ = ("_first", "_inner", "_source", "headers", "status")

    def __init__(self, inner: Upstream, first: bytes | None,
                 source: AsyncIterator[bytes]) -> None:
        self._inner = inner
        self._first = first  # None: the body was empty
        self._source = source
        self.status = inner.status
        self.headers = inner.headers

    def header(self, name: str) -> str | None:
        return self._inner.header(name)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_bytes()])

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        first, self._first = self._first, None
        if first is None:
            return
        if first:
            yield first
        async for chunk in self._source:
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


async def peek(upstream: Upstream) -> Upstream:
    """Read the first body chunk now; a transport failure is still before the first byte."""
    source = upstream.iter_bytes()
    try:
        first: bytes | None = await anext(source)
    except StopAsyncIteration:
        first = None
    except UpstreamError as exc:
        await upstream.aclose()
        raise error_from_upstream_failure(exc, Phase.BEFORE_FIRST_BYTE) from None
    return PeekedUpstream(upstream, first, source)


async def read_body(upstream: Upstream) -> bytes:
    """The whole body; transport failures as GatewayError."""
    try:
        return await upstream.read()
    except UpstreamError as exc:
        await upstream.aclose()
        raise error_from_upstream_failure(exc, Phase.BEFORE_FIRST_BYTE) from None
