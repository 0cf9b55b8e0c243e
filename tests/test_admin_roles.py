"""Every admin route, called by every kind of caller: who may do what.

One real ``HTTPServer`` serves ``register_admin_routes`` (on its own thread and
loop) over a private redis-server; each role signs in for real, with
``POST /api/auth/login``. The world (module scope):

    admin-1   proxy_admin
    viewer-1  proxy_admin_viewer
    org-1     org_admin      admin of team-a, plain member of team-c
    org-2     org_admin      admin of team-b
    user-1    internal_user  member of team-a
    user-2    internal_user  member of team-b

one virtual key of each kind (``KEY_KINDS``), and an audit log (a real
PostgreSQL) holding one call of user-1 in team-a and one of user-2 in team-b. The callers are the master
key, the sessions of admin-1, viewer-1, org-1 and user-1, no credential at
all, and a garbage bearer token.

``CASES`` is the table: one row per (route, target), with the exact status
each caller gets. A row whose call changes something runs on a fresh object
per caller expected to succeed (``Case.fresh``); whatever a call creates is
deleted with the master key afterwards, so rows do not disturb each other.
Every answer is also checked for leaks: no virtual key plaintext except in
the create and regenerate answers, never a key hash, a password (or its
hash), the master key or a provider key value.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from harness.postgres import PostgresServer
from harness.redis_server import RedisServer
from upstreams.server import start_upstream, stop_upstream

from smartflow.admin import register_admin_routes
from smartflow.admin.context import build_admin_context
from smartflow.audit.entry import AuditEntry
from smartflow.audit.log_query import LogReader
from smartflow.audit.postgres_sink import PostgresSink
from smartflow.config import AuthSettings, Settings, StateSettings, VaultSettings
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Handler, Router
from smartflow.keys.runtime import build_keys_runtime
from smartflow.proxy.context import build_pool
from smartflow.store.fast_client import create_store_client

T = TypeVar("T")

MASTER_KEY = "sk-master-roles-0123456789"
PASSWORD = "password-123"
WRONG_PASSWORD = "wrong-password-456"
PROVIDER_SECRET = "sk-provider-SECRET-0123456789abcdefXYZ"
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
SSO_KID = "kid-roles"

ADMIN, VIEWER, ORG, USER = "admin-1", "viewer-1", "org-1", "user-1"
ORG2, USER2 = "org-2", "user-2"
USERS = {ADMIN: "proxy_admin", VIEWER: "proxy_admin_viewer", ORG: "org_admin",
         ORG2: "org_admin", USER: "internal_user", USER2: "internal_user"}
TEAMS = {
    "team-a": {"members": [ORG, USER], "admins": [ORG]},
    "team-b": {"members": [ORG2, USER2], "admins": [ORG2]},
    "team-c": {"members": [ORG]},  # org-1 belongs to it without administering it
}
# Virtual keys, one of each kind, by who owns them and which team they bill.
KEY_KINDS: dict[str, dict[str, str]] = {
    "own": {"user_id": USER},                          # user-1's personal key
    "user_team": {"user_id": USER, "team_id": "team-a"},
    "org": {"user_id": ORG},                           # org-1's personal key
    "team_a": {"team_id": "team-a"},                   # a team key with no user
    "other_user": {"user_id": USER2},
    "team_b": {"user_id": USER2, "team_id": "team-b"},
}

CALLERS = ("master", "proxy_admin", "viewer", "org_admin", "internal_user", "anonymous",
           "garbage")
SIGNED_IN = {"proxy_admin": ADMIN, "viewer": VIEWER, "org_admin": ORG, "internal_user": USER}
GARBAGE_TOKEN = "not-a-session-token"

VKEYS = "/api/enterprise/vkeys"
TEAMS_URL = "/api/enterprise/teams"
USERS_URL = "/api/enterprise/users"
SPEND = "/api/enterprise/spend"
VAULT = "/api/keys/providers"
CHAINS = "/api/routing/fallback-chains"
GROUPS = "/api/routing/groups"
LOGS = "/api/logs"
# (call id, user, team) of the audit records the world's log holds.
LOGGED_CALLS = (("call-user-1", USER, "team-a"), ("call-user-2", USER2, "team-b"))

VIRTUAL_KEY_RE = re.compile(rb"sk-sf-[0-9a-f]{48}")
NOTHING: Any = object()


# -- the expected statuses ------------------------------------------------------------

Expect = dict[str, int | None]  # caller -> status; None: this row does not call as that caller


def expect(master: int | None, proxy_admin: int | None, viewer: int, org_admin: int,
           internal_user: int, *, anonymous: int = 401, garbage: int = 401) -> Expect:
    return dict(zip(CALLERS, (master, proxy_admin, viewer, org_admin, internal_user,
                              anonymous, garbage), strict=True))


def everyone(status: int) -> Expect:
    """A route that takes no credential: every caller gets the same answer."""
    return expect(status, status, status, status, status, anonymous=status, garbage=status)


# Reading a virtual key (GET, its spend) and changing it (PATCH, DELETE, block,
# unblock, regenerate), by key kind. A key the caller may not read is a 404:
# no hint that another user's key exists.
KEY_READ: dict[str, Expect] = {
    "own": expect(200, 200, 200, 404, 200),
    "user_team": expect(200, 200, 200, 200, 200),
    "org": expect(200, 200, 200, 200, 404),
    "team_a": expect(200, 200, 200, 200, 404),
    "other_user": expect(200, 200, 200, 404, 404),
    "team_b": expect(200, 200, 200, 404, 404),
}
KEY_WRITE: dict[str, Expect] = {
    "own": expect(200, 200, 403, 404, 200),
    "user_team": expect(200, 200, 403, 200, 200),
    "org": expect(200, 200, 403, 200, 404),
    "team_a": expect(200, 200, 403, 200, 404),
    "other_user": expect(200, 200, 403, 404, 404),
    "team_b": expect(200, 200, 403, 404, 404),
}
MISSING = expect(404, 404, 404, 404, 404)


# -- the table ------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    method: str
    route: str  # the template as registered
    what: str
    expect: Expect
    path: str = ""  # default: the route; "{name}" is filled from the world and the call
    body: Any = NOTHING  # JSON ({name} filled in strings), or a function of the values
    content: bytes | None = None  # a raw body instead
    fresh: str | None = None  # a FRESH kind: "{fresh}" is a new one per succeeding caller

    @property
    def id(self) -> str:
        return f"{self.method} {self.route} [{self.what}]"


# Objects made with the master key for a row that changes or deletes them:
# (collection, body, the answer's id field).
FRESH: dict[str, tuple[str, dict[str, Any], str]] = {
    **{f"key:{kind}": (VKEYS, dict(fields), "id") for kind, fields in KEY_KINDS.items()},
    "team:a": (TEAMS_URL, {"team_id": "t-{uid}", **TEAMS["team-a"]}, "team_id"),
    "team:b": (TEAMS_URL, {"team_id": "t-{uid}", **TEAMS["team-b"]}, "team_id"),
    "team:c": (TEAMS_URL, {"team_id": "t-{uid}", **TEAMS["team-c"]}, "team_id"),
    "user": (USERS_URL, {"user_id": "u-{uid}", "role": "internal_user",
                         "password": PASSWORD}, "user_id"),
    "vault": (VAULT, {"name": "p-{uid}", "value": PROVIDER_SECRET, "provider": "openai"},
              "name"),
    "chain": (CHAINS, {"name": "c-{uid}", "model": "m-{uid}", "targets": ["gpt-4o"]}, "name"),
    "group": (GROUPS, {"name": "g-{uid}", "deployments": [
        {"id": "d1", "provider": "openai", "model": "gpt-4o", "api_key": "vault:openai-main"}]},
              "name"),
}


def _vkey_cases() -> list[Case]:
    create = [
        ("for itself (no user_id given)", {"alias": "mine"}, expect(201, 201, 403, 403, 201)),
        ("for org-1", {"user_id": ORG}, expect(201, 201, 403, 201, 403)),
        ("for user-1", {"user_id": USER}, expect(201, 201, 403, 403, 201)),
        ("for user-2", {"user_id": USER2}, expect(201, 201, 403, 403, 403)),
        ("for team-a", {"team_id": "team-a"}, expect(201, 201, 403, 201, 201)),
        ("for team-b", {"team_id": "team-b"}, expect(201, 201, 403, 403, 403)),
        ("for team-c, org-1 belongs", {"team_id": "team-c"}, expect(201, 201, 403, 201, 403)),
        ("user-1 in team-a", {"user_id": USER, "team_id": "team-a"},
         expect(201, 201, 403, 201, 201)),
        ("user-2 in team-a, not a member", {"user_id": USER2, "team_id": "team-a"},
         expect(201, 201, 403, 403, 403)),
        ("org-1 in team-b", {"user_id": ORG, "team_id": "team-b"},
         expect(201, 201, 403, 403, 403)),
        ("user-1 in team-b", {"user_id": USER, "team_id": "team-b"},
         expect(201, 201, 403, 403, 403)),
        ("bad field", {"models": "gpt-4o"}, expect(400, 400, 403, 400, 400)),
    ]
    cases = [Case("POST", VKEYS, what, status, body=body) for what, body, status in create]
    cases.append(Case("POST", VKEYS, "not JSON", expect(400, 400, 403, 400, 400),
                      content=b"{not json"))
    cases += [
        Case("GET", VKEYS, "list", expect(200, 200, 200, 200, 200)),
        Case("GET", VKEYS, "list, filtered", expect(200, 200, 200, 200, 200),
             path=VKEYS + "?user_id=user-2&team_id=team-b"),
    ]
    item = VKEYS + "/{key_id}"
    for kind, status in KEY_READ.items():
        cases.append(Case("GET", item, kind, status, path=f"{VKEYS}/{{k_{kind}}}"))
    cases.append(Case("GET", item, "missing", MISSING, path=VKEYS + "/vk-missing"))
    writes = [("PATCH", item, "", {"alias": "renamed"}), ("DELETE", item, "", NOTHING),
              ("POST", item + "/block", "/block", NOTHING),
              ("POST", item + "/unblock", "/unblock", NOTHING),
              ("POST", item + "/regenerate", "/regenerate", NOTHING)]
    for method, route, suffix, body in writes:
        for kind, status in KEY_WRITE.items():
            if suffix == "/unblock" and status["internal_user"] == 200:
                status = {**status, "internal_user": 403}  # only an admin unblocks
            cases.append(Case(method, route, kind, status, path=VKEYS + "/{fresh}" + suffix,
                              body=body, fresh=f"key:{kind}"))
        cases.append(Case(method, route, "missing", MISSING,
                          path=VKEYS + "/vk-missing" + suffix, body=body))
    cases += [
        Case("PATCH", item, "own key moved to team-b", expect(200, 200, 403, 404, 403),
             path=VKEYS + "/{fresh}", body={"team_id": "team-b"}, fresh="key:own"),
        Case("PATCH", item, "own key given to user-2", expect(200, 200, 403, 404, 403),
             path=VKEYS + "/{fresh}", body={"user_id": USER2}, fresh="key:own"),
        Case("PATCH", item, "team-a key moved to team-b", expect(200, 200, 403, 403, 404),
             path=VKEYS + "/{fresh}", body={"team_id": "team-b"}, fresh="key:team_a"),
        Case("PATCH", item, "team-a key given to user-2", expect(200, 200, 403, 403, 404),
             path=VKEYS + "/{fresh}", body={"user_id": USER2}, fresh="key:team_a"),
        Case("PATCH", item, "own key, bad field", expect(400, 400, 403, 404, 400),
             path=VKEYS + "/{k_own}", body={"alias": 5}),
        Case("PATCH", item, "own key, its budget raised", expect(200, 200, 403, 404, 403),
             path=VKEYS + "/{fresh}", body={"max_budget": 1000}, fresh="key:own"),
        Case("PATCH", item, "own key, its models widened", expect(200, 200, 403, 404, 403),
             path=VKEYS + "/{fresh}", body={"models": []}, fresh="key:own"),
    ]
    return cases


def _team_cases() -> list[Case]:
    item = TEAMS_URL + "/{team_id}"
    members = item + "/members"
    member = members + "/{user_id}"
    return [
        Case("POST", TEAMS_URL, "new team", expect(201, 201, 403, 201, 403),
             body={"team_id": "t-{uid}", "alias": "new"}),
        Case("POST", TEAMS_URL, "bad id", expect(400, 400, 403, 400, 403),
             body={"team_id": "not an id!"}),
        Case("POST", TEAMS_URL, "exists", expect(409, 409, 403, 409, 403),
             body={"team_id": "team-a"}),
        Case("GET", TEAMS_URL, "list", expect(200, 200, 200, 200, 200)),
        Case("GET", item, "team-a", expect(200, 200, 200, 200, 200), path=TEAMS_URL + "/team-a"),
        Case("GET", item, "team-b", expect(200, 200, 200, 404, 404), path=TEAMS_URL + "/team-b"),
        Case("GET", item, "team-c", expect(200, 200, 200, 200, 404), path=TEAMS_URL + "/team-c"),
        Case("GET", item, "missing", MISSING, path=TEAMS_URL + "/t-missing"),
        Case("PATCH", item, "team-a", expect(200, 200, 403, 200, 403),
             path=TEAMS_URL + "/team-a", body={"alias": "renamed"}),
        Case("PATCH", item, "team-b", expect(200, 200, 403, 404, 404),
             path=TEAMS_URL + "/team-b", body={"alias": "renamed"}),
        Case("PATCH", item, "team-c", expect(200, 200, 403, 200, 404),
             path=TEAMS_URL + "/team-c", body={"alias": "renamed"}),
        Case("PATCH", item, "team-a, bad field", expect(400, 400, 403, 400, 403),
             path=TEAMS_URL + "/team-a", body={"members": "everyone"}),
        Case("PATCH", item, "missing", MISSING, path=TEAMS_URL + "/t-missing",
             body={"alias": "renamed"}),
        Case("DELETE", item, "like team-a", expect(200, 200, 403, 200, 403),
             path=TEAMS_URL + "/{fresh}", fresh="team:a"),
        Case("DELETE", item, "like team-b", expect(200, 200, 403, 404, 404),
             path=TEAMS_URL + "/{fresh}", fresh="team:b"),
        Case("DELETE", item, "like team-c", expect(200, 200, 403, 200, 404),
             path=TEAMS_URL + "/{fresh}", fresh="team:c"),
        Case("DELETE", item, "missing", MISSING, path=TEAMS_URL + "/t-missing"),
        Case("POST", members, "to a team like team-a", expect(200, 200, 403, 200, 403),
             path=TEAMS_URL + "/{fresh}/members", body={"user_id": USER2}, fresh="team:a"),
        Case("POST", members, "to a team like team-b", expect(200, 200, 403, 404, 404),
             path=TEAMS_URL + "/{fresh}/members", body={"user_id": USER}, fresh="team:b"),
        Case("POST", members, "as admin, to a team like team-c",
             expect(200, 200, 403, 200, 404), path=TEAMS_URL + "/{fresh}/members",
             body={"user_id": USER2, "role": "admin"}, fresh="team:c"),
        Case("POST", members, "no user_id", expect(400, 400, 403, 400, 403),
             path=TEAMS_URL + "/team-a/members", body={}),
        Case("POST", members, "missing team", MISSING, path=TEAMS_URL + "/t-missing/members",
             body={"user_id": USER}),
        Case("DELETE", member, "from a team like team-a", expect(200, 200, 403, 200, 403),
             path=TEAMS_URL + "/{fresh}/members/" + USER, fresh="team:a"),
        Case("DELETE", member, "from a team like team-b", expect(200, 200, 403, 404, 404),
             path=TEAMS_URL + "/{fresh}/members/" + USER2, fresh="team:b"),
        Case("DELETE", member, "not a member", expect(404, 404, 403, 404, 403),
             path=TEAMS_URL + "/team-a/members/" + USER2),
    ]


def _user_cases() -> list[Case]:
    item = USERS_URL + "/{user_id}"
    new_user = {"user_id": "u-{uid}", "role": "internal_user", "password": PASSWORD}
    return [
        Case("POST", USERS_URL, "new user", expect(201, 201, 403, 403, 403), body=new_user),
        Case("POST", USERS_URL, "new proxy_admin", expect(201, 201, 403, 403, 403),
             body={**new_user, "role": "proxy_admin"}),
        Case("POST", USERS_URL, "short password", expect(400, 400, 403, 403, 403),
             body={**new_user, "password": "short"}),
        Case("POST", USERS_URL, "unknown role", expect(400, 400, 403, 403, 403),
             body={**new_user, "role": "god"}),
        Case("POST", USERS_URL, "exists", expect(409, 409, 403, 403, 403),
             body={"user_id": USER}),
        Case("GET", USERS_URL, "list", expect(200, 200, 200, 200, 200)),
        Case("GET", item, "user-1", expect(200, 200, 200, 404, 200), path=f"{USERS_URL}/{USER}"),
        Case("GET", item, "org-1", expect(200, 200, 200, 200, 404), path=f"{USERS_URL}/{ORG}"),
        Case("GET", item, "user-2", expect(200, 200, 200, 404, 404),
             path=f"{USERS_URL}/{USER2}"),
        Case("GET", item, "missing", MISSING, path=USERS_URL + "/u-missing"),
        Case("PATCH", item, "user-1", expect(200, 200, 403, 404, 403),
             path=f"{USERS_URL}/{USER}", body={"email": "user-1@example.com"}),
        Case("PATCH", item, "org-1", expect(200, 200, 403, 403, 404),
             path=f"{USERS_URL}/{ORG}", body={"email": "org-1@example.com"}),
        Case("PATCH", item, "user-2", expect(200, 200, 403, 404, 404),
             path=f"{USERS_URL}/{USER2}", body={"email": "user-2@example.com"}),
        Case("PATCH", item, "user-1 made proxy_admin", expect(None, None, 403, 404, 403),
             path=f"{USERS_URL}/{USER}", body={"role": "proxy_admin"}),
        Case("PATCH", item, "user-2, bad role", expect(400, 400, 403, 404, 404),
             path=f"{USERS_URL}/{USER2}", body={"role": "god"}),
        Case("PATCH", item, "missing", MISSING, path=USERS_URL + "/u-missing",
             body={"email": "x@example.com"}),
        Case("DELETE", item, "another user", expect(200, 200, 403, 404, 404),
             path=USERS_URL + "/{fresh}", fresh="user"),
        Case("DELETE", item, "user-1", expect(None, None, 403, 404, 403),
             path=f"{USERS_URL}/{USER}"),
        Case("DELETE", item, "org-1", expect(None, None, 403, 403, 404),
             path=f"{USERS_URL}/{ORG}"),
        Case("DELETE", item, "missing", MISSING, path=USERS_URL + "/u-missing"),
    ]


def _spend_cases() -> list[Case]:
    route = SPEND + "/{scope}/{scope_id}"
    cases = [Case("GET", route, f"key {kind}", status, path=f"{SPEND}/key/{{k_{kind}}}")
             for kind, status in KEY_READ.items()]
    cases += [
        Case("GET", route, "key missing", MISSING, path=SPEND + "/key/vk-missing"),
        Case("GET", route, "team-a", expect(200, 200, 200, 200, 200), path=SPEND + "/team/team-a"),
        Case("GET", route, "team-b", expect(200, 200, 200, 404, 404), path=SPEND + "/team/team-b"),
        Case("GET", route, "team-c", expect(200, 200, 200, 200, 404), path=SPEND + "/team/team-c"),
        Case("GET", route, "team missing", MISSING, path=SPEND + "/team/t-missing"),
        Case("GET", route, "user-1", expect(200, 200, 200, 404, 200), path=f"{SPEND}/user/{USER}"),
        Case("GET", route, "org-1", expect(200, 200, 200, 200, 404), path=f"{SPEND}/user/{ORG}"),
        Case("GET", route, "user-2", expect(200, 200, 200, 404, 404),
             path=f"{SPEND}/user/{USER2}"),
        Case("GET", route, "user missing", MISSING, path=SPEND + "/user/u-missing"),
        Case("GET", route, "unknown scope", MISSING, path=SPEND + "/org/anything"),
        Case("GET", route, "own key, bad days", expect(400, 400, 400, 404, 400),
             path=SPEND + "/key/{k_own}?days=0"),
        Case("GET", route, "own key, 7 days", expect(200, 200, 200, 404, 200),
             path=SPEND + "/key/{k_own}?days=7"),
    ]
    return cases


def _vault_cases() -> list[Case]:
    item = VAULT + "/{name}"
    read, write = expect(200, 200, 200, 403, 403), expect(200, 200, 403, 403, 403)
    return [
        Case("GET", VAULT, "list", read),
        Case("POST", VAULT, "new entry", expect(201, 201, 403, 403, 403),
             body={"name": "p-{uid}", "value": PROVIDER_SECRET, "provider": "openai"}),
        Case("POST", VAULT, "no value", expect(400, 400, 403, 403, 403), body={"name": "p-{uid}"}),
        Case("GET", item, "openai-main", read, path=VAULT + "/openai-main"),
        Case("GET", item, "missing", expect(404, 404, 404, 403, 403), path=VAULT + "/missing"),
        Case("PUT", item, "openai-main", write, path=VAULT + "/openai-main",
             body={"value": PROVIDER_SECRET, "description": "main"}),
        Case("PATCH", item, "openai-main", write, path=VAULT + "/openai-main",
             body={"description": "the main key"}),
        Case("PATCH", item, "unknown field", expect(400, 400, 403, 403, 403),
             path=VAULT + "/openai-main", body={"colour": "red"}),
        Case("PUT", item, "missing", expect(404, 404, 403, 403, 403), path=VAULT + "/missing",
             body={"description": "x"}),
        Case("DELETE", item, "an entry", write, path=VAULT + "/{fresh}", fresh="vault"),
        Case("DELETE", item, "missing", expect(404, 404, 403, 403, 403), path=VAULT + "/missing"),
    ]


def _routing_cases() -> list[Case]:
    read, write = expect(200, 200, 200, 403, 403), expect(200, 200, 403, 403, 403)
    create, bad = expect(201, 201, 403, 403, 403), expect(400, 400, 403, 403, 403)
    exists, missing = expect(409, 409, 403, 403, 403), expect(404, 404, 403, 403, 403)
    chain, group = CHAINS + "/{name}", GROUPS + "/{name:path}"
    deployment = {"id": "d1", "provider": "openai", "model": "gpt-4o"}
    return [
        Case("GET", CHAINS, "list", read),
        Case("POST", CHAINS, "new chain", create,
             body={"name": "c-{uid}", "model": "m-{uid}", "targets": ["gpt-4o", "gpt-4o-mini"]}),
        Case("POST", CHAINS, "exists", exists, body={"name": "chain-main", "targets": ["x"]}),
        Case("POST", CHAINS, "no targets", bad, body={"name": "c-{uid}", "targets": []}),
        Case("GET", chain, "chain-main", read, path=CHAINS + "/chain-main"),
        Case("GET", chain, "missing", expect(404, 404, 404, 403, 403),
             path=CHAINS + "/c-missing"),
        Case("PUT", chain, "chain-main", write, path=CHAINS + "/chain-main",
             body={"model": "chain-model", "targets": ["gpt-4o", "gpt-4o-mini"]}),
        Case("PUT", chain, "a new chain", create, path=CHAINS + "/c-{uid}",
             body={"targets": ["gpt-4o"]}),
        Case("PUT", chain, "bad field", bad, path=CHAINS + "/chain-main",
             body={"targets": ["gpt-4o"], "colour": "red"}),
        Case("DELETE", chain, "a chain", write, path=CHAINS + "/{fresh}", fresh="chain"),
        Case("DELETE", chain, "missing", missing, path=CHAINS + "/c-missing"),
        Case("GET", GROUPS, "list", read),
        Case("POST", GROUPS, "new group", create,
             body={"name": "g-{uid}", "deployments": [deployment]}),
        Case("POST", GROUPS, "exists", exists,
             body={"name": "team/group-main", "deployments": [deployment]}),
        Case("POST", GROUPS, "a plaintext key", bad,
             body={"name": "g-{uid}", "deployments": [{**deployment,
                                                        "api_key": PROVIDER_SECRET}]}),
        Case("GET", group, "team/group-main", read, path=GROUPS + "/team/group-main"),
        Case("GET", group, "missing", expect(404, 404, 404, 403, 403),
             path=GROUPS + "/g-missing"),
        Case("PUT", group, "team/group-main", write, path=GROUPS + "/team/group-main",
             body={"strategy": "weighted", "deployments": [
                 {**deployment, "api_key": "vault:openai-main", "weight": 2}]}),
        Case("PUT", group, "a new group", create, path=GROUPS + "/g-{uid}",
             body={"deployments": [deployment]}),
        Case("PUT", group, "bad strategy", bad, path=GROUPS + "/team/group-main",
             body={"strategy": "best", "deployments": [deployment]}),
        Case("DELETE", group, "a group", write, path=GROUPS + "/{fresh}", fresh="group"),
        Case("DELETE", group, "missing", missing, path=GROUPS + "/g-missing"),
    ]


def _sso_signin_body(values: Mapping[str, str]) -> dict[str, Any]:
    now = int(time.time())
    oid = "sso-" + values["uid"]
    claims = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "pairwise-" + oid, "oid": oid,
              "tid": TENANT, "iat": now - 5, "nbf": now - 5, "exp": now + 600,
              "preferred_username": f"{oid}@example.com", "ver": "2.0"}
    return {"id_token": jwt.encode(claims, _rsa_key(), algorithm="RS256",
                                   headers={"kid": SSO_KID})}


def _auth_cases() -> list[Case]:
    login, user_teams = "/api/auth/login", "/api/auth/sso/users/{user_id}/teams"
    signin, config = "/api/auth/sso/signin", "/api/auth/sso/config"
    sso_config = {"tenant_id": TENANT, "client_id": CLIENT_ID, "jwks_uri": "{jwks_uri}"}
    return [
        # Sign-in takes no credential: the Authorization header is not even read.
        Case("POST", login, "password", everyone(200),
             body={"user_id": USER, "password": PASSWORD}),
        Case("POST", login, "wrong password", everyone(401),
             body={"user_id": USER, "password": WRONG_PASSWORD}),
        Case("POST", login, "unknown user", everyone(401),
             body={"user_id": "u-missing", "password": PASSWORD}),
        Case("POST", login, "master key", everyone(200), body={"api_key": MASTER_KEY}),
        Case("POST", login, "wrong master key", everyone(401), body={"api_key": "sk-wrong"}),
        Case("POST", login, "no password", everyone(400), body={"user_id": USER}),
        Case("POST", "/api/auth/keys/rotate", "rotate", expect(200, 200, 403, 403, 403)),
        Case("POST", config, "set", expect(200, 200, 403, 403, 403), body=sso_config),
        Case("POST", config, "bad", expect(400, 400, 403, 403, 403), body={"client_id": "c"}),
        Case("GET", config, "read", expect(200, 200, 200, 403, 403)),
        Case("POST", signin, "valid id_token", everyone(200), body=_sso_signin_body),
        Case("POST", signin, "no id_token", everyone(400), body={}),
        Case("POST", signin, "garbage id_token", everyone(401), body={"id_token": "not-a-jwt"}),
        Case("GET", "/api/auth/sso/teams", "list", expect(200, 200, 200, 200, 403)),
        Case("GET", user_teams, "user-1", expect(200, 200, 200, 403, 200),
             path=f"/api/auth/sso/users/{USER}/teams"),
        Case("GET", user_teams, "org-1", expect(200, 200, 200, 200, 403),
             path=f"/api/auth/sso/users/{ORG}/teams"),
        Case("GET", user_teams, "user-2", expect(200, 200, 200, 403, 403),
             path=f"/api/auth/sso/users/{USER2}/teams"),
        Case("GET", user_teams, "missing", expect(404, 404, 404, 403, 403),
             path="/api/auth/sso/users/u-missing/teams"),
    ]


def _logs_cases() -> list[Case]:
    # The audit log holds one call of user-1 in team-a and one of user-2 in team-b.
    item = LOGS + "/{call_id}"
    return [
        Case("GET", LOGS, "list", expect(200, 200, 200, 200, 200)),
        Case("GET", LOGS, "bad filter", expect(400, 400, 400, 400, 400),
             path=LOGS + "?status=teapot"),
        Case("GET", item, "user-1's call in team-a", expect(200, 200, 200, 200, 200),
             path=LOGS + "/" + LOGGED_CALLS[0][0]),
        Case("GET", item, "user-2's call in team-b", expect(200, 200, 200, 404, 404),
             path=LOGS + "/" + LOGGED_CALLS[1][0]),
        Case("GET", item, "missing", MISSING, path=LOGS + "/call-missing"),
    ]


CASES = _vkey_cases() + _team_cases() + _user_cases() + _spend_cases() + _vault_cases() \
    + _auth_cases() + _routing_cases() + _logs_cases()


# -- the server -----------------------------------------------------------------------

_RSA_KEY: list[rsa.RSAPrivateKey] = []


def _rsa_key() -> rsa.RSAPrivateKey:
    if not _RSA_KEY:
        _RSA_KEY.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _RSA_KEY[0]


class RecordingRouter(Router):
    """A Router that remembers every (method, template) added to it."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: set[tuple[str, str]] = set()

    def add(self, methods: str | Sequence[str], path: str, handler: Handler) -> None:
        super().add(methods, path, handler)
        for method in [methods] if isinstance(methods, str) else methods:
            self.routes.add((method.upper(), path))


