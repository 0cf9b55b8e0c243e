"""Provider API keys kept server-side, encrypted at rest.

A model's ``api_key`` may be a literal, ``env:NAME`` (resolved when the
config loads) or ``vault:NAME``: an entry stored here, encrypted with
AES-256-GCM under a key derived from ``[vault] encryption_key`` (else from
``[auth] master_key``). Redis only ever holds ciphertext; the entry's name is
the associated data, so a ciphertext copied under another name does not
decrypt. Values are write-only through the admin API: only a hint
(``sk-...abcd``) is ever shown.

Each entry is the hash ``keyspace.vault_entry(name)``; the names are also in
the set ``keyspace.VAULT_NAMES`` so they can be listed without a SCAN. The two
are separate keys in (possibly) separate cluster slots, so they are written
one after the other, hash first: a name in the set whose hash is gone is
skipped when listing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from smartflow.keys.records import InputError, check_id, utc_now_iso
from smartflow.store import keyspace
from smartflow.store.fast_client import Script

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from smartflow.store.fast_client import StoreClient

VAULT_PREFIX: Final = "vault:"
DISABLED_MESSAGE: Final = ("The provider key vault is disabled: set [vault] encryption_key "
                           "(or SMARTFLOW_VAULT__ENCRYPTION_KEY) or [auth] master_key.")
_HKDF_INFO: Final = b"smartflow-vault"
_NONCE_BYTES: Final = 12
_MAX_VALUE_CHARS: Final = 16384
_MAX_PROVIDER_CHARS: Final = 64
_MAX_DESCRIPTION_CHARS: Final = 1024
_FIELDS: Final = ("provider", "description", "created_at", "updated_at", "hint")
# keyspace.vault_entry("names") is the key of the names set itself.
_RESERVED_NAMES: Final = frozenset({"names"})

# Create or replace in one step, keeping the first created_at: a concurrent
# delete cannot leave a hash with half its fields.
_PUT = Script("""
redis.call('HSET', KEYS[1], 'ct', ARGV[1], 'provider', ARGV[2], 'description', ARGV[3],
           'updated_at', ARGV[4], 'hint', ARGV[5])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[4])
return 1
""")

# Change only the fields given (ARGV pairs), and only if the entry still
# exists: an update racing a delete must not resurrect a hash without `ct`.
_UPDATE = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
""")

_KEEP: Any = object()  # update(): leave this field as it is


class VaultUnavailable(Exception):
    """No vault key is configured, or an entry does not decrypt with it."""


class VaultEntryNotFound(KeyError):
    """A ``vault:NAME`` reference names no entry."""

    def __str__(self) -> str:  # KeyError's own str() quotes the message
        return str(self.args[0]) if self.args else "vault entry not found"


def vault_key_from_settings(encryption_key: str, master_key: str) -> bytes | None:
    """The 32-byte AES-256-GCM key, or None when neither secret is set (vault disabled)."""
    secret = encryption_key or master_key
    if not secret:
        return None
    return _derive_key(secret)


def _derive_key(secret: str) -> bytes:
    # cryptography is imported on first use: a worker whose vault is never
    # touched does not carry its ~9 MiB.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_HKDF_INFO).derive(secret.encode())


def _aes_gcm(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(key) != 32:
        raise ValueError("the vault key must be 32 bytes (AES-256)")
    return AESGCM(key)


def value_hint(value: str) -> str:
    """Enough to recognise a key, too little to use or narrow down a short one."""
    return f"{value[:3]}...{value[-4:]}" if len(value) >= 16 else "****"


def _associated_data(name: str) -> bytes:
    return b"smartflow-vault-entry:" + name.encode()


def _text(raw: object) -> str | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw)
    return text or None


def check_name(name: object) -> str:
    checked = check_id(name, "name")
    if checked in _RESERVED_NAMES:
        raise InputError(f"name: {checked!r} is reserved", "name")
    return checked


