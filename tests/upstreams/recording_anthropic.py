"""A permissive Anthropic upstream that records every request exactly as it came.

``anthropic_mock.py`` plays the real API's strict parts (it rejects a
``system`` role inside ``messages`` and answers tool offers with a tool
call); that is wrong for watching Claude Code, which sends ``system``
messages under a beta header and two dozen tools on every prompt. This one
accepts anything, always answers with ``reply_text`` (never a tool call, so
one prompt is one request), and keeps every request, HEAD probes and
unknown paths included, with all header lines in order and duplicates kept,
so a test can compare what a client sent directly with what reached the
upstream through the gateway.

Usage::

    log = RequestLog()
    with UpstreamThread(build_recording_anthropic(log, "Hello.")) as upstream:
        ...  # point a client at upstream.url
    log.requests  # [SeenRequest, ...]

``log`` is appended to on the upstream's own thread; read it once the
client is done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from smartflow.http import Request, Response, Router, StreamingResponse, json_response

ANY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


@dataclass(frozen=True, slots=True)
class SeenRequest:
    method: str
    path: str
    query_string: str  # as sent, without the "?"
    header_lines: tuple[tuple[str, str], ...]  # (lower-case name, value), in order
    body: bytes
    json: Any  # the parsed body; None when empty or not JSON

    def header(self, name: str) -> str | None:
        """The first value of ``name``."""
        name = name.lower()
        return next((value for key, value in self.header_lines if key == name), None)

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.header_lines if key == name]

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query_string if self.query_string else "")


@dataclass
class RequestLog:
    requests: list[SeenRequest] = field(default_factory=list)

    def of(self, method: str, path: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def summary(self) -> list[str]:
        """One line per request, for assertion messages."""
        return [f"{r.method} {r.target}" for r in self.requests]


async def _record(log: RequestLog, request: Request) -> SeenRequest:
    body = await request.body()
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    seen = SeenRequest(
        method=request.method,
        path=request.path,
        query_string=request.query_string.decode("latin-1"),
        header_lines=tuple((name.decode("latin-1").lower(), value.decode("latin-1"))
                           for name, value in request.headers),
        body=body,
        json=parsed,
    )
    log.requests.append(seen)
    return seen


def _event(payload: dict[str, Any]) -> bytes:
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def answer_frames(model: str, reply_text: str) -> list[bytes]:
    """The SSE events of a one-text-block answer, as the real API frames them."""
    pieces = reply_text.split(" ")
    deltas = [piece + (" " if i < len(pieces) - 1 else "") for i, piece in enumerate(pieces)]
    frames = [
        _event({"type": "message_start", "message": {
            "id": "msg_recording", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        _event({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        _event({"type": "ping"}),
    ]
    frames.extend(_event({"type": "content_block_delta", "index": 0,
                          "delta": {"type": "text_delta", "text": delta}}) for delta in deltas)
    frames.append(_event({"type": "content_block_stop", "index": 0}))
    frames.append(_event({"type": "message_delta",
                          "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                          "usage": {"output_tokens": len(deltas)}}))
    frames.append(_event({"type": "message_stop"}))
    return frames


def build_recording_anthropic(log: RequestLog, reply_text: str) -> Router:
    router = Router()

    async def messages(request: Request) -> Response | StreamingResponse:
        seen = await _record(log, request)
        body = seen.json if isinstance(seen.json, dict) else {}
        model = str(body.get("model") or "")
        if body.get("stream"):
            frames = answer_frames(model, reply_text)

            async def stream() -> AsyncIterator[bytes]:
                for frame in frames:
                    yield frame

            return StreamingResponse(stream(), 200, [("request-id", "req_recording"),
                                                     ("cache-control", "no-cache")])
        return json_response({
            "id": "msg_recording", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": reply_text}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 3},
        }, 200, [("request-id", "req_recording")])

    async def count_tokens(request: Request) -> Response:
        await _record(log, request)
        return json_response({"input_tokens": 10})

    async def anything_else(request: Request) -> Response:
        seen = await _record(log, request)
        if seen.method == "HEAD":
            return Response(200, b"", content_type="text/plain")
        if seen.method == "GET" and seen.path == "/v1/models":
            return json_response({"data": [], "has_more": False,
                                  "first_id": None, "last_id": None})
        return json_response({"type": "error", "error": {
            "type": "not_found_error", "message": f"no route {seen.method} {seen.path}"}}, 404)

    router.add("POST", "/v1/messages", messages)
    router.add("POST", "/v1/messages/count_tokens", count_tokens)
    router.add(ANY_METHOD, "/", anything_else)
    router.add(ANY_METHOD, "/{rest:path}", anything_else)
    return router
