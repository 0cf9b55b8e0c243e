"""The compliance API as a process of its own: run by the supervisor when
``[compliance] port`` is set (``workers/compliance.py``), or alone with
``smartflow compliance``.

It serves ``/api/compliance/*`` and ``/healthz`` (and ``/health``) only, with
the admin API's authentication: the master key, or a session token checked
against the same Redis the gateway uses (``[state] redis_url``, or the
``store_url`` given). It reads ``vas_log`` with its own small pool, so
compliance reports keep answering while gateway workers restart, and heavy
report queries never share a worker's event loop with proxied calls; run
one or more behind a load balancer for high availability.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING

from smartflow.config import ConfigError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from smartflow.config import Settings

log = logging.getLogger(__name__)

_HEALTH_BODY = b'{"status":"ok"}'


def build_compliance_app(settings: Settings, store_url: str,
                               on_shutdown: list[Callable[[], Awaitable[None]]]) -> Router:
    """The process's router; what must be closed at exit is appended to ``on_shutdown``."""
    from smartflow.admin.compliance_routes import register_compliance_routes
    from smartflow.admin.context import build_admin_context
    from smartflow.audit.log_query import build_log_reader
    from smartflow.keys.runtime import build_keys_runtime
    from smartflow.proxy.context import build_pool
    from smartflow.store.fast_client import create_store_client

    router = Router()

    async def health(request: Request) -> Response:
        return Response(200, _HEALTH_BODY)

    router.add("GET", "/healthz", health)
    router.add("GET", "/health", health)
    client = create_store_client(store_url, cluster=settings.state.redis_cluster,
                                 timeout_s=settings.state.redis_timeout)
    on_shutdown.append(client.aclose)
    # No revocation listener: this process admits no calls, and reads users
    # and roles from the store on every admin request anyway.
    keys = build_keys_runtime(settings, client)
    pool = build_pool(settings)  # Entra ID's JWKS, for SSO session checks
    on_shutdown.append(pool.aclose)
    reader = build_log_reader(settings.audit)
    if reader is not None:
        on_shutdown.append(reader.aclose)
    register_compliance_routes(router, build_admin_context(settings, keys, pool), reader)
    return router


async def serve_compliance(settings: Settings, host: str, port: int, *,
                           store_url: str | None = None,
                           stop: asyncio.Event | None = None,
                           on_listening: Callable[[], None] | None = None) -> None:
    """Serve until ``stop`` is set (default: SIGTERM or SIGINT), then drain.

    ``store_url``: the Redis of keys, users and sessions (default ``[state]
    redis_url``; required, or sessions could not be checked)."""
    from smartflow.http.transport import HTTPServer
    from smartflow.process.tls import build_server_ssl_context

    store_url = store_url or settings.state.redis_url
    if not store_url:
        raise ConfigError("the compliance process needs [state] redis_url (users, roles and "
                          "sessions live there)")
    if not settings.audit.postgres_dsn:
        log.warning("compliance: [audit] postgres_dsn is not set; report routes answer 503")
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        router = build_compliance_app(settings, store_url, closers)
        sock = socket.create_server((host, port), backlog=1024)
        server = HTTPServer(router, settings.server,
                            ssl_context=build_server_ssl_context(settings.server))
        await server.start(sock)
        log.info("compliance API listening on %s:%d", host, sock.getsockname()[1])
        if on_listening is not None:
            on_listening()
        try:
            await stop.wait()
        finally:
            await server.accept_backlog_and_close_listener()
            await server.drain(settings.server.shutdown_timeout)
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()
