"""The one error a handler raises to answer with an HTTP error status.

The server turns an escaping `HTTPError` into `error_response(...)`, the OpenAI
error shape `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "timeout_error",
    505: "invalid_request_error",
}


def error_type_for_status(status: int) -> str:
    """The OpenAI error `type` a bare status maps to."""
    found = _TYPE_BY_STATUS.get(status)
    if found is not None:
        return found
    return "server_error" if status >= 500 else "invalid_request_error"


class HTTPError(Exception):
    """Raised by handlers (and by `Request.body()` / `.json()`) to answer `status`."""

    def __init__(
        self,
        status: int,
        message: str = "",
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message or str(status))
        self.status = status
        self.message = message or _default_message(status)
        self.type = type if type is not None else error_type_for_status(status)
        self.param = param
        self.code = code
        self.headers = headers


def _default_message(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
