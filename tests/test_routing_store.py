"""Fallback chains and model groups in Redis, and their admin routes.

Against a real Redis (the session's ``redis_url``; one test against the
cluster); the routes through a real in-process HTTPServer on a free port.
Role resolution is tested with the rest of the admin API
(``test_admin_roles``); here the caller's role comes from a test header.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from _admin_helpers import header_role_admin, serving

from smartflow.admin.routing_routes import register_routing_routes
from smartflow.http.router import Router
from smartflow.identity.roles import (
    INTERNAL_USER,
    ORG_ADMIN,
    PROXY_ADMIN,
    VIEWER,
)
from smartflow.keys.records import InputError
from smartflow.routing.records import (
    STRATEGIES,
    FallbackChain,
    ManagedDeployment,
    ManagedGroup,
    chain_from_json,
    chain_view,
    group_from_json,
    group_view,
)
from smartflow.routing.route_store import (
    ROUTING_CHANNEL,
    RouteExists,
    RouteStore,
    RoutingSnapshot,
)
from smartflow.store import keyspace
from smartflow.store.fast_client import StoreClient, create_store_client, key_slot

CHAINS = "/api/routing/fallback-chains"
GROUPS = "/api/routing/groups"
PLAINTEXT_KEY = "sk-proj-PlaintextProviderKey0123456789abcdefXYZ"
WAIT_S = 10.0  # for pub/sub deliveries: generous, a loaded machine is slow

CONFIG_CHAINS = (
    FallbackChain(name="from-config", model="gpt-4o", targets=("gpt-4o", "claude-sonnet"),
                  source="config"),
    FallbackChain(name="overridable", model="", targets=("a", "b")),
)


def _chain_body(name: Any = "main", **fields: Any) -> dict[str, Any]:
    return {"name": name, "model": "gpt-4o", "targets": ["gpt-4o", "claude-sonnet"], **fields}


def _deployment(deployment_id: str = "d1", **fields: Any) -> dict[str, Any]:
    return {"id": deployment_id, "provider": "openai", "model": "gpt-4o-2024-08-06", **fields}


def _group_body(name: str = "gpt-4o", **fields: Any) -> dict[str, Any]:
    return {"name": name, "deployments": [_deployment()], **fields}


@pytest.fixture
def client(store_client: StoreClient) -> StoreClient:
    return store_client


@pytest.fixture
def store(client: StoreClient) -> RouteStore:
    return RouteStore(client)


# -- records: validation -------------------------------------------------------------

def test_a_chain_parses_and_its_view_round_trips() -> None:
    chain = chain_from_json(_chain_body(context_window_fallback="gpt-4o-128k", retries=3))
    assert chain == FallbackChain(name="main", model="gpt-4o",
                                  targets=("gpt-4o", "claude-sonnet"),
                                  context_window_fallback="gpt-4o-128k", retries=3)
    view = chain_view(chain)
    assert set(view) == {"name", "model", "targets", "context_window_fallback", "retries",
                         "source", "created_at", "updated_at"}
    assert view["targets"] == ["gpt-4o", "claude-sonnet"] and view["source"] == "api"
    assert chain_from_json(view) == chain
    # A chain used only by header names no model; the path's name may be repeated.
    assert chain_from_json({"targets": ["x"]}, name="by-header").model == ""
    assert chain_from_json({"name": "same", "targets": ["x"]}, name="same").name == "same"


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "gpt-4o", "targets": ["a"]}, "name"),
    (_chain_body(name=""), "name"),
    (_chain_body(name="has space"), "name"),
    (_chain_body(name="slash/inside"), "name"),
    (_chain_body(name="x" * 129), "name"),
    (_chain_body(name=".."), "name"),
    (_chain_body(name=5), "name"),
    (_chain_body(targets=None), "targets"),
    (_chain_body(targets="gpt-4o"), "targets"),
    (_chain_body(targets=[]), "targets"),
    (_chain_body(targets=[f"m{i}" for i in range(17)]), "targets"),
    (_chain_body(targets=["a", ""]), "targets[1]"),
    (_chain_body(targets=["a", 7]), "targets[1]"),
    (_chain_body(targets=["a", "b", "a"]), "targets[2]"),
    (_chain_body(targets=["a", "x" * 257]), "targets[1]"),
    (_chain_body(targets=["a", "has space"]), "targets[1]"),
    (_chain_body(model=["gpt-4o"]), "model"),
    (_chain_body(model="a b"), "model"),
    (_chain_body(context_window_fallback=1), "context_window_fallback"),
    (_chain_body(retries=-1), "retries"),
    (_chain_body(retries=11), "retries"),
    (_chain_body(retries="2"), "retries"),
    (_chain_body(retries=True), "retries"),
    (_chain_body(retries=1.5), "retries"),
    (_chain_body(source="elsewhere"), "source"),
    (_chain_body(colour="red"), "colour"),
])
def test_bad_chains_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InputError) as caught:
        chain_from_json(body)
    assert caught.value.param == param, caught.value.message


def test_a_chain_body_may_not_rename_the_path() -> None:
    with pytest.raises(InputError) as caught:
        chain_from_json(_chain_body(name="other"), name="main")
    assert caught.value.param == "name"
    with pytest.raises(InputError):
        chain_from_json(["not", "an", "object"])


def test_a_group_parses_and_its_view_round_trips() -> None:
    body = _group_body(name="meta/llama-3.1:70b", strategy="latency", deployments=[
        _deployment("east", api_base="https://east.example.com/v1", api_key="vault:openai-east",
                    api_version="2024-10-21", weight=3, priority=1, tags=["fast", "eu"],
                    context_window=128000, max_output_tokens=16384,
                    input_price_per_mtok=2.5, output_price_per_mtok=10),
        _deployment("west", provider="azure"),
    ])
    group = group_from_json(body)
    assert group.name == "meta/llama-3.1:70b" and group.strategy == "latency"
    east, west = group.deployments
    assert east == ManagedDeployment(
        id="east", provider="openai", model="gpt-4o-2024-08-06",
        api_base="https://east.example.com/v1", api_key="vault:openai-east",
        api_version="2024-10-21", weight=3.0, priority=1, tags=("fast", "eu"),
        context_window=128000, max_output_tokens=16384, input_price_per_mtok=2.5,
        output_price_per_mtok=10.0)
    assert west == ManagedDeployment(id="west", provider="azure", model="gpt-4o-2024-08-06")
    view = group_view(group)
    assert set(view) == {"name", "strategy", "deployments", "created_at", "updated_at"}
    assert view["deployments"][0]["api_key"] == "vault:openai-east"
    assert group_from_json(view) == group
    assert group_from_json({"deployments": [_deployment()]}, name="x").name == "x"
    for strategy in ("", *STRATEGIES):
        assert group_from_json(_group_body(strategy=strategy)).strategy == strategy


@pytest.mark.parametrize(("body", "param"), [
    ({"deployments": [_deployment()]}, "name"),
    (_group_body(name=""), "name"),
    (_group_body(name="has space"), "name"),
    (_group_body(name="/leading"), "name"),
    (_group_body(name="a//b"), "name"),
    (_group_body(name="a/../b"), "name"),
    (_group_body(name="x" * 257), "name"),
    (_group_body(deployments=None), "deployments"),
    (_group_body(deployments=[]), "deployments"),
    (_group_body(deployments={"id": "d1"}), "deployments"),
    (_group_body(deployments=[_deployment(f"d{i}") for i in range(65)]), "deployments"),
    (_group_body(deployments=["d1"]), "deployments[0]"),
    (_group_body(deployments=[_deployment(), _deployment()]), "deployments[1].id"),
    (_group_body(deployments=[{"provider": "openai", "model": "m"}]), "deployments[0].id"),
    (_group_body(deployments=[_deployment("bad id")]), "deployments[0].id"),
    (_group_body(deployments=[_deployment(provider="nowhere")]), "deployments[0].provider"),
    (_group_body(deployments=[_deployment(model="")]), "deployments[0].model"),
    (_group_body(deployments=[_deployment(model=None)]), "deployments[0].model"),
    (_group_body(deployments=[_deployment(api_base="ftp://host")]), "deployments[0].api_base"),
    (_group_body(deployments=[_deployment(api_base="https://u:p@host")]),
     "deployments[0].api_base"),
    (_group_body(deployments=[_deployment(api_key="vault:bad name")]),
     "deployments[0].api_key"),
    (_group_body(deployments=[_deployment(api_key="env:OPENAI_API_KEY")]),
     "deployments[0].api_key"),
    (_group_body(deployments=[_deployment(api_key=5)]), "deployments[0].api_key"),
    (_group_body(deployments=[_deployment(weight=0)]), "deployments[0].weight"),
    (_group_body(deployments=[_deployment(weight=-1)]), "deployments[0].weight"),
    (_group_body(deployments=[_deployment(weight="1")]), "deployments[0].weight"),
    (_group_body(deployments=[_deployment(priority=1.5)]), "deployments[0].priority"),
    (_group_body(deployments=[_deployment(tags="fast")]), "deployments[0].tags"),
    (_group_body(deployments=[_deployment(tags=["ok", ""])]), "deployments[0].tags[1]"),
    (_group_body(deployments=[_deployment(context_window=-1)]),
     "deployments[0].context_window"),
    (_group_body(deployments=[_deployment(max_output_tokens="8k")]),
     "deployments[0].max_output_tokens"),
    (_group_body(deployments=[_deployment(input_price_per_mtok=-0.1)]),
     "deployments[0].input_price_per_mtok"),
    (_group_body(deployments=[_deployment(output_price_per_mtok=True)]),
     "deployments[0].output_price_per_mtok"),
    (_group_body(deployments=[_deployment(secret="x")]), "deployments[0].secret"),
    (_group_body(strategy="fastest"), "strategy"),
    (_group_body(colour="red"), "colour"),
])
def test_bad_groups_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InputError) as caught:
        group_from_json(body)
    assert caught.value.param == param, caught.value.message


def test_a_plaintext_key_is_refused_without_being_repeated() -> None:
    with pytest.raises(InputError) as caught:
        group_from_json(_group_body(deployments=[_deployment(api_key=PLAINTEXT_KEY)]))
    assert caught.value.param == "deployments[0].api_key"
    assert PLAINTEXT_KEY not in caught.value.message
    assert PLAINTEXT_KEY[:12] not in caught.value.message
    assert "POST /api/keys/providers" in caught.value.message
    assert "vault:NAME" in caught.value.message


# -- the store -----------------------------------------------------------------------

async def test_chain_crud_keeps_created_at_and_sorts(store: RouteStore) -> None:
    assert await store.list_chains() == []
    assert await store.get_chain("main") is None
    assert await store.revision() == 0
    first = await store.put_chain(chain_from_json(_chain_body()))
    assert first.created_at and first.created_at == first.updated_at
    assert first.source == "api"
    assert await store.get_chain("main") == first
    await asyncio.sleep(0.002)  # the times have microseconds
    second = await store.put_chain(chain_from_json(_chain_body(targets=["x"], retries=0)))
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert (await store.get_chain("main")) == second
    await store.put_chain(chain_from_json(_chain_body(name="a-first")))
    assert [chain.name for chain in await store.list_chains()] == ["a-first", "main"]
    assert await store.delete_chain("main") is True
    assert await store.delete_chain("main") is False
    assert await store.get_chain("main") is None
    assert await store.revision() == 4  # three writes and one delete; a miss is no change


async def test_a_config_source_is_never_stored(store: RouteStore) -> None:
    saved = await store.put_chain(FallbackChain(name="c", model="", targets=("a",),
                                                source="config"))
    assert saved.source == "api"
    got = await store.get_chain("c")
    assert got is not None and got.source == "api"


async def test_group_crud_and_snapshot(store: RouteStore) -> None:
    group = await store.put_group(group_from_json(_group_body(name="meta/llama-3")))
    chain = await store.put_chain(chain_from_json(_chain_body()))
    assert await store.get_group("meta/llama-3") == group
    assert [g.name for g in await store.list_groups()] == ["meta/llama-3"]
    snapshot = await store.snapshot()
    assert isinstance(snapshot, RoutingSnapshot)
    assert snapshot.revision == 2 == await store.revision()
    assert dict(snapshot.chains) == {"main": chain}
    assert dict(snapshot.groups) == {"meta/llama-3": group}
    with pytest.raises(TypeError):
        snapshot.chains["other"] = chain  # type: ignore[index]
    assert await store.delete_group("meta/llama-3") is True
    assert await store.delete_group("meta/llama-3") is False
    later = await store.snapshot()
    assert later.revision == 3 and dict(later.groups) == {} and dict(later.chains) == {
        "main": chain}


async def test_stored_documents_hold_references_only(store: RouteStore,
                                                     client: StoreClient) -> None:
    await store.put_group(group_from_json(_group_body(
        deployments=[_deployment(api_key="vault:openai-main")])))
    raw = await client.execute("HGET", keyspace.ROUTING_GROUPS, "gpt-4o",
                               key=keyspace.ROUTING_GROUPS)
    document = orjson.loads(raw)
    assert document["name"] == "gpt-4o"
    assert document["deployments"][0]["api_key"] == "vault:openai-main"


async def test_corrupt_records_are_skipped_with_a_warning(
        store: RouteStore, client: StoreClient, caplog: pytest.LogCaptureFixture) -> None:
    good = await store.put_chain(chain_from_json(_chain_body()))
    group = await store.put_group(group_from_json(_group_body()))
    corrupt = {
        "not-json": b"{not json",
        "not-an-object": b"[1, 2]",
        "no-targets": orjson.dumps({"name": "no-targets", "model": "m", "targets": []}),
        "renamed": orjson.dumps({"name": "other", "targets": ["a"]}),
        "bad name!": orjson.dumps({"name": "bad name!", "targets": ["a"]}),
    }
    for name, raw in corrupt.items():
        await client.execute("HSET", keyspace.ROUTING_CHAINS, name, raw,
                             key=keyspace.ROUTING_CHAINS)
    await client.execute("HSET", keyspace.ROUTING_GROUPS, "broken",
                         orjson.dumps({"name": "broken", "deployments": [
                             {"id": "d", "provider": "openai", "model": "m",
                              "api_key": PLAINTEXT_KEY}]}), key=keyspace.ROUTING_GROUPS)
    caplog.set_level(logging.WARNING, logger="smartflow.routing")
    assert await store.list_chains() == [good]
    assert await store.list_groups() == [group]
    for name in corrupt:
        assert await store.get_chain(name) is None
    assert await store.get_group("broken") is None
    snapshot = await store.snapshot()
    assert dict(snapshot.chains) == {"main": good}
    assert dict(snapshot.groups) == {"gpt-4o": group}
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "not-json" in warned and "broken" in warned
    assert PLAINTEXT_KEY not in warned
    # A corrupt record is replaced by a valid one.
    replaced = await store.put_chain(chain_from_json(_chain_body(name="not-json")))
    assert await store.get_chain("not-json") == replaced


async def test_every_change_is_announced(redis_url: str, store: RouteStore) -> None:
    subscriber = aioredis.Redis.from_url(redis_url)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.subscribe(ROUTING_CHANNEL)
        confirmed = await pubsub.get_message(timeout=WAIT_S)
        assert confirmed is not None and confirmed["type"] == "subscribe"
        await store.put_chain(chain_from_json(_chain_body()))
        await store.put_group(group_from_json(_group_body(name="meta/llama")))
        await store.delete_chain("main")
        await store.delete_chain("main")  # nothing deleted: no announcement
        await store.delete_group("meta/llama")
        messages: list[str] = []
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while len(messages) < 4 and asyncio.get_running_loop().time() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                messages.append(message["data"].decode())
        assert messages == ["chain:main", "group:meta/llama", "chain:main", "group:meta/llama"]
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
        assert await store.revision() == 4
    finally:
        await pubsub.aclose()
        await subscriber.aclose()


async def test_the_store_works_on_a_cluster(redis_cluster_url: str) -> None:
    # The keys are in different slots: every command names its own.
    assert len({key_slot(key) for key in (keyspace.ROUTING_CHAINS, keyspace.ROUTING_GROUPS,
                                          keyspace.ROUTING_REVISION)}) > 1
    client = create_store_client(redis_cluster_url, cluster=True)
    try:
        store = RouteStore(client)
        chain = await store.put_chain(chain_from_json(_chain_body()))
        group = await store.put_group(group_from_json(_group_body()))
        snapshot = await store.snapshot()
        assert snapshot.revision == 2
        assert dict(snapshot.chains) == {"main": chain}
        assert dict(snapshot.groups) == {"gpt-4o": group}
        with pytest.raises(RouteExists):
            await store.put_chain(chain_from_json(_chain_body()), create=True)
        assert await store.delete_chain("main") and await store.delete_group("gpt-4o")
        assert await store.list_chains() == [] and await store.list_groups() == []
        assert await store.revision() == 4
    finally:
        await client.aclose()


# -- the admin routes ----------------------------------------------------------------

@dataclass
class Api:
    http: httpx.AsyncClient
    store: RouteStore
    seen: list[str]  # every response body, to look for a leaked key

    async def call(self, method: str, path: str, role: str = PROXY_ADMIN,
                   **kwargs: Any) -> httpx.Response:
        response = await self.http.request(method, path, headers={"x-test-role": role},
                                           **kwargs)
        self.seen.append(response.text)
        return response


@pytest.fixture
async def api(client: StoreClient) -> AsyncIterator[Api]:
    store = RouteStore(client)
    admin = header_role_admin(client, routes=store, config_chains=CONFIG_CHAINS)
    router = Router()
    register_routing_routes(router, admin, store, admin.config_chains)
    async with serving(router) as http:
        served = Api(http, store, [])
        yield served
        for text in served.seen:
            assert PLAINTEXT_KEY not in text


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_chain_crud_through_the_api(api: Api) -> None:
    created = await api.call("POST", CHAINS, json=_chain_body(retries=1))
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    view = created.json()
    assert view["name"] == "main" and view["model"] == "gpt-4o"
    assert view["targets"] == ["gpt-4o", "claude-sonnet"] and view["retries"] == 1
    assert view["source"] == "api" and view["created_at"] and view["updated_at"]

    again = await api.call("POST", CHAINS, json=_chain_body())
    assert again.status_code == 409
    assert _error(again)["code"] == "already_exists"

    got = await api.call("GET", f"{CHAINS}/main", role=VIEWER)
    assert got.status_code == 200 and got.json() == view

    replaced = await api.call("PUT", f"{CHAINS}/main",
                              json={"model": "gpt-4o", "targets": ["claude-sonnet"]})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["targets"] == ["claude-sonnet"]
    assert replaced.json()["retries"] is None  # PUT replaces the whole chain
    assert replaced.json()["created_at"] == view["created_at"]

    resent = await api.call("PUT", f"{CHAINS}/main", json=replaced.json())  # a view is a body
    assert resent.status_code == 200, resent.text

    made = await api.call("PUT", f"{CHAINS}/by-header.v2:x", json={"targets": ["a", "b"]})
    assert made.status_code == 201, made.text
    assert made.json()["model"] == "" and made.json()["name"] == "by-header.v2:x"
    escaped = await api.call("GET", f"{CHAINS}/{quote('by-header.v2:x', safe='')}")
    assert escaped.status_code == 200 and escaped.json() == made.json()

    renamed = await api.call("PUT", f"{CHAINS}/main", json=_chain_body(name="other"))
    assert renamed.status_code == 400 and _error(renamed)["param"] == "name"

    listed = await api.call("GET", CHAINS)
    assert listed.status_code == 200
    names = [chain["name"] for chain in listed.json()["data"]]
    assert names == ["by-header.v2:x", "from-config", "main", "overridable"]

    deleted = await api.call("DELETE", f"{CHAINS}/main")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True, "name": "main"}
    assert (await api.call("GET", f"{CHAINS}/main")).status_code == 404
    missing = await api.call("DELETE", f"{CHAINS}/main")
    assert missing.status_code == 404 and _error(missing)["type"] == "not_found_error"
    assert await api.store.get_chain("main") is None


async def test_config_chains_are_listed_and_protected(api: Api) -> None:
    listed = (await api.call("GET", CHAINS)).json()["data"]
    assert [(chain["name"], chain["source"]) for chain in listed] == [
        ("from-config", "config"), ("overridable", "config")]
    got = await api.call("GET", f"{CHAINS}/from-config", role=VIEWER)
    assert got.status_code == 200 and got.json()["targets"] == ["gpt-4o", "claude-sonnet"]

    taken = await api.call("POST", CHAINS, json=_chain_body(name="from-config"))
    assert taken.status_code == 409 and _error(taken)["code"] == "already_exists"
    refused = await api.call("DELETE", f"{CHAINS}/from-config")
    assert refused.status_code == 409
    assert _error(refused)["code"] == "defined_in_config"
    assert "config" in _error(refused)["message"]

    # PUT overrides a config chain in Redis; deleting the override brings it back.
    override = await api.call("PUT", f"{CHAINS}/overridable", json={"targets": ["c"]})
    assert override.status_code == 200, override.text
    assert override.json()["source"] == "api"
    listed = (await api.call("GET", CHAINS)).json()["data"]
    assert [(chain["name"], chain["source"], chain["targets"]) for chain in listed] == [
        ("from-config", "config", ["gpt-4o", "claude-sonnet"]), ("overridable", "api", ["c"])]
    assert (await api.call("DELETE", f"{CHAINS}/overridable")).status_code == 200
    back = await api.call("GET", f"{CHAINS}/overridable")
    assert back.status_code == 200 and back.json()["source"] == "config"
    assert back.json()["targets"] == ["a", "b"]
    assert (await api.call("DELETE", f"{CHAINS}/overridable")).status_code == 409


async def test_group_crud_through_the_api(api: Api) -> None:
    body = _group_body(name="meta/llama-3", strategy="weighted", deployments=[
        _deployment("a", api_key="vault:openai-main", weight=2),
        _deployment("b", provider="anthropic", model="claude-sonnet")])
    created = await api.call("POST", GROUPS, json=body)
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["name"] == "meta/llama-3" and view["strategy"] == "weighted"
    assert [d["id"] for d in view["deployments"]] == ["a", "b"]
    assert view["deployments"][0]["api_key"] == "vault:openai-main"
    assert view["deployments"][1]["api_key"] == ""

    assert (await api.call("POST", GROUPS, json=body)).status_code == 409
    got = await api.call("GET", f"{GROUPS}/meta/llama-3", role=VIEWER)
    assert got.status_code == 200 and got.json() == view
    escaped = await api.call("GET", f"{GROUPS}/{quote('meta/llama-3', safe='')}")
    assert escaped.status_code == 200 and escaped.json() == view

    replaced = await api.call("PUT", f"{GROUPS}/meta/llama-3",
                              json={"deployments": [_deployment("c")]})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["strategy"] == ""
    assert replaced.json()["created_at"] == view["created_at"]
    made = await api.call("PUT", f"{GROUPS}/gpt-4o-mini", json=_group_body(name="gpt-4o-mini"))
    assert made.status_code == 201, made.text
    renamed = await api.call("PUT", f"{GROUPS}/gpt-4o-mini", json=_group_body(name="x"))
    assert renamed.status_code == 400 and _error(renamed)["param"] == "name"

    listed = await api.call("GET", GROUPS, role=VIEWER)
    assert [g["name"] for g in listed.json()["data"]] == ["gpt-4o-mini", "meta/llama-3"]

    deleted = await api.call("DELETE", f"{GROUPS}/meta/llama-3")
    assert deleted.status_code == 200
    assert deleted.json() == {"deleted": True, "name": "meta/llama-3"}
    assert (await api.call("GET", f"{GROUPS}/meta/llama-3")).status_code == 404
    assert (await api.call("DELETE", f"{GROUPS}/meta/llama-3")).status_code == 404


async def test_a_plaintext_api_key_is_refused_and_not_echoed(api: Api) -> None:
    body = _group_body(deployments=[_deployment(api_key=PLAINTEXT_KEY)])
    for method, path in [("POST", GROUPS), ("PUT", f"{GROUPS}/gpt-4o")]:
        refused = await api.call(method, path, json=body)
        assert refused.status_code == 400, refused.text
        error = _error(refused)
        assert error["param"] == "deployments[0].api_key"
        assert error["type"] == "invalid_request_error"
        assert "POST /api/keys/providers" in error["message"]
        assert "vault:" in error["message"]
        assert PLAINTEXT_KEY not in refused.text and PLAINTEXT_KEY[3:20] not in refused.text
    assert await api.store.list_groups() == []


@pytest.mark.parametrize(("path", "body", "param"), [
    (CHAINS, {"targets": ["a"]}, "name"),
    (CHAINS, _chain_body(targets="a"), "targets"),
    (CHAINS, _chain_body(targets=["a", "a"]), "targets[1]"),
    (CHAINS, _chain_body(retries="many"), "retries"),
    (CHAINS, _chain_body(extra=1), "extra"),
    (GROUPS, _group_body(deployments=[]), "deployments"),
    (GROUPS, _group_body(deployments=[_deployment(provider="nope")]),
     "deployments[0].provider"),
    (GROUPS, _group_body(deployments=[_deployment(weight=0)]), "deployments[0].weight"),
    (GROUPS, _group_body(strategy="best"), "strategy"),
])
async def test_bad_bodies_are_400_with_the_param(api: Api, path: str, body: dict[str, Any],
                                                 param: str) -> None:
    response = await api.call("POST", path, json=body)
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == param
    assert await api.store.list_chains() == [] and await api.store.list_groups() == []
    assert await api.store.revision() == 0


async def test_bad_json_and_bad_path_names_are_400(api: Api) -> None:
    for path in (CHAINS, GROUPS, f"{CHAINS}/main", f"{GROUPS}/gpt-4o"):
        method = "POST" if path in (CHAINS, GROUPS) else "PUT"
        not_json = await api.call(method, path, content=b"{nope")
        assert not_json.status_code == 400 and _error(not_json)["code"] == "invalid_json"
        not_object = await api.call(method, path, content=b"[1, 2]")
        assert not_object.status_code == 400
    bad_name = await api.call("GET", f"{CHAINS}/{quote('has space')}")
    assert bad_name.status_code == 400 and _error(bad_name)["param"] == "name"
    bad_put = await api.call("PUT", f"{CHAINS}/{quote('bad name')}", json={"targets": ["a"]})
    assert bad_put.status_code == 400 and _error(bad_put)["param"] == "name"
    assert await api.store.list_chains() == [] and await api.store.list_groups() == []


async def test_a_viewer_reads_but_cannot_write(api: Api) -> None:
    await api.store.put_chain(chain_from_json(_chain_body()))
    await api.store.put_group(group_from_json(_group_body()))
    for path in (CHAINS, f"{CHAINS}/main", GROUPS, f"{GROUPS}/gpt-4o"):
        assert (await api.call("GET", path, role=VIEWER)).status_code == 200, path
    revision = await api.store.revision()
    for method, path, body in _writes():
        response = await api.call(method, path, role=VIEWER, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert _error(response)["code"] == "forbidden"
    assert await api.store.revision() == revision


def _writes() -> list[tuple[str, str, Any]]:
    return [("POST", CHAINS, _chain_body(name="new")),
            ("PUT", f"{CHAINS}/main", _chain_body()),
            ("DELETE", f"{CHAINS}/main", None),
            ("DELETE", f"{CHAINS}/from-config", None),
            ("POST", GROUPS, _group_body(name="new")),
            ("PUT", f"{GROUPS}/gpt-4o", _group_body()),
            ("DELETE", f"{GROUPS}/gpt-4o", None)]


@pytest.mark.parametrize("role", [ORG_ADMIN, INTERNAL_USER, "nobody"])
async def test_other_roles_get_403_on_everything(api: Api, role: str) -> None:
    await api.store.put_chain(chain_from_json(_chain_body()))
    await api.store.put_group(group_from_json(_group_body()))
    revision = await api.store.revision()
    reads: list[tuple[str, str, Any]] = [("GET", path, None) for path in (
        CHAINS, f"{CHAINS}/main", f"{CHAINS}/missing", GROUPS, f"{GROUPS}/gpt-4o")]
    for method, path, body in reads + _writes():
        response = await api.call(method, path, role=role, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert _error(response)["type"] == "permission_error"
    assert await api.store.revision() == revision
    # Authorization comes first: a bad body tells a refused caller nothing.
    assert (await api.call("POST", CHAINS, role=role, content=b"{nope")).status_code == 403


async def test_api_writes_bump_the_revision_and_are_announced(redis_url: str, api: Api
                                                             ) -> None:
    subscriber = aioredis.Redis.from_url(redis_url)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.subscribe(ROUTING_CHANNEL)
        assert (await pubsub.get_message(timeout=WAIT_S) or {}).get("type") == "subscribe"
        assert (await api.call("POST", CHAINS, json=_chain_body())).status_code == 201
        assert (await api.call("PUT", f"{GROUPS}/meta/x", json={
            "deployments": [_deployment()]})).status_code == 201
        assert (await api.call("POST", CHAINS, json=_chain_body())).status_code == 409
        assert (await api.call("DELETE", f"{CHAINS}/from-config")).status_code == 409
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WAIT_S)
        assert message is not None and message["data"] == b"chain:main"
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WAIT_S)
        assert message is not None and message["data"] == b"group:meta/x"
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
        assert await api.store.revision() == 2  # refused writes change nothing
    finally:
        await pubsub.aclose()
        await subscriber.aclose()


async def test_the_snapshot_matches_what_the_api_shows(api: Api) -> None:
    await api.call("POST", CHAINS, json=_chain_body(context_window_fallback="big"))
    await api.call("POST", GROUPS, json=_group_body())
    snapshot = await api.store.snapshot()
    listed = (await api.call("GET", CHAINS)).json()["data"]
    assert [chain_view(chain) for chain in snapshot.chains.values()] == [
        view for view in listed if view["source"] == "api"]
    assert [group_view(group) for group in snapshot.groups.values()] == (
        await api.call("GET", GROUPS)).json()["data"]
    assert isinstance(snapshot.groups["gpt-4o"], ManagedGroup)
