"""Admin session tokens against a real Redis: issue, verify, expiry, tampering, rotation."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from smartflow.identity.roles import INTERNAL_USER, PROXY_ADMIN
from smartflow.identity.session_tokens import AUDIENCE, ISSUER, SessionClaims, SessionTokens
from smartflow.store import keyspace
from smartflow.store.fast_client import Script, StoreClient, create_store_client

TTL_S = 900
MAX_AGE_S = 3600
T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingClient(StoreClient):
    """A StoreClient that counts the commands it forwards."""

    def __init__(self, inner: StoreClient) -> None:
        self.inner = inner
        self.calls = 0

    async def execute(self, *args: Any, key: str | bytes | None = None) -> Any:
        self.calls += 1
        return await self.inner.execute(*args, key=key)

    async def run_script(self, script: Script, keys: Any, args: Any) -> Any:
        self.calls += 1
        return await self.inner.run_script(script, keys, args)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[CountingClient]:
    store = CountingClient(create_store_client(redis_url))
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def tokens_for(client: StoreClient, clock: FakeClock) -> SessionTokens:
    return SessionTokens(client, ttl_s=TTL_S, key_max_age_s=MAX_AGE_S, clock=clock)


def kid_of(token: str) -> str:
    kid = jwt.get_unverified_header(token)["kid"]
    assert isinstance(kid, str)
    return kid


async def stored_keys(client: StoreClient) -> dict[str, bytes]:
    raw = await client.execute("HGETALL", keyspace.AUTH_SIGNING_KEYS,
                               key=keyspace.AUTH_SIGNING_KEYS)
    items = list(raw)
    return {k.decode(): v for k, v in zip(items[::2], items[1::2], strict=True)}


async def secret_of(client: StoreClient, kid: str) -> bytes:
    entry = json.loads((await stored_keys(client))[kid])
    return base64.b64decode(entry["secret"])


def forge(secret: bytes, kid: str, now: float, **overrides: Any) -> str:
    claims: dict[str, Any] = {"sub": "u1", "role": INTERNAL_USER, "uid": "u1",
                              "iat": int(now), "exp": int(now) + TTL_S,
                              "iss": ISSUER, "aud": AUDIENCE}
    claims.update(overrides)
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})


async def test_an_issued_token_verifies_with_its_claims(client: CountingClient,
                                                        clock: FakeClock) -> None:
    tokens = tokens_for(client, clock)
    token, expires_in = await tokens.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    assert expires_in == TTL_S
    assert await tokens.verify(token) == SessionClaims(
        subject="u1", role=INTERNAL_USER, user_id="u1", expires_at=int(T0) + TTL_S)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["kid"]


async def test_a_master_session_has_no_user_id(client: CountingClient,
                                               clock: FakeClock) -> None:
    tokens = tokens_for(client, clock)
    token, _ = await tokens.issue(subject="master", role=PROXY_ADMIN, user_id=None)
    claims = await tokens.verify(token)
    assert claims is not None and claims.user_id is None and claims.role == PROXY_ADMIN


async def test_another_worker_verifies_after_one_reload(client: CountingClient,
                                                        clock: FakeClock) -> None:
    token, _ = await tokens_for(client, clock).issue(subject="u1", role=INTERNAL_USER,
                                                     user_id="u1")
    other = tokens_for(client, clock)
    before = client.calls
    assert await other.verify(token) is not None
    assert await other.verify(token) is not None
    assert client.calls - before == 1  # the keys were read once, then cached


async def test_a_token_stops_verifying_when_it_expires(client: CountingClient,
                                                       clock: FakeClock) -> None:
    tokens = tokens_for(client, clock)
    token, _ = await tokens.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    clock.now = T0 + TTL_S - 1
    assert await tokens.verify(token) is not None
    clock.now = T0 + TTL_S
    assert await tokens.verify(token) is None


async def test_tampered_tokens_are_refused(client: CountingClient, clock: FakeClock) -> None:
    tokens = tokens_for(client, clock)
    token, _ = await tokens.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = PROXY_ADMIN
    raised = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert await tokens.verify(f"{header}.{raised}.{signature}") is None
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert await tokens.verify(f"{header}.{payload}.{flipped}") is None
    assert await tokens.verify(f"{header}.{payload}.") is None


async def test_tokens_with_wrong_claims_or_algorithm_are_refused(
        client: CountingClient, clock: FakeClock) -> None:
    tokens = tokens_for(client, clock)
    token, _ = await tokens.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    kid = kid_of(token)
    secret = await secret_of(client, kid)
    assert await tokens.verify(forge(secret, kid, T0)) is not None  # the forge is faithful
    for bad in ({"iss": "someone-else"}, {"aud": "smartflow-proxy"}, {"role": "root"},
                {"exp": int(T0) - 1}, {"iat": int(T0) + 3600}, {"sub": ""}):
        assert await tokens.verify(forge(secret, kid, T0, **bad)) is None, bad
    without_uid = jwt.encode({"sub": "u1", "role": INTERNAL_USER, "iat": int(T0),
                              "exp": int(T0) + 60, "iss": ISSUER, "aud": AUDIENCE},
                             secret, algorithm="HS256", headers={"kid": kid})
    assert await tokens.verify(without_uid) is None
    unsigned_header = base64.urlsafe_b64encode(
        json.dumps({"alg": "none", "kid": kid}).encode()).rstrip(b"=").decode()
    payload = forge(secret, kid, T0).split(".")[1]
    assert await tokens.verify(f"{unsigned_header}.{payload}.") is None
    assert await tokens.verify(jwt.encode({"sub": "u1"}, secret * 2, algorithm="HS512",
                                          headers={"kid": kid})) is None


async def test_random_strings_are_refused_fast_without_redis(client: CountingClient,
                                                             clock: FakeClock) -> None:
    tokens = tokens_for(client, clock)
    await tokens.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    before = client.calls
    garbage = ["", "x", "Bearer", "a.b.c", "..", "sk-sf-" + "0" * 48, "\x00\xff",
               "a" * 100_000, secrets.token_urlsafe(64),
               ".".join(secrets.token_urlsafe(20) for _ in range(3))]
    started = time.perf_counter()
    for _ in range(200):
        for candidate in garbage:
            assert await tokens.verify(candidate) is None
    assert time.perf_counter() - started < 2.0
    # A well-formed token naming a kid no one made is refused after one look.
    other_kid = forge(secrets.token_bytes(32), secrets.token_hex(8), T0)
    assert await tokens.verify(other_kid) is None
    assert client.calls - before == 1


async def test_rotation_keeps_old_tokens_until_the_old_key_is_dropped(
        client: CountingClient, clock: FakeClock) -> None:
    tokens = tokens_for(client, clock)
    old_token, _ = await tokens.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    old_kid = kid_of(old_token)
    old_secret = await secret_of(client, old_kid)

    clock.now = T0 + 10
    new_kid = await tokens.rotate()
    assert new_kid != old_kid
    new_token, _ = await tokens.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    assert kid_of(new_token) == new_kid
    assert await tokens.verify(old_token) is not None
    assert await tokens_for(client, clock).verify(old_token) is not None

    # Past the old key's lifetime (max age + ttl) the next change drops it,
    # and even a token claiming a later expiry no longer verifies anywhere.
    clock.now = T0 + MAX_AGE_S + TTL_S + 1
    long_lived = forge(old_secret, old_kid, clock.now - 5)
    assert await tokens.verify(long_lived) is None  # this worker still caches the key
    await tokens.rotate()
    assert old_kid not in await stored_keys(client)
    assert await tokens_for(client, clock).verify(long_lived) is None


async def test_issue_rotates_a_key_past_its_max_age(client: CountingClient,
                                                    clock: FakeClock) -> None:
    tokens = tokens_for(client, clock)
    first, _ = await tokens.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    clock.now = T0 + MAX_AGE_S - 1
    second, _ = await tokens.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    assert kid_of(second) == kid_of(first)
    clock.now = T0 + MAX_AGE_S
    third, _ = await tokens.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    assert kid_of(third) != kid_of(first)
    assert await tokens.verify(second) is not None  # the old key still verifies
    assert set(await stored_keys(client)) == {"current", kid_of(first), kid_of(third)}


async def test_a_rotation_on_one_worker_is_used_by_the_next_issue_of_another(
        client: CountingClient, clock: FakeClock) -> None:
    one, two = tokens_for(client, clock), tokens_for(client, clock)
    await one.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    kid = await two.rotate()
    token, _ = await one.issue(subject="u1", role=INTERNAL_USER, user_id="u1")
    assert kid_of(token) == kid


async def test_concurrent_first_issues_make_one_key(redis_url: str, clock: FakeClock) -> None:
    clients = [create_store_client(redis_url) for _ in range(4)]
    try:
        workers = [tokens_for(c, clock) for c in clients]
        issued = await asyncio.gather(*(
            w.issue(subject=f"u{i}", role=INTERNAL_USER, user_id=f"u{i}")
            for i, w in enumerate(workers * 3)))
        assert len({kid_of(token) for token, _ in issued}) == 1
        assert len(await stored_keys(clients[0])) == 2  # one key and "current"
        for worker in workers:
            for token, _ in issued:
                assert await worker.verify(token) is not None
    finally:
        for c in clients:
            await c.aclose()


def test_bad_lifetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        SessionTokens(None, ttl_s=0, key_max_age_s=60)  # type: ignore[arg-type]


async def test_an_unknown_role_is_not_issued(client: CountingClient, clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        await tokens_for(client, clock).issue(subject="u1", role="root", user_id="u1")
