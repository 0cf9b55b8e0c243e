"""Policy resolution: a pure function of the stored records and the call's scope."""

from __future__ import annotations

from typing import Any

import pytest

from smartflow.keys.records import InputError
from smartflow.policy.model import (
    Attachment,
    GuardrailSpec,
    PolicySpec,
    attachment_from_json,
    guardrail_from_json,
    policy_from_json,
)
from smartflow.policy.resolver import CallScope, PolicySnapshot, check_policy, resolve


def _guardrail(name: str, type_: str = "custom", action: str = "flag",
               **config: Any) -> GuardrailSpec:
    return guardrail_from_json({"name": name, "type": type_, "action": action,
                                "config": config})


def _policy(name: str, **fields: Any) -> PolicySpec:
    return policy_from_json({"name": name, **fields})


def _attach(attachment_id: str, policy: str, scope_type: str, scope: str) -> Attachment:
    return attachment_from_json({"policy": policy, "scope_type": scope_type, "scope": scope},
                                attachment_id=attachment_id)


def _snapshot(guardrails: list[GuardrailSpec], policies: list[PolicySpec],
              attachments: list[Attachment]) -> PolicySnapshot:
    return PolicySnapshot.build(1, {g.name: g for g in guardrails},
                                {p.name: p for p in policies}, attachments)


def _by_name(resolution: Any) -> dict[str, Any]:
    return {g.name: g for g in resolution.guardrails}


@pytest.fixture
def snapshot() -> PolicySnapshot:
    guardrails = [
        _guardrail("secrets", action="log", words=["alpha"], case=False),
        _guardrail("phi", "compliance", "flag", threshold=0.8, documents=["hipaa"]),
        _guardrail("tox", "toxicity", "mask"),
    ]
    policies = [
        _policy("base", guardrails=["pii", "secrets"]),
        _policy("hipaa", parent="base", guardrails=["phi"],
                overrides={"pii": {"action": "mask"}, "phi": {"config": {"threshold": 0.6}}}),
        _policy("strict", guardrails=["secrets", "tox"],
                overrides={"secrets": {"action": "block", "config": {"case": True}}}),
        _policy("quiet", parent="hipaa", overrides={"phi": {"enabled": False}}),
    ]
    attachments = [
        _attach("att_00000001", "hipaa", "team", "finance"),
        _attach("att_00000002", "strict", "model", "gpt-4*"),
        _attach("att_00000003", "hipaa", "tag", "hipaa-*"),
        _attach("att_00000004", "quiet", "key_alias", "svc-?"),
    ]
    return _snapshot(guardrails, policies, attachments)


def test_inheritance_adds_parent_guardrails_and_applies_overrides(
        snapshot: PolicySnapshot) -> None:
    result = resolve(snapshot, CallScope(model="claude", team="finance"), "default")
    assert result.policies == ("hipaa",)
    got = _by_name(result)
    assert list(got) == ["pii", "secrets", "phi"]  # the root's first
    assert got["pii"].action == "mask" and got["pii"].type == "pii"
    assert got["secrets"].action == "log"
    # The override's config is merged over the guardrail's own, key by key.
    assert dict(got["phi"].config) == {"threshold": 0.6, "documents": ["hipaa"]}
    assert got["pii"].via.startswith("team:finance -> policy hipaa (inherits base)")
    assert "overridden by hipaa" in got["pii"].via


def test_no_match_uses_the_default_policy_only_when_named(snapshot: PolicySnapshot) -> None:
    result = resolve(snapshot, CallScope(model="claude", team="sales"), "default")
    assert result.policies == ("default",)
    assert [(g.name, g.action) for g in result.guardrails] == [
        ("pii", "flag"), ("prompt_injection", "flag")]
    assert result.explanation[0]["step"] == "default"
    none = resolve(snapshot, CallScope(model="claude", team="sales"), None)
    assert none.policies == () and none.guardrails == ()
    assert "no default policy" in none.explanation[0]["reason"]
    missing = resolve(snapshot, CallScope(model="claude"), "nonexistent")
    assert missing.guardrails == () and "does not exist" in missing.explanation[0]["reason"]


def test_strictest_action_wins_and_config_comes_from_the_most_specific_scope(
        snapshot: PolicySnapshot) -> None:
    # team (hipaa: secrets log, config case False) and model glob (strict: block, case True)
    result = resolve(snapshot, CallScope(model="gpt-4o", team="finance"), "default")
    assert result.policies == ("hipaa", "strict")  # team before model
    secrets = _by_name(result)["secrets"]
    assert secrets.action == "block" and secrets.policy == "strict"
    assert secrets.config["case"] is False  # from hipaa, attached to the team
    combine = [s for s in result.explanation if s.get("step") == "combine"
               and s["guardrail"] == "secrets"]
    assert combine and combine[0]["action_from"] == "strict"
    assert combine[0]["config_from"] == "hipaa"


def test_globs_on_tags_and_key_aliases(snapshot: PolicySnapshot) -> None:
    tagged = resolve(snapshot, CallScope(model="m", tags=("other", "hipaa-prod")), None)
    assert tagged.policies == ("hipaa",)
    assert tagged.explanation[0]["matched"] == "hipaa-prod"
    assert tagged.explanation[0]["exact"] is False
    assert resolve(snapshot, CallScope(model="m", tags=("hipaa",)), None).policies == ()
    # "?" is one character: svc-a matches, svc-ab does not.
    keyed = resolve(snapshot, CallScope(model="m", key_alias="svc-a"), None)
    assert keyed.policies == ("quiet",)
    assert "phi" not in _by_name(keyed)  # switched off by quiet
    assert any(s.get("step") == "disabled" and s["guardrail"] == "phi"
               for s in keyed.explanation)
    assert resolve(snapshot, CallScope(model="m", key_alias="svc-ab"), None).policies == ()


