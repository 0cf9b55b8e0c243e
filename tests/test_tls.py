"""TLS: a self-signed certificate made with the openssl CLI; ALPN picks
HTTP/2 or HTTP/1.1 on the same port."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvloop
from _http_helpers import LoopErrors, RunningServer, running_server

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is not installed"),
]


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    yield cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


@pytest.fixture
async def tls_server(certificate: tuple[Path, Path]) -> AsyncIterator[RunningServer]:
    errors = LoopErrors().install()
    async with running_server(ssl_context=server_context(*certificate)) as running:
        yield running
    assert errors.calls == [], errors.calls
    errors.uninstall()


@pytest.mark.parametrize(("http2", "version"), [(True, "HTTP/2"), (False, "HTTP/1.1")])
async def test_alpn_selects_the_protocol_over_tls(
    tls_server: RunningServer, certificate: tuple[Path, Path], http2: bool, version: str
) -> None:
    verify = ssl.create_default_context(cafile=str(certificate[0]))
    async with httpx.AsyncClient(verify=verify, http2=http2, timeout=20) as client:
        response = await client.get(f"https://127.0.0.1:{tls_server.port}/health")
        echoed = await client.post(
            f"https://127.0.0.1:{tls_server.port}/echo", content=b"x" * 300_000
        )
        streamed = await client.get(f"https://127.0.0.1:{tls_server.port}/stream?n=4")
    assert response.http_version == version
    assert response.json() == {"status": "ok"}
    assert echoed.content == b"x" * 300_000
    assert streamed.text.count("data: ") == 4


async def test_client_without_alpn_speaks_http1_over_tls(
    tls_server: RunningServer, certificate: tuple[Path, Path]
) -> None:
    import asyncio

    context = ssl.create_default_context(cafile=str(certificate[0]))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", tls_server.port, ssl=context, server_hostname="localhost"
    )
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert response.startswith(b"HTTP/1.1 200 OK")


async def test_plain_http_on_a_tls_port_fails_cleanly_and_the_server_lives_on(
    tls_server: RunningServer, certificate: tuple[Path, Path]
) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(f"http://127.0.0.1:{tls_server.port}/health")
    verify = ssl.create_default_context(cafile=str(certificate[0]))
    async with httpx.AsyncClient(verify=verify, timeout=20) as client:
        response = await client.get(f"https://127.0.0.1:{tls_server.port}/health")
    assert response.status_code == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_negotiates_http2_over_tls(
    tls_server: RunningServer, certificate: tuple[Path, Path]
) -> None:
    import asyncio

    process = await asyncio.create_subprocess_exec(
        "curl", "-s", "-i", "--http2", "--cacert", str(certificate[0]),
        f"https://localhost:{tls_server.port}/health",
        "--resolve", f"localhost:{tls_server.port}:127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(process.communicate(), 20)
    assert stdout.startswith(b"HTTP/2 200")