def _jwks_router() -> Router:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(_rsa_key().public_key(), as_dict=True)
    jwk.update({"kid": SSO_KID, "use": "sig"})

    async def keys(request: Request) -> Response:
        return Response(200, orjson.dumps({"keys": [jwk]}))

    router = Router()
    router.add("GET", "/keys", keys)
    return router


@dataclass
class World:
    """The admin API on its own thread and loop, and what the tests made in it."""

    redis: RedisServer
    audit_dsn: str
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    ids: dict[str, str] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    key_hashes: set[str] = field(default_factory=set)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop.run_forever, name="admin-roles",
                                       daemon=True)
        self.thread.start()
        self.run(self._start())
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=20)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    async def _start(self) -> None:
        settings = Settings(auth=AuthSettings(master_key=MASTER_KEY),
                            state=StateSettings(redis_url=self.redis.url),
                            vault=VaultSettings(encryption_key="x"))
        self.client = create_store_client(self.redis.url)
        self.pool = build_pool(settings)
        self.admin = build_admin_context(settings, build_keys_runtime(settings, self.client),
                                         self.pool)
        self.router = RecordingRouter()
        sink = PostgresSink(self.audit_dsn)
        await sink.open()
        await sink.write([AuditEntry(call_id, datetime.now(UTC), {
            "kind": "llm", "status": 200, "user_id": user, "team_id": team})
            for call_id, user, team in LOGGED_CALLS])
        await sink.aclose()
        self.log_reader = LogReader(self.audit_dsn)
        register_admin_routes(self.router, self.admin, self.log_reader)
        self.server, self.port = await start_upstream(self.router)
        self.jwks_server, jwks_port = await start_upstream(_jwks_router())
        self.ids["jwks_uri"] = f"http://127.0.0.1:{jwks_port}/keys"

    def close(self) -> None:
        http = getattr(self, "http", None)
        if http is not None:
            http.close()
        if hasattr(self, "server"):
            self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _stop(self) -> None:
        await self.log_reader.aclose()
        await stop_upstream(self.server, 1.0)
        await stop_upstream(self.jwks_server, 1.0)
        await self.pool.aclose()
        await self.client.aclose()

    # -- calls ----------------------------------------------------------------------

    def call(self, caller: str, method: str, path: str, body: Any = NOTHING, *,
             content: bytes | None = None, may_show_key: bool = False) -> httpx.Response:
        kwargs: dict[str, Any] = {"headers": self.headers[caller]}
        if content is not None:
            kwargs["content"] = content
        elif body is not NOTHING:
            kwargs["json"] = body
        answer = self.http.request(method, path, **kwargs)
        self.check_no_leak(answer, may_show_key=may_show_key)
        return answer

    def check_no_leak(self, answer: httpx.Response, *, may_show_key: bool) -> None:
        text = answer.content
        shown = VIRTUAL_KEY_RE.findall(text)
        assert may_show_key or not shown, f"a virtual key in {answer.request.url}: {text!r}"
        for plaintext in shown:
            self.key_hashes.add(hashlib.sha256(plaintext).hexdigest())
        for secret in (PASSWORD, WRONG_PASSWORD, PROVIDER_SECRET, MASTER_KEY, "scrypt$"):
            assert secret.encode() not in text, f"{secret!r} in {answer.request.url}: {text!r}"
        for key_hash in self.key_hashes:
            assert key_hash.encode() not in text, f"a key hash in {answer.request.url}"

    def master(self, method: str, path: str, body: Any = NOTHING, status: int = 200
               ) -> dict[str, Any]:
        answer = self.call("master", method, path, body, may_show_key=True)
        assert answer.status_code == status, (method, path, answer.text)
        result: dict[str, Any] = answer.json()
        return result

    def login(self, user_id: str, password: str = PASSWORD) -> dict[str, str]:
        answer = self.call("anonymous", "POST", "/api/auth/login",
                           {"user_id": user_id, "password": password})
        assert answer.status_code == 200, answer.text
        return {"authorization": f"Bearer {answer.json()['token']}"}

    def create_fresh(self, kind: str, uid: str) -> tuple[str, str]:
        """A new object of FRESH ``kind``: (its id, the path that deletes it)."""
        collection, body, id_field = FRESH[kind]
        made = self.master("POST", collection, fill(body, {"uid": uid}), 201)
        return made[id_field], f"{collection}/{made[id_field]}"

    def cleanup(self, path: str) -> None:
        answer = self.call("master", "DELETE", path)
        assert answer.status_code in (200, 404), (path, answer.text)