def _check_value(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError("value: expected the provider key, a non-empty string", "value")
    if len(value) > _MAX_VALUE_CHARS:
        raise InputError(f"value: at most {_MAX_VALUE_CHARS} characters", "value")
    return value


def _check_optional(value: object, param: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InputError(f"{param}: expected a string of at most {limit} characters", param)
    return value or None


class Vault:
    """Encrypted provider keys in Redis, with a short in-process cache of values."""

    __slots__ = ("_cache", "_cache_ttl_s", "_cipher", "_client", "_generation", "_inflight",
                 "_secret")

    def __init__(self, client: StoreClient, key: bytes | None, *,
                 cache_ttl_s: float = 5.0, secret: str = "") -> None:
        """``key``: the AES key; or ``secret``, from which it is derived on
        first use (see ``vault_key_from_settings``)."""
        self._client = client
        self._cipher: AESGCM | None
        self._cache_ttl_s = cache_ttl_s
        # name -> (value or None when absent, monotonic expiry)
        self._cache: dict[str, tuple[str | None, float]] = {}
        # One Redis read per name at a time: a burst of calls at a cache
        # expiry shares it instead of each paying a round trip.
        self._inflight: dict[str, asyncio.Future[str | None]] = {}
        # Bumped by every local write, so a read that started before it does
        # not cache what it saw.
        self._generation = 0
        self._secret = secret
        self._cipher = None if key is None else _aes_gcm(key)

    def __repr__(self) -> str:
        return f"Vault(enabled={self.enabled})"

    @property
    def enabled(self) -> bool:
        return self._cipher is not None or bool(self._secret)

    def _require_cipher(self) -> AESGCM:
        if self._cipher is None and self._secret:
            self._cipher = _aes_gcm(_derive_key(self._secret))
            self._secret = ""
        if self._cipher is None:
            raise VaultUnavailable(DISABLED_MESSAGE)
        return self._cipher

    def _encrypt(self, name: str, value: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._require_cipher().encrypt(nonce, value.encode(),
                                                      _associated_data(name))

    def _decrypt(self, name: str, blob: bytes) -> str:
        from cryptography.exceptions import InvalidTag

        cipher = self._require_cipher()
        try:
            plain = cipher.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:],
                                   _associated_data(name))
        except (InvalidTag, ValueError):
            raise VaultUnavailable(
                f"Vault entry {name!r} does not decrypt: it was stored under another "
                "vault key (encryption_key or master_key changed) or was tampered "
                "with. Store it again.") from None
        return plain.decode()

    # -- writes ---------------------------------------------------------------

    async def put(self, name: str, value: str, *, provider: str | None = None,
                  description: str | None = None) -> dict[str, Any]:
        """Create or replace an entry; returns its public view (never the value)."""
        name = check_name(name)
        value = _check_value(value)
        provider = _check_optional(provider, "provider", _MAX_PROVIDER_CHARS)
        description = _check_optional(description, "description", _MAX_DESCRIPTION_CHARS)
        blob = self._encrypt(name, value)
        entry = keyspace.vault_entry(name)
        await self._client.run_script(_PUT, [entry], [blob, provider or "", description or "",
                                                      utc_now_iso(), value_hint(value)])
        await self._client.execute("SADD", keyspace.VAULT_NAMES, name,
                                   key=keyspace.VAULT_NAMES)
        self._forget(name)
        view = await self.describe(name)
        if view is None:  # deleted in between by another admin
            raise VaultEntryNotFound(f"Vault entry {name!r} was deleted while being stored.")
        return view

    async def update(self, name: str, *, value: str | None = None, provider: Any = _KEEP,
                     description: Any = _KEEP) -> dict[str, Any] | None:
        """Change the fields given (a None provider/description clears it); None if absent."""
        name = check_name(name)
        changes: list[bytes | str] = []
        if value is not None:
            value = _check_value(value)
            changes += ["ct", self._encrypt(name, value), "hint", value_hint(value)]
        if provider is not _KEEP:
            changes += ["provider",
                        _check_optional(provider, "provider", _MAX_PROVIDER_CHARS) or ""]
        if description is not _KEEP:
            changes += ["description", _check_optional(description, "description",
                                                       _MAX_DESCRIPTION_CHARS) or ""]
        changes += ["updated_at", utc_now_iso()]
        entry = keyspace.vault_entry(name)
        found = await self._client.run_script(_UPDATE, [entry], changes)
        self._forget(name)
        if not found:
            return None
        return await self.describe(name)

    async def delete(self, name: str) -> bool:
        name = check_name(name)
        entry = keyspace.vault_entry(name)
        removed = await self._client.execute("DEL", entry, key=entry)
        await self._client.execute("SREM", keyspace.VAULT_NAMES, name,
                                   key=keyspace.VAULT_NAMES)
        self._forget(name)
        return bool(removed)

    def _forget(self, name: str) -> None:
        # Only this process's cache: other workers see the change within cache_ttl_s.
        self._generation += 1
        self._cache.pop(name, None)
        self._inflight.pop(name, None)

    # -- reads ----------------------------------------------------------------

    async def describe(self, name: str) -> dict[str, Any] | None:
        """The public view of an entry: everything but the value."""
        name = check_name(name)
        entry = keyspace.vault_entry(name)
        raw = await self._client.execute("HMGET", entry, "ct", *_FIELDS, key=entry)
        if not raw or raw[0] is None:
            return None
        fields = dict(zip(_FIELDS, (_text(item) for item in raw[1:]), strict=True))
        return {
            "name": name,
            "provider": fields["provider"],
            "description": fields["description"],
            "created_at": fields["created_at"],
            "updated_at": fields["updated_at"],
            "value_hint": fields["hint"] or "****",
        }

    async def list(self) -> list[dict[str, Any]]:
        raw = await self._client.execute("SMEMBERS", keyspace.VAULT_NAMES,
                                         key=keyspace.VAULT_NAMES)
        names = sorted(name for name in (_text(item) for item in raw or ()) if name)
        views = await asyncio.gather(*(self.describe(name) for name in names))
        return [view for view in views if view is not None]

    async def value(self, name: str) -> str | None:
        """The decrypted value, or None when there is no such entry.

        Cached for ``cache_ttl_s`` (misses too): routing reads this on every
        call, and a change made on another node is seen within the TTL.
        """
        cached = self._cache.get(name)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        self._require_cipher()
        pending = self._inflight.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._load(name))
            self._inflight[name] = pending
            pending.add_done_callback(self._read_done(name))
        # Shielded: one caller giving up must not cancel the read the others await.
        return await asyncio.shield(pending)

    def _read_done(self, name: str) -> Callable[[asyncio.Future[str | None]], None]:
        def done(future: asyncio.Future[str | None]) -> None:
            if self._inflight.get(name) is future:
                self._inflight.pop(name, None)
            if not future.cancelled():
                future.exception()  # retrieved: every awaiter may have given up
        return done

    async def _load(self, name: str) -> str | None:
        try:
            check_name(name)
        except InputError:
            return None  # no entry can have this name
        generation = self._generation
        entry = keyspace.vault_entry(name)
        blob = await self._client.execute("HGET", entry, "ct", key=entry)
        found = None if blob is None else self._decrypt(name, bytes(blob))
        if generation == self._generation:
            self._cache[name] = (found, time.monotonic() + self._cache_ttl_s)
        return found

    async def resolve(self, reference: str) -> str:
        """``vault:NAME`` -> the stored value; anything else is already the key."""
        if not reference.startswith(VAULT_PREFIX):
            return reference
        name = reference[len(VAULT_PREFIX):]
        found = await self.value(name)
        if found is None:
            raise VaultEntryNotFound(
                f"API key reference {reference!r}: no such vault entry. Store it with "
                f"POST /api/keys/providers {{\"name\": {name!r}, \"value\": ...}}.")
        return found
