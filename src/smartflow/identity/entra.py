"""Microsoft Entra ID sign-in: the SSO settings and verifying an OIDC id_token.

The admin UI runs the OIDC flow with Entra itself and hands the gateway the
``id_token`` (and the nonce it sent); the token is the credential, so every
check a relying party owes is made here: RS256 only, the signature against
the tenant's published keys (JWKS), issuer, audience, lifetime and nonce.
Only RS256 is accepted whatever the token's header says: honouring ``none``
or an HMAC algorithm would let anyone who knows the public key mint tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jwt

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

import orjson

from smartflow.http.client import UpstreamError, UpstreamPool
from smartflow.identity.roles import INTERNAL_USER, ROLES
from smartflow.keys.records import InputError
from smartflow.store import keyspace
from smartflow.store.fast_client import StoreClient

log = logging.getLogger(__name__)

ALGORITHM = "RS256"
MAX_ID_TOKEN_CHARS = 64 * 1024
MIN_RSA_BITS = 2048
_TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,127}$")
_PRINTABLE_PATTERN = re.compile(r"^[\x21-\x7e]{1,256}$")


class SsoError(Exception):
    """The id_token (or the fetch of the keys to check it) failed; the message says which check."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- settings -------------------------------------------------------------------

def default_issuer(tenant_id: str) -> str:
    return f"https://login.microsoftonline.com/{tenant_id}/v2.0"


def default_jwks_uri(tenant_id: str) -> str:
    return f"https://login.microsoftonline.com/{tenant_id}/discovery/v2.0/keys"


