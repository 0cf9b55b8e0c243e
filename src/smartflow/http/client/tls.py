"""TLS settings per origin and the cache of SSL contexts built from them.

Building an `SSLContext` loads the CA bundle from disk (milliseconds), so a
pool builds one context per distinct `TLSConfig` and keeps it; contexts are
thread-safe and shared by every connection to origins with the same config.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """How to verify an upstream and how to identify to it.

    ca_file: PEM bundle to trust instead of the system CAs ("" = system CAs).
    client_cert_file / client_key_file: client certificate for mutual TLS
    ("" = none; the key may live in the cert file, then leave key empty).
    """

    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""


DEFAULT_TLS_CONFIG = TLSConfig()


def build_ssl_context(config: TLSConfig) -> ssl.SSLContext:
    """A verifying client context for `config`; raises ValueError naming the bad file."""
    if config.client_key_file and not config.client_cert_file:
        raise ValueError("client_key_file is set but client_cert_file is empty")
    try:
        context = ssl.create_default_context(cafile=config.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load ca_file {config.ca_file!r}: {exc}") from None
    if config.client_cert_file:
        try:
            context.load_cert_chain(config.client_cert_file, config.client_key_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load client certificate {config.client_cert_file!r}"
                f" / key {config.client_key_file!r}: {exc}"
            ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


class SSLContextCache:
    """One SSLContext per TLSConfig, built on first use."""

    __slots__ = ("_contexts",)

    def __init__(self) -> None:
        self._contexts: dict[TLSConfig, ssl.SSLContext] = {}

    def get(self, config: TLSConfig) -> ssl.SSLContext:
        context = self._contexts.get(config)
        if context is None:
            context = build_ssl_context(config)
            self._contexts[config] = context
        return context
