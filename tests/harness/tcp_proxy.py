"""A loopback TCP proxy a test can cut and restore, to fake a network blip.

The proxy runs its own asyncio loop in a background thread, so it keeps
relaying while the test's own loop is busy (or blocked in sync code).
`cut()` aborts every relayed connection and stops listening, so clients see
reset connections and then "connection refused", as when Redis goes away;
`restore()` listens again on the same port. The blocking calls wait for the
proxy loop to finish the change, so once `cut()` returns the blip is real.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from .lifecycle import ManagedService
from .ports import LOOPBACK_HOST

_T = TypeVar("_T")
_RELAY_CHUNK_BYTES = 65536
_CONTROL_TIMEOUT_S = 10.0


class TCPProxy(ManagedService):
    """Relays 127.0.0.1:`port` to target_host:target_port; see the module docstring."""

    def __init__(self, target_port: int, *, target_host: str = LOOPBACK_HOST) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = LOOPBACK_HOST
        self.port = 0
        self.total_connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self._is_cut = False

    # -- control, called from the test's thread ---------------------------------

    def start(self) -> None:
        """Start the proxy thread and listen on a free port (kept across restore)."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"tcp-proxy->{self.target_port}", daemon=True
        )
        self._thread.start()
        self._call(self._listen())

    def cut(self) -> None:
        """Abort all relayed connections and refuse new ones until `restore()`."""
        self._call(self._cut())

    def restore(self) -> None:
        """Accept and relay connections again, on the same port."""
        self._call(self._restore())

    def close(self) -> None:
        """Cut everything and stop the proxy thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._cut())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CONTROL_TIMEOUT_S)
            loop.close()
            self._loop = None
            self._thread = None

    @property
    def is_cut(self) -> bool:
        return self._is_cut

    @property
    def open_connections(self) -> int:
        return len(self._relays)

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("TCPProxy is not started")
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=_CONTROL_TIMEOUT_S)

    # -- the proxy's own loop -----------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._on_client, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._is_cut = False

    async def _cut(self) -> None:
        self._is_cut = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._relays):
            task.cancel()
        if self._relays:
            await asyncio.wait(list(self._relays), timeout=_CONTROL_TIMEOUT_S)
        if server is not None:
            await server.wait_closed()

    async def _restore(self) -> None:
        if self._server is None:
            await self._listen()
        self._is_cut = False

    async def _on_client(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._is_cut:
            client_writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        # Registered before connecting to the target, so a cut() that lands
        # while we connect cancels this relay too.
        self._relays.add(task)
        writers = [client_writer]
        self._writers.add(client_writer)
        try:
            try:
                target_reader, target_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                # Target down: the client sees its connection dropped, as it would.
                return
            writers.append(target_writer)
            self._writers.add(target_writer)
            self.total_connections += 1
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(client_reader, target_writer))
                group.create_task(self._pump(target_reader, client_writer))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._relays.discard(task)
            for writer in writers:
                self._writers.discard(writer)
                writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(_RELAY_CHUNK_BYTES)
            if not data:
                # Pass the half-close on; the other direction may still be talking.
                if writer.can_write_eof() and not writer.transport.is_closing():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
