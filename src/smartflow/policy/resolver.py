"""Which guardrails a call gets, and why: a pure function of what is stored.

``resolve(snapshot, scope, default_policy)``:

1. Every attachment whose scope matches the call is taken (a team, key alias,
   model or any of the call's tags; exact names or ``*``/``?`` globs,
   case-sensitive). Matches are ordered most specific first: by scope type
   (key_alias, team, tag, model), then exact before glob, then policy name,
   then attachment id. ``policies`` is that order without repeats.
2. No match: the ``default_policy`` (when the caller names one and it
   exists), and the explanation says so.
3. Each matched policy's effective guardrails come from its inheritance line
   (``effective_policy``). A guardrail given by several policies is applied
   once: the strictest action wins (block > mask > flag > log) and
   ``policy`` names the policy that gave it (the most specific one among
   those with that action); its config comes from the most specific match.
   A policy can switch a guardrail off only for itself and its children:
   another matched policy that has it still applies it.

Same input, same output, in the same order. Records that went missing under a
concurrent change (a parent or guardrail deleted) are skipped, and the
explanation says so; the resolver never raises on stored data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from smartflow.keys.records import InputError
from smartflow.policy.model import (
    ACTION_RANK,
    BUILTIN_GUARDRAILS,
    BUILTIN_POLICIES,
    MAX_DEPTH,
    SCOPE_RANK,
    Attachment,
    GuardrailSpec,
    PolicySpec,
)

MEMO_SIZE = 4096  # distinct call scopes remembered per snapshot


@dataclass(frozen=True, slots=True)
class CallScope:
    model: str
    team: str | None = None
    key_alias: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResolvedGuardrail:
    name: str
    type: str
    action: str
    config: Mapping[str, Any]
    policy: str  # the policy whose action applies
    via: str  # e.g. "team:finance -> policy hipaa (inherits base)"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "action": self.action,
                "config": dict(self.config), "policy": self.policy, "via": self.via}


@dataclass(frozen=True, slots=True)
class Resolution:
    policies: tuple[str, ...]
    guardrails: tuple[ResolvedGuardrail, ...]
    explanation: list[dict[str, Any]]
    by_default: bool = False  # no attachment matched: the default policy's guardrails

    def to_json(self) -> dict[str, Any]:
        return {"policies": list(self.policies),
                "guardrails": [g.to_json() for g in self.guardrails],
                "explanation": [dict(step) for step in self.explanation]}


@dataclass(frozen=True, slots=True)
class EffectiveGuardrail:
    """One guardrail as a policy applies it, after inheritance and overrides."""

    spec: GuardrailSpec  # action and config as overridden
    added_by: str
    overridden_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    name: str
    chain: tuple[str, ...]  # the policy, its parent, ... (root last)
    guardrails: tuple[EffectiveGuardrail, ...]
    notes: tuple[dict[str, Any], ...]  # what was skipped, and why


def _glob(pattern: str) -> re.Pattern[str]:
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Matcher:
    attachment: Attachment
    pattern: re.Pattern[str] | None  # None: an exact name

    def match(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.pattern is None:
            return value == self.attachment.scope
        return self.pattern.fullmatch(value) is not None


@dataclass(slots=True, eq=False)
class PolicySnapshot:
    """Everything stored, with the built-ins a stored record does not shadow.

    Treat it as immutable: a change makes a new snapshot. Only its memo of
    resolutions (per call scope, bounded) changes, and a new snapshot starts
    with an empty one.
    """

    revision: int
    guardrails: Mapping[str, GuardrailSpec]
    policies: Mapping[str, PolicySpec]
    attachments: tuple[Attachment, ...]
    _matchers: tuple[_Matcher, ...] = field(default=(), repr=False)
    _memo: dict[tuple[CallScope, str | None], Resolution] = field(default_factory=dict,
                                                                  repr=False)

    @classmethod
    def build(cls, revision: int, guardrails: Mapping[str, GuardrailSpec],
              policies: Mapping[str, PolicySpec],
              attachments: list[Attachment] | tuple[Attachment, ...]) -> PolicySnapshot:
        """Stored records over the built-ins; attachments ordered by id."""
        all_guardrails = {**BUILTIN_GUARDRAILS, **guardrails}
        all_policies = {**BUILTIN_POLICIES, **policies}
        ordered = tuple(sorted(attachments, key=lambda a: a.id))
        matchers = tuple(_Matcher(a, _glob(a.scope) if a.is_glob else None) for a in ordered)
        return cls(revision=revision,
                   guardrails=MappingProxyType(dict(sorted(all_guardrails.items()))),
                   policies=MappingProxyType(dict(sorted(all_policies.items()))),
                   attachments=ordered, _matchers=matchers)

    @classmethod
    def builtins(cls) -> PolicySnapshot:
        """Before anything was read from Redis: the built-ins only (revision -1)."""
        return cls.build(-1, {}, {}, ())

    def resolve(self, scope: CallScope, default_policy: str | None) -> Resolution:
        key = (scope, default_policy)
        found = self._memo.get(key)
        if found is None:
            found = resolve(self, scope, default_policy)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = found
        return found

    def matching(self, scope: CallScope) -> list[tuple[Attachment, str]]:
        """The attachments that match, most specific first, with the value matched."""
        found: list[tuple[Attachment, str]] = []
        for matcher in self._matchers:
            kind = matcher.attachment.scope_type
            if kind == "tag":
                value = next((tag for tag in scope.tags if matcher.match(tag)), None)
            else:
                value = {"team": scope.team, "key_alias": scope.key_alias,
                         "model": scope.model}[kind]
                if not matcher.match(value):
                    value = None
            if value is not None:
                found.append((matcher.attachment, value))
        found.sort(key=lambda pair: (SCOPE_RANK[pair[0].scope_type], pair[0].is_glob,
                                     pair[0].policy, pair[0].id))
        return found


# -- one policy ------------------------------------------------------------------------


def policy_chain(policies: Mapping[str, PolicySpec], name: str) -> tuple[tuple[str, ...], str]:
    """The policy and its ancestors, and "" or why the line stops short (a missing
    parent, a cycle, too deep)."""
    chain = [name]
    current = policies[name]
    while current.parent is not None:
        parent = current.parent
        if parent in chain:
            return tuple(chain), f"cycle: {' -> '.join([*chain, parent])}"
        if parent not in policies:
            return tuple(chain), f"unknown parent {parent!r} of policy {current.name!r}"
        if len(chain) >= MAX_DEPTH:
            return tuple(chain), f"deeper than {MAX_DEPTH} levels"
        chain.append(parent)
        current = policies[parent]
    return tuple(chain), ""


def effective_policy(snapshot: PolicySnapshot, name: str) -> EffectivePolicy:
    chain, problem = policy_chain(snapshot.policies, name)
    notes: list[dict[str, Any]] = []
    if problem:
        notes.append({"step": "skipped", "policy": name, "reason": problem})
    entries: dict[str, tuple[GuardrailSpec, bool, str, list[str]]] = {}
    for policy_name in reversed(chain):  # the root first: children override it
        policy = snapshot.policies[policy_name]
        for guardrail in policy.guardrails:
            if guardrail in entries:
                spec, _enabled, added_by, by = entries[guardrail]
                entries[guardrail] = (spec, True, added_by, by)
                continue
            stored = snapshot.guardrails.get(guardrail)
            if stored is None:
                notes.append({"step": "skipped", "policy": policy_name,
                              "guardrail": guardrail, "reason": "unknown guardrail"})
                continue
            entries[guardrail] = (stored, True, policy_name, [])
        for guardrail, override in policy.overrides.items():
            if guardrail not in entries:
                notes.append({"step": "skipped", "policy": policy_name,
                              "guardrail": guardrail,
                              "reason": "override of a guardrail the policy does not have"})
                continue
            spec, enabled, added_by, by = entries[guardrail]
            if override.action is not None:
                spec = _replace_spec(spec, action=override.action)
            if override.config is not None:
                spec = _replace_spec(spec, config=MappingProxyType(
                    {**spec.config, **override.config}))
            if override.enabled is not None:
                enabled = override.enabled
            entries[guardrail] = (spec, enabled, added_by, [*by, policy_name])
    found = []
    for guardrail, (spec, enabled, added_by, by) in entries.items():
        if enabled:
            found.append(EffectiveGuardrail(spec=spec, added_by=added_by,
                                            overridden_by=tuple(by)))
        else:
            notes.append({"step": "disabled", "policy": name, "guardrail": guardrail,
                          "by": by[-1] if by else name})
    return EffectivePolicy(name=name, chain=chain, guardrails=tuple(found), notes=tuple(notes))


def _replace_spec(spec: GuardrailSpec, **changes: Any) -> GuardrailSpec:
    from dataclasses import replace

    return replace(spec, **changes)


# -- the checks a write must pass ------------------------------------------------------


def check_policy(snapshot: PolicySnapshot, name: str,
                 validate: Callable[[GuardrailSpec], None] | None = None) -> None:
    """InputError (naming the field) when the policy ``name`` in ``snapshot`` names an
    unknown parent or guardrail, inherits in a cycle or too deep, overrides a
    guardrail it does not have, or gives a guardrail a config ``validate`` rejects."""
    policy = snapshot.policies[name]
    for index, guardrail in enumerate(policy.guardrails):
        if guardrail not in snapshot.guardrails:
            raise InputError(f"guardrails[{index}]: unknown guardrail {guardrail!r}.",
                             f"guardrails[{index}]")
    _chain, problem = policy_chain(snapshot.policies, name)
    if problem:
        raise InputError(f"parent: {problem}.", "parent")
    effective = effective_policy(snapshot, name)
    for note in effective.notes:
        if note.get("reason") and note["policy"] == name and "guardrail" in note:
            guardrail = note["guardrail"]
            raise InputError(f"overrides.{guardrail}: {note['reason']} ({guardrail!r} is "
                             f"neither in guardrails nor inherited).", f"overrides.{guardrail}")
    if validate is not None:
        for entry in effective.guardrails:
            if name in entry.overridden_by:
                try:
                    validate(entry.spec)
                except ValueError as exc:
                    raise InputError(f"overrides.{entry.spec.name}: {exc}",
                                     f"overrides.{entry.spec.name}") from None


def check_guardrail(spec: GuardrailSpec) -> None:
    """An operator record under a built-in's name must keep the built-in's type."""
    builtin = BUILTIN_GUARDRAILS.get(spec.name)
    if builtin is not None and spec.type != builtin.type:
        raise InputError(f"type: {spec.name!r} shadows the built-in guardrail, whose type "
                         f"is {builtin.type!r}.", "type")


# -- many policies ---------------------------------------------------------------------


def _scope_label(attachment: Attachment, value: str) -> str:
    label = f"{attachment.scope_type}:{value}"
    if attachment.is_glob:
        label += f" (glob {attachment.scope})"
    return label


def _via(label: str, effective: EffectivePolicy, entry: EffectiveGuardrail) -> str:
    text = f"{label} -> policy {effective.name}"
    if len(effective.chain) > 1:
        text += f" (inherits {' -> '.join(effective.chain[1:])})"
    if entry.added_by != effective.name:
        text += f"; {entry.spec.name} from {entry.added_by}"
    if entry.overridden_by:
        text += f"; overridden by {', '.join(dict.fromkeys(entry.overridden_by))}"
    return text


def resolve(snapshot: PolicySnapshot, scope: CallScope,
            default_policy: str | None) -> Resolution:
    explanation: list[dict[str, Any]] = []
    # (label, policy name): the order of specificity
    sources: list[tuple[str, str]] = []
    for attachment, value in snapshot.matching(scope):
        label = _scope_label(attachment, value)
        explanation.append({"step": "match", "attachment": attachment.id,
                            "scope_type": attachment.scope_type, "scope": attachment.scope,
                            "matched": value, "exact": not attachment.is_glob,
                            "policy": attachment.policy})
        if attachment.policy not in snapshot.policies:
            explanation.append({"step": "skipped", "policy": attachment.policy,
                                "reason": "unknown policy"})
            continue
        if all(name != attachment.policy for _label, name in sources):
            sources.append((label, attachment.policy))
    if not sources:
        if default_policy is not None and default_policy in snapshot.policies:
            explanation.append({"step": "default", "policy": default_policy,
                                "reason": "no attachment matched: the default policy applies"})
            sources.append(("default", default_policy))
        elif default_policy is not None:
            explanation.append({"step": "default", "policy": default_policy,
                                "reason": "no attachment matched and the default policy "
                                          "does not exist: no guardrails"})
        else:
            explanation.append({"step": "default", "policy": None,
                                "reason": "no attachment matched and no default policy "
                                          "is configured: no guardrails"})
    # guardrail name -> [(rank of the source, label, effective policy, entry)]
    given: dict[str, list[tuple[int, str, EffectivePolicy, EffectiveGuardrail]]] = {}
    for rank, (label, name) in enumerate(sources):
        effective = effective_policy(snapshot, name)
        explanation.append({"step": "policy", "policy": name, "via": label,
                            "inherits": list(effective.chain[1:]),
                            "guardrails": [e.spec.name for e in effective.guardrails]})
        explanation.extend(dict(note) for note in effective.notes)
        for entry in effective.guardrails:
            given.setdefault(entry.spec.name, []).append((rank, label, effective, entry))
    resolved: list[ResolvedGuardrail] = []
    for name, contributions in given.items():
        _rank, config_label, config_policy, config_entry = contributions[0]
        strongest = max(ACTION_RANK[c[3].spec.action] for c in contributions)
        _rank, action_label, action_policy, action_entry = next(
            c for c in contributions if ACTION_RANK[c[3].spec.action] == strongest)
        spec = config_entry.spec
        resolved.append(ResolvedGuardrail(
            name=name, type=spec.type, action=action_entry.spec.action, config=spec.config,
            policy=action_policy.name, via=_via(action_label, action_policy, action_entry)))
        if len(contributions) > 1:
            explanation.append({
                "step": "combine", "guardrail": name,
                "action": action_entry.spec.action, "action_from": action_policy.name,
                "config_from": config_policy.name,
                "contributors": [{"policy": c[2].name, "via": c[1], "action": c[3].spec.action}
                                 for c in contributions],
                "reason": (f"strictest action {action_entry.spec.action!r} from policy "
                           f"{action_policy.name} ({action_label}); config from the most "
                           f"specific scope, policy {config_policy.name} ({config_label})")})
    return Resolution(policies=tuple(name for _label, name in sources),
                      guardrails=tuple(resolved), explanation=explanation,
                      by_default=sources == [("default", default_policy)])
