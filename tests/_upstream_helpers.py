"""Loopback servers and loop runners for the upstream client tests.

Servers are plain asyncio servers that write raw HTTP, so each test decides
keep-alive, framing, slowness and misbehaviour byte by byte. Every test body
runs under both asyncio's loop and uvloop through `run_on_loop`, which also
fails the test if the loop's exception handler fires or a task is left over.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import uvloop

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

TEST_DEADLINE_S = 30.0
LEFTOVER_TASKS_WAIT_S = 10.0  # a leak never ends; a slow loop does, within this


def run_on_loop(loop_name: str, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run `scenario()` on a fresh loop; fail on loop errors or leftover tasks."""
    loop_factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    loop_errors: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: loop_errors.append(context)
        )
        async with asyncio.timeout(TEST_DEADLINE_S):
            await scenario()
        # The client starts no tasks; the loop's own (a server-side TLS
        # handshake still failing, say) get a moment to finish first.
        deadline = time.monotonic() + LEFTOVER_TASKS_WAIT_S
        while leftover := asyncio.all_tasks() - {asyncio.current_task()}:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert not leftover, f"tasks left behind: {leftover}"

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    assert not loop_errors, f"loop exception handler was called: {loop_errors}"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and Content-Length body; IncompleteReadError at EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head, body


def ok_response(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def wait_closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    """True if the peer closed (EOF or reset) within timeout_s."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


class RawServer:
    """An asyncio TCP (or TLS) server on 127.0.0.1:0 running `handler` per connection."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._on_connection, "127.0.0.1", 0, ssl=self._ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)


@dataclass(frozen=True)
class Certificates:
    ca_file: str
    server_cert_file: str
    server_key_file: str
    client_cert_file: str
    client_key_file: str
    other_ca_file: str  # a CA that signed nothing here


def make_certificates(directory: Path) -> Certificates:
    """A test CA, a server cert (localhost, 127.0.0.1) and a client cert, via the openssl CLI."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other-ca"):
        openssl(
            "req",
            "-x509",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=smartflow {name}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )
    leaves = {
        "server": "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, extensions in leaves.items():
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + extensions
        )
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return Certificates(
        ca_file=str(directory / "ca.pem"),
        server_cert_file=str(directory / "server.pem"),
        server_key_file=str(directory / "server.key"),
        client_cert_file=str(directory / "client.pem"),
        client_key_file=str(directory / "client.key"),
        other_ca_file=str(directory / "other-ca.pem"),
    )


def server_ssl_context(certs: Certificates, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert_file, certs.server_key_file)
    if require_client_cert:
        context.load_verify_locations(certs.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
