"""``/api/routing/...``: fallback chains and model groups, stored in Redis.

* ``/api/routing/fallback-chains`` (``GET``, ``POST``) and
  ``/api/routing/fallback-chains/{name}`` (``GET``, ``PUT``, ``DELETE``):
  named, ordered lists of targets. Chains from the config file
  (``[[routing.fallback_chains]]``) are listed with ``source: "config"``; a
  chain stored under the same name overrides one (and shows ``source:
  "api"``). A config chain cannot be deleted here (edit config.toml), only
  overridden with ``PUT``.
* ``/api/routing/groups`` and ``/api/routing/groups/{name}``: model groups,
  a public model name and its deployments. A deployment's ``api_key`` is
  only ever a vault reference (``vault:NAME``), never a key.

``POST`` creates (409 ``already_exists`` when the name is taken: replace
with ``PUT``); ``PUT`` creates or replaces (201 when it created, else 200).
Proxy admins write; proxy admins and viewers read; everyone else gets a 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

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
from smartflow.routing.records import (
    FallbackChain,
    chain_from_json,
    chain_view,
    check_chain_name,
    check_group_name,
    group_from_json,
    group_view,
)
from smartflow.routing.route_store import RouteExists

if TYPE_CHECKING:
    from smartflow.routing.route_store import RouteStore

CHAINS = "/api/routing/fallback-chains"
GROUPS = "/api/routing/groups"


def _already_exists(what: str) -> HTTPError:
    return HTTPError(409, f"{what} already exists (to replace it, use PUT).",
                     code="already_exists")


def register_routing_routes(router: Router, admin: AdminContext, store: RouteStore,
                            config_chains: Iterable[FallbackChain] = ()) -> None:
    from_config = {chain.name: replace(chain, source="config") for chain in config_chains}

    async def authorize(request: Request, *, write: bool) -> None:
        principal = await admin.principal(request)
        if write and not principal.writes_everything:
            raise forbidden("Only a proxy admin may change routing.")
        if not principal.reads_everything:
            raise forbidden("Your role may not read routing.")

    def path_name(request: Request, check: Any) -> str:
        try:
            name: str = check(request.path_params.get("name"))
        except InputError as exc:
            raise input_error(exc) from None
        return name

    # -- fallback chains ---------------------------------------------------------------

    async def current_chain(name: str) -> FallbackChain | None:
        return await store.get_chain(name) or from_config.get(name)

    async def list_chains(request: Request) -> Response:
        await authorize(request, write=False)
        chains = dict(from_config)
        chains.update((chain.name, chain) for chain in await store.list_chains())
        return json_answer({"data": [chain_view(chains[name]) for name in sorted(chains)]})

    async def create_chain(request: Request) -> Response:
        await authorize(request, write=True)
        body = await read_json_object(request)
        try:
            chain = chain_from_json(body)
        except InputError as exc:
            raise input_error(exc) from None
        what = f"Fallback chain {chain.name!r}"
        if chain.name in from_config:
            raise _already_exists(what + " (defined in the config file)")
        try:
            saved = await store.put_chain(chain, create=True)
        except RouteExists:
            raise _already_exists(what) from None
        return json_answer(chain_view(saved), 201)

    async def get_chain(request: Request) -> Response:
        await authorize(request, write=False)
        name = path_name(request, check_chain_name)
        chain = await current_chain(name)
        if chain is None:
            raise not_found(f"Fallback chain {name!r}")
        return json_answer(chain_view(chain))

    async def put_chain(request: Request) -> Response:
        await authorize(request, write=True)
        name = path_name(request, check_chain_name)
        body = await read_json_object(request)
        try:
            chain = chain_from_json(body, name=name)
        except InputError as exc:
            raise input_error(exc) from None
        existed = await current_chain(name) is not None
        saved = await store.put_chain(chain)
        return json_answer(chain_view(saved), 200 if existed else 201)

    async def delete_chain(request: Request) -> Response:
        await authorize(request, write=True)
        name = path_name(request, check_chain_name)
        if await store.delete_chain(name):
            return json_answer({"deleted": True, "name": name})
        if name in from_config:
            raise HTTPError(409, f"Fallback chain {name!r} is defined in the config file: "
                                 "remove it from [[routing.fallback_chains]] in config.toml "
                                 "(or override it here with PUT).",
                            code="defined_in_config")
        raise not_found(f"Fallback chain {name!r}")

    # -- model groups ------------------------------------------------------------------

    async def list_groups(request: Request) -> Response:
        await authorize(request, write=False)
        return json_answer({"data": [group_view(group) for group in await store.list_groups()]})

    async def create_group(request: Request) -> Response:
        await authorize(request, write=True)
        body = await read_json_object(request)
        try:
            group = group_from_json(body)
        except InputError as exc:
            raise input_error(exc) from None
        try:
            saved = await store.put_group(group, create=True)
        except RouteExists:
            raise _already_exists(f"Model group {group.name!r}") from None
        return json_answer(group_view(saved), 201)

    async def get_group(request: Request) -> Response:
        await authorize(request, write=False)
        name = path_name(request, check_group_name)
        group = await store.get_group(name)
        if group is None:
            raise not_found(f"Model group {name!r}")
        return json_answer(group_view(group))

    async def put_group(request: Request) -> Response:
        await authorize(request, write=True)
        name = path_name(request, check_group_name)
        body = await read_json_object(request)
        try:
            group = group_from_json(body, name=name)
        except InputError as exc:
            raise input_error(exc) from None
        existed = await store.get_group(name) is not None
        saved = await store.put_group(group)
        return json_answer(group_view(saved), 200 if existed else 201)

    async def delete_group(request: Request) -> Response:
        await authorize(request, write=True)
        name = path_name(request, check_group_name)
        if not await store.delete_group(name):
            raise not_found(f"Model group {name!r}")
        return json_answer({"deleted": True, "name": name})

    router.add("GET", CHAINS, list_chains)
    router.add("POST", CHAINS, create_chain)
    router.add("GET", CHAINS + "/{name}", get_chain)
    router.add("PUT", CHAINS + "/{name}", put_chain)
    router.add("DELETE", CHAINS + "/{name}", delete_chain)
    router.add("GET", GROUPS, list_groups)
    router.add("POST", GROUPS, create_group)
    # A public model name may hold slashes ("meta/llama-3"): the rest of the path.
    router.add("GET", GROUPS + "/{name:path}", get_group)
    router.add("PUT", GROUPS + "/{name:path}", put_group)
    router.add("DELETE", GROUPS + "/{name:path}", delete_group)
