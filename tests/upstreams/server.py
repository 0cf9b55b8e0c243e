"""Start a mock upstream on 127.0.0.1: on the running loop, or on its own thread."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Self

from smartflow.config import ServerSettings
from smartflow.http.router import Router
from smartflow.http.transport import HTTPServer

_SETTINGS = ServerSettings(host="127.0.0.1", port=0, access_log=False, keepalive_timeout=30.0)


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


async def start_upstream(router: Router) -> tuple[HTTPServer, int]:
    """Serve ``router`` on a free loopback port, on the current loop.
    Stop it with ``await stop_upstream(server)``."""
    sock = _listening_socket()
    port: int = sock.getsockname()[1]
    server = HTTPServer(router, _SETTINGS)
    await server.start(sock)
    return server, port


async def stop_upstream(server: HTTPServer, timeout_s: float = 2.0) -> None:
    """Close the listener and every connection (streams still open are cut at the deadline)."""
    await server.drain(timeout_s)


class UpstreamThread:
    """A mock upstream on its own thread and loop, for synchronous tests.

    ``with UpstreamThread(router) as upstream: ... upstream.url ...``; or call
    ``stop()`` yourself.
    """

    def __init__(self, router: Router, *, start_timeout_s: float = 10.0) -> None:
        self.port = 0
        self._router = router
        self._loop = asyncio.new_event_loop()
        self._server: HTTPServer | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mock-upstream", daemon=True)
        self._thread.start()
        if not self._started.wait(start_timeout_s):
            raise RuntimeError("mock upstream did not start in time")
        if self._error is not None:
            raise RuntimeError("mock upstream failed to start") from self._error

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server, self.port = self._loop.run_until_complete(start_upstream(self._router))
        except Exception as exc:  # noqa: BLE001 - handed to the constructor, which raises it
            self._error = exc
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the server's loop (to touch loop-bound things safely)."""
        self._loop.call_soon_threadsafe(callback)

    def stop(self, timeout_s: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        server = self._server
        if server is not None:
            future = asyncio.run_coroutine_threadsafe(stop_upstream(server), self._loop)
            try:
                future.result(timeout_s)
            except (TimeoutError, OSError, RuntimeError):
                pass  # the loop is stopped below either way
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
