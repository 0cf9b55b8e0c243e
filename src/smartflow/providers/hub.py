"""Small pieces of the hub model (OpenAI chat shapes) every translator needs.

The ingress translators (``anthropic_inbound``, ``responses_inbound``,
``gemini_inbound``) build hub messages and read hub tool calls the same way;
these are those shared rules, so the three cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.providers.base import ProviderError


def joined_text_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Hub message content: the parts' text as one string when every part is
    text (what any provider accepts), else the parts themselves."""
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def arguments_object(arguments: Any) -> dict[str, Any]:
    """A hub tool call's ``arguments`` (JSON text) as an object, for formats whose
    tool calls carry one (Anthropic's ``input``, Gemini's ``args``)."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}  # keep what the model said rather than lose it
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def ask_to_stream(request: dict[str, Any]) -> None:
    """Make a hub request a streamed one. A translated stream always asks for usage:
    the caller's format reports it at the end, and the call is billed from it."""
    request["stream"] = True
    request["stream_options"] = {"include_usage": True}


def unreadable_upstream(what: str, exc: Exception) -> ProviderError:
    """The 502 for an upstream ``what`` (a completion, a chunk, ...) that a
    translator could not read: the shape was not what the hub promises."""
    return ProviderError(502, f"the upstream sent a {what} we cannot read "
                              f"({type(exc).__name__}: {exc})", "api_error",
                         "bad_upstream_response")