@dataclass(frozen=True, slots=True)
class SsoConfig:
    """Which Entra tenant and app registration admin sign-ins come from."""

    tenant_id: str
    client_id: str  # the app registration's id: the id_token's audience
    issuer: str = ""  # "" means default_issuer(tenant_id)
    jwks_uri: str = ""  # "" means default_jwks_uri(tenant_id)
    role_claim: str = "roles"  # App Role values: smartflow role names
    group_claim: str = "groups"  # group object ids: each one an "entra" team
    default_role: str = INTERNAL_USER  # for a user with no App Role
    allowed_clock_skew_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.issuer:
            object.__setattr__(self, "issuer", default_issuer(self.tenant_id))
        if not self.jwks_uri:
            object.__setattr__(self, "jwks_uri", default_jwks_uri(self.tenant_id))

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SsoConfig:
        """Checked settings from an admin request body; InputError names the bad field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise InputError(f"{unknown[0]}: unknown field", unknown[0])
        tenant_id = body.get("tenant_id")
        if not isinstance(tenant_id, str) or not _TENANT_PATTERN.match(tenant_id):
            raise InputError("tenant_id: expected the Entra tenant id (a GUID or domain)",
                             "tenant_id")
        client_id = body.get("client_id")
        if not isinstance(client_id, str) or not _PRINTABLE_PATTERN.match(client_id):
            raise InputError("client_id: expected the app registration's client id",
                             "client_id")
        values: dict[str, Any] = {"tenant_id": tenant_id, "client_id": client_id}
        for name in ("issuer", "jwks_uri"):
            if body.get(name) is not None:
                values[name] = _http_url(body[name], name)
        for name in ("role_claim", "group_claim"):
            if body.get(name) is not None:
                value = body[name]
                if not isinstance(value, str) or not _PRINTABLE_PATTERN.match(value):
                    raise InputError(f"{name}: expected a claim name", name)
                values[name] = value
        if body.get("default_role") is not None:
            if body["default_role"] not in ROLES:
                raise InputError(f"default_role: expected one of {', '.join(ROLES)}",
                                 "default_role")
            values["default_role"] = body["default_role"]
        if body.get("allowed_clock_skew_s") is not None:
            skew = body["allowed_clock_skew_s"]
            if isinstance(skew, bool) or not isinstance(skew, (int, float)) \
                    or not 0 <= skew <= 600:
                raise InputError("allowed_clock_skew_s: expected seconds between 0 and 600",
                                 "allowed_clock_skew_s")
            values["allowed_clock_skew_s"] = float(skew)
        return cls(**values)

    def view(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(self.view())

    @classmethod
    def from_json(cls, raw: bytes | str) -> SsoConfig:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise InputError("stored SSO settings are not a JSON object")
        return cls.from_body(data)


def _http_url(value: Any, param: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 2048 or not value.isprintable() \
            or " " in value:
        raise InputError(f"{param}: expected an http(s) URL", param)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"{param}: expected an http(s) URL", param)
    return value


async def load_sso_config(client: StoreClient) -> SsoConfig | None:
    """The stored settings; None when SSO was never configured (or the record is unusable)."""
    raw = await client.execute("GET", keyspace.SSO_CONFIG, key=keyspace.SSO_CONFIG)
    if raw is None:
        return None
    try:
        return SsoConfig.from_json(raw)
    except (InputError, orjson.JSONDecodeError):
        log.error("the stored SSO settings (%s) are unreadable; SSO is off",
                  keyspace.SSO_CONFIG)
        return None


async def save_sso_config(client: StoreClient, config: SsoConfig) -> None:
    await client.execute("SET", keyspace.SSO_CONFIG, config.to_json(), key=keyspace.SSO_CONFIG)


# -- the tenant's signing keys ----------------------------------------------------

@dataclass(slots=True)
class _KeySet:
    keys: dict[str, jwt.PyJWK]
    fetched_at: float  # when these keys were fetched
    attempted_at: float  # the last fetch attempt, successful or not


class JwksCache:
    """The JWKS of each configured ``jwks_uri``, fetched through our UpstreamPool.

    Kept ``ttl_s``; a token naming a kid not in the set (Entra rotated its
    keys) triggers a refetch, at most once per ``refetch_interval_s`` so a
    stream of forged kids cannot make us hammer Microsoft. If a refetch fails
    the keys in hand keep being used.
    """

    _MAX_URIS = 8  # the config changes rarely; old URIs' sets are simply dropped

    def __init__(self, pool: UpstreamPool, *, ttl_s: float = 3600.0,
                 refetch_interval_s: float = 30.0, timeout_s: float = 10.0,
                 max_bytes: int = 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._refetch_interval_s = refetch_interval_s
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._sets: dict[str, _KeySet] = {}
        self._lock = asyncio.Lock()

    async def signing_key(self, jwks_uri: str, kid: str) -> jwt.PyJWK | None:
        """The key named ``kid``, or None when the tenant does not publish it."""
        current = self._sets.get(jwks_uri)
        if current is None or self._clock() - current.fetched_at >= self._ttl_s:
            current = await self._refresh(jwks_uri, current)
        key = current.keys.get(kid)
        if key is None and self._clock() - current.attempted_at >= self._refetch_interval_s:
            current = await self._refresh(jwks_uri, current)
            key = current.keys.get(kid)
        return key

    async def _refresh(self, jwks_uri: str, seen: _KeySet | None) -> _KeySet:
        async with self._lock:
            latest = self._sets.get(jwks_uri)
            if latest is not seen and latest is not None:
                return latest  # another caller refreshed while this one waited
            now = self._clock()
            try:
                keys = await self._fetch(jwks_uri)
            except SsoError as exc:
                if latest is None:
                    raise
                log.warning("keeping the cached Entra signing keys: %s", exc.message)
                latest.attempted_at = now
                return latest
            if len(self._sets) >= self._MAX_URIS:
                self._sets.clear()
            fresh = _KeySet(keys=keys, fetched_at=now, attempted_at=now)
            self._sets[jwks_uri] = fresh
            return fresh

    async def _fetch(self, jwks_uri: str) -> dict[str, jwt.PyJWK]:
        where = f"the signing keys from {jwks_uri}"
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._pool.request(
                    "GET", jwks_uri, [("accept", "application/json")],
                    first_byte_timeout_s=self._timeout_s)
                async with response:
                    if response.status != 200:
                        raise SsoError(f"could not fetch {where}: HTTP {response.status}")
                    declared = response.header("content-length")
                    if declared is not None and declared.isdigit() \
                            and int(declared) > self._max_bytes:
                        raise SsoError(f"could not fetch {where}: the answer is too large")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > self._max_bytes:
                            raise SsoError(f"could not fetch {where}: the answer is too large")
                        chunks.append(chunk)
        except TimeoutError:
            raise SsoError(f"could not fetch {where}: timed out") from None
        except UpstreamError as exc:
            raise SsoError(f"could not fetch {where}: {exc}") from None
        return parse_jwks(b"".join(chunks), where)


def parse_jwks(body: bytes, where: str = "the JWKS") -> dict[str, jwt.PyJWK]:
    """The RS256 signing keys of a JWKS document, by kid; others are skipped."""
    import jwt

    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SsoError(f"{where}: not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise SsoError(f"{where}: no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if (not isinstance(kid, str) or not kid or entry.get("kty") != "RSA"
                or entry.get("use", "sig") != "sig"
                or entry.get("alg", ALGORITHM) != ALGORITHM):
            continue
        try:
            key = jwt.PyJWK(entry, algorithm=ALGORITHM)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if getattr(key.key, "key_size", 0) < MIN_RSA_BITS:
            continue
        keys[kid] = key
    if not keys:
        raise SsoError(f"{where}: no usable RS256 signing key")
    return keys


# -- the id_token -------------------------------------------------------------------

async def verify_id_token(token: str, nonce: str | None, config: SsoConfig,
                          jwks: JwksCache) -> dict[str, Any]:
    """The token's claims once every check passed; SsoError naming the first that failed."""
    import jwt

    if not isinstance(token, str) or not token or len(token) > MAX_ID_TOKEN_CHARS \
            or token.count(".") != 2:
        raise SsoError("malformed token: not a signed JWT")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise SsoError("malformed token: unreadable header") from None
    algorithm = header.get("alg")
    if algorithm != ALGORITHM:
        raise SsoError(f"unsupported algorithm {algorithm!r}: only RS256 is accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SsoError("unknown signing key: the token names no kid")
    key = await jwks.signing_key(config.jwks_uri, kid)
    if key is None:
        raise SsoError("unknown signing key: the tenant does not publish this kid")
    try:
        claims = jwt.decode(
            token, key, algorithms=[ALGORITHM], audience=config.client_id,
            issuer=config.issuer, leeway=config.allowed_clock_skew_s,
            options={"require": ["exp", "iat", "iss", "aud"]})
    except jwt.InvalidSignatureError:
        raise SsoError("bad signature") from None
    except jwt.ExpiredSignatureError:
        raise SsoError("token expired") from None
    except jwt.InvalidAudienceError:
        raise SsoError("wrong audience") from None
    except jwt.InvalidIssuerError:
        raise SsoError("wrong issuer") from None
    except jwt.ImmatureSignatureError:
        raise SsoError("token not yet valid (nbf or iat in the future)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise SsoError(f"malformed token: missing claim {exc.claim!r}") from None
    except jwt.InvalidAlgorithmError:
        raise SsoError("unsupported algorithm: only RS256 is accepted") from None
    except jwt.PyJWTError as exc:
        raise SsoError(f"malformed token: {exc}") from None
    _check_nonce(claims.get("nonce"), nonce)
    return claims


def _check_nonce(in_token: Any, expected: str | None) -> None:
    if expected:
        if not isinstance(in_token, str) or not hmac.compare_digest(
                in_token.encode(), expected.encode()):
            raise SsoError("nonce mismatch")
    elif in_token is not None:
        # The sign-in request carried a nonce: a caller that cannot name it is
        # replaying a token it did not ask for.
        raise SsoError("nonce mismatch: the token has a nonce and none was given")
