"""Fallback chains and model groups made through the admin API: records and their checks.

Pure data, no I/O. ``chain_from_json`` / ``group_from_json`` turn an admin
API body (or a stored document) into a checked record, raising
``keys.records.InputError`` with the offending field as ``param``
(``targets[2]``, ``deployments[0].api_key``); ``chain_view`` / ``group_view``
are the JSON answers, and the stored documents. The field names are a
contract (tests and clients rely on them).

A model group's deployments never hold a provider key: ``api_key`` is either
empty (the provider's environment variable) or a reference ``vault:NAME`` to
an entry of the provider key vault (``POST /api/keys/providers``). A
plaintext key is refused, and never repeated in the error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from smartflow.keys.records import InputError
from smartflow.keys.vault import VAULT_PREFIX, check_name
from smartflow.provider_registry import PROVIDERS

__all__ = [
    "MAX_DEPLOYMENTS",
    "MAX_TARGETS",
    "SOURCES",
    "STRATEGIES",
    "FallbackChain",
    "InputError",
    "ManagedDeployment",
    "ManagedGroup",
    "chain_from_json",
    "chain_view",
    "check_chain_name",
    "check_group_name",
    "group_from_json",
    "group_view",
]

STRATEGIES: Final = ("round_robin", "weighted", "least_connections", "random", "priority",
                     "latency", "cost", "tag")
SOURCES: Final = ("api", "config")

MAX_TARGETS: Final = 16
MAX_DEPLOYMENTS: Final = 64
MAX_RETRIES: Final = 10
MAX_MODEL_CHARS: Final = 256
MAX_TAGS: Final = 32
MAX_TAG_CHARS: Final = 64
_MAX_API_BASE_CHARS: Final = 2048
_MAX_API_VERSION_CHARS: Final = 64
_MAX_TIME_CHARS: Final = 64
_MAX_COUNT: Final = 100_000_000  # context windows, output limits
_MAX_PRIORITY: Final = 1_000_000
_MAX_WEIGHT: Final = 1_000_000.0
_MAX_PRICE: Final = 1_000_000.0

_CHAIN_NAME_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_DEPLOYMENT_ID_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


# -- records -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FallbackChain:
    """A named, ordered list of targets: a request for ``model`` walks them in order."""

    name: str
    model: str  # the public model name the chain serves ("": only by header)
    targets: tuple[str, ...]  # model names or deployment ids, tried in order
    context_window_fallback: str = ""  # the model to use on a context-length error
    retries: int | None = None  # per-step retry budget (None: [routing] retries)
    source: str = "api"  # "api" (Redis) or "config"
    created_at: str = ""  # ISO 8601 UTC, set by the store
    updated_at: str = ""


@dataclass(frozen=True, slots=True)
class ManagedDeployment:
    """One deployment of a model group: where calls for the group's name may go."""

    id: str  # unique within the group
    provider: str
    model: str  # the upstream model id
    api_base: str = ""
    api_key: str = ""  # "" (the provider's environment variable) or "vault:NAME"
    api_version: str = ""
    weight: float = 1.0
    priority: int = 0  # lower is tried first
    tags: tuple[str, ...] = ()
    context_window: int = 0  # 0: unknown
    max_output_tokens: int = 0  # 0: unknown
    input_price_per_mtok: float | None = None
    output_price_per_mtok: float | None = None


@dataclass(frozen=True, slots=True)
class ManagedGroup:
    """A public model name served by one or more deployments."""

    name: str  # the public model name
    deployments: tuple[ManagedDeployment, ...]
    strategy: str = ""  # "": the configured default
    created_at: str = ""
    updated_at: str = ""


# -- field checks ------------------------------------------------------------------

