"""Admin session tokens: HS256 JWTs signed with keys every worker shares.

The signing keys live in one Redis hash (``keyspace.AUTH_SIGNING_KEYS``):
one field per key id (``{"secret": base64, "created": unix}``) and the field
``current`` naming the key new tokens are signed with. Every worker and node
reads the same hash, so a token issued by one verifies on all.

Key lifecycle: a key is current until it is ``key_max_age_s`` old (``issue``
then makes a new one) or until ``rotate()``. A token lives ``ttl_s``, so the
last token a key can have signed expires ``ttl_s + key_max_age_s`` after the
key was made; the key is dropped then, and verification refuses it even where
a worker still caches it. Creating and rotating keys is one Lua script, so two
workers starting at once end with one current key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from smartflow.identity.roles import ROLES
from smartflow.store import keyspace
from smartflow.store.fast_client import Script, StoreClient

ISSUER = "smartflow"
AUDIENCE = "smartflow-admin"
ALGORITHM = "HS256"
SECRET_BYTES = 32
# Tolerated disagreement between nodes' clocks on a token's issue time.
_IAT_SKEW_S = 60
_MAX_TOKEN_CHARS = 4096
_KID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
# Three base64url segments: anything else is refused before any parsing.
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_REQUIRED = ["sub", "role", "exp", "iat", "iss", "aud"]

# KEYS[1]: the signing-key hash. ARGV: candidate kid, its entry, now (unix s),
# key max age (s), how long a key is kept (s), "1" to rotate unconditionally.
# The candidate becomes current only when forced or when there is no fresh
# current key; keys past their keep time are dropped on every change.
# Answers the whole hash, so the caller refreshes its cache in the same trip.
_ENSURE_CURRENT = Script("""
local now = tonumber(ARGV[3])
local function created_of(entry)
  if not entry then return nil end
  local ok, data = pcall(cjson.decode, entry)
  if ok and type(data) == 'table' then return tonumber(data['created']) end
  return nil
end
local current = redis.call('HGET', KEYS[1], 'current')
local fresh = false
if current then
  local created = created_of(redis.call('HGET', KEYS[1], current))
  fresh = created ~= nil and created + tonumber(ARGV[4]) > now
end
if ARGV[6] == '1' or not fresh then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'current', ARGV[1])
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local field = all[i]
    if field ~= 'current' and field ~= ARGV[1] then
      local created = created_of(all[i + 1])
      if created == nil or created + tonumber(ARGV[5]) <= now then
        redis.call('HDEL', KEYS[1], field)
      end
    end
  end
