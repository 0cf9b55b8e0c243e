"""Guardrails, policies and attachments: the records, their JSON, their rules.

* A guardrail is a named check: ``{"name", "type", "action", "config"}``.
  Its ``config`` is type-specific and judged by the guardrail engine
  (``GuardrailEngine.validate``), not here.
* A policy is a named group of guardrails. It may name a ``parent``: it gets
  the parent's effective guardrails (recursively, at most ``MAX_DEPTH``
  levels), adds its own, then applies its ``overrides`` (per guardrail: an
  ``action``, a ``config`` merged key by key over the inherited one, or
  ``enabled: false`` to switch the guardrail off for this policy and its
  children; a child that lists the guardrail again switches it back on).
* An attachment ties a policy to a scope: a team, a virtual-key alias, a
  model or a tag, by name or glob (``*`` any run of characters, ``?`` one).

Built-ins: the guardrails ``pii`` and ``prompt_injection`` (action ``flag``,
no configuration) and the policy ``default`` (both of them). An operator may
store a record under a built-in's name: it shadows the built-in; deleting
that record brings the built-in back; the built-in itself cannot be deleted.

Names are 1-64 characters of ``[A-Za-z0-9_.-]``. The policy names
``attachments`` and ``resolve`` are taken by the admin API's own paths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from smartflow.keys.records import InputError

GUARDRAIL_TYPES: tuple[str, ...] = ("pii", "prompt_injection", "toxicity", "compliance",
                                    "custom")
# Weakest first: when several policies give one guardrail, the strictest wins.
ACTIONS: tuple[str, ...] = ("log", "flag", "mask", "block")
ACTION_RANK: Mapping[str, int] = MappingProxyType({a: i for i, a in enumerate(ACTIONS)})
# Most specific first: where several policies give one guardrail, its config
# comes from the most specific scope.
SCOPE_TYPES: tuple[str, ...] = ("key_alias", "team", "tag", "model")
SCOPE_RANK: Mapping[str, int] = MappingProxyType({s: i for i, s in enumerate(SCOPE_TYPES)})

MAX_DEPTH = 16  # a policy and at most 15 ancestors
MAX_GUARDRAILS_PER_POLICY = 256
MAX_SCOPE_CHARS = 256
MAX_DESCRIPTION_CHARS = 2000
DEFAULT_POLICY = "default"
RESERVED_POLICY_NAMES = frozenset({"attachments", "resolve"})

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_ATTACHMENT_ID = re.compile(r"att_[0-9a-f]{8,32}\Z")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GuardrailSpec:
    name: str
    type: str
    action: str
    config: Mapping[str, Any]  # read-only by convention: never mutate it
    builtin: bool = False
    version: int = 0  # 0: a built-in; stored records count from 1
    updated_at: str = ""


@dataclass(frozen=True, slots=True)
class GuardrailOverride:
    """What a policy changes on one guardrail (None: inherited as is)."""

    action: str | None = None
    config: Mapping[str, Any] | None = None
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str
    parent: str | None = None
    guardrails: tuple[str, ...] = ()
    overrides: Mapping[str, GuardrailOverride] = field(default_factory=lambda: _EMPTY)
    description: str = ""
    builtin: bool = False
    version: int = 0
    updated_at: str = ""


@dataclass(frozen=True, slots=True)
class Attachment:
    id: str
    policy: str
    scope_type: str
    scope: str
    created_at: str = ""

    @property
    def is_glob(self) -> bool:
        return "*" in self.scope or "?" in self.scope


BUILTIN_GUARDRAILS: Mapping[str, GuardrailSpec] = MappingProxyType({
    "pii": GuardrailSpec(name="pii", type="pii", action="flag", config=_EMPTY, builtin=True),
    "prompt_injection": GuardrailSpec(name="prompt_injection", type="prompt_injection",
                                      action="flag", config=_EMPTY, builtin=True),
})
BUILTIN_POLICIES: Mapping[str, PolicySpec] = MappingProxyType({
    DEFAULT_POLICY: PolicySpec(
        name=DEFAULT_POLICY, guardrails=("pii", "prompt_injection"),
        description="Applies to a call that no attachment matches.", builtin=True),
})


class GuardrailEngine(Protocol):
    """What runs guardrails (implemented elsewhere; the admin API and the call path
    use it through this shape)."""

    def validate(self, guardrail: GuardrailSpec) -> None:
        """Raise ValueError(message) when the type's config is bad."""

    async def check(self, guardrail: GuardrailSpec, text: str) -> dict[str, Any]:
        """``{"action", "findings", "text"}`` for ``text``."""


