"""Bring a user's record and teams in line with a verified Entra id_token.

On each SSO sign-in Entra is the source of truth for the user's role (its App
Role assignments) and for its memberships of teams with ``source == "entra"``
(one per Entra group, ``team_id`` = the group's object id). Teams created
through the admin API (``source == "api"``) are never touched here.

When a user is in more groups than fit in a token, Entra leaves out the
``groups`` claim and sends an overage marker (``_claim_names``) instead;
reading the groups would take a Graph API call, so the user's current
memberships are kept as they are and the record notes the overage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from smartflow.identity.entra import SsoConfig, SsoError
from smartflow.identity.roles import INTERNAL_USER, ORG_ADMIN, PROXY_ADMIN, ROLES, VIEWER
from smartflow.keys.records import InputError, Team, User, check_id
from smartflow.keys.store import AlreadyExists, IdentityStore
from smartflow.store import keyspace
from smartflow.store.fast_client import Script, StoreClient

log = logging.getLogger(__name__)

SOURCE = "entra"
OVERAGE_METADATA_KEY = "sso_groups_overage"
MAX_GROUPS = 500
_PRIVILEGE = (PROXY_ADMIN, ORG_ADMIN, VIEWER, INTERNAL_USER)  # most privileged first
_LOCK_TTL_MS = 5000
_LOCK_WAIT_S = 3.0
_RELEASE = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")


async def sync_user_from_claims(store: IdentityStore, claims: Mapping[str, Any],
                                config: SsoConfig) -> User:
    """Create or update the user and its "entra" teams from verified claims; the user."""
    user_id = _user_id(claims)
    email = _email(claims)
    role = role_from_claims(claims.get(config.role_claim), config.default_role)
    groups, overage = groups_from_claims(claims, config.group_claim)
    if overage:
        log.warning("user %s is in more Entra groups than the token lists; "
                    "keeping its current team memberships", user_id)

    user = await _upsert_user(store, user_id, email, role, overage)
    if groups is not None:
        wanted = set(groups)
        for team_id in groups:
            await _join(store, team_id, user_id)
        for team_id in user.teams:
            if team_id not in wanted:
                await _leave(store, team_id, user_id)
    final = await store.get_user(user_id)
    return final if final is not None else user


def role_from_claims(values: Any, default_role: str) -> str:
    """The most privileged smartflow role named by the App Role claim, else the default."""
    if isinstance(values, str):
        values = [values]
    named = set()
    if isinstance(values, list):
        for value in values:
            if isinstance(value, str) and value.lower() in ROLES:
                named.add(value.lower())
    for role in _PRIVILEGE:
        if role in named:
            return role
    return default_role


def groups_from_claims(claims: Mapping[str, Any],
                       group_claim: str) -> tuple[list[str] | None, bool]:
    """(group ids, overage); None for the ids when the token cannot tell (overage)."""
    names = claims.get("_claim_names")
    if isinstance(names, Mapping) and group_claim in names and group_claim not in claims:
        return None, True
    raw = claims.get(group_claim)
    if raw is None:
        return [], False
    if not isinstance(raw, list):
        raw = [raw]
    groups: list[str] = []
    for value in raw:
        try:
            groups.append(check_id(value, group_claim))
        except InputError:
            log.warning("ignoring an Entra group id that is not a valid team id")
    return list(dict.fromkeys(groups))[:MAX_GROUPS], False


def _user_id(claims: Mapping[str, Any]) -> str:
    for name in ("oid", "sub"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            try:
                return check_id(value, name)
            except InputError:
                continue
    raise SsoError("the token has no usable user id (oid or sub claim)")


def _email(claims: Mapping[str, Any]) -> str | None:
    for name in ("preferred_username", "email"):
        value = claims.get(name)
        if isinstance(value, str) and 0 < len(value) <= 256:
            return value
    return None


async def _upsert_user(store: IdentityStore, user_id: str, email: str | None, role: str,
                       overage: bool) -> User:
    user = await store.get_user(user_id)
    if user is None:
        metadata = {OVERAGE_METADATA_KEY: True} if overage else {}
        try:
            return await store.create_user(User(user_id=user_id, email=email, role=role,
                                                source=SOURCE, metadata=metadata))
        except AlreadyExists:  # a concurrent sign-in of the same user won
            user = await store.get_user(user_id)
            if user is None:
                raise SsoError("the user record changed during sign-in; try again") from None
    metadata = dict(user.metadata)
    if overage:
        metadata[OVERAGE_METADATA_KEY] = True
    else:
        metadata.pop(OVERAGE_METADATA_KEY, None)
    updated = replace(user, email=email or user.email, role=role, source=SOURCE,
                      metadata=metadata)
    if updated == user:
        return user
    return await store.save_user(updated)


async def _join(store: IdentityStore, team_id: str, user_id: str) -> None:
    async with _team_lock(store.client, team_id):
        team = await store.get_team(team_id)
        if team is None:
            try:
                await store.create_team(Team(team_id=team_id, alias=team_id, source=SOURCE,
                                             members=(user_id,)))
                return
            except AlreadyExists:
                team = await store.get_team(team_id)
                if team is None:
                    return
        if team.source != SOURCE:
            log.warning("Entra group %s has the id of a team made through the API; "
                        "not adding members to it", team_id)
            return
        if user_id not in team.members:
            await store.save_team(replace(team, members=(*team.members, user_id)),
                                  previous=team)


async def _leave(store: IdentityStore, team_id: str, user_id: str) -> None:
    async with _team_lock(store.client, team_id):
        team = await store.get_team(team_id)
        if team is None or team.source != SOURCE or user_id not in team.members:
            return
        members = tuple(m for m in team.members if m != user_id)
        admins = tuple(a for a in team.admins if a != user_id)
        await store.save_team(replace(team, members=members, admins=admins), previous=team)


@contextlib.asynccontextmanager
async def _team_lock(client: StoreClient, team_id: str) -> AsyncIterator[None]:
    """Serialise membership changes of one team across workers and nodes.

    The store saves a whole team record: two users of one group signing in at
    once would otherwise each write the member list they read, and one of them
    would drop out. If the lock cannot be had in time the change goes ahead
    anyway; the next sign-in repairs a lost membership.
    """
    name = f"{keyspace.PREFIX}auth:sso_lock:{team_id}"
    token = secrets.token_hex(8)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _LOCK_WAIT_S
    held = False
    while True:
        if await client.execute("SET", name, token, "NX", "PX", _LOCK_TTL_MS, key=name):
            held = True
            break
        if loop.time() >= deadline:
            log.warning("team %s: membership lock busy; updating without it", team_id)
            break
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        if held:
            await client.run_script(_RELEASE, [name], [token])
