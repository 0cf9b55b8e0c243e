"""Guardrails, policies and attachments in Redis, versioned, announced on change.

Keys (one Redis Cluster hash tag, ``{p}``, so one script reads or writes them
all atomically):

=================================  ==================================================
``sf:policy:{p}:guardrails``       hash: name -> JSON, the current version
``sf:policy:{p}:policies``         hash: name -> JSON, the current version
``sf:policy:{p}:attachments``      hash: id -> JSON
``sf:policy:{p}:ver``              hash: ``g:<name>`` / ``p:<name>`` -> last version
                                   given (kept after a delete: a name re-created
                                   goes on counting, versions are never reused)
``sf:policy:{p}:h:g:<name>``       hash: version -> JSON, every version ever stored
``sf:policy:{p}:h:p:<name>``       (kept after a delete: history stays readable)
``sf:policy:{p}:rev``              counter, bumped by every change
=================================  ==================================================

Every change is announced on the pub/sub channel ``sf:policy:changed``
(``guardrail:<name>``, ``policy:<name>``, ``attachment:<id>``).

A write is optimistic: read everything with the revision (one script), check
the change against it (names, references, cycles, the engine's config
checks), then write only if the revision has not moved, bump it and publish,
all in one script. When another admin's change came first, the write is
checked again against the new state (a few times, then a 409).

Stored records that no longer parse (written by hand) are skipped with a
warning: they must never take a worker down.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson

from smartflow.keys.records import InputError, utc_now_iso
from smartflow.policy.model import (
    BUILTIN_GUARDRAILS,
    BUILTIN_POLICIES,
    Attachment,
    GuardrailSpec,
    PolicyConflict,
    PolicyNotFound,
    PolicySpec,
    attachment_from_document,
    attachment_view,
    guardrail_document,
    guardrail_from_document,
    policy_document,
    policy_from_document,
)
from smartflow.policy.resolver import PolicySnapshot, check_guardrail, check_policy
from smartflow.store.fast_client import Script, StoreClient

__all__ = ["POLICY_CHANNEL", "PolicyStore"]

logger = logging.getLogger("smartflow.policy")

KEY_PREFIX = "sf:policy:{p}:"
GUARDRAILS_KEY = KEY_PREFIX + "guardrails"
POLICIES_KEY = KEY_PREFIX + "policies"
ATTACHMENTS_KEY = KEY_PREFIX + "attachments"
VERSIONS_KEY = KEY_PREFIX + "ver"
REVISION_KEY = KEY_PREFIX + "rev"
POLICY_CHANNEL = "sf:policy:changed"
WRITE_ATTEMPTS = 8

Validate = Callable[[GuardrailSpec], None]
T = TypeVar("T")


def guardrail_history_key(name: str) -> str:
    return f"{KEY_PREFIX}h:g:{name}"


def policy_history_key(name: str) -> str:
    return f"{KEY_PREFIX}h:p:{name}"


# KEYS: rev, guardrails, policies, attachments, versions
_READ = Script("""
local out = {redis.call('GET', KEYS[1]) or '0'}
for i = 2, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
""")

# KEYS[1]: rev, then every key an op names (by index). ARGV: expected revision,
# channel, message, then per op: HSET|HDEL, key index, field, value.
_WRITE = Script("""
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return -1 end
local i = 4
while i <= #ARGV do
  local key = KEYS[tonumber(ARGV[i + 1])]
  if ARGV[i] == 'HSET' then
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
  else
    redis.call('HDEL', key, ARGV[i + 2])
  end
  i = i + 4
