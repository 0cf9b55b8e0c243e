"""A worker's key cache against a real Redis: the one-lookup path for a key
in use never serves a key that was blocked, dropped, replaced or expired."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from smartflow.keys.key_cache import KeyCache
from smartflow.keys.periods import PeriodClock
from smartflow.keys.records import VirtualKey
from smartflow.keys.store import IdentityStore, hash_key
from smartflow.store.fast_client import create_store_client
from smartflow.store.keyspace import SCOPE_KEY, SCOPE_TEAM


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[IdentityStore]:
    client = create_store_client(redis_url, cluster=False)
    try:
        yield IdentityStore(client, PeriodClock("UTC"))
    finally:
        await client.aclose()


async def _cached(cache: KeyCache, plaintext: str) -> None:
    """What the authenticate stage does for a key it has not seen used yet."""
    if cache.cached(plaintext) is None:
        await cache.refresh(hash_key(plaintext))
        cache.cached(plaintext)


async def test_a_key_in_use_is_found_with_one_lookup_until_it_is_dropped(
        store: IdentityStore) -> None:
    key, plaintext = await store.create_key(VirtualKey(id="", key_hash="", key_hint="",
                                                       team_id="t1"))
    cache = KeyCache(store, ttl_s=60)
    assert cache.usable(plaintext) is None  # never seen: the caller reads the record
    await _cached(cache, plaintext)
    entry = cache.usable(plaintext)
    assert entry is not None and entry.key.id == key.id
    cache.forget(key.key_hash)  # a revocation heard for the key
    assert cache.usable(plaintext) is None
    await _cached(cache, plaintext)
    assert cache.usable(plaintext) is not None
    cache.forget_scope(SCOPE_TEAM, "t1")  # ... for its team
    assert cache.usable(plaintext) is None
    await _cached(cache, plaintext)
    old = cache.usable(plaintext)
    await cache.refresh(key.key_hash)  # a newer read replaces the entry
    assert old is not None and cache.usable(plaintext) is not old
    await _cached(cache, plaintext)
    assert cache.usable(plaintext) is not old
    cache.forget_scope(SCOPE_KEY, key.id)
    assert cache.usable(plaintext) is None


async def test_a_blocked_key_is_never_usable_and_an_expired_one_stops_at_its_expiry(
        store: IdentityStore) -> None:
    blocked, blocked_text = await store.create_key(VirtualKey(id="", key_hash="",
                                                              key_hint=""))
    await store.save_key(dataclasses.replace(blocked, blocked=True))
    expires = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    _expiring, expiring_text = await store.create_key(VirtualKey(
        id="", key_hash="", key_hint="", expires_at=expires))
    cache = KeyCache(store, ttl_s=60)
    await _cached(cache, blocked_text)
    await _cached(cache, expiring_text)
    assert cache.usable(blocked_text) is None
    assert cache.usable(expiring_text) is not None
    await asyncio.sleep(1.2)
    assert cache.usable(expiring_text) is None


async def test_a_full_cache_forgets_rather_than_grows(store: IdentityStore) -> None:
    cache = KeyCache(store, ttl_s=60, max_entries=3)
    texts = []
    for _ in range(5):
        _key, plaintext = await store.create_key(VirtualKey(id="", key_hash="", key_hint=""))
        texts.append(plaintext)
        await _cached(cache, plaintext)
    assert len(cache) == 3
    assert cache.usable(texts[0]) is None  # evicted: never served from the lookup
    assert cache.usable(texts[-1]) is not None
