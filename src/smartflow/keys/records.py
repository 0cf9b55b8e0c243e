"""The records behind identity: virtual keys, teams and users.

Each is stored as one JSON document in its scope's ``rec`` hash (see
``store.keyspace``), next to a revision number the admission script
compares, so a change made on any node is seen by every worker's next call.
``parse_*`` turn an admin API body into checked fields; the field names are
a contract (tests and clients rely on them).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from smartflow.keys.periods import PERIODS

ROLES = ("proxy_admin", "org_admin", "proxy_admin_viewer", "internal_user")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")
MAX_TAGS = 64
MAX_METADATA_BYTES = 16384


class InputError(ValueError):
    """An admin request field is wrong; ``param`` names it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Limits:
    """What a key, a team or a user may spend and how fast."""

    max_budget: float | None = None  # USD per period; None: no budget
    budget_period: str = "lifetime"
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None

    @property
    def is_empty(self) -> bool:
        return (self.max_budget is None and self.rpm_limit is None and self.tpm_limit is None
                and self.max_parallel_requests is None)


@dataclass(frozen=True, slots=True)
class VirtualKey:
    id: str
    key_hash: str
    key_hint: str  # "sk-sf-1a2b...9f0e": enough to recognise, useless to use
    alias: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    models: tuple[str, ...] = ()  # glob patterns; empty: every model
    limits: Limits = field(default_factory=Limits)
    expires_at: str | None = None  # ISO 8601
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    blocked: bool = False
    created_at: str = ""
    updated_at: str = ""
    rev: int = 0

    def is_expired(self, now: datetime) -> bool:
        if self.expires_at is None:
            return False
        return parse_time(self.expires_at) <= now


@dataclass(frozen=True, slots=True)
class Team:
    team_id: str
    alias: str | None = None
    models: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    members: tuple[str, ...] = ()  # user ids
    admins: tuple[str, ...] = ()  # user ids of the team's org admins
    source: str = "api"  # "api" or "entra" (managed by SSO group sync)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""
    rev: int = 0


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    email: str | None = None
    role: str = "internal_user"
    limits: Limits = field(default_factory=Limits)
    teams: tuple[str, ...] = ()
    password_hash: str | None = None  # scrypt; never returned
    source: str = "api"  # "api" or "entra"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""
    rev: int = 0


# -- (de)serialisation -------------------------------------------------------

def record_to_json_dict(record: VirtualKey | Team | User) -> dict[str, Any]:
    data = asdict(record)
    data.pop("rev", None)  # the rev lives in its own hash field
    return data


def _limits_of(data: Mapping[str, Any]) -> Limits:
    raw = data.get("limits") or {}
    return Limits(**{f.name: raw[f.name] for f in fields(Limits) if f.name in raw})


def _tuple(value: Any) -> tuple[str, ...]:
    return tuple(value or ())


def virtual_key_from(data: Mapping[str, Any], rev: int) -> VirtualKey:
    return VirtualKey(
        id=data["id"], key_hash=data["key_hash"], key_hint=data.get("key_hint", ""),
        alias=data.get("alias"), user_id=data.get("user_id"), team_id=data.get("team_id"),
        models=_tuple(data.get("models")), limits=_limits_of(data),
        expires_at=data.get("expires_at"), tags=_tuple(data.get("tags")),
        metadata=data.get("metadata") or {}, blocked=bool(data.get("blocked")),
        created_at=data.get("created_at", ""), updated_at=data.get("updated_at", ""), rev=rev)


def team_from(data: Mapping[str, Any], rev: int) -> Team:
    return Team(
        team_id=data["team_id"], alias=data.get("alias"), models=_tuple(data.get("models")),
        limits=_limits_of(data), members=_tuple(data.get("members")),
        admins=_tuple(data.get("admins")), source=data.get("source", "api"),
        metadata=data.get("metadata") or {}, created_at=data.get("created_at", ""),
        updated_at=data.get("updated_at", ""), rev=rev)


def user_from(data: Mapping[str, Any], rev: int) -> User:
    return User(
        user_id=data["user_id"], email=data.get("email"), role=data.get("role", "internal_user"),
        limits=_limits_of(data), teams=_tuple(data.get("teams")),
        password_hash=data.get("password_hash"), source=data.get("source", "api"),
        metadata=data.get("metadata") or {}, created_at=data.get("created_at", ""),
        updated_at=data.get("updated_at", ""), rev=rev)


# -- admin input ---------------------------------------------------------------

def parse_time(value: str) -> datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def check_id(value: Any, param: str) -> str:
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise InputError(f"{param}: expected an id of letters, digits and _.@:- "
                         f"(at most 128 characters)", param)
    return value


def _optional_id(value: Any, param: str) -> str | None:
    return None if value is None else check_id(value, param)


def _optional_str(value: Any, param: str, limit: int = 256) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InputError(f"{param}: expected a string of at most {limit} characters", param)
    return value


