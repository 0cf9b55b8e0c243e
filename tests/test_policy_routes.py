"""The guardrail and policy admin routes, through a real in-process HTTPServer on a
real Redis. The caller's role comes from a test header (role resolution is
tested in test_admin_roles); the guardrail engine is a small stand-in that
judges one config field and finds one word, enough to see the routes delegate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from _admin_helpers import header_role_admin, serving

from smartflow.admin.policy_routes import register_policy_routes
from smartflow.http.router import Router
from smartflow.identity.roles import INTERNAL_USER, ORG_ADMIN, VIEWER
from smartflow.policy.model import GuardrailSpec
from smartflow.policy.store import PolicyStore
from smartflow.store.fast_client import StoreClient


class WordEngine:
    """Rejects a negative ``threshold``; finds the word ``secret``."""

    def validate(self, guardrail: GuardrailSpec) -> None:
        threshold = guardrail.config.get("threshold", 0)
        if not isinstance(threshold, (int, float)) or threshold < 0:
            raise ValueError("threshold: must be a number >= 0")

    async def check(self, guardrail: GuardrailSpec, text: str) -> dict[str, Any]:
        start = text.find("secret")
        if start < 0:
            return {"action": "allow", "findings": [], "text": text}
        return {"action": guardrail.action, "text": text,
                "findings": [{"type": "CUSTOM", "start": start, "end": start + 6,
                              "score": 1.0}]}


@pytest.fixture
async def http(store_client: StoreClient) -> AsyncIterator[httpx.AsyncClient]:
    router = Router()
    register_policy_routes(router, header_role_admin(store_client),
                           PolicyStore(store_client), WordEngine())
    async with serving(router) as client:
        yield client


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_guardrails_crud_with_builtins(http: httpx.AsyncClient) -> None:
    listed = (await http.get("/api/guardrails")).json()["data"]
    assert {(g["name"], g["builtin"], g["action"]) for g in listed} == {
        ("pii", True, "flag"), ("prompt_injection", True, "flag")}
    body = {"name": "words", "type": "custom", "action": "block",
            "config": {"threshold": 0.5}}
    created = await http.post("/api/guardrails", json=body)
    assert created.status_code == 201
    assert created.json()["version"] == 1 and created.json()["builtin"] is False
    assert (await http.post("/api/guardrails", json=body)).status_code == 409
    updated = await http.put("/api/guardrails/words", json={**body, "action": "mask"})
    assert (updated.status_code, updated.json()["version"]) == (200, 2)
    old = await http.get("/api/guardrails/words", params={"version": 1})
    assert old.json()["action"] == "block"
    assert (await http.get("/api/guardrails/words")).json()["action"] == "mask"
    versions = (await http.get("/api/guardrails/words/versions")).json()
    assert versions["current"] == 2 and [v["version"] for v in versions["data"]] == [1, 2]
    # A built-in: overridden by PUT, restored by DELETE, never deleted.
    shadow = await http.put("/api/guardrails/pii", json={"type": "pii", "action": "mask"})
    assert (shadow.status_code, shadow.json()["builtin"]) == (200, False)
    restored = await http.delete("/api/guardrails/pii")
    assert restored.json()["builtin_restored"] is True
    assert (await http.get("/api/guardrails/pii")).json()["builtin"] is True
    refused = await http.delete("/api/guardrails/pii")
    assert (refused.status_code, _error(refused)["code"]) == (409, "builtin")
    assert (await http.delete("/api/guardrails/words")).status_code == 200
    assert (await http.get("/api/guardrails/words")).status_code == 404


async def test_policies_versions_attachments_and_resolve(http: httpx.AsyncClient) -> None:
    await http.post("/api/guardrails", json={"name": "words", "type": "custom",
                                             "action": "log", "config": {}})
    base = await http.post("/api/policies", json={"name": "base",
                                                  "guardrails": ["pii", "words"]})
    assert base.status_code == 201
    hipaa = {"name": "hipaa", "parent": "base", "guardrails": [],
             "overrides": {"pii": {"action": "mask"}}}
    assert (await http.put("/api/policies/hipaa", json=hipaa)).status_code == 201
    second = await http.put("/api/policies/hipaa",
                            json={**hipaa, "overrides": {"pii": {"action": "block"}}})
    assert (second.status_code, second.json()["version"]) == (200, 2)
    assert "updated_at" in second.json()
    first = (await http.get("/api/policies/hipaa?version=1")).json()
    assert first["overrides"] == {"pii": {"action": "mask"}}
    assert (await http.get("/api/policies/hipaa?version=9")).status_code == 404
    names = [p["name"] for p in (await http.get("/api/policies")).json()["data"]]
    assert names == ["base", "default", "hipaa"]

    attached = await http.post("/api/policies/attachments",
                               json={"policy": "hipaa", "scope_type": "team",
                                     "scope": "finance"})
    assert attached.status_code == 201
    attachment_id = attached.json()["id"]
    listed = (await http.get("/api/policies/attachments")).json()["data"]
    assert [a["id"] for a in listed] == [attachment_id]

    preview = (await http.post("/api/policies/resolve",
                               json={"team": "finance", "model": "gpt-4o"})).json()
    assert preview["policies"] == ["hipaa"]
    by_name = {g["name"]: g for g in preview["guardrails"]}
    assert by_name["pii"]["action"] == "block" and by_name["pii"]["policy"] == "hipaa"
    assert by_name["pii"]["via"].startswith("team:finance -> policy hipaa (inherits base)")
    assert preview["explanation"][0]["step"] == "match"
    fallback = (await http.post("/api/policies/resolve", json={"model": "gpt-4o"})).json()
    assert fallback["policies"] == ["default"]

    assert (await http.delete(f"/api/policies/attachments/{attachment_id}")).status_code == 200
    assert (await http.delete(f"/api/policies/attachments/{attachment_id}")).status_code == 404
    in_use = await http.delete("/api/policies/base")
    assert (in_use.status_code, _error(in_use)["code"]) == (409, "in_use")
    assert (await http.delete("/api/policies/hipaa")).json()["deleted"] is True
    assert (await http.get("/api/policies/hipaa")).status_code == 404
    history = (await http.get("/api/policies/hipaa/versions")).json()
    assert [v["version"] for v in history["data"]] == [1, 2] and history["current"] is None


async def test_check_delegates_to_the_engine(http: httpx.AsyncClient) -> None:
    answer = await http.post("/api/guardrails/pii/check", json={"text": "my secret is x"})
    assert answer.status_code == 200
    assert answer.json() == {"action": "flag", "text": "my secret is x", "findings": [
        {"type": "CUSTOM", "start": 3, "end": 9, "score": 1.0}]}
    assert (await http.post("/api/guardrails/none/check", json={"text": "x"})).status_code == 404
    for body in ({}, {"text": 3}, {"text": None}):
        refused = await http.post("/api/guardrails/pii/check", json=body)
        assert (refused.status_code, _error(refused)["param"]) == (400, "text")


@pytest.mark.parametrize(("method", "path", "body", "param"), [
    ("POST", "/api/guardrails", {"name": "g", "type": "laser"}, "type"),
    ("POST", "/api/guardrails", {"name": "g", "type": "custom", "extra": 1}, "extra"),
    ("POST", "/api/guardrails", {"name": "g", "type": "custom", "config": {"threshold": -1}},
     "config"),
    ("PUT", "/api/guardrails/g", {"name": "h", "type": "custom"}, "name"),
    ("POST", "/api/policies", {"name": "p", "guardrails": ["ghost"]}, "guardrails[0]"),
    ("POST", "/api/policies", {"name": "p", "parent": "ghost"}, "parent"),
    ("POST", "/api/policies", {"name": "p", "guardrails": ["pii"],
                               "overrides": {"pii": {"config": {"threshold": -2}}}},
     "overrides.pii"),
    ("POST", "/api/policies", {"name": "p", "overrides": {"pii": {"action": "block"}}},
     "overrides.pii"),
    ("POST", "/api/policies", {"name": "attachments"}, "name"),
    ("POST", "/api/policies/attachments", {"policy": "ghost", "scope_type": "team",
                                           "scope": "t"}, "policy"),
    ("POST", "/api/policies/attachments", {"policy": "default", "scope_type": "user",
                                           "scope": "t"}, "scope_type"),
    ("POST", "/api/policies/attachments", {"policy": "default", "scope_type": "team"},
     "scope"),
    ("POST", "/api/policies/resolve", {"model": 3}, "model"),
    ("POST", "/api/policies/resolve", {"tags": "hipaa"}, "tags"),
    ("POST", "/api/policies/resolve", {"region": "eu"}, "region"),
])
async def test_bad_input_is_a_400_naming_the_field(http: httpx.AsyncClient, method: str,
                                                   path: str, body: dict[str, Any],
                                                   param: str) -> None:
    response = await http.request(method, path, json=body)
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == param


async def test_malformed_bodies_and_paths(http: httpx.AsyncClient) -> None:
    broken = await http.post("/api/policies", content=b"{nope")
    assert (broken.status_code, _error(broken)["code"]) == (400, "invalid_json")
    listed = await http.post("/api/guardrails", content=b"[1]")
    assert listed.status_code == 400
    assert (await http.get("/api/policies/bad%20name")).status_code == 400
    assert (await http.get("/api/policies/default?version=x")).status_code == 400
    assert (await http.delete("/api/policies/attachments/att_ffffffffffffffff")
            ).status_code == 404
    assert (await http.delete("/api/policies/attachments/whatever")).status_code == 404


async def test_roles(http: httpx.AsyncClient) -> None:
    body = {"name": "p", "guardrails": ["pii"]}
    viewer = {"x-test-role": VIEWER}
    assert (await http.get("/api/policies", headers=viewer)).status_code == 200
    assert (await http.post("/api/policies/resolve", json={}, headers=viewer)
            ).status_code == 200
    assert (await http.post("/api/guardrails/pii/check", json={"text": "hi"},
                            headers=viewer)).status_code == 200
    assert (await http.post("/api/policies", json=body, headers=viewer)).status_code == 403
    assert (await http.delete("/api/guardrails/pii", headers=viewer)).status_code == 403
    for role in (ORG_ADMIN, INTERNAL_USER):
        headers = {"x-test-role": role}
        assert (await http.get("/api/guardrails", headers=headers)).status_code == 403
        assert (await http.post("/api/guardrails/pii/check", json={"text": "hi"},
                                headers=headers)).status_code == 403
    assert (await http.post("/api/policies", json=body)).status_code == 201
