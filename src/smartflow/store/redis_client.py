"""The async Redis client a worker uses, built from settings.

Timeouts are short and explicit: a gateway must answer (or fail fast) when
Redis stalls, never hang a request on a dead socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

DEFAULT_SOCKET_TIMEOUT_S = 2.0
DEFAULT_CONNECT_TIMEOUT_S = 1.0
DEFAULT_MAX_CONNECTIONS = 512


def create_redis_client(
    url: str,
    *,
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> Redis:
    """A redis.asyncio client for `url` (redis://, rediss:// or unix://).

    Connections are made lazily, on first command, so building the client
    needs no running Redis (the readiness probe reports when it is down).
    """
    from redis.asyncio import Redis

    client: Redis = Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        max_connections=max_connections,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return client
