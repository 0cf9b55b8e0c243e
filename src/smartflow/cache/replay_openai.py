"""Replay for OpenAI chat completions: a ``chat.completion`` <-> its chunk stream.

The stream is what OpenAI sends: per choice a role chunk, text in a few
content chunks, each tool call opened with its index, id and name then its
arguments, a chunk carrying the finish reason; then, when the caller asked
for it (``stream_options.include_usage``), a usage chunk with no choices;
then ``data: [DONE]``. Choices interleave, as OpenAI's do when ``n > 1``.

The assembler merges chunks back by choice index. A stream counts as whole
only when it reached ``[DONE]`` and every choice has a finish reason: the
gateway writes ``[DONE]`` after a translated upstream stream even when the
upstream stopped early, so ``[DONE]`` alone is not proof of a whole answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from smartflow.cache.replay_common import ReplayCodec, SSEAssembler, as_dict, as_list, pieces
from smartflow.providers.sse import SSE_DONE, SSEEvent, sse_data

CHUNK_OBJECT = "chat.completion.chunk"
# Envelope fields a chunk repeats that belong on the whole answer too.
_HEAD_FIELDS = ("id", "created", "model", "service_tier", "system_fingerprint")
_OPTIONAL_HEAD_FIELDS = ("service_tier", "system_fingerprint")
# Message fields every chat.completion message carries, null when unused.
_ALWAYS_FIELDS = ("content", "refusal")
# Streamed in pieces, in this order; any other message field goes in one delta.
_TEXT_FIELDS = ("reasoning_content", "content", "refusal")

Delta = tuple[dict[str, Any], str | None, Any]  # (delta, finish_reason, logprobs)


def refresh(answer: dict[str, Any], *, new_id: str, created: int) -> dict[str, Any]:
    return {**answer, "id": new_id, "created": created}


def stream_events(answer: dict[str, Any], *, include_usage: bool) -> list[bytes]:
    envelope: dict[str, Any] = {"id": answer.get("id"), "object": CHUNK_OBJECT,
                                "created": answer.get("created"), "model": answer.get("model")}
    for name in _OPTIONAL_HEAD_FIELDS:
        if name in answer:
            envelope[name] = answer[name]
    per_choice = [[(choice.get("index", position), delta) for delta in _choice_deltas(choice)]
                  for position, choice in enumerate(as_list(answer.get("choices")))
                  if isinstance(choice, dict)]
    events = []
    for step in range(max((len(deltas) for deltas in per_choice), default=0)):
        for deltas in per_choice:
            if step < len(deltas):
                index, (delta, finish_reason, logprobs) = deltas[step]
                chunk = {**envelope, "choices": [
                    {"index": index, "delta": delta, "logprobs": logprobs,
                     "finish_reason": finish_reason}]}
                if include_usage:
                    chunk["usage"] = None  # OpenAI's chunks say so when usage was asked for
                events.append(sse_data(chunk))
    usage = answer.get("usage")
    if include_usage and isinstance(usage, dict):
        events.append(sse_data({**envelope, "choices": [], "usage": usage}))
    events.append(SSE_DONE)
    return events


def _text_of(value: Any) -> Any:
    # Some OpenAI-compatible upstreams answer with a list of content parts;
    # a chunk's content is a string, so their text is what streams.
    if isinstance(value, list):
        return "".join(str(part.get("text", "")) for part in value if isinstance(part, dict))
    return value


def _choice_deltas(choice: dict[str, Any]) -> list[Delta]:
    message = as_dict(choice.get("message"))
    texts = {name: _text_of(message.get(name)) for name in _TEXT_FIELDS}
    head: dict[str, Any] = {"role": message.get("role") or "assistant"}
    for name in _ALWAYS_FIELDS:
        head[name] = "" if isinstance(texts[name], str) else None
    deltas: list[Delta] = [(head, None, None)]
    for name in _TEXT_FIELDS:
        value = texts[name]
        if isinstance(value, str):
            deltas.extend(({name: piece}, None, None) for piece in pieces(value))
    extra = {name: value for name, value in message.items()
             if name not in ("role", "tool_calls", *_TEXT_FIELDS) and value is not None}
    if extra:
        deltas.append((extra, None, None))
    for position, call in enumerate(as_list(message.get("tool_calls"))):
        if isinstance(call, dict):
            deltas.extend(_call_deltas(position, call))
    logprobs = choice.get("logprobs")
    if logprobs is not None:
        # Token logprobs do not line up with our text pieces; they ride whole on
        # the first chunk that says something, which clients concatenate alike.
        at = 1 if len(deltas) > 1 else 0
        delta, finish_reason, _ = deltas[at]
        deltas[at] = (delta, finish_reason, logprobs)
    deltas.append(({}, choice.get("finish_reason"), None))
    return deltas


def _call_deltas(position: int, call: dict[str, Any]) -> list[Delta]:
    function = call.get("function")
    if not isinstance(function, dict):
        return [({"tool_calls": [{**call, "index": position}]}, None, None)]
    arguments = function.get("arguments")
    if arguments is not None and not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()  # a chunk's arguments are JSON text
    opening = {**call, "index": position, "function": {**function, "arguments": ""}}
    return [({"tool_calls": [opening]}, None, None),
            *(({"tool_calls": [{"index": position, "function": {"arguments": piece}}]},
               None, None) for piece in pieces(arguments or ""))]


# -- assembling a stream ------------------------------------------------------------


@dataclass(slots=True)
class _Choice:
    """What the chunks of one choice have said so far."""

    role: str | None = None
    texts: dict[str, list[str]] = field(default_factory=dict)
    others: dict[str, Any] = field(default_factory=dict)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    arguments: dict[int, list[str]] = field(default_factory=dict)
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None

    def add(self, choice: dict[str, Any]) -> None:
        delta = as_dict(choice.get("delta"))
        for name, value in delta.items():
            if name == "role":
                self.role = value if isinstance(value, str) else self.role
            elif name == "tool_calls":
                for call in as_list(value):
                    if isinstance(call, dict):
                        self._add_call(call)
            elif isinstance(value, str):
                self.texts.setdefault(name, []).append(value)
            elif isinstance(value, list) and isinstance(self.others.get(name), list):
                self.others[name] = [*self.others[name], *value]
            elif value is not None:
                self.others[name] = value
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            self._add_logprobs(logprobs)
        if isinstance(choice.get("finish_reason"), str) and choice["finish_reason"]:
            self.finish_reason = choice["finish_reason"]

    def _add_call(self, call: dict[str, Any]) -> None:
        index = call.get("index", 0)
        index = index if isinstance(index, int) else 0
        function = call.get("function")
        known = self.calls.get(index)
        if known is None:
            known = {name: value for name, value in call.items() if name != "index"}
            if isinstance(function, dict):
                known["function"] = {name: value for name, value in function.items()
                                     if name != "arguments"}
            self.calls[index] = known
        else:
            for name, value in call.items():
                if name not in ("index", "function") and value is not None:
                    known.setdefault(name, value)
            if isinstance(function, dict):
                into = known.setdefault("function", {})
                for name, value in function.items():
                    if name != "arguments" and value:
                        into.setdefault(name, value)
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            self.arguments.setdefault(index, []).append(function["arguments"])

    def _add_logprobs(self, logprobs: dict[str, Any]) -> None:
        into = self.logprobs if self.logprobs is not None else {}
        self.logprobs = into
        for name, value in logprobs.items():
            if isinstance(value, list):
                into[name] = [*as_list(into.get(name)), *value]
            else:
                into.setdefault(name, value)

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role or "assistant"}
        message.update(dict.fromkeys(_ALWAYS_FIELDS))
        message.update(self.others)
        message.update({name: "".join(parts) for name, parts in self.texts.items()})
        if self.calls:
            calls = []
            for index in sorted(self.calls):
                call = dict(self.calls[index])
                if "function" in call:
                    call["function"] = {**call["function"],
                                        "arguments": "".join(self.arguments.get(index, ()))}
                calls.append(call)
            message["tool_calls"] = calls
        return message


class OpenAIAssembler(SSEAssembler):
    """``chat.completion.chunk`` events in, the ``chat.completion`` they spell out."""

    __slots__ = ("_choices", "_head", "_is_done", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._head: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: dict[str, Any] | None = None
        self._is_done = False

    def _on_event(self, event: SSEEvent) -> None:
        self._on_data(event.data)

    def _on_data(self, data: str) -> None:
        if self._is_done or self._is_broken:
            return
        if data == "[DONE]":
            self._is_done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._is_broken = True
            return
        if not isinstance(chunk, dict) or ("error" in chunk and not chunk.get("choices")):
            self._is_broken = True  # OpenAI ends a failed stream with an error object
            return
        for name in _HEAD_FIELDS:
            # Azure's first chunk (prompt filter results) has an empty id, model and
            # created: a later chunk's real ones win over empty ones.
            if name in chunk and not self._head.get(name):
                self._head[name] = chunk[name]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in as_list(chunk.get("choices")):
            if isinstance(choice, dict):
                index = choice.get("index", 0)
                self._choices.setdefault(index if isinstance(index, int) else 0,
                                         _Choice()).add(choice)

    def result(self) -> dict[str, Any] | None:
        self._close()
        if (self._is_broken or not self._is_done or not self._choices
                or any(choice.finish_reason is None for choice in self._choices.values())):
            return None
        completion: dict[str, Any] = {
            "id": self._head.get("id"), "object": "chat.completion",
            "created": self._head.get("created"), "model": self._head.get("model"),
            "choices": [{"index": index, "message": choice.message(),
                         "logprobs": choice.logprobs, "finish_reason": choice.finish_reason}
                        for index, choice in sorted(self._choices.items())],
            "usage": self._usage}
        for name in _OPTIONAL_HEAD_FIELDS:
            if name in self._head:
                completion[name] = self._head[name]
        return completion


CODEC = ReplayCodec("chatcmpl-", "call_", refresh, stream_events, OpenAIAssembler)
