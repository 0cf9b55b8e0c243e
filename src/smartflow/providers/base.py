"""The provider adapter contract.

Adapters are sans-IO: they turn an OpenAI-shaped request (a dict already
validated by the proxy) into an ``UpstreamCall``, and upstream status, headers
and bytes back into OpenAI shapes. The proxy owns every socket, timeout and
retry; an adapter never awaits anything. That keeps each wire format testable
byte by byte, and keeps one place (the proxy) deciding what a failure means.

An adapter whose upstream already speaks OpenAI's format (``speaks_openai``)
lets the proxy relay response bytes untouched; its decoders are then used only
where a translation is unavoidable (for example ``/v1/messages`` in front of an
OpenAI-speaking model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from smartflow.gateway_error import GatewayError, Phase, Reason

Headers = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens, and per call."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_input_per_mtok: float = 0.0
    per_request: float = 0.0


@dataclass(frozen=True, slots=True)
class Target:
    """One resolved deployment: where a call for a public model name goes."""

    public_name: str
    provider: str
    model: str  # the upstream model id
    api_base: str
    api_key: str = ""
    api_version: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    prices: Prices = field(default_factory=Prices)
    context_window: int = 0
    max_output_tokens: int = 0  # the model's output limit (0: unknown)
    tls_ca_file: str = ""
    tls_client_cert_file: str = ""
    tls_client_key_file: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    method: str
    url: str
    headers: Headers
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class ProviderError(GatewayError):
    """A failure reported by (or about) an upstream provider.

    ``status`` is what the caller gets; ``code`` is ``context_length_exceeded``
    for a context-length error whatever the provider called it; ``type`` is
    the provider's own OpenAI-style type when it sent one, else None (the
    caller's dialect picks one from the status).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: str | None = None,
        *,
        reason: Reason = Reason.UPSTREAM_STATUS,
        phase: Phase = Phase.BEFORE_FIRST_BYTE,
    ) -> None:
        super().__init__(status, message, type, code, param, retry_after,
                         reason=reason, phase=phase)


class UnsupportedOperation(ProviderError):
    def __init__(self, provider: str, operation: str) -> None:
        super().__init__(400, f"provider {provider!r} does not support {operation}",
                         "invalid_request_error", "unsupported_operation",
                         reason=Reason.CLIENT, phase=Phase.BEFORE_SEND)


class StreamDecoder(Protocol):
    """Incremental: upstream body bytes in, OpenAI ``chat.completion.chunk`` dicts out.

    ``feed`` takes bytes split anywhere (mid-line, mid-UTF-8); ``close`` flushes
    what is left at the end of the body. The decoder also keeps the usage and
    finish reason it has seen, for accounting.
    """

    usage: Usage | None
    finish_reason: str | None

    def feed(self, data: bytes) -> list[dict[str, Any]]: ...

    def close(self) -> list[dict[str, Any]]: ...


class ProviderAdapter(Protocol):
    name: str
    speaks_openai: bool

    def chat_request(self, target: Target, body: dict[str, Any], *, stream: bool) -> UpstreamCall:
        ...

    def chat_response(self, target: Target, status: int, headers: Headers,
                      body: bytes) -> dict[str, Any]:
        """A successful upstream body as an OpenAI ``chat.completion``."""
        ...

    def chat_stream_decoder(self, target: Target, *, include_usage: bool) -> StreamDecoder:
        ...

    def embeddings_request(self, target: Target, body: dict[str, Any]) -> UpstreamCall:
        """Raises UnsupportedOperation where the provider has no embeddings."""
        ...

    def embeddings_response(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> dict[str, Any]:
        ...

    def error_from_upstream(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> ProviderError:
        ...


def join_url(api_base: str, path: str) -> str:
    return api_base.rstrip("/") + "/" + path.lstrip("/")
