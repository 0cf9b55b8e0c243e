"""Per-request cache controls, read from the caller's headers.

``Cache-Control: no-cache`` skips the read, ``no-store`` the write;
``x-smartflow-cache: skip`` both. ``x-smartflow-cache-ttl: N`` sets this
entry's TTL (seconds, clamped to the configured bounds),
``x-smartflow-cache-namespace`` a logical partition, and
``x-smartflow-cache-threshold`` this lookup's similarity threshold (it may
only be raised above the configured one: a caller cannot loosen what the
operator set, and a wrong hit serves one user's answer to another).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smartflow.gateway_error import GatewayError
from smartflow.http.request import Request

CACHE_HEADER = "x-smartflow-cache"
TTL_HEADER = "x-smartflow-cache-ttl"
NAMESPACE_HEADER = "x-smartflow-cache-namespace"
THRESHOLD_HEADER = "x-smartflow-cache-threshold"
DEFAULT_NAMESPACE = "default"

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class CacheControls:
    read: bool = True
    write: bool = True
    ttl_s: float | None = None
    namespace: str = DEFAULT_NAMESPACE
    threshold: float | None = None


def _bad(header: str, message: str) -> GatewayError:
    return GatewayError(400, f"{header}: {message}", code="invalid_header", param=header)


def read_controls(request: Request) -> CacheControls:
    read = write = True
    cache_control = request.header("cache-control")
    if cache_control:
        directives = {d.strip().lower() for d in cache_control.split(",")}
        if "no-cache" in directives:
            read = False
        if "no-store" in directives:
            write = False
    flag = request.header(CACHE_HEADER)
    if flag is not None:
        flag = flag.strip().lower()
        if flag in ("skip", "off", "bypass"):
            read = write = False
        elif flag not in ("", "on", "use"):
            raise _bad(CACHE_HEADER, f"expected 'skip', got {flag!r}.")
    ttl_s = None
    raw = request.header(TTL_HEADER)
    if raw is not None:
        try:
            ttl_s = float(raw)
        except ValueError:
            raise _bad(TTL_HEADER, f"expected seconds, got {raw!r}.") from None
        if not 0 < ttl_s < float("inf"):  # also refuses nan
            raise _bad(TTL_HEADER, f"expected a positive number of seconds, got {raw!r}.")
    namespace = request.header(NAMESPACE_HEADER)
    if namespace is None or namespace == "":
        namespace = DEFAULT_NAMESPACE
    elif not _NAMESPACE.match(namespace):
        raise _bad(NAMESPACE_HEADER, "1-64 characters of letters, digits and _ . : -")
    threshold = None
    raw = request.header(THRESHOLD_HEADER)
    if raw is not None:
        try:
            threshold = float(raw)
        except ValueError:
            raise _bad(THRESHOLD_HEADER, f"expected a number in (0, 1], got {raw!r}.") from None
        if not 0 < threshold <= 1:
            raise _bad(THRESHOLD_HEADER, f"expected a number in (0, 1], got {raw!r}.")
    return CacheControls(read, write, ttl_s, namespace, threshold)
