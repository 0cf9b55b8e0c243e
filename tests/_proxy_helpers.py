"""An in-process gateway (the proxy's routes on a real HTTPServer) on the test's loop."""

from __future__ import annotations

import socket

from smartflow.config import ServerSettings, Settings
from smartflow.http.router import Router
from smartflow.http.transport import HTTPServer
from smartflow.proxy import ProxyContext, build_proxy_context, register_proxy_routes
from smartflow.store.fast_client import StoreClient


async def start_proxy(settings: Settings, *, store: StoreClient | None = None
                      ) -> tuple[HTTPServer, str, ProxyContext]:
    """The server, its base URL and the proxy context (the caller drains the
    server and closes the context). ``store``: the shared-state client, for
    the routes that keep state (stored Responses answers)."""
    router = Router()
    context = build_proxy_context(settings)
    context.store = store
    register_proxy_routes(router, context)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = HTTPServer(router, ServerSettings(port=0, access_log=False))
    await server.start(sock)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}", context