def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _object(value: Any, param: str | None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        where = f"{param}: " if param else ""
        raise InputError(f"{where}expected a JSON object, got {_type_name(value)}", param)
    return value


def _no_unknown_fields(obj: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    unknown = sorted(str(key) for key in set(obj) - allowed)
    if unknown:
        raise InputError(f"{prefix}{unknown[0]}: unknown field (expected one of "
                         f"{', '.join(sorted(allowed))})", prefix + unknown[0])


def _has_blank(text: str) -> bool:
    return any(char.isspace() or not char.isprintable() for char in text)


def _model_name(value: Any, param: str, *, required: bool) -> str:
    """A model name: no whitespace or control characters, at most 256 characters."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{param}: expected a model name (a string), got {_type_name(value)}",
                         param)
    if not value:
        if required:
            raise InputError(f"{param}: required (a non-empty string)", param)
        return ""
    if len(value) > MAX_MODEL_CHARS or _has_blank(value):
        raise InputError(f"{param}: expected a model name of at most {MAX_MODEL_CHARS} "
                         "characters, without spaces or control characters", param)
    return value


def _plain_string(value: Any, param: str, limit: int) -> str:
    """An optional string without whitespace (None: "")."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit or _has_blank(value):
        raise InputError(f"{param}: expected a string of at most {limit} characters, "
                         "without spaces", param)
    return value


def _integer(value: Any, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise InputError(f"{param}: expected an integer, got {_type_name(value)}", param)
    number = int(value)
    if not low <= number <= high:
        raise InputError(f"{param}: expected an integer from {low} to {high}", param)
    return number


def _number(value: Any, param: str, *, minimum: float, exclusive: bool, maximum: float
            ) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{param}: expected a number, got {_type_name(value)}", param)
    number = float(value)
    too_low = number <= minimum if exclusive else number < minimum
    if not math.isfinite(number) or too_low or number > maximum:
        bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
        raise InputError(f"{param}: expected a number {bound} and <= {maximum:g}", param)
    return number


def _optional_price(value: Any, param: str) -> float | None:
    if value is None:
        return None
    return _number(value, param, minimum=0.0, exclusive=False, maximum=_MAX_PRICE)


def _time(value: Any, param: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > _MAX_TIME_CHARS:
        raise InputError(f"{param}: expected an ISO 8601 time (a string)", param)
    return value


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{param}: expected an array, got {_type_name(value)}", param)
    return list(value)


def check_chain_name(value: Any, param: str = "name") -> str:
    """1-128 letters, digits and ``._:-`` (not only dots: a URL path cannot carry it)."""
    if not isinstance(value, str) or not _CHAIN_NAME_RE.match(value) or not value.strip("."):
        raise InputError(f"{param}: expected a chain name of 1-128 letters, digits and ._:-",
                         param)
    return value


def check_group_name(value: Any, param: str = "name") -> str:
    """A public model name that a URL path can carry (``a/b`` is fine, ``a//b`` is not)."""
    name = _model_name(value, param, required=True)
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise InputError(f"{param}: a model group's name may not start or end with '/', "
                         "contain '//', or have '.' or '..' between slashes", param)
    return name


def _check_strategy(value: Any, param: str) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or value not in STRATEGIES:
        raise InputError(f"{param}: expected \"\" (the configured default) or one of "
                         f"{', '.join(STRATEGIES)}", param)
    return value


def _path_name(obj: Mapping[str, Any], name: str | None) -> Any:
    """The record's name: the path's when given (a body may repeat it, not change it)."""
    if name is None:
        if "name" not in obj:
            raise InputError("name: required", "name")
        return obj["name"]
    if "name" in obj and obj["name"] != name:
        raise InputError("name: differs from the name in the path (to rename, create the "
                         "new name and delete the old one)", "name")
    return name


# -- fallback chains ---------------------------------------------------------------

_CHAIN_FIELDS: Final = frozenset({"name", "model", "targets", "context_window_fallback",
                                  "retries", "source", "created_at", "updated_at"})


def _targets(value: Any) -> tuple[str, ...]:
    if value is None:
        raise InputError("targets: required (an array of model names or deployment ids)",
                         "targets")
    items = _list(value, "targets")
    if not 1 <= len(items) <= MAX_TARGETS:
        raise InputError(f"targets: expected 1 to {MAX_TARGETS} targets", "targets")
    seen: set[str] = set()
    targets = []
    for i, item in enumerate(items):
        target = _model_name(item, f"targets[{i}]", required=True)
        if target in seen:
            raise InputError(f"targets[{i}]: {target!r} is already in the chain",
                             f"targets[{i}]")
        seen.add(target)
        targets.append(target)
    return tuple(targets)


def chain_from_json(obj: Any, *, name: str | None = None) -> FallbackChain:
    """A checked chain from an admin API body or a stored document.

    ``name``: the name in the request path (the body's ``name`` may repeat
    it, not differ). ``source``, ``created_at`` and ``updated_at`` are
    accepted (a view sent back is a valid body) and set again by the store.
    """
    body = _object(obj, None)
    _no_unknown_fields(body, _CHAIN_FIELDS, "")
    source = body.get("source") or "api"
    if source not in SOURCES:
        raise InputError(f"source: expected one of {', '.join(SOURCES)}", "source")
    retries = body.get("retries")
    return FallbackChain(
        name=check_chain_name(_path_name(body, name)),
        model=_model_name(body.get("model"), "model", required=False),
        targets=_targets(body.get("targets")),
        context_window_fallback=_model_name(body.get("context_window_fallback"),
                                            "context_window_fallback", required=False),
        retries=None if retries is None else _integer(retries, "retries", 0, MAX_RETRIES),
        source=source,
        created_at=_time(body.get("created_at"), "created_at"),
        updated_at=_time(body.get("updated_at"), "updated_at"),
    )


def chain_view(chain: FallbackChain) -> dict[str, Any]:
    return {
        "name": chain.name,
        "model": chain.model,
        "targets": list(chain.targets),
        "context_window_fallback": chain.context_window_fallback,
        "retries": chain.retries,
        "source": chain.source,
        "created_at": chain.created_at,
        "updated_at": chain.updated_at,
    }


# -- model groups --------------------------------------------------------------------

_GROUP_FIELDS: Final = frozenset({"name", "deployments", "strategy", "created_at",
                                  "updated_at"})
_DEPLOYMENT_FIELDS: Final = frozenset({
    "id", "provider", "model", "api_base", "api_key", "api_version", "weight", "priority",
    "tags", "context_window", "max_output_tokens", "input_price_per_mtok",
    "output_price_per_mtok"})


def _api_key_reference(value: Any, param: str) -> str:
    """"" or ``vault:NAME``; never repeats what it was given (it may be a key)."""
    if value is None or value == "":
        return ""
    advice = ("store the provider key in the vault with POST /api/keys/providers "
              "{\"name\": NAME, \"value\": KEY} and reference it here as \"vault:NAME\", "
              "or leave api_key empty to use the provider's environment variable")
    if not isinstance(value, str):
        raise InputError(f"{param}: expected \"\" or a vault reference \"vault:NAME\"; "
                         + advice, param)
    if not value.startswith(VAULT_PREFIX):
        raise InputError(f"{param}: a model group does not hold provider keys: " + advice,
                         param)
    try:
        check_name(value[len(VAULT_PREFIX):])
    except InputError:
        raise InputError(f"{param}: not a valid vault reference (\"vault:NAME\", NAME being "
                         "letters, digits and _.@:-)", param) from None
    return value


def _api_base(value: Any, param: str) -> str:
    base = _plain_string(value, param, _MAX_API_BASE_CHARS)
    if not base:
        return ""
    try:
        parts = urlsplit(base)
        has_credentials = parts.username is not None or parts.password is not None
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise InputError(f"{param}: not a valid URL", param) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise InputError(f"{param}: expected an http:// or https:// URL", param)
    if has_credentials:
        raise InputError(f"{param}: a URL may not carry credentials; store the key in the "
                         "vault (POST /api/keys/providers) and set api_key to \"vault:NAME\"",
                         param)
    return base


def _tags(value: Any, param: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _list(value, param)
    if len(items) > MAX_TAGS:
        raise InputError(f"{param}: at most {MAX_TAGS} tags", param)
    tags: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item or len(item) > MAX_TAG_CHARS \
                or _has_blank(item):
            raise InputError(f"{param}[{i}]: expected a tag of 1-{MAX_TAG_CHARS} characters, "
                             "without spaces", f"{param}[{i}]")
        if item not in tags:
            tags.append(item)
    return tuple(tags)


def _deployment(value: Any, where: str) -> ManagedDeployment:
    body = _object(value, where)
    prefix = where + "."
    _no_unknown_fields(body, _DEPLOYMENT_FIELDS, prefix)
    deployment_id = body.get("id")
    if not isinstance(deployment_id, str) or not _DEPLOYMENT_ID_RE.match(deployment_id):
        raise InputError(f"{prefix}id: required, 1-64 letters, digits and ._:-",
                         prefix + "id")
    provider = body.get("provider")
    if not isinstance(provider, str) or provider not in PROVIDERS:
        raise InputError(f"{prefix}provider: expected one of {', '.join(PROVIDERS)}",
                         prefix + "provider")
    weight = body.get("weight")
    priority = body.get("priority")
    context_window = body.get("context_window")
    max_output = body.get("max_output_tokens")
    return ManagedDeployment(
        id=deployment_id,
        provider=provider,
        model=_model_name(body.get("model"), prefix + "model", required=True),
        api_base=_api_base(body.get("api_base"), prefix + "api_base"),
        api_key=_api_key_reference(body.get("api_key"), prefix + "api_key"),
        api_version=_plain_string(body.get("api_version"), prefix + "api_version",
                                  _MAX_API_VERSION_CHARS),
        weight=1.0 if weight is None else _number(weight, prefix + "weight", minimum=0.0,
                                                  exclusive=True, maximum=_MAX_WEIGHT),
        priority=0 if priority is None else _integer(priority, prefix + "priority",
                                                     -_MAX_PRIORITY, _MAX_PRIORITY),
        tags=_tags(body.get("tags"), prefix + "tags"),
        context_window=0 if context_window is None else _integer(
            context_window, prefix + "context_window", 0, _MAX_COUNT),
        max_output_tokens=0 if max_output is None else _integer(
            max_output, prefix + "max_output_tokens", 0, _MAX_COUNT),
        input_price_per_mtok=_optional_price(body.get("input_price_per_mtok"),
                                             prefix + "input_price_per_mtok"),
        output_price_per_mtok=_optional_price(body.get("output_price_per_mtok"),
                                              prefix + "output_price_per_mtok"),
    )


def _deployments(value: Any) -> tuple[ManagedDeployment, ...]:
    if value is None:
        raise InputError("deployments: required (an array of deployments)", "deployments")
    items = _list(value, "deployments")
    if not 1 <= len(items) <= MAX_DEPLOYMENTS:
        raise InputError(f"deployments: expected 1 to {MAX_DEPLOYMENTS} deployments",
                         "deployments")
    found: list[ManagedDeployment] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        deployment = _deployment(item, f"deployments[{i}]")
        if deployment.id in seen:
            raise InputError(f"deployments[{i}].id: {deployment.id!r} is already used in "
                             "this group", f"deployments[{i}].id")
        seen.add(deployment.id)
        found.append(deployment)
    return tuple(found)


def group_from_json(obj: Any, *, name: str | None = None) -> ManagedGroup:
    """A checked model group from an admin API body or a stored document.

    ``name``: the name in the request path (the body's ``name`` may repeat
    it, not differ).
    """
    body = _object(obj, None)
    _no_unknown_fields(body, _GROUP_FIELDS, "")
    return ManagedGroup(
        name=check_group_name(_path_name(body, name)),
        deployments=_deployments(body.get("deployments")),
        strategy=_check_strategy(body.get("strategy"), "strategy"),
        created_at=_time(body.get("created_at"), "created_at"),
        updated_at=_time(body.get("updated_at"), "updated_at"),
    )


def deployment_view(deployment: ManagedDeployment) -> dict[str, Any]:
    return {
        "id": deployment.id,
        "provider": deployment.provider,
        "model": deployment.model,
        "api_base": deployment.api_base,
        "api_key": deployment.api_key,  # only ever "" or a "vault:NAME" reference
        "api_version": deployment.api_version,
        "weight": deployment.weight,
        "priority": deployment.priority,
        "tags": list(deployment.tags),
        "context_window": deployment.context_window,
        "max_output_tokens": deployment.max_output_tokens,
        "input_price_per_mtok": deployment.input_price_per_mtok,
        "output_price_per_mtok": deployment.output_price_per_mtok,
    }


def group_view(group: ManagedGroup) -> dict[str, Any]:
    return {
        "name": group.name,
        "strategy": group.strategy,
        "deployments": [deployment_view(deployment) for deployment in group.deployments],
        "created_at": group.created_at,
        "updated_at": group.updated_at,
    }