def fill(value: Any, values: Mapping[str, str]) -> Any:
    """``value`` with each "{name}" in its strings replaced from ``values``."""
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], value)
    if isinstance(value, list):
        return [fill(item, values) for item in value]
    if isinstance(value, dict):
        return {name: fill(item, values) for name, item in value.items()}
    return value


def build_world(world: World) -> None:
    world.headers.update({"master": {"authorization": f"Bearer {MASTER_KEY}"},
                          "anonymous": {},
                          "garbage": {"authorization": f"Bearer {GARBAGE_TOKEN}"}})
    for user_id, role in USERS.items():
        world.master("POST", USERS_URL, {"user_id": user_id, "role": role,
                                         "password": PASSWORD}, 201)
    for team_id, fields in TEAMS.items():
        world.master("POST", TEAMS_URL, {"team_id": team_id, **fields}, 201)
    for kind, fields in KEY_KINDS.items():
        made = world.master("POST", VKEYS, {"alias": kind, **fields}, 201)
        world.ids[f"k_{kind}"] = made["id"]
        world.ids[f"plaintext_{kind}"] = made["key"]
    world.master("POST", VAULT, {"name": "openai-main", "value": PROVIDER_SECRET,
                                 "provider": "openai"}, 201)
    world.master("POST", CHAINS, {"name": "chain-main", "model": "chain-model",
                                  "targets": ["gpt-4o", "gpt-4o-mini"]}, 201)
    world.master("POST", GROUPS, {"name": "team/group-main", "deployments": [
        {"id": "d1", "provider": "openai", "model": "gpt-4o",
         "api_key": "vault:openai-main"}]}, 201)
    world.master("POST", "/api/auth/sso/config", {
        "tenant_id": TENANT, "client_id": CLIENT_ID, "jwks_uri": world.ids["jwks_uri"]})
    for caller, user_id in SIGNED_IN.items():
        world.headers[caller] = world.login(user_id)