class PolicyConflict(Exception):
    """The change contradicts what is stored (a name taken, a record in use): a 409."""

    def __init__(self, message: str, code: str = "conflict") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class PolicyNotFound(Exception):
    """No such guardrail, policy, attachment or version: a 404."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


# -- checks ----------------------------------------------------------------------------


def check_name(value: Any, param: str = "name") -> str:
    if not isinstance(value, str):
        raise InputError(f"{param}: must be a string.", param)
    if not _NAME.match(value):
        raise InputError(f"{param}: must be 1-64 characters of letters, digits, '_', '.' "
                         f"or '-'.", param)
    return value


def check_policy_name(value: Any, param: str = "name") -> str:
    name = check_name(value, param)
    if name in RESERVED_POLICY_NAMES:
        raise InputError(f"{param}: {name!r} is reserved by the admin API.", param)
    return name


def check_attachment_id(value: Any) -> str:
    if not isinstance(value, str) or not _ATTACHMENT_ID.match(value):
        raise InputError("id: not an attachment id.", "id")
    return value


def _reject_unknown(body: Mapping[str, Any], allowed: tuple[str, ...], prefix: str = "") -> None:
    for key in body:
        if key not in allowed:
            raise InputError(f"{prefix}{key}: unknown field (expected one of "
                             f"{', '.join(allowed)}).", f"{prefix}{key}")


def _choice(value: Any, choices: tuple[str, ...], param: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{param}: must be one of {', '.join(choices)}.", param)
    return value


def _config(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{param}: must be a JSON object.", param)
    return MappingProxyType(dict(value))


def _body_name(body: Mapping[str, Any], name: str | None, check: Any) -> str:
    """The record's name: from the path when given (a body name must then agree)."""
    if name is None:
        if "name" not in body:
            raise InputError("name: required.", "name")
        checked: str = check(body["name"])
        return checked
    if "name" in body and body["name"] != name:
        raise InputError(f"name: {body['name']!r} does not match the path's {name!r}.",
                         "name")
    return name


# -- guardrails ------------------------------------------------------------------------

_GUARDRAIL_FIELDS = ("name", "type", "action", "config")


def guardrail_from_json(body: Mapping[str, Any], *, name: str | None = None) -> GuardrailSpec:
    _reject_unknown(body, _GUARDRAIL_FIELDS)
    checked = _body_name(body, name, check_name)
    if "type" not in body:
        raise InputError("type: required.", "type")
    kind = _choice(body["type"], GUARDRAIL_TYPES, "type")
    action = _choice(body.get("action", "flag"), ACTIONS, "action")
    config = _config(body.get("config", {}), "config")
    return GuardrailSpec(name=checked, type=kind, action=action, config=config)


def guardrail_view(spec: GuardrailSpec) -> dict[str, Any]:
    view: dict[str, Any] = {"name": spec.name, "type": spec.type, "action": spec.action,
                            "config": dict(spec.config), "builtin": spec.builtin,
                            "version": spec.version}
    if spec.updated_at:
        view["updated_at"] = spec.updated_at
    return view


def guardrail_document(spec: GuardrailSpec) -> dict[str, Any]:
    """As stored: the view without ``builtin`` (a stored record never is one)."""
    view = guardrail_view(spec)
    del view["builtin"]
    return view


def guardrail_from_document(document: Any) -> GuardrailSpec:
    if not isinstance(document, dict):
        raise TypeError("not an object")
    spec = guardrail_from_json({k: document[k] for k in _GUARDRAIL_FIELDS if k in document})
    return _versioned(spec, document)


# -- policies --------------------------------------------------------------------------

_POLICY_FIELDS = ("name", "parent", "guardrails", "overrides", "description")
_OVERRIDE_FIELDS = ("action", "config", "enabled")


def _override_from_json(value: Any, param: str) -> GuardrailOverride:
    if not isinstance(value, dict):
        raise InputError(f"{param}: must be a JSON object.", param)
    _reject_unknown(value, _OVERRIDE_FIELDS, param + ".")
    action = None
    if value.get("action") is not None:
        action = _choice(value["action"], ACTIONS, param + ".action")
    config = None
    if value.get("config") is not None:
        config = _config(value["config"], param + ".config")
    enabled = value.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise InputError(f"{param}.enabled: must be true or false.", param + ".enabled")
    return GuardrailOverride(action=action, config=config, enabled=enabled)


