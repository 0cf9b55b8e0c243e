"""One audit record as the sinks see it, and the columns it fills.

A gateway worker appends each call's record to the audit stream
(``audit.stream_writer``); the shipper reads the stream and turns every
entry into an ``AuditEntry`` (``audit.shipper``), which each sink writes
idempotently by ``call_id``.

``record`` holds the scalar fields, named exactly as the ``vas_log``
columns in ``COLUMNS`` (a column the record lacks is NULL). The bodies are
apart because they are large and optional: ``request_body`` is the request
as the caller sent it, ``response_body`` a whole (non-streamed) answer as
it was sent, ``question`` the last user turn's text and ``answer`` the
answer's text (for a stream: the assembled text, never the SSE bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

# (column, PostgreSQL type) in table order. ``ts`` is when the call began.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("call_id", "text"),
    ("ts", "timestamptz"),
    ("trace_id", "text"),
    ("kind", "text"),  # llm; later mcp, a2a
    ("method", "text"),
    ("route", "text"),  # the path, without the query string
    ("dialect", "text"),  # the ingress dialect: openai, anthropic, ...
    ("operation", "text"),  # chat, completions, embeddings, messages, ...
    ("auth", "text"),  # master, anonymous, virtual_key
    ("key_id", "text"),
    ("key_alias", "text"),
    ("user_id", "text"),
    ("team_id", "text"),
    ("model", "text"),  # the public model name asked for
    ("upstream_model", "text"),
    ("provider", "text"),
    ("deployment", "text"),
    ("fallback_chain", "text"),
    ("status", "integer"),  # the HTTP status the caller got (499: it went away)
    ("error_phase", "text"),
    ("error_code", "text"),
    ("error_reason", "text"),
    ("error_message", "text"),
    ("stream", "boolean"),
    ("prompt_tokens", "integer"),
    ("completion_tokens", "integer"),
    ("cached_tokens", "integer"),
    ("cost_usd", "double precision"),
    ("cost_estimated", "boolean"),
    ("cache_outcome", "text"),  # off, miss, hit_l1, hit_exact, hit_semantic
    ("latency_ms", "double precision"),
    ("ttfb_ms", "double precision"),
    ("attempts", "integer"),
    ("finish_reason", "text"),
    ("policies", "text[]"),  # matched policies (the policy engine fills them)
    ("guardrails", "jsonb"),  # guardrail decisions: [{"name", "action", ...}]
    ("verdict", "text"),  # the compliance verdict, when one was made
    ("energy_wh", "double precision"),
    ("co2e_g", "double precision"),
    ("tags", "text[]"),
    ("node", "text"),  # the gateway node (host name) that served the call
    ("bodies_truncated", "boolean"),
    ("request_body", "text"),
    ("response_body", "text"),
    ("question", "text"),
    ("answer", "text"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
BODY_COLUMNS: tuple[str, ...] = ("request_body", "response_body", "question", "answer")


@dataclass(slots=True)
class AuditEntry:
    call_id: str
    ts: datetime  # timezone-aware (UTC)
    record: dict[str, Any]  # scalar fields by column name; lists for text[], dicts/lists for jsonb
    request_body: str | None = None
    response_body: str | None = None
    question: str | None = None
    answer: str | None = None

    def value(self, column: str) -> Any:
        """The column's value for this entry (None when absent)."""
        if column == "call_id":
            return self.call_id
        if column == "ts":
            return self.ts
        if column in BODY_COLUMNS:
            return getattr(self, column)
        return self.record.get(column)


class SinkUnavailable(ConnectionError):
    """A sink could not be reached or refused a write; the shipper retries
    with back-off and acknowledges nothing meanwhile."""


class Sink(Protocol):
    """Where the shipper writes records. Every method raises
    ``SinkUnavailable`` (never anything else) when the sink cannot do it."""

    name: str  # "postgres", "mongodb": for metrics and logs

    async def open(self) -> None:
        """Connect, and create or migrate the schema. Called again after a failure."""

    async def write(self, entries: Sequence[AuditEntry]) -> None:
        """Commit every entry, or none: one transaction (or its equivalent).
        Idempotent by ``call_id``: an entry written before is not written twice."""

    async def maintain(self, now: datetime) -> list[str] | None:
        """Housekeeping, called about once a minute: retention (and, for
        PostgreSQL, the partitions the next days need). May name what it dropped."""

    async def aclose(self) -> None:
        """Release connections. Never raises."""
