"""Small pieces of the hub model (OpenAI chat shapes) every translator needs.

The ingress translators (``anthropic_inbound``, ``responses_inbound``,
``gemini_inbound``) build hub messages and read hub tool calls the same way;
these are those shared rules, so the three cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import orjson


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
