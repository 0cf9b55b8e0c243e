"""Virtual keys, teams and users in Redis: the admin API's system of record.

Not on the request path, except ``key_for_hash`` on a worker's cache miss.
Every write bumps the record's ``rev`` in the same script that writes it, so
a worker holding an older copy learns of the change on its next admission
(``keys.admission`` compares revisions in the same round trip).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from smartflow.keys.money import to_usd
from smartflow.keys.periods import PeriodClock
from smartflow.keys.records import (
    Limits,
    Team,
    User,
    VirtualKey,
    record_to_json_dict,
    team_from,
    user_from,
    utc_now_iso,
    virtual_key_from,
)
from smartflow.store import keyspace
from smartflow.store.fast_client import Script, StoreClient

KEY_PREFIX = "sk-sf-"
KEY_HEX_LENGTH = 48
_HEX = frozenset("0123456789abcdef")

R = TypeVar("R", VirtualKey, Team, User)

# Write a record and bump its revision in one step. A create (ARGV[3] == "1")
# refuses to overwrite: two admins creating the same team id cannot both win.
_SAVE = Script("""
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'blocked', ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'rev', 1)
""")


def new_plaintext_key() -> str:
    return KEY_PREFIX + secrets.token_hex(KEY_HEX_LENGTH // 2)


def looks_like_virtual_key(presented: str) -> bool:
    return (len(presented) == len(KEY_PREFIX) + KEY_HEX_LENGTH
            and presented.startswith(KEY_PREFIX)
            and _HEX.issuperset(presented[len(KEY_PREFIX):]))


def hash_key(plaintext: str) -> str:
    # A virtual key is 192 random bits: a plain SHA-256 is enough (a slow
    # password hash protects guessable secrets, and would cost every miss).
    return hashlib.sha256(plaintext.encode()).hexdigest()


def key_hint(plaintext: str) -> str:
    return f"{plaintext[:10]}...{plaintext[-4:]}"


class AlreadyExists(Exception):
    pass


class IdentityStore:
    """CRUD for keys, teams and users, and their spend, over one StoreClient."""

    def __init__(self, client: StoreClient, clock: PeriodClock) -> None:
        self.client = client
        self.clock = clock

    # -- generic record plumbing ------------------------------------------------

    async def _read(self, kind: keyspace.ScopeKind, record_id: str,
                    build: Callable[[dict[str, Any], int], R]) -> R | None:
        rec = keyspace.ScopeKeys(kind, record_id).rec
        raw = await self.client.execute("HMGET", rec, "json", "rev", key=rec)
        if not raw or raw[0] is None:
            return None
        return build(orjson.loads(raw[0]), int(raw[1] or 0))

    async def _write(self, kind: keyspace.ScopeKind, record_id: str, record: R,
                     *, create: bool = False) -> R:
        rec = keyspace.ScopeKeys(kind, record_id).rec
        blocked = "1" if getattr(record, "blocked", False) else "0"
        document = orjson.dumps(record_to_json_dict(record))
        rev = await self.client.run_script(_SAVE, [rec], [document, blocked,
                                                          "1" if create else "0"])
        if rev == -1:
            raise AlreadyExists(record_id)
        await self._announce(kind, record_id)
        return replace(record, rev=int(rev), updated_at=record.updated_at)

    async def _announce(self, kind: keyspace.ScopeKind, record_id: str) -> None:
        """Every worker drops its lease and cached copy (``keys.revocations``)."""
        await self.client.execute("PUBLISH", keyspace.REVOCATIONS_CHANNEL,
                                  f"{kind}:{record_id}")

    async def _ids(self, set_key: str) -> list[str]:
        members = await self.client.execute("SMEMBERS", set_key, key=set_key)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members or ())

    async def _delete_scope(self, kind: keyspace.ScopeKind, record_id: str) -> None:
        keys = keyspace.ScopeKeys(kind, record_id)
        for name in (keys.rec, *keys.counters()):
            await self.client.execute("DEL", name, key=name)
        await self._announce(kind, record_id)

    # -- virtual keys -------------------------------------------------------------

    async def create_key(self, template: VirtualKey) -> tuple[VirtualKey, str]:
        plaintext = new_plaintext_key()
        now = utc_now_iso()
        key = replace(template, id="vk-" + secrets.token_hex(8), key_hash=hash_key(plaintext),
                      key_hint=key_hint(plaintext), created_at=now, updated_at=now)
        key = await self._write(keyspace.SCOPE_KEY, key.id, key, create=True)
        index = keyspace.key_hash_index(key.key_hash)
        await self.client.execute("SET", index, key.id, key=index)
        await self.client.execute("SADD", keyspace.VKEY_IDS, key.id, key=keyspace.VKEY_IDS)
        return key, plaintext

    async def get_key(self, key_id: str) -> VirtualKey | None:
        return await self._read(keyspace.SCOPE_KEY, key_id, virtual_key_from)

    async def key_for_hash(self, key_hash: str) -> VirtualKey | None:
        index = keyspace.key_hash_index(key_hash)
        key_id = await self.client.execute("GET", index, key=index)
        if key_id is None:
            return None
        key = await self.get_key(key_id.decode())
        if key is None or key.key_hash != key_hash:  # regenerated or deleted meanwhile
            return None
        return key

    async def list_keys(self) -> list[VirtualKey]:
        keys = []
        for key_id in await self._ids(keyspace.VKEY_IDS):
            key = await self.get_key(key_id)
            if key is not None:
                keys.append(key)
        return keys

    async def save_key(self, key: VirtualKey) -> VirtualKey:
        return await self._write(keyspace.SCOPE_KEY, key.id,
                                 replace(key, updated_at=utc_now_iso()))

    async def regenerate_key(self, key: VirtualKey) -> tuple[VirtualKey, str]:
        plaintext = new_plaintext_key()
        old_index = keyspace.key_hash_index(key.key_hash)
        renewed = await self.save_key(replace(key, key_hash=hash_key(plaintext),
                                              key_hint=key_hint(plaintext)))
        index = keyspace.key_hash_index(renewed.key_hash)
        await self.client.execute("SET", index, renewed.id, key=index)
        await self.client.execute("DEL", old_index, key=old_index)
        return renewed, plaintext

    async def delete_key(self, key: VirtualKey) -> None:
        index = keyspace.key_hash_index(key.key_hash)
        await self.client.execute("DEL", index, key=index)
        await self.client.execute("SREM", keyspace.VKEY_IDS, key.id, key=keyspace.VKEY_IDS)
        await self._delete_scope(keyspace.SCOPE_KEY, key.id)

    # -- teams ------------------------------------------------------------------

    async def create_team(self, team: Team) -> Team:
        now = utc_now_iso()
        team = replace(team, created_at=now, updated_at=now)
        saved = await self._write(keyspace.SCOPE_TEAM, team.team_id, team, create=True)
        await self.client.execute("SADD", keyspace.TEAM_IDS, team.team_id,
                                  key=keyspace.TEAM_IDS)
        for user_id in team.members:
            await self._link_user(user_id, team.team_id, add=True)
        return saved

    async def get_team(self, team_id: str) -> Team | None:
        return await self._read(keyspace.SCOPE_TEAM, team_id, team_from)

    async def list_teams(self) -> list[Team]:
        teams = []
        for team_id in await self._ids(keyspace.TEAM_IDS):
            team = await self.get_team(team_id)
            if team is not None:
                teams.append(team)
        return teams

    async def save_team(self, team: Team, *, previous: Team | None = None) -> Team:
        saved = await self._write(keyspace.SCOPE_TEAM, team.team_id,
                                  replace(team, updated_at=utc_now_iso()))
        before = set(previous.members) if previous is not None else set()
        after = set(team.members)
        for user_id in after - before:
            await self._link_user(user_id, team.team_id, add=True)
        for user_id in before - after:
            await self._link_user(user_id, team.team_id, add=False)
        return saved

    async def delete_team(self, team: Team) -> None:
        for user_id in team.members:
            await self._link_user(user_id, team.team_id, add=False)
        await self.client.execute("SREM", keyspace.TEAM_IDS, team.team_id,
                                  key=keyspace.TEAM_IDS)
        await self._delete_scope(keyspace.SCOPE_TEAM, team.team_id)

    async def _link_user(self, user_id: str, team_id: str, *, add: bool) -> None:
        """Keep the user's own team list in step with the team's members."""
        user = await self.get_user(user_id)
        if user is None:
            if not add:
                return
            user = await self.create_user(User(user_id=user_id))
        teams = [t for t in user.teams if t != team_id]
        if add:
            teams.append(team_id)
        if tuple(teams) != user.teams:
            await self.save_user(replace(user, teams=tuple(teams)))

    # -- users --------------------------------------------------------------------

    async def create_user(self, user: User) -> User:
        now = utc_now_iso()
        user = replace(user, created_at=now, updated_at=now)
        saved = await self._write(keyspace.SCOPE_USER, user.user_id, user, create=True)
        await self.client.execute("SADD", keyspace.USER_IDS, user.user_id,
                                  key=keyspace.USER_IDS)
        return saved

    async def get_user(self, user_id: str) -> User | None:
        return await self._read(keyspace.SCOPE_USER, user_id, user_from)

    async def list_users(self) -> list[User]:
        users = []
        for user_id in await self._ids(keyspace.USER_IDS):
            user = await self.get_user(user_id)
            if user is not None:
                users.append(user)
        return users

    async def save_user(self, user: User) -> User:
        return await self._write(keyspace.SCOPE_USER, user.user_id,
                                 replace(user, updated_at=utc_now_iso()))

    async def delete_user(self, user: User) -> None:
        for team_id in user.teams:
            team = await self.get_team(team_id)
            if team is not None and user.user_id in team.members:
                await self.save_team(replace(team, members=tuple(
                    m for m in team.members if m != user.user_id)))
        await self.client.execute("SREM", keyspace.USER_IDS, user.user_id,
                                  key=keyspace.USER_IDS)
        await self._delete_scope(keyspace.SCOPE_USER, user.user_id)

    # -- spend --------------------------------------------------------------------

    async def spend(self, kind: keyspace.ScopeKind, scope_id: str,
                    limits: Limits) -> dict[str, Any]:
        """What a scope spent this period, holds for calls in flight, and has left."""
        keys = keyspace.ScopeKeys(kind, scope_id)
        period = self.clock.current(limits.budget_period)
        raw = await self.client.execute("HMGET", keys.st, "pid", "spend", "held", "inflight",
                                        key=keys.st)
        pid, spent, held, inflight = raw or (None, None, None, None)
        same_period = pid is not None and pid.decode() == period.id
        spent_nano = int(spent or 0) if same_period else 0
        held_nano = max(0, int(held or 0))
        view: dict[str, Any] = {
            "spend": to_usd(spent_nano),
            "reserved": to_usd(held_nano),
            "in_flight": max(0, int(inflight or 0)),
            "budget_period": limits.budget_period,
            "period": period.id,
            "budget_resets_at": (period.ends_at.isoformat() if period.ends_at is not None
                                 else None),
            "max_budget": limits.max_budget,
            "remaining": None,
        }
        if limits.max_budget is not None:
            view["remaining"] = max(0.0, round(limits.max_budget - to_usd(spent_nano)
                                               - to_usd(held_nano), 9))
        return view

    async def ledger(self, kind: keyspace.ScopeKind, scope_id: str,
                     days: list[str]) -> list[dict[str, Any]]:
        """Per day and model: spend (USD), requests, prompt and completion tokens."""
        keys = keyspace.ScopeKeys(kind, scope_id)
        rows = []
        for day in days:
            raw = await self.client.execute("HGETALL", keys.ledger(day), key=keys.st)
            by_model: dict[str, dict[str, int]] = {}
            items = list(raw or ())
            for name, value in zip(items[::2], items[1::2], strict=True):
                model, _, metric = (name.decode() if isinstance(name, bytes) else name
                                    ).rpartition("|")
                by_model.setdefault(model, {})[metric] = int(value)
            for model, metrics in sorted(by_model.items()):
                rows.append({
                    "day": day, "model": model, "spend": to_usd(metrics.get("usd", 0)),
                    "requests": metrics.get("req", 0),
                    "prompt_tokens": metrics.get("pt", 0),
                    "completion_tokens": metrics.get("ct", 0),
                })
        return rows
