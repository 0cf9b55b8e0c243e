"""Structural request checks that every JSON dialect shares, done before any upstream call.

Each failure is an ``HTTPError`` in OpenAI's shape with the offending field in
``param``, so a client sees exactly what to fix and no provider is ever
called with a request we already know is wrong. The checks cover structure
(what the proxy itself relies on: model, messages, stream flags) and leave
the meaning of sampling parameters to the provider.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from smartflow.http.errors import HTTPError

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ANTHROPIC_ROLES = frozenset({"user", "assistant", "system"})  # system: mid-conversation beta


@dataclass(frozen=True, slots=True)
class ChatRequestFacts:
    """What the proxy needs to know about a validated request."""

    model: str
    is_stream: bool
    wants_usage: bool  # stream_options.include_usage


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise HTTPError(400, "The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "The request body must be a JSON object, got "
                             f"{json_type(body)}.")
    # orjson reads 1024 levels of nesting but writes only 255, and a request
    # is written again for its upstream: refuse what could not be forwarded.
    # Counting brackets is C-speed; only a body with that many walks the tree.
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _depth(body) > MAX_JSON_DEPTH:
        raise HTTPError(400, f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.")
    return body


MAX_JSON_DEPTH = 250


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        node, level = pending.pop()
        if isinstance(node, dict):
            children: Iterable[object] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        pending.extend((child, level + 1) for child in children)
    return deepest


def json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def bad_param(param: str, message: str) -> HTTPError:
    return HTTPError(400, message, param=param)


def check_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise bad_param("model", "you must provide a model parameter")
    if not isinstance(model, str):
        raise bad_param("model", f"model: expected a string, got {json_type(model)}")
    if not model:
        raise bad_param("model", "model: must not be empty")
    return model


def check_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_param("stream", f"stream: expected a boolean, got {json_type(stream)}")
    options = body.get("stream_options")
    wants_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise bad_param("stream_options",
                       f"stream_options: expected an object, got {json_type(options)}")
        include = options.get("include_usage", False)
        if include is not None and not isinstance(include, bool):
            raise bad_param("stream_options.include_usage",
                       "stream_options.include_usage: expected a boolean")
        wants_usage = bool(include)
    return stream, wants_usage


def check_n(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise bad_param("n", "n: expected an integer >= 1")


def check_optional_list(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, list):
        raise bad_param(name, f"{name}: expected an array, got {json_type(value)}")


def check_text_or_array(body: dict[str, Any], name: str) -> None:
    """``prompt`` and ``input``: a string, or a non-empty array (of strings or tokens)."""
    value = body.get(name)
    if value is None:
        raise bad_param(name, f"{name}: required")
    if isinstance(value, list):
        if not value:
            raise bad_param(name, f"{name}: must not be empty")
    elif not isinstance(value, str):
        raise bad_param(name, f"{name}: expected a string or an array, got {json_type(value)}")
