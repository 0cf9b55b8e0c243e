"""The listening side's TLS context."""

from __future__ import annotations

import ssl

from smartflow.config import ServerSettings


def build_server_ssl_context(server: ServerSettings) -> ssl.SSLContext | None:
    """ALPN h2 then http/1.1, or None when no certificate is configured."""
    if not server.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context
