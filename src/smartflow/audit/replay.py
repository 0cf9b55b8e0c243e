"""The question and the answer of a call, for Q&A replay: read by the shipper
from the captured bodies, off the request path.

A captured body may have been cut at the capture cap, so nothing here
assumes valid JSON: what cannot be read gives None, never an exception.
"""

from __future__ import annotations

from typing import Any

import orjson


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _text_of_content(content: Any) -> str | None:
    """Text of an OpenAI or Anthropic message ``content`` (a string or parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [str(part["text"]) for part in content
                 if isinstance(part, dict) and isinstance(part.get("text"), str)]
        return "\n".join(texts) if texts else None
    return None


def question_of(request: bytes) -> str | None:
    """The last user turn's text (chat, messages, completions, embeddings)."""
    body = _loads(request) if request else None
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of_content(message.get("content"))
        return None
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return "\n".join(value)
    return None


def answer_of_body(answer: bytes) -> str | None:
    """The text of a whole answer (OpenAI chat or completions, Anthropic
    messages), or an error's message."""
    body = _loads(answer) if answer else None
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        message = first.get("message")
        if isinstance(message, dict):
            return _text_of_content(message.get("content"))
        if isinstance(first.get("text"), str):
            return str(first["text"])
    if body.get("type") == "message" or isinstance(body.get("content"), list):
        return _text_of_content(body.get("content"))
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return None