end
local rev = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return rev
""")


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw)


def _pairs(flat: Any) -> list[tuple[str, Any]]:
    if isinstance(flat, dict):
        return [(_text(k), v) for k, v in flat.items()]
    flat = list(flat or [])
    return [(_text(k), v) for k, v in zip(flat[::2], flat[1::2], strict=True)]


def _decode(label: str, key: str, raw: Any, parse: Callable[[Any], T]) -> T | None:
    try:
        return parse(orjson.loads(raw))
    except (orjson.JSONDecodeError, InputError, TypeError, ValueError) as exc:
        logger.warning("policy: skipping the stored %s %r, which does not parse: %s",
                       label, key, exc)
        return None


@dataclass(frozen=True, slots=True)
class _State:
    """What is stored (no built-ins), at one revision."""

    revision: int
    guardrails: dict[str, GuardrailSpec]
    policies: dict[str, PolicySpec]
    attachments: dict[str, Attachment]
    versions: dict[str, int]

    def snapshot(self, *, guardrails: Mapping[str, GuardrailSpec] | None = None,
                 policies: Mapping[str, PolicySpec] | None = None,
                 attachments: Mapping[str, Attachment] | None = None) -> PolicySnapshot:
        return PolicySnapshot.build(
            self.revision, self.guardrails if guardrails is None else guardrails,
            self.policies if policies is None else policies,
            list((self.attachments if attachments is None else attachments).values()))


class _Write:
    """The ops of one change; key indexes are 1-based positions in ``keys``."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.keys: list[str] = [REVISION_KEY]
        self.args: list[Any] = []

    def _index(self, key: str) -> int:
        if key not in self.keys:
            self.keys.append(key)
        return self.keys.index(key) + 1

    def hset(self, key: str, name: str, value: bytes | str) -> None:
        self.args += ["HSET", self._index(key), name, value]

    def hdel(self, key: str, name: str) -> None:
        self.args += ["HDEL", self._index(key), name, ""]


