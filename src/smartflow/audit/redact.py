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
  one regular expression, off the request path; also in the record's
  free-text fields (``scrub_text_fields``).

A body cut at the capture cap is never cut through one of them
(``Redactor.cut``): what was left of it could no longer be recognised.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

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


# How the formats above open, and the key characters that may follow: a cut
# through such a run could keep a part too short for ``_KEY_FORMATS`` to
# recognise in the shipper, so ``Redactor.cut`` cuts before it.
_KEY_OPENING = re.compile(
    rb"(?:sk-|AIza|AKIA|ASIA|gh[pousr]_|xox[abprs]-|eyJ)[A-Za-z0-9_\-.]*")  # _KEY_RUN_BYTES
# Bytes before a cut searched for such an opening: a JWT can run to a few KB.
# A longer token cut still keeps enough of itself for the shipper to match.
OPENING_REACH = 4096


# Every match of _KEY_FORMATS is a run of at least this many of these bytes
# (the shortest, a Slack token: "xoxb-" and ten more).
_KEY_RUN_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
MIN_KEY_RUN = 15
_AS_RUNS = bytes(0x6B if byte in _KEY_RUN_BYTES else 0x20 for byte in range(256))  # k, or space
_RUN = b"k" * MIN_KEY_RUN
MAX_RUNS_SEARCHED = 8  # past this (code, say) one search over the rest is cheaper


def holds_key_format(data: bytes) -> bool:
    """Whether ``_KEY_FORMATS`` matches in ``data``. The expression alone costs
    15-20 ns a byte of English text (it tries its alternation at every "s",
    "e", "g" ...): it runs only over the long runs of key characters, which
    C finds in a copy of the text mapped to two bytes."""
    runs = data.translate(_AS_RUNS)
    search = _KEY_FORMATS.search
    at = runs.find(_RUN)
    searched = 0
    while at >= 0:
        start = runs.rfind(b" ", 0, at) + 1
        searched += 1
        if searched > MAX_RUNS_SEARCHED:
            return search(data, start) is not None
        end = runs.find(b" ", at + MIN_KEY_RUN)
        if end < 0:
            end = len(data)
        if search(data, start, end) is not None:
            return True
        at = runs.find(_RUN, end)
    return False


def scrub_key_formats(data: bytes) -> bytes:
    """``data`` with every well-known key format replaced."""
    if not holds_key_format(data):
        return data
    return _KEY_FORMATS.sub(REDACTED, data)


# The record's fields whose text a caller or a provider chose (the rest are
# the gateway's own names, ids and numbers).
FREE_TEXT_FIELDS = ("error_message", "model", "upstream_model", "finish_reason", "trace_id",
                    "error_code")


def scrub_text_fields(fields: dict[str, object]) -> None:
    """The free-text fields of a record (and its tags) with the key formats
    replaced: an error message can quote a key, and so can a model name."""
    for name in FREE_TEXT_FIELDS:
        value = fields.get(name)
        if isinstance(value, str) and value:
            fields[name] = _scrubbed(value)
    tags = fields.get("tags")
    if isinstance(tags, list) and tags:
        fields["tags"] = [_scrubbed(tag) if isinstance(tag, str) else tag for tag in tags]


def _scrubbed(text: str) -> str:
    return _on_text(scrub_key_formats, text)


def _on_text(transform: Callable[[bytes], bytes], text: str) -> str:
    """``transform`` (which answers its argument when it changes nothing) on text."""
    data = text.encode("utf-8", "surrogatepass")
    done = transform(data)
    return text if done is data else done.decode("utf-8", "replace")


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

    def cut(self, data: bytes, size: int, extra_secret: str = "") -> bytes:
        """The first ``size`` bytes of ``data``, or fewer: never the first
        part of a secret that the cut would split, since redaction, which
        runs on what is kept, could not recognise it. Secrets are the known
        ones, the call's own (``extra_secret``, a vault key) and anything
        that opens like another issuer's key (the shipper's formats)."""
        if len(data) <= size:
            return data
        extra = self._extra(extra_secret)
        at = self._cut_point(data, size, extra)
        while at < size:  # moved back: the new cut must not split one either
            size, at = at, self._cut_point(data, at, extra)
        return data[:at]

    def _cut_point(self, data: bytes, size: int, extra: bytes | None) -> int:
        """``size``, or the start of the first secret a cut there would split."""
        at = size
        reach = self.longest
        start = max(0, size - reach)
        window = data[start:size + reach]
        if self._holds_secret(window):
            for match in self._pattern.finditer(window):
                if match.start() < size - start < match.end():
                    at = start + match.start()
                    break
        if extra is not None:
            found = _split_start(data, size, extra)
            if found is not None and found < at:
                at = found
        # Only a run of key characters through the cut can be a split key.
        if _is_key_byte(data, size - 1) and _is_key_byte(data, size):
            # Past the cut far enough to see an opening it would split ("xoxb-").
            for match in _KEY_OPENING.finditer(data, max(0, size - OPENING_REACH), size + 8):
                if match.start() < size < match.end():
                    at = min(at, match.start())
                    break
        return at

    def _extra(self, extra_secret: str) -> bytes | None:
        """A per-call secret (a vault key) not already among the known ones."""
        if len(extra_secret) < MIN_SECRET_LEN or extra_secret in self._known:
            return None
        return extra_secret.encode()

    def redact(self, data: bytes, extra_secret: str = "") -> bytes:
        """``data`` with every secret replaced; the same object when it had none."""
        extra = self._extra(extra_secret)
        return self._redact(data, () if extra is None else (extra,))

    def _redact(self, data: bytes, extras: Iterable[bytes]) -> bytes:
        """``data`` with the per-call secrets ``extras`` (longest first) and
        the known ones replaced; the same object when it had none."""
        for extra in extras:
            if extra in data:
                data = data.replace(extra, REDACTED)
        if self._holds_secret(data):
            data = self._pattern.sub(REDACTED, data)
        return data

    def redact_text(self, text: str, extra_secret: str = "") -> str:
        """``text`` (an error message) with every secret replaced."""
        return _on_text(lambda data: self.redact(data, extra_secret), text)

    def redact_batch(self, bodies: list[bytes], extra_secrets: Iterable[str]) -> list[bytes]:
        """The bodies of a batch of records with every secret replaced: the
        known ones and each call's own (``extra_secrets``, searched for in
        every body, which can only redact more). The usual case, nothing
        found, costs one search of all the bodies joined and answers
        ``bodies`` itself: a few searches per body cost several times as
        much, in calls rather than bytes."""
        # Longest first, so a key that contains another is replaced whole.
        extras = sorted({extra for extra in map(self._extra, extra_secrets) if extra is not None},
                        key=len, reverse=True)
        # A separator no secret holds: a match never spans two bodies.
        joined = b"\0".join(bodies)
        if not self._holds_secret(joined) and not any(map(joined.__contains__, extras)):
            return bodies
        return [self._redact(body, extras) for body in bodies]


def _is_key_byte(data: bytes, index: int) -> bool:
    return 0 <= index < len(data) and data[index] in _KEY_RUN_BYTES


def _split_start(data: bytes, size: int, secret: bytes) -> int | None:
    """Where ``secret`` starts in ``data`` when a cut at ``size`` would split
    it; also when ``data`` ends inside it (a stream's text is kept only so far)."""
    first = max(0, size - len(secret) + 1)
    found = data.find(secret, first, size + len(secret) - 1)
    if found >= 0:
        return found
    if len(data) < size + len(secret) - 1:
        for start in range(first, size):
            if secret.startswith(data[start:]):
                return start
    return None