@pytest.fixture(scope="module")
def world(postgres_server: PostgresServer) -> Iterator[World]:
    redis = RedisServer()
    redis.start()
    world = World(redis, postgres_server.create_database("admin_roles"))
    try:
        world.start()
        build_world(world)
        yield world
    finally:
        try:
            world.close()
        finally:
            redis.close()


# -- the tests ------------------------------------------------------------------------

def test_every_admin_route_has_a_row(world: World) -> None:
    registered = world.router.routes
    assert len(registered) >= 30, sorted(registered)  # 34 when written
    rows = {(case.method, case.route) for case in CASES}
    complete = {(case.method, case.route) for case in CASES
                if all(case.expect[caller] is not None for caller in CALLERS)}
    assert registered - rows == set(), "routes with no row in CASES"
    assert registered - complete == set(), "routes with no row checking every caller"
    assert rows - registered == set(), "rows for routes that are not registered"
    assert len({case.id for case in CASES}) == len(CASES), "two rows with the same id"


def _creates_key(case: Case) -> bool:
    return (case.method, case.route) in {("POST", VKEYS),
                                         ("POST", VKEYS + "/{key_id}/regenerate")}


def _made_by(case: Case, answer: httpx.Response) -> str | None:
    """The path that deletes what a successful call created, if it created anything."""
    if case.method == "PUT" and answer.status_code == 201:  # created at its own path
        return urlsplit(str(answer.request.url)).path
    if case.method != "POST" or answer.status_code not in (200, 201):
        return None
    made = answer.json()
    id_field = {VKEYS: "id", TEAMS_URL: "team_id", USERS_URL: "user_id", VAULT: "name",
                CHAINS: "name", GROUPS: "name",
                "/api/auth/sso/signin": "user_id"}.get(case.route)
    if id_field is None:
        return None
    collection = USERS_URL if case.route == "/api/auth/sso/signin" else case.route
    return f"{collection}/{made[id_field]}"


