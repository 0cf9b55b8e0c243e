"""Upstream HTTP/1.1 client: a keep-alive pool per origin on h11 and asyncio.Protocol.

    pool = UpstreamPool(max_connections_per_origin=256, connect_timeout_s=5.0)
    async with await pool.request("POST", url, headers, body, tls=tls) as response:
        if response.status != 200:
            error_body = await response.read()
        async for chunk in response.iter_bytes():
            ...
    await pool.aclose()

Reading a body to its end returns the connection to the pool; leaving the
`async with` early (or being cancelled) closes it. Every failure is an
`UpstreamError` subclass, never an OSError, ssl or h11 exception.
"""

from __future__ import annotations

from .errors import (
    ConnectError,
    ConnectTimeout,
    FirstByteTimeout,
    InvalidRequest,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    UpstreamError,
    WriteError,
)
from .pool import UpstreamPool
from .response import UpstreamResponse
from .statistics import OriginStatistics, PoolStatistics
from .tls import TLSConfig

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "FirstByteTimeout",
    "InvalidRequest",
    "OriginStatistics",
    "PoolStatistics",
    "PoolTimeout",
    "ReadTimeout",
    "RemoteProtocolError",
    "TLSConfig",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "WriteError",
]
