"""Anthropic's error table and error shapes (``{"type":"error","error":{...}}``).

The table is what the Anthropic API itself sends. It has no 502 or 503 of its
own: a gateway-made 502 is ``api_error`` (its 500 family) and a 503 is
``overloaded_error`` (its "try again shortly", which Anthropic sends as 529).
"""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.gateway_error import GatewayError

ANTHROPIC_ERROR_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    found = ANTHROPIC_ERROR_TYPE_BY_STATUS.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(anthropic_error_body(error.status, error.message))


def error_event(error: GatewayError) -> bytes:
    """Anthropic ends a failed stream with an ``error`` event."""
    return (b"event: error\ndata: "
            + orjson.dumps(anthropic_error_body(error.status, error.message)) + b"\n\n")
