"""A worker's short-lived copy of virtual key records, so a call costs no lookup.

The entry for a key holds the key's record and its team's and user's, read
together on a miss. An entry may be stale: the admission script compares
each record's revision in the same round trip that reserves the budget, and
a mismatch makes the caller ``refresh`` the entry and try again. So a key
blocked, deleted or regenerated on any node stops working on the next call
everywhere, while the common case costs no Redis read at all.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from smartflow.keys.admission import Scope
from smartflow.keys.records import Team, User, VirtualKey, parse_time
from smartflow.keys.store import IdentityStore, hash_key
from smartflow.store.keyspace import SCOPE_KEY, SCOPE_TEAM, SCOPE_USER

MAX_ENTRIES = 10_000


@dataclass(slots=True)
class KeyEntry:
    key: VirtualKey
    team: Team | None
    user: User | None
    fetched_s: float
    # Built once per fetch, not per call: the budget scopes of the key's
    # calls, its expiry as a unix time, and the principal its calls run as.
    scopes: tuple[Scope, ...] = ()
    expires_ts: float | None = None
    principal: Any = None
    restricts_models: bool = False  # the key's or its team's model patterns apply
    # whether any scope has a budget (a call's worst-case cost is then
    # needed), or a TPM limit (its estimated tokens)
    needs_cost: bool = False
    needs_tokens: bool = False
    # Monotonic time until which a call may use it with no other check: its
    # fetch's TTL, or its expiry if sooner; -inf once it is blocked, replaced
    # or dropped (set by KeyCache).
    usable_until: float = -math.inf

    def __post_init__(self) -> None:
        self.needs_cost = any(scope.needs_cost for scope in self.scopes)
        self.needs_tokens = any(scope.needs_tokens for scope in self.scopes)

    def is_refused(self, now_ts: float) -> bool:
        """Blocked or expired: no call is made with this key."""
        return self.key.blocked or (self.expires_ts is not None and self.expires_ts <= now_ts)


def scopes_of(key: VirtualKey, team: Team | None, user: User | None) -> tuple[Scope, ...]:
    scopes = [Scope.of(SCOPE_KEY, key.id, key.rev, key.limits)]
    if team is not None:
        scopes.append(Scope.of(SCOPE_TEAM, team.team_id, team.rev, team.limits))
    if user is not None:
        scopes.append(Scope.of(SCOPE_USER, user.user_id, user.rev, user.limits))
    return tuple(scopes)


class KeyCache:
    __slots__ = ("_entries", "_hashes", "_store", "_ttl_s", "_usable", "max_entries")

    def __init__(self, store: IdentityStore, ttl_s: float,
                 max_entries: int = MAX_ENTRIES) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self.max_entries = max_entries
        # key hash -> entry, oldest fetch first
        self._entries: OrderedDict[str, KeyEntry] = OrderedDict()
        # plaintext -> hash of keys that had an entry: a dict lookup instead of
        # a SHA-256 per call (the plaintext is in every request's headers anyway)
        self._hashes: dict[str, str] = {}
        # plaintext -> entry, for keys whose last call found them usable: the
        # common case is one dict lookup and a clock read (an entry replaced
        # or dropped is marked unusable, so a stale one here is never used)
        self._usable: dict[str, KeyEntry] = {}

    def usable(self, plaintext: str) -> KeyEntry | None:
        """The entry of a key that is fresh, not blocked and not expired, if
        this worker's last call with it found it so; else None (``cached``)."""
        entry = self._usable.get(plaintext)
        if entry is not None and time.monotonic() < entry.usable_until:
            return entry
        return None

    def cached(self, plaintext: str) -> KeyEntry | None:
        """The entry if this worker holds a fresh one: no I/O, no await. (The
        oldest fetch goes first when the cache is full: no reordering per call.)"""
        key_hash = self._hashes.get(plaintext)
        if key_hash is None:
            key_hash = hash_key(plaintext)
            entry = self._entries.get(key_hash)
            if entry is None:
                return None  # unknown keys are not remembered: a spray of them costs nothing
            hashes = self._hashes
            if len(hashes) >= self.max_entries:
                hashes.clear()
            hashes[plaintext] = key_hash
        else:
            entry = self._entries.get(key_hash)
        if entry is None:
            return None
        now = time.monotonic()
        if now - entry.fetched_s >= self._ttl_s:
            return None
        if now < entry.usable_until:
            usable = self._usable
            if len(usable) >= self.max_entries:
                usable.clear()
            usable[plaintext] = entry
        return entry

    async def refresh(self, key_hash: str) -> KeyEntry | None:
        """The key's entry read from Redis (and kept), or None for a key that
        does not exist."""
        key = await self._store.key_for_hash(key_hash)
        if key is None:
            _retire(self._entries.pop(key_hash, None))
            return None
        team = await self._store.get_team(key.team_id) if key.team_id else None
        user = await self._store.get_user(key.user_id) if key.user_id else None
        expires = parse_time(key.expires_at).timestamp() if key.expires_at else None
        now = time.monotonic()
        entry = KeyEntry(key, team, user, now, scopes_of(key, team, user),
                         expires, restricts_models=bool(key.models) or bool(
                             team is not None and team.models))
        if not key.blocked:
            until = now + self._ttl_s
            if expires is not None:
                until = min(until, now + (expires - time.time()))
            entry.usable_until = until
        entries = self._entries
        _retire(entries.get(key_hash))
        entries[key_hash] = entry
        entries.move_to_end(key_hash)
        while len(entries) > self.max_entries:
            _retire(entries.popitem(last=False)[1])
        return entry

    def forget(self, key_hash: str) -> None:
        _retire(self._entries.pop(key_hash, None))

    def forget_scope(self, kind: str, scope_id: str) -> None:
        """Drop every entry that holds the record of a key, team or user."""
        doomed = [key_hash for key_hash, entry in self._entries.items()
                  if (kind == SCOPE_KEY and entry.key.id == scope_id)
                  or (kind == SCOPE_TEAM and entry.key.team_id == scope_id)
                  or (kind == SCOPE_USER and entry.key.user_id == scope_id)]
        for key_hash in doomed:
            _retire(self._entries.pop(key_hash))

    def __len__(self) -> int:
        return len(self._entries)


def _retire(entry: KeyEntry | None) -> None:
    """An entry no call may use any more (replaced, dropped or evicted)."""
    if entry is not None:
        entry.usable_until = -math.inf