_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_route_answers_each_caller(world: World, case: Case) -> None:
    wrong: list[str] = []
    shared: tuple[str, str] | None = None  # one fresh object for the callers refused
    for caller in CALLERS:
        want = case.expect[caller]
        if want is None:
            continue
        values = {**world.ids, "uid": secrets.token_hex(5)}
        cleanups: list[str] = []
        if case.fresh is not None:
            if 200 <= want < 300:
                values["fresh"], deleter = world.create_fresh(case.fresh, values["uid"])
                cleanups.append(deleter)
            else:
                if shared is None:
                    shared = world.create_fresh(case.fresh, values["uid"])
                values["fresh"] = shared[0]
        path = fill(case.path or case.route, values)
        _handler, _params, template = world.router.match(case.method, urlsplit(path).path)
        assert template == case.route, f"{path} is routed to {template}, not {case.route}"
        body = case.body(values) if callable(case.body) else fill(case.body, values)
        answer = world.call(caller, case.method, path, body, content=case.content,
                            may_show_key=_creates_key(case))
        made = _made_by(case, answer)
        if made is not None:
            cleanups.append(made)
        got = answer.status_code
        if got != want:
            wrong.append(f"{caller}: {got} (expected {want}) {answer.text[:200]}")
        elif got in _ERROR_TYPES:
            error_type = answer.json()["error"]["type"]
            if error_type != _ERROR_TYPES[got]:
                wrong.append(f"{caller}: {got} with error type {error_type!r}")
        if _creates_key(case) and 200 <= got < 300:
            assert VIRTUAL_KEY_RE.fullmatch(answer.json()["key"].encode()), answer.text
        for deleter in cleanups:
            world.cleanup(deleter)
    if shared is not None:
        world.cleanup(shared[1])
    assert not wrong, f"{case.id}:\n  " + "\n  ".join(wrong)


