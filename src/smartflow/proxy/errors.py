"""One table from upstream failures to what the caller sees (OpenAI's error shape)."""

from __future__ import annotations

from smartflow.http.client import (
    ConnectTimeout,
    FirstByteTimeout,
    PoolTimeout,
    ReadTimeout,
    UpstreamError,
)
from smartflow.http.response import Response, error_response
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
