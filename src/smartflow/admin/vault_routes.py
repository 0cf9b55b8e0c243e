"""``/api/keys/providers``: the provider key vault's admin API.

Values are write-only: every answer carries the entry's public view (name,
provider, description, times, ``value_hint``), never the key itself. Proxy
admins write; proxy admins and viewers read; everyone else gets a 403.
"""

from __future__ import annotations

from typing import Any

from smartflow.admin.context import (
    AdminContext,
    forbidden,
    input_error,
    json_answer,
    not_found,
    read_json_object,
)
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.keys.records import InputError
from smartflow.keys.vault import (
    DISABLED_MESSAGE,
    Vault,
    VaultEntryNotFound,
    VaultUnavailable,
    check_name,
)

BASE = "/api/keys/providers"
_CREATE_FIELDS = frozenset({"name", "value", "provider", "description"})
_UPDATE_FIELDS = frozenset({"value", "provider", "description"})


def _unavailable(message: str = DISABLED_MESSAGE) -> HTTPError:
    return HTTPError(503, message, "server_error", code="vault_unavailable")


def _unknown_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise input_error(InputError(
            f"{unknown[0]}: unknown field (expected {', '.join(sorted(allowed))})",
            unknown[0]))


def register_vault_routes(router: Router, admin: AdminContext) -> None:
    async def vault_for(request: Request, *, write: bool) -> Vault:
        principal = await admin.principal(request)
        allowed = principal.writes_everything if write else principal.reads_everything
        if not allowed:
            raise forbidden("Only a proxy admin may change the provider key vault."
                            if write else "Your role may not read the provider key vault.")
        vault = admin.vault
        if vault is None or not vault.enabled:
            raise _unavailable()
        return vault

    def path_name(request: Request) -> str:
        try:
            return check_name(request.path_params.get("name"))
        except InputError as exc:
            raise input_error(exc) from None

    async def list_entries(request: Request) -> Response:
        vault = await vault_for(request, write=False)
        return json_answer({"data": await vault.list()})

    async def create_entry(request: Request) -> Response:
        vault = await vault_for(request, write=True)
        body = await read_json_object(request)
        _unknown_fields(body, _CREATE_FIELDS)
        try:
            if "name" not in body:
                raise InputError("name: required", "name")
            if body.get("value") is None:
                raise InputError("value: required (the provider key)", "value")
            view = await vault.put(body["name"], body["value"], provider=body.get("provider"),
                                   description=body.get("description"))
        except InputError as exc:
            raise input_error(exc) from None
        except VaultEntryNotFound as exc:
            raise HTTPError(409, str(exc), code="conflict") from None
        except VaultUnavailable as exc:
            raise _unavailable(str(exc)) from None
        return json_answer(view, 201)

    async def get_entry(request: Request) -> Response:
        vault = await vault_for(request, write=False)
        name = path_name(request)
        view = await vault.describe(name)
        if view is None:
            raise not_found(f"Vault entry {name!r}")
        return json_answer(view)

    async def update_entry(request: Request) -> Response:
        vault = await vault_for(request, write=True)
        name = path_name(request)
        body = await read_json_object(request)
        if body.get("name", name) == name:
            body.pop("name", None)  # the entry's own view sent back is fine
        _unknown_fields(body, _UPDATE_FIELDS)
        changes: dict[str, Any] = {key: body[key] for key in ("provider", "description")
                                   if key in body}
        try:
            if "value" in body:
                if body["value"] is None:
                    raise InputError("value: the provider key may be replaced, not removed",
                                     "value")
                changes["value"] = body["value"]
            view = await vault.update(name, **changes)
        except InputError as exc:
            raise input_error(exc) from None
        except VaultUnavailable as exc:
            raise _unavailable(str(exc)) from None
        if view is None:
            raise not_found(f"Vault entry {name!r}")
        return json_answer(view)

    async def delete_entry(request: Request) -> Response:
        vault = await vault_for(request, write=True)
        name = path_name(request)
        if not await vault.delete(name):
            raise not_found(f"Vault entry {name!r}")
        return json_answer({"deleted": True, "name": name})

    router.add("GET", BASE, list_entries)
    router.add("POST", BASE, create_entry)
    router.add("GET", BASE + "/{name}", get_entry)
    router.add(("PUT", "PATCH"), BASE + "/{name}", update_entry)
    router.add("DELETE", BASE + "/{name}", delete_entry)
