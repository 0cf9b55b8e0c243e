"""What identifies a cached answer: the exact key, the semantic context, the prompt.

The exact key is a SHA-256 over a canonical encoding (sorted keys) of the
request body less the fields that cannot change the answer (``stream``,
``stream_options``, ``user``, ``metadata``, ...), plus the dialect, the
operation, the requested model and the cache scope (partition + namespace).
A streamed and a whole request for the same thing therefore share an entry.

The semantic tier looks only at the last user turn. Everything else —
model, system prompt, earlier turns, tools, sampling parameters — is hashed
into the *context*: a candidate is compared only with entries of the same
context, so a paraphrase never crosses a different system prompt or a
different conversation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

# Fields that shape delivery, accounting or storage, not the answer.
_IGNORED_FIELDS = frozenset({
    "stream", "stream_options", "user", "metadata", "store", "service_tier",
    "prompt_cache_key", "safety_identifier", "background",
})

# (dialect, operation) pairs whose answers are cached, and where the turns are.
CACHEABLE = {
    ("openai", "chat"): "messages",
    ("anthropic", "messages"): "messages",
    ("responses", "responses"): "input",
}


@dataclass(frozen=True, slots=True)
class CacheIdentity:
    """The keys of one cacheable request."""

    exact: str  # hex SHA-256
    entry_id: int  # the first 8 bytes of ``exact``, signed: the index's entry id
    # The semantic part (None: the request may be served only exactly).
    prompt: str | None
    context: int  # signed 64-bit hash of everything but the last user turn's text
    semantic_refusal: str = ""  # why the request is not served semantically


def _signed64(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big", signed=True)


def entry_id_of(exact: str) -> int:
    return _signed64(bytes.fromhex(exact[:16]))


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _text_of(content: Any) -> str | None:
    """The text of a message's content; None when it holds anything but text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            return None
        kind = part.get("type")
        if kind in ("text", "input_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:  # an image, a file, a tool result: not comparable as text
            return None
    return "\n".join(texts)


def _last_user_turn(dialect: str, body: dict[str, Any]) -> tuple[int | None, str | None, str]:
    """(index of the last turn, its text, refusal reason)."""
    if dialect == "responses":
        turns = body.get("input")
        if isinstance(turns, str):
            return -1, turns, ""
    else:
        turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        return None, None, "no turns"
    last = turns[-1]
    if not isinstance(last, dict):
        return None, None, "no turns"
    kind = last.get("type")
    if kind not in (None, "message"):  # a function_call_output: an agent loop's turn
        return None, None, "agent turn"
    role = last.get("role")
    if role == "tool" or role != "user":
        return None, None, "agent turn" if role == "tool" else "last turn is not the user's"
    content = last.get("content")
    if dialect == "anthropic" and isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") == "tool_result" for part in content):
        return None, None, "agent turn"
    text = _text_of(content)
    if text is None:
        return None, None, "non-text content"
    return len(turns) - 1, text, ""


def identify(dialect: str, operation: str, model: str, scope: str, body: dict[str, Any], *,
             max_temperature: float) -> CacheIdentity:
    """The request's keys. ``scope``: who may share the entry (partition and namespace)."""
    answer_fields = {k: v for k, v in body.items() if k not in _IGNORED_FIELDS}
    answer_fields["model"] = model
    head = _canonical([dialect, operation, scope])
    exact = hashlib.sha256(head + _canonical(answer_fields)).hexdigest()
    index, prompt, refusal = _last_user_turn(dialect, body)
    if prompt is not None:
        refusal = _semantic_refusal(body, max_temperature)
    if refusal or index is None:
        return CacheIdentity(exact, entry_id_of(exact), None, 0, refusal)
    # The context: the same fields with the last turn's text blanked out.
    turns_field = "input" if dialect == "responses" else "messages"
    if index < 0:
        answer_fields[turns_field] = ""
    else:
        turns = list(answer_fields[turns_field])
        turns[index] = {**turns[index], "content": None}
        answer_fields[turns_field] = turns
    context = _signed64(hashlib.sha256(head + _canonical(answer_fields)).digest())
    assert prompt is not None  # _last_user_turn gives a text with every index
    return CacheIdentity(exact, entry_id_of(exact), prompt.strip(), context)


def _semantic_refusal(body: dict[str, Any], max_temperature: float) -> str:
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and temperature > max_temperature:
        return "temperature"
    n = body.get("n", body.get("candidateCount"))
    if isinstance(n, int) and n > 1:
        return "n > 1"
    return ""
