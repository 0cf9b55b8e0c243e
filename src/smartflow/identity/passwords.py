"""Password hashes for admin users who log in without SSO.

Stored as ``scrypt$n$r$p$salt_b64$hash_b64``: the cost parameters travel with
the hash, so raising them later leaves existing hashes checkable. Hashing
takes tens of milliseconds of CPU on purpose; async callers run it in a
thread (``asyncio.to_thread``) rather than on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets

SCHEME = "scrypt"
N = 2**14
R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# A stored hash is read back from Redis: bound its parameters so a tampered
# record cannot make one login burn gigabytes or minutes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEM = 1 << 30


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(plain: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(plain.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=_MAX_MEM)


def hash_password(plain: str) -> str:
    """A salted scrypt hash of ``plain``, in the stored format."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _derive(plain, salt, N, R, P, HASH_BYTES)
    return f"{SCHEME}${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def check_password(plain: str, stored: str | None) -> bool:
    """Whether ``plain`` matches ``stored``; False for a missing or malformed hash.

    With no usable hash, a dummy hash is still computed, so a caller cannot
    tell an unknown user from a wrong password by the time the answer takes.
    """
    parsed = _parse(stored) if stored else None
    if parsed is None:
        n, r, p, salt, expected = _dummy()
        hmac.compare_digest(_derive(plain, salt, n, r, p, len(expected)), expected)
        return False
    n, r, p, salt, expected = parsed
    return hmac.compare_digest(_derive(plain, salt, n, r, p, len(expected)), expected)


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return None
    if (not 1 < n <= _MAX_N or n & (n - 1) or not 0 < r <= _MAX_R or not 0 < p <= _MAX_P
            or not salt or not 16 <= len(expected) <= 64 or 128 * r * n > _MAX_MEM):
        return None
    return n, r, p, salt, expected


@functools.cache
def _dummy() -> tuple[int, int, int, bytes, bytes]:
    parsed = _parse(hash_password(secrets.token_hex(16)))
    assert parsed is not None
    return parsed
