"""The dialect contract: what every API the gateway speaks to callers provides.

A dialect is one wire format on the caller's side (OpenAI chat completions,
Anthropic Messages; the Responses and Gemini APIs join later). It owns that
API's request validation, its usage parsing and stream tap, its error table
and renderer, and its encoders. The relay and the pipeline know no dialect:
they hold a ``Dialect`` and call it.
"""

from __future__ import annotations

from collections.abc import Callable
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


class NewTap(Protocol):
    def __call__(self, *, capture_text: bool) -> StreamTap: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """One caller-side API: its name and the module functions that speak it.

    ``error_type(status)``: the error ``type`` this API's provider sends with
    ``status``. ``error_body(error)``: a whole error response body, as that
    provider writes it. ``error_event(error)``: the SSE event that ends a
    stream on ``error``. ``new_tap(capture_text=...)``: a tap for a stream
    already in this API's format (passthrough). ``usage_of_body(raw)``: usage
    of a whole (non-streamed) answer. ``google_keys``: callers may also send
    their key Google's ways (``x-goog-api-key``, ``?key=``); only the Gemini
    API does, and a key in a URL is nowhere else part of the API.
    """

    name: str
    error_type: Callable[[int], str]
    error_body: Callable[[GatewayError], bytes]
    error_event: Callable[[GatewayError], bytes]
    new_tap: NewTap
    usage_of_body: Callable[[bytes], Usage | None]
    google_keys: bool = False
