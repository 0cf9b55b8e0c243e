"""OpenAI attribute filters, checked once and compiled to a predicate.

A vector store file carries ``attributes`` (at most 16 keys of up to 64
characters; values are strings of up to 512 characters, numbers or
booleans). A search narrows by them with OpenAI's filter objects:

* comparison ``{"type": "eq"|"ne"|"gt"|"gte"|"lt"|"lte", "key", "value"}``
  and ``{"type": "in"|"nin", "key", "value": [str | number, ...]}``;
* compound ``{"type": "and"|"or", "filters": [...]}``, nested.

Semantics chosen where OpenAI's reference is silent:

* Values compare only within one kind: a string with a string, a number with
  a number, a boolean with a boolean (``True`` never equals ``1``, though
  Python says so). ``gt``/``gte``/``lt``/``lte`` order strings by code point,
  so ISO dates work.
* A file that lacks the key, or holds another kind of value, fails every
  comparison except ``ne`` and ``nin``: "not draft" includes files that were
  never tagged.

The whole filter is validated before anything is searched, so a malformed one
is a 400 naming the offending field (``filters.filters[1].value``), never a
silent empty result. Nesting and size are bounded: a filter is data from the
network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]
AttributeValue = str | int | float | bool

MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_KEY_CHARS = 64
MAX_ATTRIBUTE_STRING_CHARS = 512
MAX_FILTER_DEPTH = 8
MAX_FILTER_NODES = 256
MAX_IN_VALUES = 256

_ORDERING = frozenset({"gt", "gte", "lt", "lte"})
_SCALAR_OPS = frozenset({"eq", "ne"}) | _ORDERING
_LIST_OPS = frozenset({"in", "nin"})
_COMPOUND_OPS = frozenset({"and", "or"})


class FilterError(ValueError):
    """A filter or attribute set that cannot be used; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _kind(value: object) -> str | None:
    # bool before int: bool is an int subclass, but a different kind here.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _is_finite(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def validate_attributes(attributes: object, param: str = "attributes"
                        ) -> dict[str, AttributeValue]:
    """A file's attributes as OpenAI limits them; raises FilterError."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise FilterError(f"{param}: expected an object of string keys to string, number or "
                          f"boolean values.", param)
    if len(attributes) > MAX_ATTRIBUTES:
        raise FilterError(f"{param}: at most {MAX_ATTRIBUTES} keys are allowed, got "
                          f"{len(attributes)}.", param)
    checked: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        where = f"{param}.{key}"
        if not key or len(key) > MAX_ATTRIBUTE_KEY_CHARS:
            raise FilterError(f"{param}: keys must be 1 to {MAX_ATTRIBUTE_KEY_CHARS} "
                              f"characters long.", where)
        if _kind(value) is None or not _is_finite(value):
            raise FilterError(f"{where}: expected a string, a finite number or a boolean.",
                              where)
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_STRING_CHARS:
            raise FilterError(f"{where}: strings may be at most {MAX_ATTRIBUTE_STRING_CHARS} "
                              f"characters long.", where)
        checked[key] = value
    return checked


class _Budget:
    __slots__ = ("nodes",)

    def __init__(self) -> None:
        self.nodes = 0


def compile_filter(spec: object, param: str = "filters") -> Predicate:
    """A predicate over a file's attributes; raises FilterError naming the bad field."""
    return _compile(spec, param, 0, _Budget())


def _compile(spec: object, param: str, depth: int, budget: _Budget) -> Predicate:
    budget.nodes += 1
    if budget.nodes > MAX_FILTER_NODES:
        raise FilterError(f"filters: at most {MAX_FILTER_NODES} filters may be combined.",
                          "filters")
    if not isinstance(spec, dict):
        raise FilterError(f"{param}: expected a filter object.", param)
    op = spec.get("type")
    if op in _COMPOUND_OPS:
        return _compile_compound(spec, str(op), param, depth, budget)
    if op in _SCALAR_OPS or op in _LIST_OPS:
        return _compile_comparison(spec, str(op), param)
    allowed = "eq, ne, gt, gte, lt, lte, in, nin, and, or"
    raise FilterError(f"{param}.type: expected one of {allowed}; got {op!r}.", f"{param}.type")


def _compile_compound(spec: dict[str, Any], op: str, param: str, depth: int,
                      budget: _Budget) -> Predicate:
    if depth >= MAX_FILTER_DEPTH:
        raise FilterError(f"{param}: filters may nest at most {MAX_FILTER_DEPTH} deep.", param)
    children = spec.get("filters")
    if not isinstance(children, list) or not children:
        raise FilterError(f"{param}.filters: expected a non-empty array of filters.",
                          f"{param}.filters")
    compiled = tuple(_compile(child, f"{param}.filters[{i}]", depth + 1, budget)
                     for i, child in enumerate(children))
    if op == "and":
        return lambda attributes: all(check(attributes) for check in compiled)
    return lambda attributes: any(check(attributes) for check in compiled)


def _compile_comparison(spec: dict[str, Any], op: str, param: str) -> Predicate:
    key = spec.get("key")
    if not isinstance(key, str) or not key:
        raise FilterError(f"{param}.key: expected a non-empty string.", f"{param}.key")
    if "value" not in spec:
        raise FilterError(f"{param}.value: missing.", f"{param}.value")
    value = spec["value"]
    if op in _LIST_OPS:
        return _compile_membership(key, value, op == "nin", f"{param}.value")
    kind = _kind(value)
    if kind is None or not _is_finite(value):
        raise FilterError(f"{param}.value: expected a string, a finite number or a boolean "
                          f"for '{op}'.", f"{param}.value")
    if op in _ORDERING and kind == "bool":
        raise FilterError(f"{param}.value: '{op}' orders numbers or strings, not booleans.",
                          f"{param}.value")
    if op == "eq":
        return lambda attributes: _same_kind(attributes.get(key), kind) \
            and attributes[key] == value
    if op == "ne":
        return lambda attributes: not (_same_kind(attributes.get(key), kind)
                                       and attributes[key] == value)
    compare = _ORDER_TESTS[op]
    return lambda attributes: _same_kind(attributes.get(key), kind) \
        and compare(attributes[key], value)


_ORDER_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda held, wanted: held > wanted,
    "gte": lambda held, wanted: held >= wanted,
    "lt": lambda held, wanted: held < wanted,
    "lte": lambda held, wanted: held <= wanted,
}


def _same_kind(held: object, kind: str) -> bool:
    return held is not None and _kind(held) == kind


def _compile_membership(key: str, values: object, negate: bool, param: str) -> Predicate:
    if not isinstance(values, list) or not values:
        raise FilterError(f"{param}: expected a non-empty array of strings or numbers.", param)
    if len(values) > MAX_IN_VALUES:
        raise FilterError(f"{param}: at most {MAX_IN_VALUES} values are allowed.", param)
    # Kind-tagged members, so that the attribute True never matches 1.
    members: set[tuple[str, Any]] = set()
    for i, value in enumerate(values):
        kind = _kind(value)
        if kind not in ("string", "number") or not _is_finite(value):
            raise FilterError(f"{param}[{i}]: expected a string or a finite number.",
                              f"{param}[{i}]")
        members.add((kind, value))

    def contains(attributes: Mapping[str, Any]) -> bool:
        held = attributes.get(key)
        kind = _kind(held)
        return kind is not None and (kind, held) in members

    if negate:
        return lambda attributes: not contains(attributes)
    return contains
