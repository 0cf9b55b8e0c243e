"""The provider key vault: encryption at rest, resolution, caching, the admin routes.

Against a real Redis (the session's ``redis_url``); the routes through a real
in-process HTTPServer on a free port. Role resolution is tested with the rest
of the admin API; here the caller's role comes from a test header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from _admin_helpers import header_role_admin, serving

from smartflow.admin.vault_routes import register_vault_routes
from smartflow.http.router import Router
from smartflow.identity.roles import (
    INTERNAL_USER,
    ORG_ADMIN,
    PROXY_ADMIN,
    VIEWER,
)
from smartflow.keys.provider_keys import captured_entry_name, provider_of_key
from smartflow.keys.records import InputError
from smartflow.keys.vault import (
    Vault,
    VaultEntryNotFound,
    VaultUnavailable,
    vault_key_from_settings,
)
from smartflow.store import keyspace
from smartflow.store.fast_client import StoreClient

SECRET = "sk-proj-ThisIsTheSecretValue0123456789abcdefXYZ"
OTHER_SECRET = "sk-ant-api03-AnotherSecretValue9876543210zyxw"
KEY = vault_key_from_settings("test-encryption-key", "")


@pytest.fixture
def client(store_client: StoreClient) -> StoreClient:
    return store_client


@pytest.fixture
def vault(client: StoreClient) -> Vault:
    return Vault(client, KEY, cache_ttl_s=0.3)


async def _everything_in_redis(client: StoreClient) -> list[bytes]:
    """Every key name and every stored byte string, whatever the key's type."""
    found: list[bytes] = []
    for key in await client.execute("KEYS", "*"):
        found.append(key)
        kind_raw = await client.execute("TYPE", key, key=key)
        kind = kind_raw.decode() if isinstance(kind_raw, bytes) else str(kind_raw)
        if kind == "hash":
            found += await client.execute("HGETALL", key, key=key)
        elif kind == "set":
            found += await client.execute("SMEMBERS", key, key=key)
        elif kind == "string":
            found.append(await client.execute("GET", key, key=key))
        else:
            raise AssertionError(f"unexpected key type {kind} for {key!r}")
    return found


# -- the key ------------------------------------------------------------------

def test_the_vault_key_comes_from_the_encryption_key_else_the_master_key() -> None:
    from_encryption = vault_key_from_settings("enc", "master")
    from_master = vault_key_from_settings("", "master")
    assert from_encryption is not None and len(from_encryption) == 32
    assert from_master is not None and len(from_master) == 32
    assert from_encryption == vault_key_from_settings("enc", "")  # the master key is unused
    assert from_encryption != from_master
    assert from_master == vault_key_from_settings("", "master")  # deterministic
    assert vault_key_from_settings("", "") is None


# -- encryption -----------------------------------------------------------------

async def test_a_value_round_trips_and_only_its_view_is_described(vault: Vault) -> None:
    view = await vault.put("openai-prod", SECRET, provider="openai", description="team A")
    assert view["name"] == "openai-prod"
    assert view["provider"] == "openai"
    assert view["description"] == "team A"
    assert view["value_hint"] == "sk-...fXYZ"
    assert view["created_at"] and view["updated_at"]
    assert SECRET not in repr(view)
    assert await vault.value("openai-prod") == SECRET
    assert await vault.describe("openai-prod") == view


async def test_short_values_get_no_hint(vault: Vault) -> None:
    view = await vault.put("short", "abc123")
    assert view["value_hint"] == "****"
    assert view["provider"] is None and view["description"] is None
    assert await vault.value("short") == "abc123"


async def test_redis_holds_no_plaintext(vault: Vault, client: StoreClient) -> None:
    await vault.put("one", SECRET, provider="openai")
    await vault.put("two", OTHER_SECRET)
    stored = b"\n".join(await _everything_in_redis(client))
    assert stored  # the scan saw the entries
    for secret in (SECRET, OTHER_SECRET):
        assert secret.encode() not in stored
        assert secret[8:30].encode() not in stored  # nor any long part of it


async def test_a_ciphertext_moved_to_another_name_does_not_decrypt(
        vault: Vault, client: StoreClient) -> None:
    await vault.put("source", SECRET)
    await vault.put("target", OTHER_SECRET)
    stolen = await client.execute("HGET", keyspace.vault_entry("source"), "ct",
                                  key=keyspace.vault_entry("source"))
    await client.execute("HSET", keyspace.vault_entry("target"), "ct", stolen,
                         key=keyspace.vault_entry("target"))
    with pytest.raises(VaultUnavailable, match="target"):
        await vault.value("target")
    assert await vault.value("source") == SECRET


