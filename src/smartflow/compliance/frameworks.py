"""Compliance framework mappings: which guardrail evidence bears on which control.

The mappings live in ``smartflow/data/compliance_frameworks.toml`` (read with
``load_frameworks``), where their meaning is written down. Loading validates
them strictly: a misspelt guardrail or finding type would otherwise match
nothing and make a control look clean.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from smartflow.policy.findings import COMPLIANCE, CUSTOM, PII_TYPES, PROMPT_INJECTION, TOXICITY

GUARDRAIL_TYPES = ("pii", "prompt_injection", "toxicity", "compliance", "custom")
FINDING_TYPES = (*PII_TYPES, PROMPT_INJECTION, TOXICITY, COMPLIANCE, CUSTOM)
MAX_WEIGHT = 5
DATA_FILE = "data/compliance_frameworks.toml"

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class FrameworkError(ValueError):
    """The mappings file is malformed; the message names the place."""


@dataclass(frozen=True, slots=True)
class Control:
    id: str
    title: str
    guardrail_types: tuple[str, ...]
    finding_types: tuple[str, ...]  # empty: any finding of those guardrails
    weight: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title,
                "guardrail_types": list(self.guardrail_types),
                "finding_types": list(self.finding_types), "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Framework:
    name: str
    title: str
    description: str
    controls: tuple[Control, ...]

    def control(self, control_id: str) -> Control | None:
        wanted = lookup_key(control_id)
        return next((c for c in self.controls if lookup_key(c.id) == wanted), None)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description,
                "controls": [control.to_json() for control in self.controls]}


def lookup_key(name: str) -> str:
    """How names and control ids are matched: "PCI-DSS" finds pci_dss, "art.32" Art. 32."""
    return re.sub(r"[^a-z0-9()]", "", name.lower())


@dataclass(frozen=True, slots=True)
class Frameworks:
    """The frameworks in file order, found by name however it is spelt."""

    all: tuple[Framework, ...]

    def get(self, name: str) -> Framework | None:
        wanted = lookup_key(name)
        return next((f for f in self.all if lookup_key(f.name) == wanted), None)


def _strings(where: str, value: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FrameworkError(f"{where}: expected a list of strings")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise FrameworkError(f"{where}: unknown {', '.join(unknown)} "
                             f"(known: {', '.join(allowed)})")
    if len(set(value)) != len(value):
        raise FrameworkError(f"{where}: listed twice")
    return tuple(value)


def _text(where: str, table: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = table.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise FrameworkError(f"{where}.{key}: expected a non-empty string")
    return value


def _control(where: str, table: Any) -> Control:
    if not isinstance(table, dict):
        raise FrameworkError(f"{where}: expected a table")
    unknown = set(table) - {"id", "title", "guardrail_types", "finding_types", "weight"}
    if unknown:
        raise FrameworkError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    weight = table.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise FrameworkError(f"{where}.weight: expected an integer 1-{MAX_WEIGHT}")
    guardrail_types = _strings(f"{where}.guardrail_types", table.get("guardrail_types"),
                               GUARDRAIL_TYPES)
    if not guardrail_types:
        raise FrameworkError(f"{where}.guardrail_types: name at least one guardrail type")
    return Control(id=_text(where, table, "id"), title=_text(where, table, "title"),
                   guardrail_types=guardrail_types,
                   finding_types=_strings(f"{where}.finding_types",
                                          table.get("finding_types", []), FINDING_TYPES),
                   weight=weight)


def _framework(where: str, table: Any) -> Framework:
    if not isinstance(table, dict):
        raise FrameworkError(f"{where}: expected a table")
    name = _text(where, table, "name")
    if not _NAME.fullmatch(name):
        raise FrameworkError(f"{where}.name: lower-case letters, digits and _ only")
    controls_raw = table.get("controls")
    if not isinstance(controls_raw, list) or not controls_raw:
        raise FrameworkError(f"{where}.controls: expected at least one control")
    controls = tuple(_control(f"{where}.controls[{n}]", c) for n, c in enumerate(controls_raw))
    ids = [lookup_key(control.id) for control in controls]
    if len(set(ids)) != len(ids):
        raise FrameworkError(f"{where}.controls: two controls share an id")
    return Framework(name=name, title=_text(where, table, "title"),
                     description=_text(where, table, "description", required=False),
                     controls=controls)


def parse_frameworks(text: str, source: str = DATA_FILE) -> Frameworks:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FrameworkError(f"{source}: {exc}") from None
    raw = document.get("frameworks")
    if not isinstance(raw, list) or not raw:
        raise FrameworkError(f"{source}: expected [[frameworks]] tables")
    frameworks = tuple(_framework(f"{source}: frameworks[{n}]", f) for n, f in enumerate(raw))
    names = [lookup_key(framework.name) for framework in frameworks]
    if len(set(names)) != len(names):
        raise FrameworkError(f"{source}: two frameworks share a name")
    return Frameworks(frameworks)


def load_frameworks() -> Frameworks:
    """The mappings shipped with the package (read on each call: callers keep one)."""
    text = resources.files("smartflow").joinpath(DATA_FILE).read_text("utf-8")
    return parse_frameworks(text)