def policy_from_json(body: Mapping[str, Any], *, name: str | None = None) -> PolicySpec:
    _reject_unknown(body, _POLICY_FIELDS)
    checked = _body_name(body, name, check_policy_name)
    parent = body.get("parent")
    if parent is not None:
        parent = check_policy_name(parent, "parent")
        if parent == checked:
            raise InputError("parent: a policy cannot inherit from itself.", "parent")
    raw_guardrails = body.get("guardrails", [])
    if not isinstance(raw_guardrails, list):
        raise InputError("guardrails: must be a list of guardrail names.", "guardrails")
    if len(raw_guardrails) > MAX_GUARDRAILS_PER_POLICY:
        raise InputError(f"guardrails: at most {MAX_GUARDRAILS_PER_POLICY}.", "guardrails")
    guardrails: list[str] = []
    for index, item in enumerate(raw_guardrails):
        guardrail = check_name(item, f"guardrails[{index}]")
        if guardrail in guardrails:
            raise InputError(f"guardrails[{index}]: {guardrail!r} is listed twice.",
                             f"guardrails[{index}]")
        guardrails.append(guardrail)
    raw_overrides = body.get("overrides", {})
    if raw_overrides is None:
        raw_overrides = {}
    if not isinstance(raw_overrides, dict):
        raise InputError("overrides: must be a JSON object keyed by guardrail name.",
                         "overrides")
    overrides = {}
    for key in sorted(raw_overrides):
        check_name(key, f"overrides.{key}")
        overrides[key] = _override_from_json(raw_overrides[key], f"overrides.{key}")
    description = body.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        raise InputError(f"description: must be a string of at most "
                         f"{MAX_DESCRIPTION_CHARS} characters.", "description")
    return PolicySpec(name=checked, parent=parent, guardrails=tuple(guardrails),
                      overrides=MappingProxyType(overrides), description=description)


def _override_view(override: GuardrailOverride) -> dict[str, Any]:
    view: dict[str, Any] = {}
    if override.action is not None:
        view["action"] = override.action
    if override.config is not None:
        view["config"] = dict(override.config)
    if override.enabled is not None:
        view["enabled"] = override.enabled
    return view


def policy_view(spec: PolicySpec) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": spec.name, "parent": spec.parent, "guardrails": list(spec.guardrails),
        "overrides": {k: _override_view(v) for k, v in spec.overrides.items()},
        "description": spec.description, "builtin": spec.builtin, "version": spec.version}
    if spec.updated_at:
        view["updated_at"] = spec.updated_at
    return view


def policy_document(spec: PolicySpec) -> dict[str, Any]:
    view = policy_view(spec)
    del view["builtin"]
    return view


def policy_from_document(document: Any) -> PolicySpec:
    if not isinstance(document, dict):
        raise TypeError("not an object")
    spec = policy_from_json({k: document[k] for k in _POLICY_FIELDS if k in document})
    return _versioned(spec, document)


def _versioned(spec: Any, document: Mapping[str, Any]) -> Any:
    from dataclasses import replace

    version = document.get("version", 0)
    updated_at = document.get("updated_at", "")
    return replace(spec, version=version if isinstance(version, int) else 0,
                   updated_at=updated_at if isinstance(updated_at, str) else "")


# -- attachments -----------------------------------------------------------------------

_ATTACHMENT_FIELDS = ("policy", "scope_type", "scope")


def attachment_from_json(body: Mapping[str, Any], *, attachment_id: str,
                         created_at: str = "") -> Attachment:
    _reject_unknown(body, _ATTACHMENT_FIELDS)
    for required in _ATTACHMENT_FIELDS:
        if required not in body:
            raise InputError(f"{required}: required.", required)
    policy = check_policy_name(body["policy"], "policy")
    scope_type = _choice(body["scope_type"], SCOPE_TYPES, "scope_type")
    scope = body["scope"]
    if not isinstance(scope, str) or not scope or len(scope) > MAX_SCOPE_CHARS:
        raise InputError(f"scope: must be a name or glob of 1-{MAX_SCOPE_CHARS} characters.",
                         "scope")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in scope):
        raise InputError("scope: must not contain control characters.", "scope")
    return Attachment(id=attachment_id, policy=policy, scope_type=scope_type, scope=scope,
                      created_at=created_at)


def attachment_view(attachment: Attachment) -> dict[str, Any]:
    return {"id": attachment.id, "policy": attachment.policy,
            "scope_type": attachment.scope_type, "scope": attachment.scope,
            "created_at": attachment.created_at}


def attachment_from_document(document: Any) -> Attachment:
    if not isinstance(document, dict):
        raise TypeError("not an object")
    created_at = document.get("created_at", "")
    return attachment_from_json(
        {k: document[k] for k in _ATTACHMENT_FIELDS if k in document},
        attachment_id=check_attachment_id(document.get("id")),
        created_at=created_at if isinstance(created_at, str) else "")