async def test_a_tampered_ciphertext_does_not_decrypt(vault: Vault, client: StoreClient) -> None:
    await vault.put("entry", SECRET)
    entry = keyspace.vault_entry("entry")
    blob = bytearray(await client.execute("HGET", entry, "ct", key=entry))
    blob[-1] ^= 1
    await client.execute("HSET", entry, "ct", bytes(blob), key=entry)
    with pytest.raises(VaultUnavailable):
        await vault.value("entry")


async def test_another_key_cannot_decrypt(vault: Vault, client: StoreClient) -> None:
    await vault.put("entry", SECRET)
    other = Vault(client, vault_key_from_settings("another-key", ""))
    with pytest.raises(VaultUnavailable) as caught:
        await other.value("entry")
    assert SECRET not in str(caught.value)
    assert await other.describe("entry") is not None  # the view needs no decryption


async def test_a_disabled_vault_refuses_to_store_or_decrypt(client: StoreClient) -> None:
    disabled = Vault(client, None)
    assert not disabled.enabled
    with pytest.raises(VaultUnavailable, match="encryption_key"):
        await disabled.put("entry", SECRET)
    with pytest.raises(VaultUnavailable):
        await disabled.resolve("vault:entry")
    assert await disabled.resolve("literal-key") == "literal-key"
    assert await client.execute("EXISTS", keyspace.vault_entry("entry"),
                                key=keyspace.vault_entry("entry")) == 0


# -- names, listing, updates, deletes --------------------------------------------

async def test_list_update_and_delete(vault: Vault) -> None:
    await vault.put("b-entry", SECRET, provider="openai")
    first = await vault.put("a-entry", OTHER_SECRET, provider="anthropic")
    assert [view["name"] for view in await vault.list()] == ["a-entry", "b-entry"]

    updated = await vault.update("a-entry", description="rotated")
    assert updated is not None
    assert updated["description"] == "rotated"
    assert updated["provider"] == "anthropic"
    assert updated["created_at"] == first["created_at"]
    assert await vault.value("a-entry") == OTHER_SECRET  # the value was kept

    updated = await vault.update("a-entry", value=SECRET, provider=None)
    assert updated is not None and updated["provider"] is None
    assert await vault.value("a-entry") == SECRET  # a local write is seen at once

    replaced = await vault.put("a-entry", OTHER_SECRET)
    assert replaced["created_at"] == first["created_at"]
    assert replaced["description"] is None  # put replaces the whole entry

    assert await vault.update("missing", description="x") is None
    assert await vault.delete("a-entry") is True
    assert await vault.delete("a-entry") is False
    assert await vault.describe("a-entry") is None
    assert await vault.value("a-entry") is None
    assert [view["name"] for view in await vault.list()] == ["b-entry"]


async def test_an_update_racing_a_delete_does_not_resurrect_the_entry(
        vault: Vault, client: StoreClient) -> None:
    await vault.put("entry", SECRET)
    await vault.delete("entry")
    assert await vault.update("entry", description="late") is None
    assert await client.execute("EXISTS", keyspace.vault_entry("entry"),
                                key=keyspace.vault_entry("entry")) == 0


@pytest.mark.parametrize("name", ["", "has space", "slash/inside", "-leading", "x" * 129,
                                  "names"])
async def test_bad_names_are_refused(vault: Vault, name: str) -> None:
    with pytest.raises(InputError) as caught:
        await vault.put(name, SECRET)
    assert caught.value.param == "name"


@pytest.mark.parametrize("value", ["", "   ", None, 42])
async def test_empty_values_are_refused(vault: Vault, value: Any) -> None:
    with pytest.raises(InputError) as caught:
        await vault.put("entry", value)
    assert caught.value.param == "value"


# -- resolution and the cache ----------------------------------------------------

async def test_resolve(vault: Vault) -> None:
    await vault.put("openai-prod", SECRET)
    assert await vault.resolve("vault:openai-prod") == SECRET
    assert await vault.resolve("sk-literal-key") == "sk-literal-key"
    assert await vault.resolve("") == ""
    with pytest.raises(VaultEntryNotFound) as caught:
        await vault.resolve("vault:nowhere")
    assert isinstance(caught.value, KeyError)
    assert "vault:nowhere" in str(caught.value)
    with pytest.raises(KeyError):
        await vault.resolve("vault:not a name")


