"""``/api/guardrails`` and ``/api/policies``: guardrails, policies, attachments.

* ``/api/guardrails`` (``GET``, ``POST``), ``/api/guardrails/{name}``
  (``GET``, ``PUT``, ``DELETE``), ``/api/guardrails/{name}/versions`` (``GET``),
  ``/api/guardrails/{name}/check`` (``POST {"text"}``: the engine's verdict).
* ``/api/policies`` (``GET``, ``POST``), ``/api/policies/{name}`` (``GET``,
  ``?version=N`` for an old one; ``PUT``; ``DELETE``),
  ``/api/policies/{name}/versions`` (``GET``).
* ``/api/policies/attachments`` (``GET``, ``POST``),
  ``/api/policies/attachments/{id}`` (``DELETE``).
* ``/api/policies/resolve`` (``POST {"team", "key_alias", "model", "tags"}``):
  the guardrails such a call would get, and why. When nothing matches, the
  policy ``default`` applies; ``"default_policy": "<name>" | null`` in the
  body previews another default, or none.

Built-ins (the guardrails ``pii`` and ``prompt_injection``, the policy
``default``) are listed with ``builtin: true``. ``POST`` or ``PUT`` under a
built-in's name stores an operator version that shadows it; ``DELETE`` of
that version brings the built-in back; the built-in itself cannot be deleted
(409 ``builtin``). ``DELETE`` of a policy also removes its attachments; its
versions stay readable (``?version=N``, ``/versions``), and a policy made
again under that name goes on from the next version number.

``POST`` creates (409 ``already_exists`` when the name is taken); ``PUT``
creates or replaces (201 when it created, else 200); every change is a new
version. Proxy admins write; proxy admins and viewers read and may run
``check`` and ``resolve``; everyone else gets a 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

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
from smartflow.policy.model import (
    DEFAULT_POLICY,
    Attachment,
    GuardrailEngine,
    GuardrailSpec,
    PolicyConflict,
    PolicyNotFound,
    attachment_from_json,
    attachment_view,
    check_attachment_id,
    check_name,
    check_policy_name,
    guardrail_from_json,
    guardrail_view,
    policy_from_json,
    policy_view,
)
from smartflow.policy.resolver import CallScope, resolve

if TYPE_CHECKING:
    from smartflow.policy.store import PolicyStore

GUARDRAILS = "/api/guardrails"
POLICIES = "/api/policies"
ATTACHMENTS = POLICIES + "/attachments"
RESOLVE = POLICIES + "/resolve"
MAX_CHECK_CHARS = 200_000
_RESOLVE_FIELDS = ("team", "key_alias", "model", "tags", "default_policy")

T = TypeVar("T")


def _conflict(exc: PolicyConflict) -> HTTPError:
    return HTTPError(409, exc.message, "invalid_request_error", code=exc.code)


async def _guarded(call: Awaitable[T]) -> T:
    """The store's refusals as admin-API errors."""
    try:
        return await call
    except InputError as exc:
        raise input_error(exc) from None
    except PolicyConflict as exc:
        raise _conflict(exc) from None
    except PolicyNotFound as exc:
        raise not_found(exc.what) from None


def _parsed(parse: Callable[[], T]) -> T:
    try:
        return parse()
    except InputError as exc:
        raise input_error(exc) from None


def _version_query(request: Request) -> int | None:
    values = request.query.get("version")
    if not values:
        return None
    if not values[0].isdigit() or int(values[0]) < 1:
        raise HTTPError(400, "version: must be a positive integer.", "invalid_request_error",
                        param="version", code="invalid_value")
    return int(values[0])


def _optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise HTTPError(400, f"{name}: must be a non-empty string.", "invalid_request_error",
                        param=name, code="invalid_field")
    return value


def _call_scope(body: dict[str, Any]) -> tuple[CallScope, str | None]:
    for key in body:
        if key not in _RESOLVE_FIELDS:
            raise HTTPError(400, f"{key}: unknown field (expected one of "
                                 f"{', '.join(_RESOLVE_FIELDS)}).", "invalid_request_error",
                            param=key, code="invalid_field")
    tags = body.get("tags", [])
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise HTTPError(400, "tags: must be a list of non-empty strings.",
                        "invalid_request_error", param="tags", code="invalid_field")
    default_policy = DEFAULT_POLICY
    if "default_policy" in body:
        default_policy = body["default_policy"]
        if default_policy is not None:
            default_policy = _parsed(lambda: check_policy_name(body["default_policy"],
                                                               "default_policy"))
    scope = CallScope(model=_optional_text(body, "model") or "",
                      team=_optional_text(body, "team"),
                      key_alias=_optional_text(body, "key_alias"), tags=tuple(tags))
    return scope, default_policy


