"""The dialect contract: what every API the gateway speaks to callers provides.

A dialect is one wire format on the caller's side (OpenAI chat completions,
Anthropic Messages; the Responses and Gemini APIs join later). It owns that
API's request validation, its usage parsing and stream tap, its error table
and renderer, and its encoders. The relay and the pipeline know no dialect:
they hold a ``Dialect`` and call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from smartflow.gateway_error import GatewayError
from smartflow.providers.base import Usage


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    usage: Usage | None
    finish_reason: str | None
    text: str | None = None
    error: GatewayError | None = None  # set when the stream ended on an error
    approx_text_chars: int = 0  # for estimating output tokens when no usage came


class StreamTap(Protocol):
    """Watches relayed bytes (whole events) for accounting; never changes them."""

    def observe(self, data: bytes) -> None: ...

    def outcome(self) -> StreamOutcome: ...


class Dialect(Protocol):
    """One caller-side API. Implementations are stateless singletons."""

    name: str

    def error_type(self, status: int) -> str:
        """The error ``type`` this API's provider sends with ``status``."""
        ...

    def error_body(self, error: GatewayError) -> bytes:
        """A whole error response body, as this API's provider writes it."""
        ...

    def error_event(self, error: GatewayError) -> bytes:
        """The SSE event that ends a stream on ``error`` in this API."""
        ...

    def new_tap(self, *, capture_text: bool) -> StreamTap:
        """A tap for a stream already in this API's format (passthrough)."""
        ...

    def usage_of_body(self, raw: bytes) -> Usage | None:
        """Usage of a whole (non-streamed) answer in this API's format."""
        ...