async def test_another_workers_change_is_seen_within_the_cache_ttl(
        vault: Vault, client: StoreClient) -> None:
    ttl = 0.3
    other_worker = Vault(client, KEY)
    await other_worker.put("entry", SECRET)
    assert await vault.value("entry") == SECRET
    changed_at = time.monotonic()
    await other_worker.put("entry", OTHER_SECRET)
    seen = await vault.value("entry")
    if time.monotonic() - changed_at < ttl * 0.5:  # a loaded machine may have slept past it
        assert seen == SECRET  # served from the cache: no round trip
    await asyncio.sleep(ttl + 0.05)
    assert await vault.value("entry") == OTHER_SECRET

    # A miss is cached too, for no longer.
    assert await vault.value("later") is None
    await other_worker.put("later", SECRET)
    await asyncio.sleep(ttl + 0.05)
    assert await vault.value("later") == SECRET


class _CountingClient(StoreClient):
    def __init__(self, inner: StoreClient) -> None:
        self.inner = inner
        self.reads = 0

    async def execute(self, *args: Any, key: str | bytes | None = None) -> Any:
        if args[0] == "HGET":
            self.reads += 1
        return await self.inner.execute(*args, key=key)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_concurrent_reads_share_one_round_trip(client: StoreClient) -> None:
    counting = _CountingClient(client)
    vault = Vault(counting, KEY, cache_ttl_s=60.0)
    await vault.put("entry", SECRET)
    values = await asyncio.gather(*(vault.value("entry") for _ in range(50)))
    assert values == [SECRET] * 50
    assert counting.reads == 1
    assert await vault.value("entry") == SECRET
    assert counting.reads == 1


# -- recognising provider keys ---------------------------------------------------

@pytest.mark.parametrize(("presented", "provider"), [
    ("sk-ant-api03-" + "a" * 40, "anthropic"),
    ("sk-proj-" + "Ab1_-" * 8, "openai"),
    ("sk-" + "A" * 48, "openai"),
    ("sk-" + "A" * 20, "openai"),
    ("sk-" + "A" * 19, None),
    ("sk-sf-" + "0123456789abcdef" * 3, None),  # our own virtual key
    ("sk-sf-" + "A" * 40, None),
    ("AIza" + "B" * 35, "gemini"),
    ("AIza" + "B" * 34, None),
    ("AIza" + "B" * 36, None),
    ("sk-" + "A" * 30 + " x", None),
    ("Bearer sk-" + "A" * 30, None),
    ("", None),
    ("hello", None),
])
def test_provider_of_key(presented: str, provider: str | None) -> None:
    assert provider_of_key(presented) == provider


def test_captured_entry_names_are_stable_and_reveal_nothing() -> None:
    name = captured_entry_name("openai", SECRET)
    assert name == captured_entry_name("openai", SECRET)
    assert name != captured_entry_name("openai", OTHER_SECRET)
    assert name.startswith("captured-openai-") and len(name) == len("captured-openai-") + 16
    assert SECRET[3:] not in name


# -- the admin routes --------------------------------------------------------------

@dataclass
class Api:
    http: httpx.AsyncClient
    vault: Vault  # the one the routes use (another instance would cache its own reads)
    seen: list[str]  # every response body, to look for a leaked value

    async def call(self, method: str, path: str, role: str = PROXY_ADMIN,
                   **kwargs: Any) -> httpx.Response:
        response = await self.http.request(method, path, headers={"x-test-role": role},
                                           **kwargs)
        self.seen.append(response.text)
        return response


async def _serve(client: StoreClient, vault: Vault) -> AsyncIterator[Api]:
    admin = header_role_admin(client, vault=vault)
    router = Router()
    register_vault_routes(router, admin)
    async with serving(router, timeout_s=10) as http:
        api = Api(http, vault, [])
        yield api
        for text in api.seen:
            assert SECRET not in text and OTHER_SECRET not in text


@pytest.fixture
async def api(client: StoreClient) -> AsyncIterator[Api]:
    async for served in _serve(client, Vault(client, KEY)):
        yield served


@pytest.fixture
async def disabled_api(client: StoreClient) -> AsyncIterator[Api]:
    async for served in _serve(client, Vault(client, None)):
        yield served


BASE = "/api/keys/providers"


