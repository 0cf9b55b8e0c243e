"""Splitting an absolute http(s) URL into the origin a pool keys on and the request target.

Hand-rolled rather than `urllib.parse.urlsplit` because it runs on every
upstream call and only needs three cuts; the result for an origin prefix is
cached by the pool, so the string work here happens once per distinct origin.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidRequest
from .tls import DEFAULT_TLS_CONFIG, TLSConfig

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where connections go; connections are pooled and shared per Origin."""

    scheme: str  # "http" | "https"
    host: str  # DNS name or IP literal, IPv6 without brackets
    port: int
    tls: TLSConfig | None  # None for plain http

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def split_url(url: str) -> tuple[str, str]:
    """Cut `url` into (origin prefix "scheme://netloc", request target "/path?query")."""
    scheme_end = url.find("://")
    if scheme_end <= 0:
        raise InvalidRequest(f"not an absolute http(s) URL: {url!r}")
    netloc_start = scheme_end + 3
    cut = len(url)
    for stop in ("/", "?", "#"):
        index = url.find(stop, netloc_start)
        if index != -1 and index < cut:
            cut = index
    target = url[cut:]
    fragment = target.find("#")
    if fragment != -1:
        target = target[:fragment]
    if not target.startswith("/"):
        target = "/" + target
    return url[:cut], target


def parse_origin(prefix: str, tls: TLSConfig | None) -> tuple[Origin, str]:
    """Parse "scheme://host[:port]" into an Origin and the Host header value."""
    scheme_end = prefix.find("://")
    scheme = prefix[:scheme_end].lower()
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise InvalidRequest(f"unsupported URL scheme {scheme!r} in {prefix!r} (http, https)")
    netloc = prefix[scheme_end + 3 :]
    if "@" in netloc:
        raise InvalidRequest(f"credentials in the URL are not supported: {prefix!r}")
    port_text = ""
    if netloc.startswith("["):
        close = netloc.find("]")
        if close == -1:
            raise InvalidRequest(f"unterminated IPv6 address in {prefix!r}")
        host = netloc[1:close]
        rest = netloc[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidRequest(f"bad host in URL {prefix!r}")
            port_text = rest[1:]
    else:
        host, colon, port_text = netloc.partition(":")
        if colon and not port_text:
            raise InvalidRequest(f"empty port in URL {prefix!r}")
    if not host:
        raise InvalidRequest(f"no host in URL {prefix!r}")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidRequest(f"bad port {port_text!r} in URL {prefix!r}")
        port = int(port_text)
    else:
        port = default_port
    host = host.lower()
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port == default_port else f"{bracketed}:{port}"
    origin_tls = (tls or DEFAULT_TLS_CONFIG) if scheme == "https" else None
    return Origin(scheme, host, port, origin_tls), host_header