def _patterns(value: Any, param: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{param}: expected a list of model names or glob patterns", param)
    if len(value) > 256:
        raise InputError(f"{param}: at most 256 entries", param)
    return tuple(value)


def _tags(value: Any, param: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if (not isinstance(value, list) or len(value) > MAX_TAGS
            or not all(isinstance(v, str) and 0 < len(v) <= 128 for v in value)):
        raise InputError(f"{param}: expected a list of at most {MAX_TAGS} short strings", param)
    return tuple(value)


def _metadata(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{param}: expected an object", param)
    import orjson

    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise InputError(f"{param}: at most {MAX_METADATA_BYTES} bytes of JSON", param)
    return value


def _money(value: Any, param: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise InputError(f"{param}: expected a number of USD >= 0", param)
    return float(value)


def _count(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise InputError(f"{param}: expected a positive integer", param)
    return value


def _period(value: Any, param: str) -> str:
    if value is None:
        return "lifetime"
    if value not in PERIODS:
        raise InputError(f"{param}: expected one of {', '.join(PERIODS)}", param)
    return str(value)


def _expiry(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{param}: expected an ISO 8601 date-time", param)
    try:
        moment = parse_time(value)
    except ValueError:
        raise InputError(f"{param}: expected an ISO 8601 date-time", param) from None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_LIMIT_FIELDS = ("max_budget", "budget_period", "rpm_limit", "tpm_limit",
                 "max_parallel_requests")


def _limits_from(body: Mapping[str, Any], base: Limits) -> Limits:
    changes: dict[str, Any] = {}
    if "max_budget" in body:
        changes["max_budget"] = _money(body["max_budget"], "max_budget")
    if "budget_period" in body:
        changes["budget_period"] = _period(body["budget_period"], "budget_period")
    for name in ("rpm_limit", "tpm_limit", "max_parallel_requests"):
        if name in body:
            changes[name] = _count(body[name], name)
    return replace(base, **changes)


def _reject_unknown(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InputError(f"{unknown[0]}: unknown field", unknown[0])


KEY_FIELDS = frozenset({"alias", "user_id", "team_id", "models", "tags", "metadata",
                        "expires_at", *_LIMIT_FIELDS})


def apply_key_fields(key: VirtualKey, body: Mapping[str, Any]) -> VirtualKey:
    """``key`` with the admin body's fields applied (create and PATCH)."""
    _reject_unknown(body, KEY_FIELDS)
    changes: dict[str, Any] = {}
    if "alias" in body:
        changes["alias"] = _optional_str(body["alias"], "alias")
    if "user_id" in body:
        changes["user_id"] = _optional_id(body["user_id"], "user_id")
    if "team_id" in body:
        changes["team_id"] = _optional_id(body["team_id"], "team_id")
    if "models" in body:
        changes["models"] = _patterns(body["models"], "models")
    if "tags" in body:
        changes["tags"] = _tags(body["tags"], "tags")
    if "metadata" in body:
        changes["metadata"] = _metadata(body["metadata"], "metadata")
    if "expires_at" in body:
        changes["expires_at"] = _expiry(body["expires_at"], "expires_at")
    changes["limits"] = _limits_from(body, key.limits)
    return replace(key, **changes)


TEAM_FIELDS = frozenset({"team_id", "alias", "models", "metadata", "members", "admins",
                         *_LIMIT_FIELDS})


def apply_team_fields(team: Team, body: Mapping[str, Any]) -> Team:
    _reject_unknown(body, TEAM_FIELDS)
    changes: dict[str, Any] = {}
    if "alias" in body:
        changes["alias"] = _optional_str(body["alias"], "alias")
    if "models" in body:
        changes["models"] = _patterns(body["models"], "models")
    if "metadata" in body:
        changes["metadata"] = _metadata(body["metadata"], "metadata")
    for name in ("members", "admins"):
        if name in body:
            value = body[name]
            if not isinstance(value, list):
                raise InputError(f"{name}: expected a list of user ids", name)
            changes[name] = tuple(dict.fromkeys(check_id(v, name) for v in value))
    changes["limits"] = _limits_from(body, team.limits)
    return replace(team, **changes)


USER_FIELDS = frozenset({"user_id", "email", "role", "password", "metadata", *_LIMIT_FIELDS})


def apply_user_fields(user: User, body: Mapping[str, Any]) -> User:
    """The password is not applied here (it is hashed by the caller)."""
    _reject_unknown(body, USER_FIELDS)
    changes: dict[str, Any] = {}
    if "email" in body:
        changes["email"] = _optional_str(body["email"], "email")
    if "role" in body:
        if body["role"] not in ROLES:
            raise InputError(f"role: expected one of {', '.join(ROLES)}", "role")
        changes["role"] = body["role"]
    if "metadata" in body:
        changes["metadata"] = _metadata(body["metadata"], "metadata")
    changes["limits"] = _limits_from(body, user.limits)
    return replace(user, **changes)


def model_allowed(patterns: tuple[str, ...], model: str) -> bool:
    """Empty patterns allow every model; else one glob must match."""
    if not patterns:
        return True
    return any(pattern == model or fnmatch.fnmatchcase(model, pattern) for pattern in patterns)


def limits_view(limits: Limits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in _LIMIT_FIELDS}
