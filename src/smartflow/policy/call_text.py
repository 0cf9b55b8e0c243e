"""Which text of a request and of an answer the guardrails read, per dialect.

On the way in: the latest turn, not the whole conversation. That is every
message after the model's last reply (the user's new message, and the tool
or function results an agent loop sends back), plus the last user message
when a trailing tool result hides it. Earlier turns were checked when they
were new; the system prompt is the operator's. Retrieved documents pasted
into the user's message are part of it; tool results are marked ``tool``,
since an instruction hidden there is the indirect injection a guardrail must
catch.

Each piece keeps a way to write a masked text back into the parsed body,
so masking changes only the strings it must.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Setter = Callable[[str], None]


@dataclass(slots=True)
class TextPiece:
    text: str
    source: str  # "user", "tool" or "prompt"
    set_text: Setter | None  # None: the piece cannot be rewritten (masked)


def _setter(container: dict[str, Any] | list[Any], key: Any) -> Setter:
    def set_text(value: str) -> None:
        container[key] = value

    return set_text


def _content_pieces(container: dict[str, Any], key: str, source: str,
                    text_types: tuple[str, ...], out: list[TextPiece]) -> None:
    """A message's content: a string, or a list of typed parts."""
    content = container.get(key)
    if isinstance(content, str):
        if content:
            out.append(TextPiece(content, source, _setter(container, key)))
        return
    if not isinstance(content, list):
        return
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in text_types and isinstance(part.get("text"), str):
            out.append(TextPiece(part["text"], source, _setter(part, "text")))
        elif kind == "tool_result":  # Anthropic: a tool's answer inside a user turn
            _content_pieces(part, "content", "tool", ("text",), out)


def _latest_turn(messages: list[Any], assistant_roles: tuple[str, ...]) -> list[tuple[int, str]]:
    """Indices and roles of the messages the guardrails read: those after the
    last assistant message, and the last user message in any case."""
    last_assistant = -1
    last_user = -1
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in assistant_roles:
            last_assistant = index
        elif role == "user":
            last_user = index
    chosen = [i for i in range(last_assistant + 1, len(messages))
              if isinstance(messages[i], dict) and messages[i].get("role") not in ("system",
                                                                                    "developer")]
    if 0 <= last_user <= last_assistant:
        chosen.insert(0, last_user)
    return [(i, messages[i].get("role", "")) for i in chosen]


def _chat_input(body: dict[str, Any], out: list[TextPiece]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for index, role in _latest_turn(messages, ("assistant",)):
        source = "user" if role == "user" else "tool"
        _content_pieces(messages[index], "content", source, ("text",), out)


def _completions_input(body: dict[str, Any], out: list[TextPiece]) -> None:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        out.append(TextPiece(prompt, "prompt", _setter(body, "prompt")))
    elif isinstance(prompt, list):
        for i, item in enumerate(prompt):
            if isinstance(item, str):
                out.append(TextPiece(item, "prompt", _setter(prompt, i)))


def _anthropic_input(body: dict[str, Any], out: list[TextPiece]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for index, _role in _latest_turn(messages, ("assistant",)):
        _content_pieces(messages[index], "content", "user", ("text",), out)


def _responses_input(body: dict[str, Any], out: list[TextPiece]) -> None:
    items = body.get("input")
    if isinstance(items, str):
        out.append(TextPiece(items, "user", _setter(body, "input")))
        return
    if not isinstance(items, list):
        return
    last_output = -1
    for index, item in enumerate(items):
        if isinstance(item, dict) and (item.get("role") == "assistant" or item.get("type") in (
                "function_call", "reasoning")):
            last_output = index
    for item in items[last_output + 1:]:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call_output" and isinstance(item.get("output"), str):
            out.append(TextPiece(item["output"], "tool", _setter(item, "output")))
        elif item.get("role") == "user":
            _content_pieces(item, "content", "user", ("input_text", "text"), out)


def _gemini_input(body: dict[str, Any], out: list[TextPiece]) -> None:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return
    last = contents[-1]
    if not isinstance(last, dict) or not isinstance(last.get("parts"), list):
        return
    for part in last["parts"]:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            out.append(TextPiece(part["text"], "user", _setter(part, "text")))


_INPUT_READERS: dict[tuple[str, str], Callable[[dict[str, Any], list[TextPiece]], None]] = {
    ("openai", "chat"): _chat_input,
    ("openai", "completions"): _completions_input,
    ("anthropic", "messages"): _anthropic_input,
    ("anthropic", "passthrough"): _anthropic_input,
    ("responses", "responses"): _responses_input,
    ("gemini", "generate"): _gemini_input,
}


def input_pieces(dialect: str, operation: str, body: dict[str, Any] | None) -> list[TextPiece]:
    """The request text the guardrails read; empty for calls they do not judge
    (embeddings, token counts, a body that is not a conversation)."""
    reader = _INPUT_READERS.get((dialect, operation))
    if reader is None or not isinstance(body, dict):
        return []
    out: list[TextPiece] = []
    reader(body, out)
    return out


def checks_calls_of(dialect: str, operation: str) -> bool:
    return (dialect, operation) in _INPUT_READERS


# Whole answers: where their text lives.

def _chat_output(answer: dict[str, Any], out: list[TextPiece]) -> None:
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            out.append(TextPiece(message["content"], "answer", _setter(message, "content")))
        elif isinstance(choice.get("text"), str):
            out.append(TextPiece(choice["text"], "answer", _setter(choice, "text")))


def _anthropic_output(answer: dict[str, Any], out: list[TextPiece]) -> None:
    for block in answer.get("content") or ():
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(
                block.get("text"), str):
            out.append(TextPiece(block["text"], "answer", _setter(block, "text")))


def _responses_output(answer: dict[str, Any], out: list[TextPiece]) -> None:
    for item in answer.get("output") or ():
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        for part in item.get("content") or ():
            if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(
                    part.get("text"), str):
                out.append(TextPiece(part["text"], "answer", _setter(part, "text")))


def _gemini_output(answer: dict[str, Any], out: list[TextPiece]) -> None:
    for candidate in answer.get("candidates") or ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        if isinstance(content, dict):
            for part in content.get("parts") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    out.append(TextPiece(part["text"], "answer", _setter(part, "text")))


_OUTPUT_READERS: dict[str, Callable[[dict[str, Any], list[TextPiece]], None]] = {
    "openai": _chat_output,
    "anthropic": _anthropic_output,
    "responses": _responses_output,
    "gemini": _gemini_output,
}


def output_pieces(dialect: str, answer: dict[str, Any]) -> list[TextPiece]:
    reader = _OUTPUT_READERS.get(dialect)
    out: list[TextPiece] = []
    if reader is not None:
        reader(answer, out)
    return out
