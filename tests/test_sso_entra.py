"""Entra ID sign-in end to end: a real Redis, a local JWKS endpoint, the auth routes
served by our HTTPServer, and id_tokens signed with RSA keys made here."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from upstreams.server import start_upstream, stop_upstream

from smartflow.admin.auth_routes import register_auth_routes
from smartflow.admin.context import AdminContext
from smartflow.config import Settings
from smartflow.http.client import UpstreamPool
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.identity.entra import JwksCache, SsoConfig, SsoError, verify_id_token
from smartflow.identity.group_sync import (
    OVERAGE_METADATA_KEY,
    role_from_claims,
    sync_user_from_claims,
)
from smartflow.identity.passwords import check_password, hash_password
from smartflow.identity.session_tokens import SessionTokens
from smartflow.keys.periods import PeriodClock
from smartflow.keys.records import InputError, Team, User
from smartflow.keys.store import IdentityStore
from smartflow.store.fast_client import StoreClient, create_store_client

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
MASTER = {"authorization": "Bearer master-test"}
G1, G2, G3 = ("0d1e0000-0000-0000-0000-000000000001", "0d1e0000-0000-0000-0000-000000000002",
              "0d1e0000-0000-0000-0000-000000000003")


@functools.cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(name: str, kid: str) -> dict[str, Any]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(name).public_key(), as_dict=True)
    jwk.update({"kid": kid, "use": "sig"})
    return jwk


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(oid: str = "user-1", *, roles: list[str] | None = None,
               groups: list[str] | None = None, nonce: str | None = None,
               aud: str = CLIENT_ID, iss: str = ISSUER, exp_in: int = 600,
               **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": iss, "aud": aud, "sub": "pairwise-" + oid, "oid": oid,
                              "tid": TENANT, "iat": now - 5, "nbf": now - 5,
                              "exp": now + exp_in, "preferred_username": f"{oid}@example.com",
                              "ver": "2.0"}
    if roles is not None:
        claims["roles"] = roles
    if groups is not None:
        claims["groups"] = groups
    if nonce is not None:
        claims["nonce"] = nonce
    claims.update(extra)
    return claims


def id_token(claims: dict[str, Any], *, key: str = "a", kid: str = "kid-a") -> str:
    return jwt.encode(claims, rsa_key(key), algorithm="RS256", headers={"kid": kid})


@dataclass
class JwksState:
    keys: list[dict[str, Any]]
    status: int = 200
    fetches: int = 0


def jwks_router(state: JwksState) -> Router:
    router = Router()

    async def keys(request: Request) -> Response:
        state.fetches += 1
        return Response(state.status, orjson.dumps({"keys": state.keys}))

    router.add("GET", f"/{TENANT}/discovery/v2.0/keys", keys)
    return router


@dataclass
class Env:
    http: httpx.AsyncClient
    store: IdentityStore
    client: StoreClient
    jwks: JwksState
    jwks_uri: str
    pool: UpstreamPool
    sessions: dict[str, str] = field(default_factory=dict)

    async def sign_in(self, token: str, nonce: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"id_token": token}
        if nonce is not None:
            body["nonce"] = nonce
        return await self.http.post("/api/auth/sso/signin", json=body)

    async def session_of(self, token: str, nonce: str | None = None) -> dict[str, str]:
        answer = await self.sign_in(token, nonce)
        assert answer.status_code == 200, answer.text
        return {"authorization": f"Bearer {answer.json()['token']}"}


@pytest.fixture
async def env(redis_url: str) -> AsyncIterator[Env]:
    jwks = JwksState(keys=[public_jwk("a", "kid-a")])
    jwks_server, jwks_port = await start_upstream(jwks_router(jwks))
    client = create_store_client(redis_url)
    store = IdentityStore(client, PeriodClock("UTC"))
    pool = UpstreamPool(connect_timeout_s=5.0, first_byte_timeout_s=5.0)
    admin = AdminContext(
        settings=Settings(), client=client, store=store,
        tokens=SessionTokens(client, ttl_s=900, key_max_age_s=86400),
        vault=None, key_cache=None,  # type: ignore[arg-type]  # the auth routes use neither
        pool=pool, master_key=b"master-test")
    router = Router()
    register_auth_routes(router, admin)
    server, port = await start_upstream(router)
    jwks_uri = f"http://127.0.0.1:{jwks_port}/{TENANT}/discovery/v2.0/keys"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            answer = await http.post("/api/auth/sso/config", headers=MASTER, json={
                "tenant_id": TENANT, "client_id": CLIENT_ID, "jwks_uri": jwks_uri})
            assert answer.status_code == 200, answer.text
            yield Env(http=http, store=store, client=client, jwks=jwks, jwks_uri=jwks_uri,
                      pool=pool)
    finally:
        await stop_upstream(server, 1.0)
        await stop_upstream(jwks_server, 1.0)
        await pool.aclose()
        await client.aclose()


def sso_error(answer: httpx.Response) -> str:
    assert answer.status_code == 401, answer.text
    error = answer.json()["error"]
    assert error["code"] == "sso_invalid_token"
    assert error["type"] == "authentication_error"
    message = error["message"]
    assert isinstance(message, str)
    return message


# -- sign-in, users and teams ---------------------------------------------------------

async def test_sign_in_creates_the_user_and_its_teams(env: Env) -> None:
    answer = await env.sign_in(id_token(claims_for("user-1", groups=[G1, G2], nonce="n-1")),
                               nonce="n-1")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert body["user_id"] == "user-1" and body["email"] == "user-1@example.com"
    assert body["role"] == "internal_user"
    assert sorted(body["teams"]) == [G1, G2]

    user = await env.store.get_user("user-1")
    assert user is not None and user.source == "entra" and user.role == "internal_user"
    for group in (G1, G2):
        team = await env.store.get_team(group)
        assert team is not None and team.source == "entra" and team.members == ("user-1",)

    session = {"authorization": f"Bearer {body['token']}"}
    mine = await env.http.get("/api/auth/sso/users/user-1/teams", headers=session)
    assert mine.status_code == 200, mine.text
    assert sorted(t["team_id"] for t in mine.json()["data"]) == [G1, G2]
    theirs = await env.http.get("/api/auth/sso/users/user-2/teams", headers=session)
    assert theirs.status_code == 403
    assert (await env.http.get("/api/auth/sso/teams", headers=session)).status_code == 403
    nobody = await env.http.get("/api/auth/sso/users/user-1/teams")
    assert nobody.status_code == 401


async def test_a_group_change_moves_the_user_and_leaves_api_teams_alone(env: Env) -> None:
    await env.store.create_team(Team(team_id="api-team", members=("user-1",)))
    await env.session_of(id_token(claims_for("user-2", groups=[G1])))
    await env.session_of(id_token(claims_for("user-1", groups=[G1, G2])))
    second = await env.sign_in(id_token(claims_for("user-1", groups=[G2, G3])))
    assert second.status_code == 200, second.text
    assert sorted(second.json()["teams"]) == sorted(["api-team", G2, G3])

    g1 = await env.store.get_team(G1)
    assert g1 is not None and g1.members == ("user-2",)  # user-1 left, user-2 stayed
    api_team = await env.store.get_team("api-team")
    assert api_team is not None and api_team.source == "api"
    assert api_team.members == ("user-1",)

    listing = await env.http.get("/api/auth/sso/teams", headers=MASTER)
    assert listing.status_code == 200
    members = {t["team_id"]: sorted(t["members"]) for t in listing.json()["data"]}
    assert members == {G1: ["user-2"], G2: ["user-1"], G3: ["user-1"]}

    # With no groups at all the user leaves every entra team, still not the api one.
    third = await env.sign_in(id_token(claims_for("user-1", groups=[])))
    assert third.json()["teams"] == ["api-team"]


async def test_a_group_with_the_id_of_an_api_team_does_not_join_it(env: Env) -> None:
    await env.store.create_team(Team(team_id=G3, alias="made by an admin"))
    answer = await env.sign_in(id_token(claims_for("user-1", groups=[G3])))
    assert answer.status_code == 200 and answer.json()["teams"] == []
    team = await env.store.get_team(G3)
    assert team is not None and team.source == "api" and team.members == ()


async def test_a_groups_overage_keeps_current_memberships(env: Env) -> None:
    await env.session_of(id_token(claims_for("user-1", groups=[G1])))
    overage = claims_for("user-1", _claim_names={"groups": "src1"},
                         _claim_sources={"src1": {"endpoint": "https://graph.microsoft.com/"}})
    answer = await env.sign_in(id_token(overage))
    assert answer.status_code == 200, answer.text
    assert answer.json()["teams"] == [G1]
    user = await env.store.get_user("user-1")
    assert user is not None and user.metadata.get(OVERAGE_METADATA_KEY) is True
    await env.session_of(id_token(claims_for("user-1", groups=[G2])))
    user = await env.store.get_user("user-1")
    assert user is not None and OVERAGE_METADATA_KEY not in user.metadata
    assert user.teams == (G2,)


async def test_app_roles_decide_what_the_session_may_do(env: Env) -> None:
    admin = await env.session_of(id_token(claims_for("boss", roles=["Proxy_Admin"])))
    rotated = await env.http.post("/api/auth/keys/rotate", headers=admin)
    assert rotated.status_code == 200 and rotated.json()["kid"]
    other = await env.http.get("/api/auth/sso/users/user-1/teams", headers=admin)
    assert other.status_code == 404  # allowed to look; no such user

    user = await env.session_of(id_token(claims_for("worker", roles=["SomethingElse"])))
    assert (await env.http.post("/api/auth/keys/rotate", headers=user)).status_code == 403
    assert (await env.http.get("/api/auth/sso/config", headers=user)).status_code == 403

    viewer = await env.session_of(id_token(claims_for(
        "auditor", roles=["internal_user", "proxy_admin_viewer"])))
    assert (await env.http.get("/api/auth/sso/config", headers=viewer)).status_code == 200
    assert (await env.http.post("/api/auth/keys/rotate", headers=viewer)).status_code == 403

    # A role removed in Entra is gone at the next sign-in, and the old session
    # follows the stored role at once.
    await env.session_of(id_token(claims_for("boss", roles=[])))
    assert (await env.http.post("/api/auth/keys/rotate", headers=admin)).status_code == 403


def test_the_most_privileged_role_wins() -> None:
    assert role_from_claims(["internal_user", "ORG_ADMIN"], "internal_user") == "org_admin"
    assert role_from_claims(["proxy_admin_viewer", "proxy_admin"], "x") == "proxy_admin"
    assert role_from_claims("proxy_admin_viewer", "internal_user") == "proxy_admin_viewer"
    assert role_from_claims(["Smartflow.Admin", 7], "org_admin") == "org_admin"
    assert role_from_claims(None, "internal_user") == "internal_user"


async def test_an_org_admin_sees_only_its_own_entra_teams(env: Env) -> None:
    await env.session_of(id_token(claims_for("user-2", groups=[G2])))
    lead = await env.session_of(id_token(claims_for("lead", roles=["org_admin"],
                                                    groups=[G1])))
    listing = await env.http.get("/api/auth/sso/teams", headers=lead)
    assert listing.status_code == 200
    assert [t["team_id"] for t in listing.json()["data"]] == [G1]


# -- refused tokens -------------------------------------------------------------------

def _unsigned(claims: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": "kid-a"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def _hmac_with_public_key(claims: dict[str, Any]) -> str:
    # The algorithm-confusion attack: HS256 keyed with the (public) RSA key.
    pem = rsa_key("a").public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = (b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "kid-a"}).encode())
                     + "." + b64url(json.dumps(claims).encode()))
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


@pytest.mark.parametrize(("token", "nonce", "expected"), [
    (lambda: id_token(claims_for(exp_in=-600)), None, "expired"),
    (lambda: id_token(claims_for(aud="another-app")), None, "audience"),
    (lambda: id_token(claims_for(iss="https://login.microsoftonline.com/evil/v2.0")), None,
     "issuer"),
    (lambda: id_token(claims_for(), key="b"), None, "bad signature"),
    (lambda: id_token(claims_for(), key="old", kid="kid-rotated-out"), None,
     "unknown signing key"),
    (lambda: _unsigned(claims_for()), None, "algorithm"),
    (lambda: _hmac_with_public_key(claims_for()), None, "algorithm"),
    (lambda: id_token(claims_for(nonce="n-1")), "n-2", "nonce mismatch"),
    (lambda: id_token(claims_for(nonce="n-1")), None, "nonce mismatch"),
    (lambda: id_token(claims_for()), "n-2", "nonce mismatch"),
    (lambda: id_token(claims_for(iat=int(time.time()) + 3600)), None, "not yet valid"),
    (lambda: "not-a-jwt", None, "malformed"),
], ids=["expired", "audience", "issuer", "signature", "rotated-out-key", "alg-none",
        "hs256-confusion", "nonce-mismatch", "nonce-not-given", "nonce-not-in-token",
        "future-iat", "garbage"])
async def test_a_bad_id_token_is_refused_naming_the_check(
        env: Env, token: Any, nonce: str | None, expected: str) -> None:
    message = sso_error(await env.sign_in(token(), nonce))
    assert expected in message
    assert await env.store.list_users() == []


async def test_sign_in_without_sso_configured_is_a_400(redis_url: str, env: Env) -> None:
    await env.client.execute("DEL", "sf:auth:sso_config", key="sf:auth:sso_config")
    answer = await env.sign_in(id_token(claims_for()))
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "sso_not_configured"
    missing = await env.http.get("/api/auth/sso/config", headers=MASTER)
    assert missing.status_code == 404


async def test_the_sso_config_is_checked_and_readable(env: Env) -> None:
    stored = await env.http.get("/api/auth/sso/config", headers=MASTER)
    assert stored.status_code == 200
    assert stored.json() == {
        "tenant_id": TENANT, "client_id": CLIENT_ID, "issuer": ISSUER,
        "jwks_uri": env.jwks_uri, "role_claim": "roles", "group_claim": "groups",
        "default_role": "internal_user", "allowed_clock_skew_s": 60.0}
    for bad, param in (({"tenant_id": TENANT, "client_id": "c", "colour": "red"}, "colour"),
                       ({"tenant_id": TENANT, "client_id": "c", "jwks_uri": "ftp://x/k"},
                        "jwks_uri"),
                       ({"tenant_id": TENANT, "client_id": "c", "issuer": "not a url"},
                        "issuer"),
                       ({"tenant_id": TENANT, "client_id": "c", "default_role": "god"},
                        "default_role"),
                       ({"client_id": "c"}, "tenant_id")):
        answer = await env.http.post("/api/auth/sso/config", headers=MASTER, json=bad)
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["param"] == param
    anonymous = await env.http.post("/api/auth/sso/config",
                                    json={"tenant_id": TENANT, "client_id": "c"})
    assert anonymous.status_code == 401


def test_sso_config_defaults_follow_the_tenant() -> None:
    config = SsoConfig.from_body({"tenant_id": "contoso.onmicrosoft.com", "client_id": "c"})
    assert config.issuer == "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0"
    assert config.jwks_uri.endswith("/contoso.onmicrosoft.com/discovery/v2.0/keys")
    assert SsoConfig.from_json(config.to_json()) == config
    with pytest.raises(InputError):
        SsoConfig.from_body({"tenant_id": "t", "client_id": "c", "allowed_clock_skew_s": True})


# -- the JWKS cache ---------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_jwks_is_refetched_for_a_new_kid_at_most_every_30_s(env: Env) -> None:
    clock = FakeClock()
    cache = JwksCache(env.pool, clock=clock)
    before = env.jwks.fetches
    assert await cache.signing_key(env.jwks_uri, "kid-a") is not None
    assert env.jwks.fetches == before + 1
    env.jwks.keys.append(public_jwk("b", "kid-b"))  # Entra publishes a new key
    clock.now += 1
    assert await cache.signing_key(env.jwks_uri, "kid-b") is None  # too soon to look again
    assert await cache.signing_key(env.jwks_uri, "kid-forged") is None
    assert env.jwks.fetches == before + 1
    clock.now += 30
    assert await cache.signing_key(env.jwks_uri, "kid-b") is not None
    assert env.jwks.fetches == before + 2
    assert await cache.signing_key(env.jwks_uri, "kid-a") is not None
    assert env.jwks.fetches == before + 2

    # Past the TTL the set is fetched again; if that fails the old keys still serve.
    env.jwks.status = 503
    clock.now += 3600
    assert await cache.signing_key(env.jwks_uri, "kid-a") is not None
    assert env.jwks.fetches == before + 3
    with pytest.raises(SsoError, match="could not fetch"):
        await JwksCache(env.pool, clock=clock).signing_key(env.jwks_uri, "kid-a")


async def test_a_jwks_answer_over_the_size_limit_is_refused(env: Env) -> None:
    env.jwks.keys.extend(public_jwk("a", f"kid-{i}") for i in range(20))
    with pytest.raises(SsoError, match="too large"):
        await JwksCache(env.pool, max_bytes=4096).signing_key(env.jwks_uri, "kid-a")


async def test_a_token_signed_after_entra_rotated_its_keys_verifies(env: Env) -> None:
    config = SsoConfig.from_body({"tenant_id": TENANT, "client_id": CLIENT_ID,
                                  "jwks_uri": env.jwks_uri})
    clock = FakeClock()
    cache = JwksCache(env.pool, clock=clock)
    assert (await verify_id_token(id_token(claims_for()), None, config, cache))["oid"]
    env.jwks.keys[:] = [public_jwk("b", "kid-b")]
    clock.now += 31
    claims = await verify_id_token(id_token(claims_for("u9"), key="b", kid="kid-b"), None,
                                   config, cache)
    assert claims["oid"] == "u9"


async def test_sync_refuses_claims_without_a_user_id(env: Env) -> None:
    config = SsoConfig.from_body({"tenant_id": TENANT, "client_id": CLIENT_ID})
    with pytest.raises(SsoError, match="user id"):
        await sync_user_from_claims(env.store, {"groups": [G1]}, config)


# -- password and master-key login --------------------------------------------------------

async def test_password_login_and_master_key_login(env: Env) -> None:
    await env.store.create_user(User(user_id="alice", role="org_admin",
                                     password_hash=hash_password("s3cret-pass")))
    ok = await env.http.post("/api/auth/login",
                             json={"user_id": "alice", "password": "s3cret-pass"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["role"] == "org_admin" and body["user_id"] == "alice"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    session = {"authorization": f"Bearer {body['token']}"}
    teams = await env.http.get("/api/auth/sso/users/alice/teams", headers=session)
    assert teams.status_code == 200 and teams.json()["data"] == []

    wrong = await env.http.post("/api/auth/login",
                                json={"user_id": "alice", "password": "guess"})
    unknown = await env.http.post("/api/auth/login",
                                  json={"user_id": "mallory", "password": "guess"})
    bad_key = await env.http.post("/api/auth/login", json={"api_key": "master-wrong"})
    assert wrong.status_code == unknown.status_code == bad_key.status_code == 401
    assert wrong.json() == unknown.json() == bad_key.json()
    missing = await env.http.post("/api/auth/login", json={"user_id": "alice"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "password"

    master = await env.http.post("/api/auth/login", json={"api_key": "master-test"})
    assert master.status_code == 200
    assert master.json()["role"] == "proxy_admin" and master.json()["user_id"] is None
    rotate = await env.http.post(
        "/api/auth/keys/rotate", headers={"authorization": f"Bearer {master.json()['token']}"})
    assert rotate.status_code == 200
    # Sessions signed before the rotation keep working.
    assert (await env.http.get("/api/auth/sso/users/alice/teams",
                               headers=session)).status_code == 200


def test_password_hashes() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$")
    assert stored != hash_password("correct horse")  # salted
    assert check_password("correct horse", stored)
    assert not check_password("correct horsE", stored)
    assert not check_password("x", None)
    assert not check_password("x", "scrypt$99999999999$8$1$AAAA$AAAA")
    assert not check_password("x", "md5$abc")
