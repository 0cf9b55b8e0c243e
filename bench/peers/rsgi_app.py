"""The baseline RSGI app (granian's native interface): same routes as asgi_app."""

from __future__ import annotations

from typing import Any

HEALTH_BODY = b'{"status":"ok"}'
JSON_HEADERS = [("content-type", "application/json")]


class App:
    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        path, method = scope.path, scope.method
        if path == "/health" and method == "GET":
            protocol.response_bytes(200, JSON_HEADERS, HEALTH_BODY)
        elif path == "/bench/echo" and method == "POST":
            protocol.response_bytes(200, JSON_HEADERS, await protocol())
        else:
            protocol.response_bytes(404, JSON_HEADERS, b'{"error":"not found"}')


app = App()
