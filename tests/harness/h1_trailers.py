"""A raw HTTP/1.1 request that also returns the response's trailer fields.

httpx and the SDKs drop trailers, so tests that check the final-cost
trailer speak HTTP/1.1 through h11 on a plain socket.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import orjson


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes  # exactly the body bytes, de-chunked
    trailers: dict[str, str]


async def post_json_h1(url: str, path: str, payload: object,
                       headers: list[tuple[str, str]] | None = None,
                       timeout_s: float = 30.0) -> RawAnswer:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = orjson.dumps(payload)
    reader, writer = await asyncio.open_connection(host, port)
    conn = h11.Connection(h11.CLIENT)
    request_headers = [("host", f"{host}:{port}"), ("content-type", "application/json"),
                       ("content-length", str(len(body))), ("te", "trailers"),
                       *(headers or [])]
    writer.write(conn.send(h11.Request(method="POST", target=path, headers=request_headers)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
    status = 0
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []
    trailers: dict[str, str] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    response_headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    trailers = {k.decode(): v.decode() for k, v in event.headers}
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    break
    finally:
        writer.close()
    return RawAnswer(status, response_headers, b"".join(chunks), trailers)