def _ids(world: World, caller: str, path: str) -> set[str]:
    answer = world.call(caller, "GET", path)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert answer.json()["total"] == len(data)
    return {item.get("id") or item.get("team_id") or item["user_id"] for item in data}


def test_each_role_lists_only_what_it_may_see(world: World) -> None:
    keys = {kind: world.ids[f"k_{kind}"] for kind in KEY_KINDS}
    every_key = set(keys.values())
    for caller in ("master", "proxy_admin", "viewer"):
        assert _ids(world, caller, VKEYS) == every_key
        assert _ids(world, caller, TEAMS_URL) == set(TEAMS)
        assert _ids(world, caller, USERS_URL) == set(USERS)
        vault = world.call(caller, "GET", VAULT)
        assert [entry["name"] for entry in vault.json()["data"]] == ["openai-main"]
    # org-1: its teams' keys and its own; its teams (administered or joined); itself.
    assert _ids(world, "org_admin", VKEYS) == {keys["org"], keys["team_a"], keys["user_team"]}
    assert _ids(world, "org_admin", TEAMS_URL) == {"team-a", "team-c"}
    assert _ids(world, "org_admin", USERS_URL) == {ORG}
    # user-1: its own keys only (not team-a's key with no user); its team; itself.
    assert _ids(world, "internal_user", VKEYS) == {keys["own"], keys["user_team"]}
    assert _ids(world, "internal_user", TEAMS_URL) == {"team-a"}
    assert _ids(world, "internal_user", USERS_URL) == {USER}
    # Filters narrow what the caller may see; they never widen it.
    assert _ids(world, "internal_user", VKEYS + "?user_id=" + USER2) == set()
    assert _ids(world, "org_admin", VKEYS + "?team_id=team-b") == set()
    assert _ids(world, "org_admin", VKEYS + "?team_id=team-a") == {keys["team_a"],
                                                                   keys["user_team"]}
    assert _ids(world, "viewer", VKEYS + "?user_id=" + USER2) == {keys["other_user"],
                                                                  keys["team_b"]}


