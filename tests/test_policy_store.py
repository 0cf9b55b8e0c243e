"""Guardrails, policies and attachments in a real Redis; the workers' watchers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from smartflow.keys.records import InputError
from smartflow.policy.model import (
    GuardrailSpec,
    PolicyConflict,
    PolicyNotFound,
    attachment_from_json,
    guardrail_from_json,
    policy_from_json,
)
from smartflow.policy.resolver import CallScope
from smartflow.policy.store import REVISION_KEY, PolicyStore
from smartflow.policy.watcher import PolicyWatcher
from smartflow.store.fast_client import StoreClient, create_store_client, key_slot

WAIT_S = 10.0  # pub/sub deliveries on a loaded machine


@pytest.fixture
def store(store_client: StoreClient) -> PolicyStore:
    return PolicyStore(store_client)


def _guardrail(name: str, action: str = "flag", **config: object) -> GuardrailSpec:
    return guardrail_from_json({"name": name, "type": "custom", "action": action,
                                "config": dict(config)})


async def test_every_change_is_a_new_version_and_old_versions_stay(
        store: PolicyStore) -> None:
    await store.put_guardrail(_guardrail("kw", words=["a"]), create=True)
    first = await store.put_policy(policy_from_json({"name": "p", "guardrails": ["kw"]}),
                                   create=True)
    second = await store.put_policy(policy_from_json(
        {"name": "p", "guardrails": ["kw", "pii"], "description": "more"}))
    assert (first.version, second.version) == (1, 2)
    assert second.updated_at >= first.updated_at
    snapshot = await store.snapshot()
    assert snapshot.policies["p"].guardrails == ("kw", "pii")
    versions = await store.policy_versions("p")
    assert [(v.version, v.guardrails) for v in versions] == [(1, ("kw",)), (2, ("kw", "pii"))]
    # Deleted: gone from the snapshot, history kept, numbering goes on.
    assert await store.delete_policy("p") == (False, [])
    assert "p" not in (await store.snapshot()).policies
    assert len(await store.policy_versions("p")) == 2
    again = await store.put_policy(policy_from_json({"name": "p"}), create=True)
    assert again.version == 3


async def test_builtins_can_be_shadowed_and_restored_but_not_deleted(
        store: PolicyStore) -> None:
    assert (await store.snapshot()).guardrails["pii"].builtin
    await store.put_guardrail(guardrail_from_json(
        {"name": "pii", "type": "pii", "action": "mask", "config": {"types": ["EMAIL"]}}))
    shadow = (await store.snapshot()).guardrails["pii"]
    assert (shadow.builtin, shadow.action, shadow.version) == (False, "mask", 1)
    with pytest.raises(InputError, match="built-in"):
        await store.put_guardrail(guardrail_from_json({"name": "pii", "type": "toxicity"}))
    assert await store.delete_guardrail("pii") is True
    restored = (await store.snapshot()).guardrails["pii"]
    assert (restored.builtin, restored.action) == (True, "flag")
    with pytest.raises(PolicyConflict, match="built in"):
        await store.delete_guardrail("pii")
    with pytest.raises(PolicyConflict, match="built in"):
        await store.delete_policy("default")


async def test_references_are_checked(store: PolicyStore) -> None:
    with pytest.raises(InputError, match="unknown guardrail"):
        await store.put_policy(policy_from_json({"name": "p", "guardrails": ["nope"]}))
    with pytest.raises(InputError, match="unknown parent"):
        await store.put_policy(policy_from_json({"name": "p", "parent": "nope"}))
    await store.put_guardrail(_guardrail("kw"), create=True)
    await store.put_policy(policy_from_json({"name": "a", "guardrails": ["kw"]}))
    await store.put_policy(policy_from_json({"name": "b", "parent": "a",
                                             "overrides": {"kw": {"action": "block"}}}))
    with pytest.raises(InputError, match="cycle"):
        await store.put_policy(policy_from_json({"name": "a", "parent": "b"}))
    # Dropping kw from a would break b's override of it.
    with pytest.raises(PolicyConflict, match="would break policy 'b'"):
        await store.put_policy(policy_from_json({"name": "a"}))
    with pytest.raises(PolicyConflict, match="used by the policies a, b"):
        await store.delete_guardrail("kw")
    with pytest.raises(PolicyConflict, match="parent of b"):
        await store.delete_policy("a")
    with pytest.raises(PolicyConflict, match="already exists"):
        await store.put_policy(policy_from_json({"name": "a"}), create=True)
    with pytest.raises(PolicyNotFound):
        await store.delete_policy("zzz")
    with pytest.raises(InputError, match="unknown policy"):
        await store.attach(attachment_from_json(
            {"policy": "zzz", "scope_type": "team", "scope": "t"}, attachment_id=""))


async def test_deleting_a_policy_detaches_it(store: PolicyStore) -> None:
    await store.put_policy(policy_from_json({"name": "p", "guardrails": ["pii"]}))
    made = await store.attach(attachment_from_json(
        {"policy": "p", "scope_type": "tag", "scope": "hipaa-*"}, attachment_id=""))
    assert made.id.startswith("att_")
    with pytest.raises(PolicyConflict, match="already attached"):
        await store.attach(attachment_from_json(
            {"policy": "p", "scope_type": "tag", "scope": "hipaa-*"}, attachment_id=""))
    snapshot = await store.snapshot()
    assert snapshot.resolve(CallScope(model="m", tags=("hipaa-eu",)), None).policies == ("p",)
    assert await store.delete_policy("p") == (False, [made.id])
    assert (await store.snapshot()).attachments == ()


async def test_concurrent_writers_lose_nothing(store: PolicyStore) -> None:
    # Optimistic writes: every one lands, each under its own version.
    await asyncio.gather(*(store.put_guardrail(_guardrail("g", n=i)) for i in range(6)))
    versions = await store.guardrail_versions("g")
    assert [v.version for v in versions] == [1, 2, 3, 4, 5, 6]
    assert sorted(v.config["n"] for v in versions) == list(range(6))
    assert (await store.snapshot()).guardrails["g"].version == 6


async def test_an_unparsable_stored_record_is_skipped(store: PolicyStore,
                                                      store_client: StoreClient) -> None:
    await store.put_policy(policy_from_json({"name": "ok"}))
    await store_client.execute("HSET", "sf:policy:{p}:policies", "broken", b"{not json",
                               key="sf:policy:{p}:policies")
    snapshot = await store.snapshot()
    assert "ok" in snapshot.policies and "broken" not in snapshot.policies


@pytest.fixture
async def watchers(redis_url: str) -> AsyncIterator[tuple[PolicyWatcher, PolicyWatcher]]:
    clients = [create_store_client(redis_url) for _ in range(2)]
    # Long revision checks: these tests see what pub/sub alone delivers.
    made = [PolicyWatcher(PolicyStore(c), redis_url, check_interval_s=60) for c in clients]
    for watcher in made:
        await watcher.start()
    try:
        yield made[0], made[1]
    finally:
        for watcher in made:
            await watcher.aclose()
        for client in clients:
            await client.aclose()


async def _until(condition: object, timeout_s: float = WAIT_S) -> float:
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > timeout_s:
            raise AssertionError("not seen in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_a_change_on_one_worker_reaches_another_at_once(
        watchers: tuple[PolicyWatcher, PolicyWatcher]) -> None:
    writer, reader = watchers
    await asyncio.sleep(0.2)  # both subscribed
    scope = CallScope(model="gpt-4o", team="finance")
    assert reader.resolve(scope, "default").policies == ("default",)
    await writer.store.put_policy(policy_from_json({"name": "fin", "guardrails": ["pii"]}))
    await writer.store.attach(attachment_from_json(
        {"policy": "fin", "scope_type": "team", "scope": "finance"}, attachment_id=""))
    waited = await _until(lambda: reader.resolve(scope, "default").policies == ("fin",))
    assert waited < 1.0
    assert reader.snapshot.revision == await reader.store.revision()


async def test_a_missed_message_is_caught_by_the_revision_check(
        redis_url: str, store: PolicyStore, store_client: StoreClient) -> None:
    watcher = PolicyWatcher(store, "redis://127.0.0.1:1", check_interval_s=0.1)  # no pub/sub
    await watcher.start()
    try:
        start = watcher.snapshot.revision
        # A change that publishes nothing (as if the message were lost).
        await store_client.execute("INCR", REVISION_KEY, key=REVISION_KEY)
        await _until(lambda: watcher.snapshot.revision == start + 1)
    finally:
        await watcher.aclose()


async def test_on_a_redis_cluster(redis_cluster_url: str) -> None:
    client = create_store_client(redis_cluster_url, cluster=True)
    watcher_client = create_store_client(redis_cluster_url, cluster=True)
    store = PolicyStore(client)
    watcher = PolicyWatcher(PolicyStore(watcher_client), redis_cluster_url, check_interval_s=60)
    await watcher.start()
    try:
        await asyncio.sleep(0.2)
        keys = ["sf:policy:{p}:guardrails", "sf:policy:{p}:h:p:x", REVISION_KEY]
        assert len({key_slot(k) for k in keys}) == 1
        await store.put_guardrail(_guardrail("kw", "block"), create=True)
        await store.put_policy(policy_from_json({"name": "x", "guardrails": ["kw"]}))
        await store.attach(attachment_from_json(
            {"policy": "x", "scope_type": "model", "scope": "gpt-*"}, attachment_id=""))
        scope = CallScope(model="gpt-4o")
        await _until(lambda: watcher.resolve(scope, None).policies == ("x",))
        assert [(g.name, g.action) for g in watcher.resolve(scope, None).guardrails] == [
            ("kw", "block")]
        assert [v.version for v in await store.policy_versions("x")] == [1]
    finally:
        await watcher.aclose()
        await client.aclose()
        await watcher_client.aclose()
