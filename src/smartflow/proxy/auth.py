"""Who may call the proxy.

Without ``[auth] master_key`` the gateway is in development mode: any bearer,
any ``x-api-key``, or none is accepted (the context logs one warning per
worker when it is built, never per request). With a master key, a request
must carry it as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``
(on the Gemini routes also ``x-goog-api-key: <key>`` or ``?key=<key>``).
The pipeline's authenticate stage (``proxy.stages``) asks this object;
virtual keys join it there.
"""

from __future__ import annotations

import hmac

from smartflow.http.request import Request

_BEARER_PREFIX = "bearer "


def presented_key(request: Request, *, google_keys: bool = False) -> str | None:
    """The credential a caller sent: a bearer token, else ``x-api-key``; with
    ``google_keys`` (the Gemini API) also ``x-goog-api-key``, else ``?key=``."""
    authorization = request.header("authorization")
    if authorization is not None:
        if authorization[:7].lower() == _BEARER_PREFIX:
            return authorization[7:].strip()
        return authorization.strip()
    key = request.header("x-api-key")
    if key is None and google_keys:
        key = request.header("x-goog-api-key")
        if key is None and b"key=" in request.query_string:
            values = request.query.get("key")
            if values:
                key = values[0]
    return key


class Authenticator:
    __slots__ = ("_master_key",)

    def __init__(self, master_key: str) -> None:
        self._master_key = master_key.encode() if master_key else b""

    @property
    def is_development_mode(self) -> bool:
        return not self._master_key

    def is_master_key(self, key: str | None) -> bool:
        return bool(self._master_key) and key is not None and hmac.compare_digest(
            key.encode(), self._master_key)
