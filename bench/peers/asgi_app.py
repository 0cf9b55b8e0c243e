"""The baseline ASGI app: the same two routes the gateway serves for benchmarks.

GET /health returns a small JSON object; POST /bench/echo returns the request
body. No framework, so the figures measure the server, not a router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HEALTH_BODY = b'{"status":"ok"}'
JSON_HEADERS = [(b"content-type", b"application/json")]


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path == "/health" and method == "GET":
        await _respond(send, 200, HEALTH_BODY)
    elif path == "/bench/echo" and method == "POST":
        await _respond(send, 200, await _read_body(receive))
    else:
        await _respond(send, 404, b'{"error":"not found"}')