class PolicyStore:
    """CRUD for guardrails, policies and attachments over one StoreClient."""

    def __init__(self, client: StoreClient) -> None:
        self.client = client

    # -- reads -------------------------------------------------------------------------

    async def revision(self) -> int:
        raw = await self.client.execute("GET", REVISION_KEY, key=REVISION_KEY)
        return int(raw) if raw is not None else 0

    async def _load(self) -> _State:
        reply = await self.client.run_script(
            _READ, [REVISION_KEY, GUARDRAILS_KEY, POLICIES_KEY, ATTACHMENTS_KEY, VERSIONS_KEY],
            [])
        revision = int(reply[0])
        guardrails = {}
        for name, raw in _pairs(reply[1]):
            spec = _decode("guardrail", name, raw, guardrail_from_document)
            if spec is not None and spec.name == name:
                guardrails[name] = spec
        policies = {}
        for name, raw in _pairs(reply[2]):
            policy = _decode("policy", name, raw, policy_from_document)
            if policy is not None and policy.name == name:
                policies[name] = policy
        attachments = {}
        for attachment_id, raw in _pairs(reply[3]):
            attachment = _decode("attachment", attachment_id, raw, attachment_from_document)
            if attachment is not None and attachment.id == attachment_id:
                attachments[attachment_id] = attachment
        versions = {name: int(raw) for name, raw in _pairs(reply[4])}
        return _State(revision, guardrails, policies, attachments, versions)

    async def snapshot(self) -> PolicySnapshot:
        """Everything stored over the built-ins, read atomically."""
        return (await self._load()).snapshot()

    async def stored_guardrail_names(self) -> set[str]:
        return set((await self._load()).guardrails)

    async def _versions(self, history_key: str, parse: Callable[[Any], T]) -> list[T]:
        flat = await self.client.execute("HGETALL", history_key, key=history_key)
        found: list[tuple[int, T]] = []
        for version, raw in _pairs(flat):
            record = _decode("version", f"{history_key}#{version}", raw, parse)
            if record is not None and version.isdigit():
                found.append((int(version), record))
        return [record for _version, record in sorted(found, key=lambda pair: pair[0])]

    async def guardrail_versions(self, name: str) -> list[GuardrailSpec]:
        """Every stored version, oldest first ([] for a built-in never overridden)."""
        return await self._versions(guardrail_history_key(name), guardrail_from_document)

    async def policy_versions(self, name: str) -> list[PolicySpec]:
        return await self._versions(policy_history_key(name), policy_from_document)

    # -- the write loop ----------------------------------------------------------------

    async def _commit(self, plan: Callable[[_State], tuple[_Write, T]]) -> T:
        for _attempt in range(WRITE_ATTEMPTS):
            state = await self._load()
            write, result = plan(state)  # raises when the change is refused
            revision = await self.client.run_script(
                _WRITE, write.keys,
                [state.revision, POLICY_CHANNEL, write.message, *write.args])
            if int(revision) != -1:
                return result
        raise PolicyConflict("Policies are being changed by someone else at the same time; "
                             "try again.", code="busy")

    @staticmethod
    def _next_version(state: _State, tag: str) -> int:
        return state.versions.get(tag, 0) + 1

    # -- guardrails --------------------------------------------------------------------

    async def put_guardrail(self, spec: GuardrailSpec, *, create: bool = False,
                            validate: Validate | None = None) -> GuardrailSpec:
        """Store a new version (``create``: PolicyConflict if a stored record has the
        name; a built-in's name is free until overridden). Policies whose overrides
        of it the engine would reject make it a PolicyConflict."""
        check_guardrail(spec)
        if validate is not None:
            try:
                validate(spec)
            except ValueError as exc:
                raise InputError(f"config: {exc}", "config") from None

        def plan(state: _State) -> tuple[_Write, GuardrailSpec]:
            if create and spec.name in state.guardrails:
                raise PolicyConflict(f"Guardrail {spec.name!r} already exists (to replace "
                                     "it, use PUT).", code="already_exists")
            tag = f"g:{spec.name}"
            saved = replace(spec, builtin=False, version=self._next_version(state, tag),
                            updated_at=utc_now_iso())
            candidate = state.snapshot(guardrails={**state.guardrails, spec.name: saved})
            for policy in candidate.policies.values():
                if spec.name in policy.overrides:
                    _check_other(candidate, policy.name, validate, f"guardrail {spec.name!r}")
            document = orjson.dumps(guardrail_document(saved))
            write = _Write(f"guardrail:{spec.name}")
            write.hset(GUARDRAILS_KEY, spec.name, document)
            write.hset(VERSIONS_KEY, tag, str(saved.version))
            write.hset(guardrail_history_key(spec.name), str(saved.version), document)
            return write, saved

        return await self._commit(plan)

    async def delete_guardrail(self, name: str) -> bool:
        """Remove the stored record; True when a built-in is back in its place."""

        def plan(state: _State) -> tuple[_Write, bool]:
            builtin = name in BUILTIN_GUARDRAILS
            if name not in state.guardrails:
                if builtin:
                    raise PolicyConflict(f"Guardrail {name!r} is built in and cannot be "
                                         "deleted (override it with PUT).", code="builtin")
                raise PolicyNotFound(f"Guardrail {name!r}")
            if not builtin:
                users = sorted(p.name for p in state.snapshot().policies.values()
                               if name in p.guardrails or name in p.overrides)
                if users:
                    raise PolicyConflict(f"Guardrail {name!r} is used by the policies "
                                         f"{', '.join(users)}: remove it from them first.",
                                         code="in_use")
            write = _Write(f"guardrail:{name}")
            write.hdel(GUARDRAILS_KEY, name)
            return write, builtin

        return await self._commit(plan)

    # -- policies ----------------------------------------------------------------------

    async def put_policy(self, spec: PolicySpec, *, create: bool = False,
                         validate: Validate | None = None) -> PolicySpec:
        """Store a new version. InputError when it names an unknown parent or
        guardrail, inherits in a cycle or too deep, or overrides badly;
        PolicyConflict when the name is taken (``create``) or a policy inheriting
        from it would break."""

        def plan(state: _State) -> tuple[_Write, PolicySpec]:
            if create and spec.name in state.policies:
                raise PolicyConflict(f"Policy {spec.name!r} already exists (to replace it, "
                                     "use PUT).", code="already_exists")
            tag = f"p:{spec.name}"
            saved = replace(spec, builtin=False, version=self._next_version(state, tag),
                            updated_at=utc_now_iso())
            candidate = state.snapshot(policies={**state.policies, spec.name: saved})
            check_policy(candidate, spec.name, validate)
            for other in _descendants(candidate, spec.name):
                _check_other(candidate, other, validate, f"policy {spec.name!r}")
            document = orjson.dumps(policy_document(saved))
            write = _Write(f"policy:{spec.name}")
            write.hset(POLICIES_KEY, spec.name, document)
            write.hset(VERSIONS_KEY, tag, str(saved.version))
            write.hset(policy_history_key(spec.name), str(saved.version), document)
            return write, saved

        return await self._commit(plan)

    async def delete_policy(self, name: str) -> tuple[bool, list[str]]:
        """Remove the stored record: (a built-in is back in its place, the ids of the
        attachments removed with it). Its versions stay readable."""

        def plan(state: _State) -> tuple[_Write, tuple[bool, list[str]]]:
            builtin = name in BUILTIN_POLICIES
            if name not in state.policies:
                if builtin:
                    raise PolicyConflict(f"Policy {name!r} is built in and cannot be "
                                         "deleted (override it with PUT).", code="builtin")
                raise PolicyNotFound(f"Policy {name!r}")
            write = _Write(f"policy:{name}")
            write.hdel(POLICIES_KEY, name)
            detached: list[str] = []
            if not builtin:
                children = sorted(p.name for p in state.policies.values() if p.parent == name)
                if children:
                    raise PolicyConflict(f"Policy {name!r} is the parent of "
                                         f"{', '.join(children)}: change them first.",
                                         code="in_use")
                for attachment in state.attachments.values():
                    if attachment.policy == name:
                        write.hdel(ATTACHMENTS_KEY, attachment.id)
                        detached.append(attachment.id)
            else:
                remaining = state.snapshot(policies={
                    k: v for k, v in state.policies.items() if k != name})
                for other in _descendants(remaining, name):
                    _check_other(remaining, other, None, f"policy {name!r}")
            return write, (builtin, sorted(detached))

        return await self._commit(plan)

    # -- attachments -------------------------------------------------------------------

    async def attach(self, attachment: Attachment) -> Attachment:
        """Store it under a new id (the one given is replaced). InputError for an
        unknown policy; PolicyConflict when the same attachment exists."""

        def plan(state: _State) -> tuple[_Write, Attachment]:
            if attachment.policy not in state.snapshot().policies:
                raise InputError(f"policy: unknown policy {attachment.policy!r}.", "policy")
            for existing in state.attachments.values():
                if (existing.policy, existing.scope_type, existing.scope) == (
                        attachment.policy, attachment.scope_type, attachment.scope):
                    raise PolicyConflict(f"Policy {attachment.policy!r} is already attached "
                                         f"to {attachment.scope_type} {attachment.scope!r} "
                                         f"({existing.id}).", code="already_exists")
            saved = replace(attachment, id="att_" + secrets.token_hex(8),
                            created_at=utc_now_iso())
            write = _Write(f"attachment:{saved.id}")
            write.hset(ATTACHMENTS_KEY, saved.id, orjson.dumps(attachment_view(saved)))
            return write, saved

        return await self._commit(plan)

    async def detach(self, attachment_id: str) -> Attachment:
        def plan(state: _State) -> tuple[_Write, Attachment]:
            found = state.attachments.get(attachment_id)
            if found is None:
                raise PolicyNotFound(f"Attachment {attachment_id!r}")
            write = _Write(f"attachment:{attachment_id}")
            write.hdel(ATTACHMENTS_KEY, attachment_id)
            return write, found

        return await self._commit(plan)


def _descendants(snapshot: PolicySnapshot, name: str) -> Sequence[str]:
    """Every policy that inherits from ``name``, however far down."""
    found: list[str] = []
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for policy in snapshot.policies.values():
            if policy.parent == current and policy.name not in found and policy.name != name:
                found.append(policy.name)
                frontier.append(policy.name)
    return sorted(found)


def _check_other(snapshot: PolicySnapshot, name: str, validate: Validate | None,
                 changed: str) -> None:
    """A policy the change does not name must still hold after it: else a 409."""
    try:
        check_policy(snapshot, name, validate)
    except InputError as exc:
        raise PolicyConflict(f"Changing {changed} would break policy {name!r}: "
                             f"{exc.message}", code="would_break") from None
