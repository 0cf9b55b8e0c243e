"""The upstream client's one flat error family.

Callers (the proxy, routing, retries) catch these and only these: every
`OSError`, `ssl.SSLError` and h11 error is translated at the edge where it
happens (connect, write, read), so no socket error ever leaks upward. The
class says *where* a call failed, which is what retry and fallback decide on:
nothing was sent (ConnectError, ConnectTimeout, PoolTimeout), the request was
sent but no answer came (FirstByteTimeout), or the answer broke off midway
(ReadTimeout, RemoteProtocolError).
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Base of every error the upstream client raises."""


class ConnectError(UpstreamError):
    """TCP connect or TLS handshake failed (refused, DNS, certificate, bad TLS files)."""


class ConnectTimeout(UpstreamError):
    """TCP connect plus TLS handshake took longer than connect_timeout_s."""


class FirstByteTimeout(UpstreamError):
    """The request was sent but no response head arrived within first_byte_timeout_s."""


class ReadTimeout(UpstreamError):
    """No bytes arrived for read_idle_timeout_s while reading a response."""


class WriteError(UpstreamError):
    """The connection broke while the request was still being sent."""


class RemoteProtocolError(UpstreamError):
    """The server broke HTTP/1.1: garbage, closed mid-response, or closed without answering."""


class PoolTimeout(UpstreamError):
    """Every connection to the origin stayed busy for the whole pool timeout."""


class InvalidRequest(UpstreamError):
    """The caller's request cannot be sent: bad URL, bad header, pool closed."""
