"""What a mock upstream remembers, and what a test tells it to do next."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from smartflow.http.request import Request


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names, first value
    json: Any  # the parsed body, None when it was not JSON
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class UpstreamState:
    """Shared by every route of one mock server (mutable on purpose: tests steer it).

    fail_next          (status, body) answered once, before anything else; body is a
                       dict (sent as JSON) or bytes. fail_next_headers go with it.
    latency_s          wait before answering
    chunk_count        content chunks per stream
    chunk_interval_s   wait between stream chunks
    stall_after_chunks keep the stream open but send nothing after N chunks
    die_after_chunks   abort the connection after N chunks
    Model names steer one call: "fail-<status>", "context-overflow",
    "stall-stream", "die-stream", "content-filter" (Azure).
    """

    openai_api_key: str = "sk-openai-test"
    azure_api_key: str = "azure-test-key"
    mistral_api_key: str = "mistral-test-key"
    azure_api_versions: frozenset[str] = frozenset(
        {"2024-02-01", "2024-06-01", "2024-10-21", "2024-12-01-preview", "2025-01-01-preview"}
    )
    requests: list[RecordedRequest] = field(default_factory=list)
    fail_next: tuple[int, Any] | None = None
    fail_next_headers: list[tuple[str, str]] = field(default_factory=list)
    latency_s: float = 0.0
    chunk_count: int = 4
    chunk_interval_s: float = 0.0
    stall_after_chunks: int | None = None
    die_after_chunks: int | None = None
    stall_s: float = 3600.0
    completion_tokens: int = 16

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]


async def record(state: UpstreamState, request: Request) -> RecordedRequest:
    body = await request.body()
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    headers: dict[str, str] = {}
    for name, value in request.headers:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    recorded = RecordedRequest(request.method, request.path, request.query, headers, parsed, body)
    state.requests.append(recorded)
    return recorded


class UpstreamDied(Exception):
    """Raised inside a streaming body to make the server abort the connection."""
