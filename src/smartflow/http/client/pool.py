"""The keep-alive connection pool: one bounded set of connections per origin.

Who gets which connection is decided synchronously, with no `await` between
looking at the pool and changing it (the lesson of httpcore's
`_assign_requests_to_connections`): a request takes an idle connection, or
reserves a slot and connects, or queues. A finished response hands its
connection straight to the oldest queued request; a closed one hands over its
slot. Only then does anyone do I/O. Because every reservation is counted the
moment it is made, a cancelled request can always give back exactly what it
held, and `open` never exceeds the limit.

Idle connections expire after pool_idle_timeout_s (one pool-wide timer
handle, re-armed only while something is idle) and are dropped the moment
the server closes them. A request that lands on a reused connection the
server closed just before it was sent is retried once on a new connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Self

from .connection import StaleConnection, UpstreamConnection, open_connection
from .errors import ConnectError, InvalidRequest, PoolTimeout
from .origin import Origin, parse_origin, split_url
from .response import UpstreamResponse
from .statistics import OriginStatistics, PoolStatistics
from .tls import SSLContextCache, TLSConfig

_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
_MAX_ROUTES = 4096  # cached URL prefixes; cleared wholesale when exceeded

# What a queued request's future resolves to besides a connection.
_SLOT_GRANTED = None
_TIMED_OUT = object()
_POOL_CLOSED = object()


def _expire_waiter(waiter: asyncio.Future[object]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


class _OriginPool:
    """Connections to one Origin and the slot accounting for them."""

    __slots__ = (
        "_pool",
        "connecting",
        "idle",
        "in_use",
        "origin",
        "ssl_context",
        "url",
        "waiters",
    )

    def __init__(
        self, pool: UpstreamPool, origin: Origin, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.origin = origin
        self.url = origin.url
        self.ssl_context = ssl_context
        self.idle: deque[UpstreamConnection] = deque()  # oldest left, most recent right
        self.in_use = 0
        self.connecting = 0
        self.waiters: deque[asyncio.Future[object]] = deque()
        self._pool = pool

    @property
    def open(self) -> int:
        return len(self.idle) + self.in_use + self.connecting

    async def acquire(self) -> UpstreamConnection:
        """A connection owned by the caller: reused, new, or freed by another request."""
        pool = self._pool
        idle = self.idle
        if idle:
            now = pool._loop_time()
            max_idle_s = pool._pool_idle_timeout_s
            while idle:
                conn = idle.pop()  # most recently used: warmest, least likely stale
                if conn.is_usable and now - conn.idle_since < max_idle_s:
                    self.in_use += 1
                    return conn
                conn.abort()
        if self.open < pool._max_connections_per_origin:
            self.connecting += 1
        else:
            got = await self._wait_for_turn()
            if got is not _SLOT_GRANTED:
                return got  # type: ignore[return-value]
        return await self.connect_reserved()

    async def connect_reserved(self) -> UpstreamConnection:
        """Open a connection for a slot already counted in `connecting`."""
        pool = self._pool
        try:
            conn = await open_connection(
                pool._loop,
                self.origin,
                self.ssl_context,
                pool._connect_timeout_s,
                pool._read_idle_timeout_s,
                self._idle_lost,
            )
        except BaseException:
            self.connecting -= 1
            self._grant_slot()
            raise
        self.connecting -= 1
        self.in_use += 1
        return conn

    async def _wait_for_turn(self) -> object:
        pool = self._pool
        waiter: asyncio.Future[object] = pool._loop.create_future()
        self.waiters.append(waiter)
        timer = pool._loop.call_later(pool._connect_timeout_s, _expire_waiter, waiter)
        try:
            got = await waiter
        except BaseException:
            # Cancelled: give back whatever was handed over in the meantime.
            if waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())
            else:
                self._forget_waiter(waiter)
            raise
        finally:
            timer.cancel()
        if got is _TIMED_OUT:
            self._forget_waiter(waiter)
            raise PoolTimeout(
                f"no free connection to {self.url} within {pool._connect_timeout_s} s"
                f" ({pool._max_connections_per_origin} in use)"
            )
        if got is _POOL_CLOSED:
            raise InvalidRequest("the upstream pool is closed")
        return got

    def _give_back(self, got: object) -> None:
        if got is _SLOT_GRANTED:
            self.connecting -= 1
            self._grant_slot()
        elif isinstance(got, UpstreamConnection):
            self.release(got)

    def _forget_waiter(self, waiter: asyncio.Future[object]) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def release(self, conn: UpstreamConnection) -> None:
        """The caller is done with `conn`: pool it if it can serve another request."""
        if conn.is_usable and not self._pool._is_closed:
            waiters = self.waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)  # ownership moves; in_use unchanged
                    return
            self.in_use -= 1
            conn.idle_since = self._pool._loop_time()
            self.idle.append(conn)
            self._pool._schedule_sweep()
        else:
            self.discard(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """The caller's connection is broken or abandoned: close it, free its slot."""
        conn.abort()
        self.in_use -= 1
        self._grant_slot()

    def swap_for_new_slot(self, conn: UpstreamConnection) -> None:
        """Turn a broken in-use connection into a reserved slot without freeing it."""
        conn.abort()
        self.in_use -= 1
        self.connecting += 1

    def _grant_slot(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self.connecting += 1
                waiter.set_result(_SLOT_GRANTED)
                return

    def _idle_lost(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            return  # already handed to a waiter, which will find it stale
        self._grant_slot()

    def expire_idle(self, now: float, max_idle_s: float) -> float | None:
        """Close connections idle for max_idle_s; the next expiry time, if any."""
        idle = self.idle
        while idle and now - idle[0].idle_since >= max_idle_s:
            idle.popleft().abort()
        return idle[0].idle_since + max_idle_s if idle else None

    def close(self) -> None:
        while self.idle:
            self.idle.popleft().abort()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(_POOL_CLOSED)

    def snapshot(self) -> OriginStatistics:
        return OriginStatistics(
            origin=self.url,
            tls=self.origin.tls,
            open=self.open,
            idle=len(self.idle),
            in_use=self.in_use,
            connecting=self.connecting,
            waiting=sum(1 for waiter in self.waiters if not waiter.done()),
        )


class UpstreamPool:
    """HTTP/1.1 keep-alive client for calls to upstream providers.

    Bound to the event loop of its first request; use it from that loop only.
    """

    __slots__ = (
        "_connect_timeout_s",
        "_first_byte_timeout_s",
        "_is_closed",
        "_loop",
        "_loop_time",
        "_max_connections_per_origin",
        "_origins",
        "_pool_idle_timeout_s",
        "_read_idle_timeout_s",
        "_routes",
        "_ssl_contexts",
        "_sweep_timer",
    )

    def __init__(
        self,
        *,
        max_connections_per_origin: int = 256,
        connect_timeout_s: float = 5.0,
        first_byte_timeout_s: float = 120.0,
        read_idle_timeout_s: float = 120.0,
        pool_idle_timeout_s: float = 60.0,
    ) -> None:
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        for name, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("first_byte_timeout_s", first_byte_timeout_s),
            ("read_idle_timeout_s", read_idle_timeout_s),
            ("pool_idle_timeout_s", pool_idle_timeout_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self._max_connections_per_origin = max_connections_per_origin
        self._connect_timeout_s = connect_timeout_s
        self._first_byte_timeout_s = first_byte_timeout_s
        self._read_idle_timeout_s = read_idle_timeout_s
        self._pool_idle_timeout_s = pool_idle_timeout_s
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._loop_time = _no_loop_time
        self._origins: dict[Origin, _OriginPool] = {}
        self._routes: dict[object, tuple[_OriginPool, str]] = {}
        self._ssl_contexts = SSLContextCache()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._is_closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        tls: TLSConfig | None = None,
        first_byte_timeout_s: float | None = None,
    ) -> UpstreamResponse:
        """Send one request; returns once the response head is in.

        The caller must read the body to the end or close the response
        (`async with` does the latter).
        """
        if self._is_closed:
            raise InvalidRequest("the upstream pool is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_time = self._loop.time
        prefix, target = split_url(url)
        route = self._routes.get(prefix if tls is None else (prefix, tls))
        if route is None:
            route = self._add_route(prefix, tls)
        origin_pool, host_header = route
        send_headers: list[tuple[str, str]] = [("host", host_header)]
        for name, value in headers:
            lower = name.lower()
            if lower == "host":
                send_headers[0] = (name, value)
            elif lower != "content-length" and lower != "transfer-encoding":
                send_headers.append((name, value))
        if body or method in _BODY_METHODS:
            send_headers.append(("content-length", str(len(body))))
        if first_byte_timeout_s is None:
            first_byte_timeout_s = self._first_byte_timeout_s

        conn = await origin_pool.acquire()
        try:
            conn.send_request(method, target, send_headers, body)
            head = await conn.receive_response_head(first_byte_timeout_s)
        except StaleConnection:
            # The server closed this kept-alive connection as we sent on it;
            # nothing was received, so one retry on a new connection.
            origin_pool.swap_for_new_slot(conn)
            conn = await origin_pool.connect_reserved()
            try:
                conn.send_request(method, target, send_headers, body)
                head = await conn.receive_response_head(first_byte_timeout_s)
            except BaseException:
                origin_pool.discard(conn)
                raise
        except BaseException:
            origin_pool.discard(conn)
            raise
        return UpstreamResponse(
            head.status_code,
            [(name.decode("ascii"), value.decode("latin-1")) for name, value in head.headers],
            conn,
            origin_pool,
        )

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of every origin's connections."""
        return PoolStatistics(tuple(p.snapshot() for p in self._origins.values()))

    async def aclose(self) -> None:
        """Close idle connections and fail queued requests; in-flight responses
        finish and then close their connections instead of pooling them."""
        self._is_closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for origin_pool in self._origins.values():
            origin_pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _add_route(self, prefix: str, tls: TLSConfig | None) -> tuple[_OriginPool, str]:
        origin, host_header = parse_origin(prefix, tls)
        origin_pool = self._origins.get(origin)
        if origin_pool is None:
            ssl_context = None
            if origin.tls is not None:
                try:
                    ssl_context = self._ssl_contexts.get(origin.tls)
                except ValueError as exc:
                    raise ConnectError(f"TLS settings for {origin.url}: {exc}") from None
            origin_pool = _OriginPool(self, origin, ssl_context)
            self._origins[origin] = origin_pool
        if len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()
        route = (origin_pool, host_header)
        self._routes[prefix if tls is None else (prefix, tls)] = route
        return route

    def _schedule_sweep(self) -> None:
        if self._sweep_timer is None:
            self._sweep_timer = self._loop.call_later(self._pool_idle_timeout_s, self._sweep)

    def _sweep(self) -> None:
        self._sweep_timer = None
        now = self._loop.time()
        next_expiry: float | None = None
        for origin_pool in self._origins.values():
            expiry = origin_pool.expire_idle(now, self._pool_idle_timeout_s)
            if expiry is not None and (next_expiry is None or expiry < next_expiry):
                next_expiry = expiry
        if next_expiry is not None:
            self._sweep_timer = self._loop.call_at(next_expiry, self._sweep)


def _no_loop_time() -> float:
    raise RuntimeError("UpstreamPool used before its first request")