def test_a_hidden_object_looks_exactly_like_a_missing_one(world: World) -> None:
    pairs = [
        ("internal_user", f"{VKEYS}/{world.ids['k_other_user']}", VKEYS + "/vk-missing"),
        ("org_admin", f"{VKEYS}/{world.ids['k_team_b']}", VKEYS + "/vk-missing"),
        ("internal_user", f"{SPEND}/key/{world.ids['k_team_a']}", SPEND + "/key/vk-missing"),
        ("org_admin", f"{USERS_URL}/{USER}", USERS_URL + "/u-missing"),
        ("internal_user", TEAMS_URL + "/team-b", TEAMS_URL + "/t-missing"),
        ("org_admin", f"{SPEND}/team/team-b", SPEND + "/team/t-missing"),
    ]
    for caller, hidden, missing in pairs:
        first, second = world.call(caller, "GET", hidden), world.call(caller, "GET", missing)
        assert first.status_code == second.status_code == 404, (hidden, first.text)
        assert first.json() == second.json()


def test_an_org_admin_administers_the_team_it_creates(world: World) -> None:
    team_id = "t-" + secrets.token_hex(5)
    made = world.call("org_admin", "POST", TEAMS_URL, {"team_id": team_id, "alias": "mine"})
    assert made.status_code == 201, made.text
    try:
        assert ORG in made.json()["admins"]
        assert world.call("org_admin", "GET", f"{TEAMS_URL}/{team_id}").status_code == 200
        assert team_id in _ids(world, "org_admin", TEAMS_URL)
        added = world.call("org_admin", "POST", f"{TEAMS_URL}/{team_id}/members",
                           {"user_id": USER})
        assert added.status_code == 200, added.text
        key = world.call("org_admin", "POST", VKEYS, {"team_id": team_id, "user_id": USER},
                         may_show_key=True)
        assert key.status_code == 201, key.text
        key_id = key.json()["id"]
        assert world.call("org_admin", "GET", f"{SPEND}/team/{team_id}").status_code == 200
        # user-1, now a member, sees the team but may not manage it.
        assert world.call("internal_user", "GET", f"{TEAMS_URL}/{team_id}").status_code == 200
        assert world.call("internal_user", "DELETE",
                          f"{TEAMS_URL}/{team_id}").status_code == 403
        # Another org admin sees none of it.
        other = world.login(ORG2)
        world.headers["org-2"] = other
        assert world.call("org-2", "GET", f"{TEAMS_URL}/{team_id}").status_code == 404
        assert world.call("org-2", "GET", f"{VKEYS}/{key_id}").status_code == 404
        assert world.call("org-2", "POST", VKEYS, {"team_id": team_id}).status_code == 403
        assert world.call("org_admin", "DELETE", f"{VKEYS}/{key_id}").status_code == 200
        gone = world.call("org_admin", "DELETE", f"{TEAMS_URL}/{team_id}")
        assert gone.status_code == 200, gone.text
    finally:
        world.cleanup(f"{TEAMS_URL}/{team_id}")
    user = world.master("GET", f"{USERS_URL}/{ORG}")
    assert team_id not in user["teams"]