async def test_crud_through_the_api_never_returns_a_value(api: Api) -> None:
    created = await api.call("POST", BASE, json={"name": "openai-prod", "value": SECRET,
                                                 "provider": "openai",
                                                 "description": "production"})
    assert created.status_code == 201, created.text
    assert created.json()["value_hint"] == "sk-...fXYZ"
    assert created.headers["cache-control"] == "no-store"
    assert await api.vault.value("openai-prod") == SECRET

    listed = await api.call("GET", BASE)
    assert listed.status_code == 200
    assert [view["name"] for view in listed.json()["data"]] == ["openai-prod"]
    assert set(listed.json()["data"][0]) == {"name", "provider", "description", "created_at",
                                             "updated_at", "value_hint"}

    got = await api.call("GET", f"{BASE}/openai-prod", role=VIEWER)
    assert got.status_code == 200 and got.json() == created.json()

    rotated = await api.call("PUT", f"{BASE}/openai-prod", json={"value": OTHER_SECRET})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["provider"] == "openai"
    assert rotated.json()["value_hint"] == "sk-...zyxw"
    assert await api.vault.value("openai-prod") == OTHER_SECRET

    patched = await api.call("PATCH", f"{BASE}/openai-prod",
                             json={"description": None, "name": "openai-prod"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["description"] is None

    deleted = await api.call("DELETE", f"{BASE}/openai-prod")
    assert deleted.status_code == 200
    assert deleted.json() == {"deleted": True, "name": "openai-prod"}
    assert (await api.call("GET", f"{BASE}/openai-prod")).status_code == 404
    assert (await api.call("DELETE", f"{BASE}/openai-prod")).status_code == 404
    assert (await api.call("PUT", f"{BASE}/openai-prod", json={"value": SECRET})
            ).status_code == 404
    assert (await api.call("GET", BASE)).json() == {"data": []}


@pytest.mark.parametrize("role", [ORG_ADMIN, INTERNAL_USER, "nobody"])
async def test_other_roles_get_403_on_everything(api: Api, role: str) -> None:
    await api.vault.put("entry", SECRET)
    for method, path, body in [("GET", BASE, None), ("GET", f"{BASE}/entry", None),
                               ("POST", BASE, {"name": "x", "value": SECRET}),
                               ("PUT", f"{BASE}/entry", {"value": OTHER_SECRET}),
                               ("DELETE", f"{BASE}/entry", None)]:
        response = await api.call(method, path, role=role, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"]["code"] == "forbidden"
    assert await api.vault.value("entry") == SECRET


async def test_a_viewer_reads_but_cannot_write(api: Api) -> None:
    await api.vault.put("entry", SECRET)
    assert (await api.call("GET", BASE, role=VIEWER)).status_code == 200
    for method, path, body in [("POST", BASE, {"name": "x", "value": SECRET}),
                               ("PUT", f"{BASE}/entry", {"value": OTHER_SECRET}),
                               ("PATCH", f"{BASE}/entry", {"description": "x"}),
                               ("DELETE", f"{BASE}/entry", None)]:
        response = await api.call(method, path, role=VIEWER, json=body)
        assert response.status_code == 403, (method, path, response.text)
    assert await api.vault.value("entry") == SECRET
    assert (await api.vault.describe("x")) is None


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "entry"}, "value"),
    ({"name": "entry", "value": ""}, "value"),
    ({"name": "entry", "value": None}, "value"),
    ({"name": "entry", "value": 7}, "value"),
    ({"value": SECRET}, "name"),
    ({"name": "bad name", "value": SECRET}, "name"),
    ({"name": "entry", "value": SECRET, "secret": "x"}, "secret"),
    ({"name": "entry", "value": SECRET, "provider": 5}, "provider"),
])
async def test_bad_create_bodies_are_400(api: Api, body: dict[str, Any], param: str) -> None:
    response = await api.call("POST", BASE, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert (await api.call("GET", BASE)).json() == {"data": []}


async def test_bad_update_bodies_and_paths_are_400(api: Api) -> None:
    await api.vault.put("entry", SECRET)
    for body, param in [({"value": ""}, "value"), ({"value": None}, "value"),
                        ({"name": "renamed"}, "name"), ({"extra": 1}, "extra")]:
        response = await api.call("PUT", f"{BASE}/entry", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param
    not_json = await api.call("POST", BASE, content=b"{nope")
    assert not_json.status_code == 400
    assert (await api.call("GET", f"{BASE}/names")).status_code == 400  # reserved
    assert await api.vault.value("entry") == SECRET


async def test_a_disabled_vault_answers_503(disabled_api: Api) -> None:
    for method, path, body in [("GET", BASE, None), ("GET", f"{BASE}/entry", None),
                               ("POST", BASE, {"name": "entry", "value": SECRET}),
                               ("PUT", f"{BASE}/entry", {"value": SECRET}),
                               ("DELETE", f"{BASE}/entry", None)]:
        response = await disabled_api.call(method, path, json=body)
        assert response.status_code == 503, (method, path, response.text)
        error = response.json()["error"]
        assert error["code"] == "vault_unavailable"
        assert "encryption_key" in error["message"] and "master_key" in error["message"]
    # Authorization comes first: a viewer learns nothing from a write.
    assert (await disabled_api.call("DELETE", f"{BASE}/entry", role=VIEWER)).status_code == 403
