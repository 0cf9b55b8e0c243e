"""``/api/enterprise/vkeys``: virtual keys.

The plaintext ``sk-sf-...`` is returned once, by create and regenerate, and
stored only as its SHA-256. Who may do what (``identity.roles``):
proxy_admin everything; proxy_admin_viewer reads; org_admin the keys of its
teams; internal_user its own keys (created for itself, with no team it does
not belong to).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from smartflow.admin.context import (
    AdminContext,
    forbidden,
    input_error,
    json_answer,
    not_found,
    read_json_object,
)
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.identity.roles import INTERNAL_USER, AdminPrincipal
from smartflow.keys.records import InputError, VirtualKey, apply_key_fields, limits_view
from smartflow.store.keyspace import SCOPE_KEY

SELF_SERVICE_FIELDS = frozenset({"alias", "tags", "metadata"})


def key_view(key: VirtualKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "key_hint": key.key_hint,
        "alias": key.alias,
        "user_id": key.user_id,
        "team_id": key.team_id,
        "models": list(key.models),
        **limits_view(key.limits),
        "expires_at": key.expires_at,
        "tags": list(key.tags),
        "metadata": dict(key.metadata),
        "blocked": key.blocked,
        "created_at": key.created_at,
        "updated_at": key.updated_at,
    }


def register_vkey_routes(router: Router, admin: AdminContext) -> None:
    store = admin.store

    async def with_spend(key: VirtualKey) -> dict[str, Any]:
        view = key_view(key)
        view.update(await store.spend(SCOPE_KEY, key.id, key.limits))
        return view

    async def load(request: Request, principal: AdminPrincipal, *, write: bool) -> VirtualKey:
        key = await store.get_key(request.path_params["key_id"])
        if key is None or not principal.reads_key(key.user_id, key.team_id):
            raise not_found("Virtual key")  # no hint that another user's key exists
        if write and not principal.manages_key(key.user_id, key.team_id):
            raise forbidden()
        return key

    async def check_assignment(principal: AdminPrincipal, key: VirtualKey) -> None:
        """An internal user keys itself; an org admin keys itself, or a team it manages
        (for no user, itself or a member of that team): a key bills its team's and its
        user's budgets, so no other team or user may be named."""
        if principal.writes_everything:
            return
        if principal.role == INTERNAL_USER:
            if key.user_id != principal.user_id or (
                    key.team_id is not None and key.team_id not in principal.team_ids):
                raise forbidden("Internal users create keys for themselves only.")
            return
        message = "Org admins create keys for themselves and the teams they manage."
        if key.team_id is None:
            if not principal.owns(key.user_id):
                raise forbidden(message)
            return
        if not principal.manages_team(key.team_id):
            raise forbidden(message)
        if key.user_id is not None and not principal.owns(key.user_id):
            team = await store.get_team(key.team_id)
            if team is None or key.user_id not in team.members:
                raise forbidden("A team's key may name only a member of the team.")

    async def create(request: Request) -> Response:
        principal = await admin.principal(request)
        if principal.role not in ("proxy_admin", "org_admin", "internal_user"):
            raise forbidden()
        body = await read_json_object(request)
        if principal.role == INTERNAL_USER and "user_id" not in body:
            body["user_id"] = principal.user_id
        try:
            template = apply_key_fields(VirtualKey(id="", key_hash="", key_hint=""), body)
        except InputError as exc:
            raise input_error(exc) from None
        await check_assignment(principal, template)
        key, plaintext = await store.create_key(template)
        view = await with_spend(key)
        view["key"] = plaintext  # shown once; only its hash is kept
        return json_answer(view, 201)

    async def list_keys(request: Request) -> Response:
        principal = await admin.principal(request)
        query = request.query
        wanted_user = query["user_id"][0] if query.get("user_id") else None
        wanted_team = query["team_id"][0] if query.get("team_id") else None
        keys = [key for key in await store.list_keys()
                if principal.reads_key(key.user_id, key.team_id)
                and (wanted_user is None or key.user_id == wanted_user)
                and (wanted_team is None or key.team_id == wanted_team)]
        return json_answer({"data": [key_view(key) for key in keys], "total": len(keys)})

    async def get(request: Request) -> Response:
        principal = await admin.principal(request)
        return json_answer(await with_spend(await load(request, principal, write=False)))

    async def update(request: Request) -> Response:
        principal = await admin.principal(request)
        key = await load(request, principal, write=True)
        body = await read_json_object(request)
        if principal.role == INTERNAL_USER and not set(body) <= SELF_SERVICE_FIELDS:
            # A key's limits are set by whoever granted it: its owner may
            # rename and tag it, not raise its budget.
            raise forbidden("Internal users may change only the alias, tags and metadata "
                            "of their keys.")
        try:
            changed = apply_key_fields(key, body)
        except InputError as exc:
            raise input_error(exc) from None
        await check_assignment(principal, changed)
        saved = await store.save_key(changed)
        admin.key_cache.forget(saved.key_hash)
        return json_answer(await with_spend(saved))

    async def delete(request: Request) -> Response:
        principal = await admin.principal(request)
        key = await load(request, principal, write=True)
        await store.delete_key(key)
        admin.key_cache.forget(key.key_hash)
        return json_answer({"id": key.id, "deleted": True})

    async def set_blocked(request: Request, blocked: bool) -> Response:
        principal = await admin.principal(request)
        key = await load(request, principal, write=True)
        if not blocked and principal.role == INTERNAL_USER:
            raise forbidden("Only an admin unblocks a key.")
        saved = await store.save_key(replace(key, blocked=blocked))
        admin.key_cache.forget(saved.key_hash)
        return json_answer(await with_spend(saved))

    async def block(request: Request) -> Response:
        return await set_blocked(request, True)

    async def unblock(request: Request) -> Response:
        return await set_blocked(request, False)

    async def regenerate(request: Request) -> Response:
        principal = await admin.principal(request)
        key = await load(request, principal, write=True)
        admin.key_cache.forget(key.key_hash)
        renewed, plaintext = await store.regenerate_key(key)
        view = await with_spend(renewed)
        view["key"] = plaintext
        return json_answer(view)

    router.add("POST", "/api/enterprise/vkeys", create)
    router.add("GET", "/api/enterprise/vkeys", list_keys)
    router.add("GET", "/api/enterprise/vkeys/{key_id}", get)
    router.add("PATCH", "/api/enterprise/vkeys/{key_id}", update)
    router.add("DELETE", "/api/enterprise/vkeys/{key_id}", delete)
    router.add("POST", "/api/enterprise/vkeys/{key_id}/block", block)
    router.add("POST", "/api/enterprise/vkeys/{key_id}/unblock", unblock)
    router.add("POST", "/api/enterprise/vkeys/{key_id}/regenerate", regenerate)
