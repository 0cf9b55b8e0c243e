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

import os
import re
from collections.abc import Iterable

REDACTED = b"[REDACTED]"
MIN_SECRET_LEN = 8  # shorter configured "keys" are placeholders, and would redact words

_VIRTUAL_KEY_OPENING = b"sk-sf-"
_VIRTUAL_KEY = re.compile(_VIRTUAL_KEY_OPENING + rb"[0-9a-f]{48}")
VIRTUAL_KEY_LEN = len(_VIRTUAL_KEY_OPENING) + 48
MAX_SUBSTRING_SEARCHES = 32

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
    """Built once per worker from the secrets the gateway holds.

    Finding nothing, the usual case, must be cheap: every captured body of
    every call is searched. One regular expression over all the secrets
    (and the virtual key format, longest first) costs ~10-15 ns a byte of
    English text when the secrets open differently (``re`` then tries the
    alternation at every byte that could start one): 35-40 us for a 2 KB
    question and a 2 KB answer. So a few secrets are each searched for as
    a substring (C's fast search, ~0.4 ns a byte each), and the expression
    only confirms and replaces what was found.
    """

    __slots__ = ("_known", "_literals", "_pattern", "longest")

    def __init__(self, known_secrets: Iterable[str]) -> None:
        unique = {s.encode() for s in known_secrets if len(s) >= MIN_SECRET_LEN}
        self._known = frozenset(s.decode() for s in unique)
        # Longest first, so a key that contains another is replaced whole.
        ordered = sorted(unique, key=len, reverse=True)
        literals = [re.escape(s) for s in ordered]
        self._pattern = re.compile(b"|".join([*literals, _VIRTUAL_KEY.pattern]))
        # The expression alone is used when every secret opens like a virtual
        # key ("sk-": re then searches for that shared opening with its fast
        # scan, as fast), and past a few dozen secrets (one pass beats one
        # search per secret).
        needles = (*ordered, _VIRTUAL_KEY_OPENING)
        self.longest = max(len(ordered[0]) if ordered else 0, VIRTUAL_KEY_LEN)
        shared = len(os.path.commonprefix(needles)) >= 2
        self._literals: tuple[bytes, ...] | None = (
            None if shared or len(ordered) > MAX_SUBSTRING_SEARCHES else needles)

    def _holds_secret(self, data: bytes) -> bool:
        literals = self._literals
        if literals is not None and not any(map(data.__contains__, literals)):
            return False
        return self._pattern.search(data) is not None  # confirms "sk-sf-" is a key

    def cut(self, data: bytes, size: int) -> bytes:
        """The first ``size`` bytes of ``data``, or fewer: never the first
        part of a secret that the cut would split (redaction, which runs on
        what is kept, could not recognise it)."""
        if len(data) <= size:
            return data
        reach = self.longest
        start = max(0, size - reach)
        window = data[start:size + reach]
        if self._holds_secret(window):
            for match in self._pattern.finditer(window):
                if match.start() < size - start < match.end():
                    return data[:start + match.start()]
        return data[:size]

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
        if self._holds_secret(data):
            data = self._pattern.sub(REDACTED, data)
        return data

    def redact_pair(self, first: bytes, second: bytes, extra_secret: str = ""
                    ) -> tuple[bytes, bytes]:
        """Both bodies of a record; the usual case (nothing found) costs a
        few substring searches of each and no copy."""
        holds = self._holds_secret
        if not holds(first) and not holds(second):
            extra = self._extra(extra_secret)
            if extra is None or (extra not in first and extra not in second):
                return first, second
        return self.redact(first, extra_secret), self.redact(second, extra_secret)