def test_a_disabled_guardrail_still_applies_from_another_matched_policy(
        snapshot: PolicySnapshot) -> None:
    result = resolve(snapshot, CallScope(model="m", key_alias="svc-1", team="finance"), None)
    assert result.policies == ("quiet", "hipaa")  # key alias before team
    assert _by_name(result)["phi"].policy == "hipaa"


def test_resolution_is_deterministic_whatever_the_stored_order(
        snapshot: PolicySnapshot) -> None:
    scope = CallScope(model="gpt-4-turbo", team="finance", key_alias="svc-x",
                      tags=("hipaa-1",))
    shuffled = PolicySnapshot.build(
        1, dict(reversed(list(snapshot.guardrails.items()))),
        dict(reversed(list(snapshot.policies.items()))), list(reversed(snapshot.attachments)))
    first = resolve(snapshot, scope, "default")
    assert resolve(shuffled, scope, "default") == first
    assert first.policies == ("quiet", "hipaa", "strict")
    assert snapshot.resolve(scope, "default") is snapshot.resolve(scope, "default")


def test_exact_scope_beats_glob_of_the_same_type() -> None:
    guardrails = [_guardrail("g", words=["w"])]
    policies = [_policy("a-glob", guardrails=["g"], overrides={"g": {"config": {"n": 1}}}),
                _policy("z-exact", guardrails=["g"], overrides={"g": {"config": {"n": 2}}})]
    attachments = [_attach("att_00000001", "a-glob", "model", "gpt-*"),
                   _attach("att_00000002", "z-exact", "model", "gpt-4o")]
    result = resolve(_snapshot(guardrails, policies, attachments), CallScope(model="gpt-4o"),
                     None)
    assert result.policies == ("z-exact", "a-glob")
    assert result.guardrails[0].config["n"] == 2


def test_missing_records_are_skipped_and_explained() -> None:
    # As a concurrent delete could leave them: never an exception.
    policies = [_policy("child", parent="gone", guardrails=["pii", "ghost"])]
    attachments = [_attach("att_00000001", "child", "team", "t"),
                   _attach("att_00000002", "vanished", "team", "t")]
    result = resolve(_snapshot([], policies, attachments), CallScope(model="m", team="t"), None)
    assert [g.name for g in result.guardrails] == ["pii"]
    reasons = [s.get("reason", "") for s in result.explanation if s["step"] == "skipped"]
    assert "unknown policy" in reasons
    assert any("unknown parent" in r for r in reasons)
    assert "unknown guardrail" in reasons


@pytest.mark.parametrize(("policies", "name", "param"), [
    ([_policy("p", guardrails=["nope"])], "p", "guardrails[0]"),
    ([_policy("p", parent="q")], "p", "parent"),
    ([_policy("p", parent="q"), _policy("q", parent="p")], "p", "parent"),
    ([_policy("p", overrides={"tox": {"action": "block"}})], "p", "overrides.tox"),
])
def test_check_policy_names_the_field(policies: list[PolicySpec], name: str,
                                      param: str) -> None:
    snapshot = _snapshot([_guardrail("tox", "toxicity")], policies, [])
    with pytest.raises(InputError) as caught:
        check_policy(snapshot, name)
    assert caught.value.param == param


def test_check_policy_limits_depth() -> None:
    chain = [_policy("p0")] + [_policy(f"p{i}", parent=f"p{i - 1}") for i in range(1, 17)]
    snapshot = _snapshot([], chain, [])
    check_policy(snapshot, "p15")  # 16 levels
    with pytest.raises(InputError, match="deeper than 16"):
        check_policy(snapshot, "p16")


def test_check_policy_runs_the_engine_on_overridden_configs() -> None:
    def validate(spec: GuardrailSpec) -> None:
        if spec.config.get("threshold", 0) > 1:
            raise ValueError("threshold: must be at most 1")

    snapshot = _snapshot([_guardrail("tox", "toxicity")],
                         [_policy("p", guardrails=["tox"],
                                  overrides={"tox": {"config": {"threshold": 3}}})], [])
    with pytest.raises(InputError, match="threshold: must be at most 1"):
        check_policy(snapshot, "p", validate)


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "x", "type": "nope"}, "type"),
    ({"name": "x", "type": "pii", "action": "drop"}, "action"),
    ({"name": "x", "type": "pii", "config": []}, "config"),
    ({"name": "bad name", "type": "pii"}, "name"),
    ({"name": "x" * 65, "type": "pii"}, "name"),
    ({"name": "x", "type": "pii", "colour": "red"}, "colour"),
    ({"type": "pii"}, "name"),
])
def test_guardrail_input_errors_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InputError) as caught:
        guardrail_from_json(body)
    assert caught.value.param == param


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "p", "guardrails": "pii"}, "guardrails"),
    ({"name": "p", "guardrails": ["pii", "pii"]}, "guardrails[1]"),
    ({"name": "p", "overrides": {"pii": {"action": "zap"}}}, "overrides.pii.action"),
    ({"name": "p", "overrides": {"pii": {"enabled": "no"}}}, "overrides.pii.enabled"),
    ({"name": "p", "overrides": {"pii": {"weight": 1}}}, "overrides.pii.weight"),
    ({"name": "p", "parent": "p"}, "parent"),
    ({"name": "resolve"}, "name"),
    ({"name": "p", "description": 3}, "description"),
])
def test_policy_input_errors_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InputError) as caught:
        policy_from_json(body)
    assert caught.value.param == param