end
return redis.call('HGETALL', KEYS[1])
""")


@dataclass(frozen=True, slots=True)
class SessionClaims:
    subject: str  # user id, or "master"
    role: str  # one of identity.roles.ROLES
    user_id: str | None  # None for a session of the master key
    expires_at: int  # unix seconds


@dataclass(frozen=True, slots=True)
class _SigningKey:
    secret: bytes
    created: int


class SessionTokens:
    """Issues and verifies admin session tokens; one per worker, shared by its routes."""

    def __init__(self, client: StoreClient, *, ttl_s: float, key_max_age_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        if not ttl_s > 0 or not key_max_age_s > 0:
            raise ValueError("ttl_s and key_max_age_s must be > 0")
        self._client = client
        self._ttl_s = int(max(1, round(ttl_s)))
        self._key_max_age_s = int(max(1, round(key_max_age_s)))
        self._clock = clock
        self._keys: dict[str, _SigningKey] = {}
        self._current: str | None = None
        self._reload_lock = asyncio.Lock()
        self._generation = 0  # bumped on each reload from Redis

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    @property
    def _keep_s(self) -> int:
        return self._ttl_s + self._key_max_age_s

    async def issue(self, *, subject: str, role: str,
                    user_id: str | None) -> tuple[str, int]:
        """A signed token and its lifetime in seconds; rotates an aged key first."""
        import jwt

        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        kid = await self._ensure_current(force=False)
        key = self._keys[kid]
        now = int(self._clock())
        claims: dict[str, Any] = {
            "sub": subject, "role": role, "uid": user_id, "iat": now,
            "exp": now + self._ttl_s, "iss": ISSUER, "aud": AUDIENCE,
        }
        token = jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": kid})
        return token, self._ttl_s

    async def rotate(self) -> str:
        """Make a new current key (older ones still verify until dropped); its kid."""
        return await self._ensure_current(force=True)

    async def verify(self, token: str) -> SessionClaims | None:
        """The token's claims, or None when it is not a valid, unexpired session token."""
        import jwt

        if (not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS
                or not _JWT_SHAPE.match(token)):
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str) \
                or not _KID_PATTERN.match(kid):
            return None
        key = self._keys.get(kid)
        if key is None:
            key = await self._reload_for(kid)
            if key is None:
                return None
        now = int(self._clock())
        if key.created + self._keep_s <= now:
            return None  # dropped (or due to be) even if this worker still caches it
        try:
            claims = jwt.decode(
                token, key.secret, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                # Time checks are done below against self._clock.
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                         "strict_aud": True, "require": _REQUIRED})
        except jwt.PyJWTError:
            return None
        return _claims_from(claims, now)

    # -- keys ---------------------------------------------------------------------

    async def _ensure_current(self, *, force: bool) -> str:
        now = int(self._clock())
        kid = secrets.token_hex(8)
        entry = orjson.dumps({
            "secret": base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii"),
            "created": now,
        })
        reply = await self._client.run_script(
            _ENSURE_CURRENT, [keyspace.AUTH_SIGNING_KEYS],
            [kid, entry, now, self._key_max_age_s, self._keep_s, "1" if force else "0"])
        self._load(reply)
        if self._current is None or self._current not in self._keys:
            raise RuntimeError("the session signing key could not be stored")
        return self._current

    async def _reload_for(self, kid: str) -> _SigningKey | None:
        """Read the keys from Redis once for an unknown kid (made by another worker).

        Concurrent callers share one read: whoever waited on the lock while
        another reloaded uses that result.
        """
        generation = self._generation
        async with self._reload_lock:
            if self._generation == generation:
                reply = await self._client.execute("HGETALL", keyspace.AUTH_SIGNING_KEYS,
                                                   key=keyspace.AUTH_SIGNING_KEYS)
                self._load(reply)
        return self._keys.get(kid)

    def _load(self, reply: Any) -> None:
        items = _pairs(reply)
        keys: dict[str, _SigningKey] = {}
        current = None
        for name, value in items.items():
            if name == "current":
                current = value.decode("ascii", "replace")
                continue
            key = _parse_key(value)
            if key is not None and _KID_PATTERN.match(name):
                keys[name] = key
        self._keys = keys
        self._current = current
        self._generation += 1


def _pairs(reply: Any) -> dict[str, bytes]:
    if isinstance(reply, dict):
        flat: list[Any] = [x for pair in reply.items() for x in pair]
    else:
        flat = list(reply or ())
    found: dict[str, bytes] = {}
    for name, value in zip(flat[::2], flat[1::2], strict=False):
        key = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        found[key] = value if isinstance(value, bytes) else str(value).encode()
    return found


def _parse_key(raw: bytes) -> _SigningKey | None:
    try:
        data = orjson.loads(raw)
        secret = base64.b64decode(data["secret"], validate=True)
        created = data["created"]
    except (orjson.JSONDecodeError, binascii.Error, KeyError, TypeError, ValueError):
        return None
    if len(secret) < 16 or isinstance(created, bool) or not isinstance(created, int):
        return None
    return _SigningKey(secret=secret, created=created)


def _claims_from(claims: dict[str, Any], now: int) -> SessionClaims | None:
    exp, iat = claims.get("exp"), claims.get("iat")
    subject, role, user_id = claims.get("sub"), claims.get("role"), claims.get("uid", False)
    if (not isinstance(exp, int) or not isinstance(iat, int) or isinstance(exp, bool)
            or isinstance(iat, bool) or exp <= now or iat > now + _IAT_SKEW_S):
        return None
    if not isinstance(subject, str) or not subject or role not in ROLES:
        return None
    if user_id is not None and not (isinstance(user_id, str) and user_id):
        return None  # also a token with no "uid" claim at all (False above)
    return SessionClaims(subject=subject, role=role, user_id=user_id, expires_at=exp)
