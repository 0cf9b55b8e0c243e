"""One table from upstream failures to what the caller sees (OpenAI's error shape)."""

from __future__ import annotations

import orjson

from smartflow.http.client import (
    ConnectTimeout,
    FirstByteTimeout,
    PoolTimeout,
    ReadTimeout,
    UpstreamError,
)
from smartflow.http.errors import error_type_for_status
from smartflow.http.response import Response, error_body, error_response
from smartflow.providers.anthropic_inbound import anthropic_error_body
from smartflow.providers.base import ProviderError

_TIMEOUTS = (ConnectTimeout, FirstByteTimeout, ReadTimeout, PoolTimeout)


def provider_error_from_upstream_failure(exc: UpstreamError) -> ProviderError:
    """Connect / protocol failures -> 502, timeouts -> 504."""
    name = type(exc).__name__
    detail = str(exc)[:200]
    if isinstance(exc, _TIMEOUTS):
        return ProviderError(504, f"The upstream timed out ({name}{': ' + detail if detail else ''}).",
                             "timeout_error", "upstream_timeout")
    return ProviderError(502, f"The upstream could not be reached ({name}"
                              f"{': ' + detail if detail else ''}).",
                         "server_error", "upstream_unavailable")


def provider_error_response(error: ProviderError,
                            headers: list[tuple[str, str]] | None = None) -> Response:
    out = list(headers) if headers else []
    if error.retry_after and not any(name == "retry-after" for name, _ in out):
        out.append(("retry-after", error.retry_after))
    return error_response(error.status, error.message, error.type, error.param, error.code, out)


def is_anthropic_path(path: str) -> bool:
    """Routes whose callers expect Anthropic's error shape."""
    return path.startswith(("/anthropic/", "/v1/messages")) or path == "/anthropic"


def protocol_error_body(status: int, message: str, path: str | None) -> bytes:
    """The body for a refusal made before any route ran (a 413 for a declared
    length), in the error shape of the API the caller was speaking."""
    if path is not None and is_anthropic_path(path):
        return orjson.dumps(anthropic_error_body(status, message))
    return error_body(message, error_type_for_status(status))
