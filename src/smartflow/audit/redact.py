"""Keeps secrets out of captured bodies before they reach an audit sink.

A record never holds a header, so credentials sent as headers
(``Authorization``, ``x-api-key``, ``x-goog-api-key``, ``x-mcp-*``) cannot
reach one. What remains is a secret pasted into a prompt or echoed in an
answer. Each is replaced by ``[REDACTED]``, in two places:

* in the worker, before the record leaves the process (``Redactor``): the
  gateway's own secrets — virtual keys, the master key and the provider keys
  it knows — found by substring search (C speed);
* in the shipper, before any sink (``scrub_key_formats``): key formats of
  other issuers (OpenAI, Anthropic, Google, AWS, GitHub, Slack, JWTs), by
  one regular expression, off the request path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = b"[REDACTED]"
MIN_SECRET_LEN = 8  # shorter configured "keys" are placeholders, and would redact words

_VIRTUAL_KEY = re.compile(rb"sk-sf-[0-9a-f]{48}")

# Each needs enough characters that ordinary text does not match.
_KEY_FORMATS = re.compile(
    rb"sk-sf-[0-9a-f]{48}"
    rb"|sk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"  # OpenAI and Anthropic
    rb"|AIza[0-9A-Za-z_\-]{35}"  # Google API keys
    rb"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    rb"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
    rb"|xox[abprs]-[A-Za-z0-9\-]{10,}"  # Slack tokens
    rb"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"  # JWTs
)


def scrub_key_formats(data: bytes) -> bytes:
    """``data`` with every well-known key format replaced."""
    if _KEY_FORMATS.search(data) is None:
        return data
    return _KEY_FORMATS.sub(REDACTED, data)


class Redactor:
    """Built once per worker from the secrets the gateway holds: one regular
    expression for all of them and the virtual key format, so a body is
    scanned once, not once per secret."""

    __slots__ = ("_known", "_pattern")

    def __init__(self, known_secrets: Iterable[str]) -> None:
        unique = {s.encode() for s in known_secrets if len(s) >= MIN_SECRET_LEN}
        self._known = frozenset(s.decode() for s in unique)
        # Longest first, so a key that contains another is replaced whole.
        literals = [re.escape(s) for s in sorted(unique, key=len, reverse=True)]
        self._pattern = re.compile(b"|".join([*literals, _VIRTUAL_KEY.pattern]))

    def _extra(self, extra_secret: str) -> bytes | None:
        """A per-call secret (a vault key) not already among the known ones."""
        if len(extra_secret) < MIN_SECRET_LEN or extra_secret in self._known:
            return None
        return extra_secret.encode()

    def redact(self, data: bytes, extra_secret: str = "") -> bytes:
        """``data`` with every secret replaced; the same object when it had none."""
        extra = self._extra(extra_secret)
        if extra is not None and extra in data:
            data = data.replace(extra, REDACTED)
        if self._pattern.search(data) is not None:
            data = self._pattern.sub(REDACTED, data)
        return data

    def redact_pair(self, first: bytes, second: bytes, extra_secret: str = ""
                    ) -> tuple[bytes, bytes]:
        """Both bodies of a record; the usual case (nothing found) costs one
        search of each and no copy."""
        search = self._pattern.search
        if search(first) is None and search(second) is None:
            extra = self._extra(extra_secret)
            if extra is None or (extra not in first and extra not in second):
                return first, second
        return self.redact(first, extra_secret), self.redact(second, extra_secret)