def register_policy_routes(router: Router, admin: AdminContext, store: PolicyStore,
                           engine: GuardrailEngine) -> None:
    async def authorize(request: Request, *, write: bool) -> None:
        principal = await admin.principal(request)
        if write and not principal.writes_everything:
            raise forbidden("Only a proxy admin may change guardrails and policies.")
        if not principal.reads_everything:
            raise forbidden("Your role may not read guardrails and policies.")

    def path_name(request: Request, check: Callable[[Any], str]) -> str:
        return _parsed(lambda: check(request.path_params.get("name")))

    # -- guardrails --------------------------------------------------------------------

    async def current_guardrail(name: str) -> GuardrailSpec:
        found = (await store.snapshot()).guardrails.get(name)
        if found is None:
            raise not_found(f"Guardrail {name!r}")
        return found

    async def list_guardrails(request: Request) -> Response:
        await authorize(request, write=False)
        snapshot = await store.snapshot()
        return json_answer({"data": [guardrail_view(g) for g in snapshot.guardrails.values()]})

    async def create_guardrail(request: Request) -> Response:
        await authorize(request, write=True)
        body = await read_json_object(request)
        spec = _parsed(lambda: guardrail_from_json(body))
        saved = await _guarded(store.put_guardrail(spec, create=True, validate=engine.validate))
        return json_answer(guardrail_view(saved), 201)

    async def get_guardrail(request: Request) -> Response:
        await authorize(request, write=False)
        name = path_name(request, check_name)
        version = _version_query(request)
        if version is None:
            return json_answer(guardrail_view(await current_guardrail(name)))
        for old in await store.guardrail_versions(name):
            if old.version == version:
                return json_answer(guardrail_view(old))
        raise not_found(f"Version {version} of guardrail {name!r}")

    async def guardrail_versions(request: Request) -> Response:
        await authorize(request, write=False)
        name = path_name(request, check_name)
        versions = await store.guardrail_versions(name)
        snapshot = await store.snapshot()
        if not versions and name not in snapshot.guardrails:
            raise not_found(f"Guardrail {name!r}")
        current = snapshot.guardrails.get(name)
        return json_answer({"name": name,
                            "current": current.version if current is not None else None,
                            "data": [guardrail_view(v) for v in versions]})

    async def put_guardrail(request: Request) -> Response:
        await authorize(request, write=True)
        name = path_name(request, check_name)
        body = await read_json_object(request)
        spec = _parsed(lambda: guardrail_from_json(body, name=name))
        existed = name in (await store.snapshot()).guardrails
        saved = await _guarded(store.put_guardrail(spec, validate=engine.validate))
        return json_answer(guardrail_view(saved), 200 if existed else 201)

    async def delete_guardrail(request: Request) -> Response:
        await authorize(request, write=True)
        name = path_name(request, check_name)
        restored = await _guarded(store.delete_guardrail(name))
        return json_answer({"deleted": True, "name": name, "builtin_restored": restored})

    async def check_guardrail(request: Request) -> Response:
        await authorize(request, write=False)
        name = path_name(request, check_name)
        body = await read_json_object(request)
        text = body.get("text")
        if not isinstance(text, str):
            raise HTTPError(400, "text: required, a string.", "invalid_request_error",
                            param="text", code="invalid_field")
        if len(text) > MAX_CHECK_CHARS:
            raise HTTPError(400, f"text: at most {MAX_CHECK_CHARS} characters.",
                            "invalid_request_error", param="text", code="invalid_field")
        spec = await current_guardrail(name)
        return json_answer(await engine.check(spec, text))

    # -- policies ----------------------------------------------------------------------

    async def list_policies(request: Request) -> Response:
        await authorize(request, write=False)
        snapshot = await store.snapshot()
        return json_answer({"data": [policy_view(p) for p in snapshot.policies.values()]})

    async def create_policy(request: Request) -> Response:
        await authorize(request, write=True)
        body = await read_json_object(request)
        spec = _parsed(lambda: policy_from_json(body))
        saved = await _guarded(store.put_policy(spec, create=True, validate=engine.validate))
        return json_answer(policy_view(saved), 201)

    async def get_policy(request: Request) -> Response:
        await authorize(request, write=False)
        name = path_name(request, check_policy_name)
        version = _version_query(request)
        if version is None:
            found = (await store.snapshot()).policies.get(name)
            if found is None:
                raise not_found(f"Policy {name!r}")
            return json_answer(policy_view(found))
        for old in await store.policy_versions(name):
            if old.version == version:
                return json_answer(policy_view(old))
        raise not_found(f"Version {version} of policy {name!r}")

    async def policy_versions(request: Request) -> Response:
        await authorize(request, write=False)
        name = path_name(request, check_policy_name)
        versions = await store.policy_versions(name)
        snapshot = await store.snapshot()
        if not versions and name not in snapshot.policies:
            raise not_found(f"Policy {name!r}")
        current = snapshot.policies.get(name)
        return json_answer({"name": name,
                            "current": current.version if current is not None else None,
                            "data": [policy_view(v) for v in versions]})

    async def put_policy(request: Request) -> Response:
        await authorize(request, write=True)
        name = path_name(request, check_policy_name)
        body = await read_json_object(request)
        spec = _parsed(lambda: policy_from_json(body, name=name))
        existed = name in (await store.snapshot()).policies
        saved = await _guarded(store.put_policy(spec, validate=engine.validate))
        return json_answer(policy_view(saved), 200 if existed else 201)

    async def delete_policy(request: Request) -> Response:
        await authorize(request, write=True)
        name = path_name(request, check_policy_name)
        restored, detached = await _guarded(store.delete_policy(name))
        return json_answer({"deleted": True, "name": name, "builtin_restored": restored,
                            "detached": detached})

    # -- attachments and resolution ----------------------------------------------------

    async def list_attachments(request: Request) -> Response:
        await authorize(request, write=False)
        snapshot = await store.snapshot()
        return json_answer({"data": [attachment_view(a) for a in snapshot.attachments]})

    async def attach(request: Request) -> Response:
        await authorize(request, write=True)
        body = await read_json_object(request)
        attachment: Attachment = _parsed(lambda: attachment_from_json(body, attachment_id=""))
        saved = await _guarded(store.attach(attachment))
        return json_answer(attachment_view(saved), 201)

    async def detach(request: Request) -> Response:
        await authorize(request, write=True)
        attachment_id = request.path_params.get("attachment_id")
        try:
            check_attachment_id(attachment_id)
        except InputError:
            raise not_found(f"Attachment {attachment_id!r}") from None
        removed = await _guarded(store.detach(str(attachment_id)))
        return json_answer({"deleted": True, **attachment_view(removed)})

    async def preview(request: Request) -> Response:
        await authorize(request, write=False)
        scope, default_policy = _call_scope(await read_json_object(request))
        resolution = resolve(await store.snapshot(), scope, default_policy)
        return json_answer(resolution.to_json())

    router.add("GET", GUARDRAILS, list_guardrails)
    router.add("POST", GUARDRAILS, create_guardrail)
    router.add("GET", GUARDRAILS + "/{name}", get_guardrail)
    router.add("PUT", GUARDRAILS + "/{name}", put_guardrail)
    router.add("DELETE", GUARDRAILS + "/{name}", delete_guardrail)
    router.add("GET", GUARDRAILS + "/{name}/versions", guardrail_versions)
    router.add("POST", GUARDRAILS + "/{name}/check", check_guardrail)
    # Static paths are matched before templates: "attachments" and "resolve"
    # are reserved policy names (model.RESERVED_POLICY_NAMES).
    router.add("GET", ATTACHMENTS, list_attachments)
    router.add("POST", ATTACHMENTS, attach)
    router.add("DELETE", ATTACHMENTS + "/{attachment_id}", detach)
    router.add("POST", RESOLVE, preview)
    router.add("GET", POLICIES, list_policies)
    router.add("POST", POLICIES, create_policy)
    router.add("GET", POLICIES + "/{name}", get_policy)
    router.add("PUT", POLICIES + "/{name}", put_policy)
    router.add("DELETE", POLICIES + "/{name}", delete_policy)
    router.add("GET", POLICIES + "/{name}/versions", policy_versions)