def test_bad_credentials_are_a_401_that_says_nothing_more(world: World) -> None:
    user_token = world.headers["internal_user"]["authorization"][7:]
    header, payload, signature = user_token.split(".")
    flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    # A session of a user deleted since: the token is valid, the user is gone.
    gone_id, gone_path = world.create_fresh("user", secrets.token_hex(5))
    gone_session = world.login(gone_id)["authorization"]
    world.cleanup(gone_path)
    master_basic = base64.b64encode(f"master:{MASTER_KEY}".encode()).decode()
    invalid = {
        "garbage": f"Bearer {GARBAGE_TOKEN}",
        "master key, one character more": f"Bearer {MASTER_KEY}x",
        "master key, one character less": f"Bearer {MASTER_KEY[:-1]}",
        "a virtual key": f"Bearer {world.ids['plaintext_own']}",
        "a tampered session": f"Bearer {header}.{payload}.{flipped}",
        "a session with no signature": f"Bearer {header}.{payload}.",
        "a deleted user's session": gone_session,
    }
    missing = {"no header": None, "empty bearer": "Bearer", "basic auth": f"Basic {master_basic}",
               "the master key bare": MASTER_KEY}
    answers: dict[str, dict[str, Any]] = {}
    for what, authorization in {**invalid, **missing}.items():
        headers = {} if authorization is None else {"authorization": authorization}
        answer = world.http.get(VKEYS, headers=headers)
        world.check_no_leak(answer, may_show_key=False)
        assert answer.status_code == 401, (what, answer.text)
        assert answer.json()["error"]["type"] == "authentication_error", what
        answers[what] = answer.json()
    assert len({orjson.dumps(answers[what]) for what in invalid}) == 1
    assert len({orjson.dumps(answers[what]) for what in missing}) == 1


def test_a_master_key_session_is_a_proxy_admin(world: World) -> None:
    answer = world.call("anonymous", "POST", "/api/auth/login", {"api_key": MASTER_KEY})
    assert answer.status_code == 200 and answer.json()["role"] == "proxy_admin"
    world.headers["master session"] = {"authorization": f"Bearer {answer.json()['token']}"}
    assert _ids(world, "master session", USERS_URL) == set(USERS)
    made = world.call("master session", "POST", VKEYS, {"user_id": USER2}, may_show_key=True)
    assert made.status_code == 201, made.text
    assert world.call("master session", "DELETE",
                      f"{VKEYS}/{made.json()['id']}").status_code == 200


def test_a_role_change_applies_to_sessions_already_issued(world: World) -> None:
    user_id, path = world.create_fresh("user", secrets.token_hex(5))
    try:
        world.headers["changing"] = world.login(user_id)
        assert _ids(world, "changing", USERS_URL) == {user_id}
        assert world.call("changing", "GET", VAULT).status_code == 403
        world.master("PATCH", path, {"role": "proxy_admin_viewer"})
        assert _ids(world, "changing", USERS_URL) == set(USERS) | {user_id}
        assert world.call("changing", "GET", VAULT).status_code == 200
        assert world.call("changing", "POST", VKEYS, {}).status_code == 403
        world.master("PATCH", path, {"role": "internal_user"})
        assert world.call("changing", "GET", VAULT).status_code == 403
    finally:
        world.cleanup(path)
