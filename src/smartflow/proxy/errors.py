"""Upstream client failures as gateway errors, and refusals made before any route ran.

The upstream client (``smartflow.http.client``) raises one flat family of
errors; they are told apart here by type, never by class name: the timeout
family becomes a 504 (reason ``timeout``), every other one a 502 (reason
``connection``).
"""

from __future__ import annotations

from smartflow.dialects import anthropic_errors
from smartflow.gateway_error import GatewayError, Phase, Reason
from smartflow.http.client import (
    ConnectTimeout,
    FirstByteTimeout,
    PoolTimeout,
    ReadTimeout,
    UpstreamError,
)
from smartflow.http.errors import error_type_for_status
from smartflow.http.response import error_body

UPSTREAM_TIMEOUTS: tuple[type[UpstreamError], ...] = (
    ConnectTimeout, FirstByteTimeout, ReadTimeout, PoolTimeout)


def error_from_upstream_failure(exc: UpstreamError, phase: Phase) -> GatewayError:
    """A transport failure talking to the upstream, in ``phase`` of the call."""
    name = type(exc).__name__
    detail = str(exc)[:200]
    described = f"{name}{': ' + detail if detail else ''}"
    if isinstance(exc, UPSTREAM_TIMEOUTS):
        return GatewayError(504, f"The upstream timed out ({described}).", code="upstream_timeout",
                            reason=Reason.TIMEOUT, phase=phase)
    if phase is Phase.MID_STREAM:
        return GatewayError(502, f"The upstream connection failed mid-stream ({described}).",
                            code="upstream_error", reason=Reason.CONNECTION, phase=phase)
    return GatewayError(502, f"The upstream could not be reached ({described}).",
                        code="upstream_unavailable", reason=Reason.CONNECTION, phase=phase)


def is_anthropic_path(path: str) -> bool:
    """Routes whose callers expect Anthropic's error shape."""
    return path.startswith(("/anthropic/", "/v1/messages")) or path == "/anthropic"


def protocol_error_body(status: int, message: str, path: str | None) -> bytes:
    """The body for a refusal made before any route ran (a 413 for a declared
    length), in the error shape of the API the caller was speaking."""
    if path is not None and is_anthropic_path(path):
        return anthropic_errors.error_body(GatewayError(status, message))
    return error_body(message, error_type_for_status(status))
