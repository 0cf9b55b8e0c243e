"""Replay for the Anthropic Messages API: a ``message`` <-> its event stream.

The stream is what Anthropic sends: ``message_start`` (the message with no
content yet, input usage), per content block ``content_block_start``, its
deltas (``text_delta``, ``citations_delta``, ``thinking_delta`` then
``signature_delta``, ``input_json_delta`` for tool input) and
``content_block_stop``; then ``message_delta`` (stop reason, usage) and
``message_stop``. Blocks with nothing to stream (redacted thinking, server
tool results) start whole and stop.

``message_delta`` carries the whole usage, as the API does today, so the
usage a caller adds up equals the stored one whatever it reads first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from smartflow.cache.replay_common import ReplayCodec, SSEAssembler, as_dict, as_list, pieces
from smartflow.providers.sse import SSEEvent, sse_event

# message_delta's delta: the fields message_start leaves null until the end
# (the optional ones only when the stored message has them).
_END_FIELDS = ("stop_reason", "stop_sequence")
_OPTIONAL_END_FIELDS = ("stop_details", "container")
# Streamed text of a block, by block type: (field, delta type, delta field).
_FLOW_TEXT = {"text": ("text", "text_delta", "text"),
              "thinking": ("thinking", "thinking_delta", "thinking")}


def refresh(answer: dict[str, Any], *, new_id: str, created: int) -> dict[str, Any]:
    del created  # a message carries no timestamp
    return {**answer, "id": new_id}


def stream_events(answer: dict[str, Any], *, include_usage: bool) -> list[bytes]:
    del include_usage  # Anthropic streams always carry usage
    usage = as_dict(answer.get("usage"))
    output_tokens = usage.get("output_tokens")
    start_usage = {**usage, "output_tokens": 1 if isinstance(output_tokens, int)
                   and output_tokens > 0 else 0}
    start = {**answer, "content": [], "usage": start_usage, **dict.fromkeys(_END_FIELDS)}
    if "stop_details" in answer:
        start["stop_details"] = None
    events = [_event({"type": "message_start", "message": start})]
    for index, block in enumerate(as_list(answer.get("content"))):
        if isinstance(block, dict):
            events.extend(_block_events(index, block))
    delta = {name: answer.get(name) for name in _END_FIELDS}
    delta.update({name: answer[name] for name in _OPTIONAL_END_FIELDS if name in answer})
    events.append(_event({"type": "message_delta", "delta": delta, "usage": usage}))
    events.append(_event({"type": "message_stop"}))
    return events


def _event(payload: dict[str, Any]) -> bytes:
    return sse_event(payload["type"], payload)


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event({"type": "content_block_delta", "index": index, "delta": delta})


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    kind = block.get("type")
    opening = dict(block)
    deltas: list[bytes] = []
    flow = _FLOW_TEXT.get(kind) if isinstance(kind, str) else None
    if flow is not None and isinstance(block.get(flow[0]), str):
        name, delta_type, delta_field = flow
        opening[name] = ""
        deltas.extend(_delta(index, {"type": delta_type, delta_field: piece})
                      for piece in pieces(block[name]))
    if kind == "text" and as_list(block.get("citations")):
        opening["citations"] = []
        deltas.extend(_delta(index, {"type": "citations_delta", "citation": citation})
                      for citation in block["citations"])
    if kind == "thinking":
        opening["signature"] = ""
        if isinstance(block.get("signature"), str) and block["signature"]:
            deltas.append(_delta(index, {"type": "signature_delta",
                                         "signature": block["signature"]}))
    if _has_streamed_input(block):
        opening["input"] = {}
        if block["input"]:
            deltas.extend(_delta(index, {"type": "input_json_delta", "partial_json": piece})
                          for piece in pieces(orjson.dumps(block["input"]).decode()))
    return [_event({"type": "content_block_start", "index": index, "content_block": opening}),
            *deltas, _event({"type": "content_block_stop", "index": index})]


def _has_streamed_input(block: dict[str, Any]) -> bool:
    """tool_use, server_tool_use, mcp_tool_use: their input streams as JSON text."""
    kind = block.get("type")
    return (isinstance(kind, str) and kind.endswith("tool_use")
            and isinstance(block.get("input"), dict))


# -- assembling a stream ------------------------------------------------------------


@dataclass(slots=True)
class _Block:
    block: dict[str, Any]
    texts: dict[str, list[str]] = field(default_factory=dict)
    json_parts: list[str] = field(default_factory=list)
    is_stopped: bool = False

    def add(self, delta: dict[str, Any]) -> None:
        kind = delta.get("type")
        if kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            self.json_parts.append(delta["partial_json"])
        elif kind == "citations_delta" and "citation" in delta:
            self.block["citations"] = [*as_list(self.block.get("citations")),
                                       delta["citation"]]
        elif kind == "signature_delta" and isinstance(delta.get("signature"), str):
            self.block["signature"] = delta["signature"]
        else:
            for name, delta_type, delta_field in _FLOW_TEXT.values():
                if kind == delta_type and isinstance(delta.get(delta_field), str):
                    self.texts.setdefault(name, []).append(delta[delta_field])

    def stop(self) -> bool:
        """Close the block; False when its streamed input is not JSON."""
        self.is_stopped = True
        for name, parts in self.texts.items():
            before = self.block.get(name)
            self.block[name] = (before if isinstance(before, str) else "") + "".join(parts)
        if self.json_parts:
            try:
                self.block["input"] = orjson.loads("".join(self.json_parts))
            except orjson.JSONDecodeError:
                return False
        return True


class AnthropicAssembler(SSEAssembler):
    """Anthropic stream events in, the ``message`` they spell out."""

    __slots__ = ("_blocks", "_has_delta", "_is_stopped", "_message", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._message: dict[str, Any] | None = None
        self._usage: dict[str, Any] = {}
        self._blocks: dict[int, _Block] = {}
        self._has_delta = False
        self._is_stopped = False

    def _on_event(self, event: SSEEvent) -> None:
        self._on_data(event.data)

    def _on_data(self, data: str) -> None:
        if self._is_broken or self._is_stopped:
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._is_broken = True
            return
        if not isinstance(event, dict):
            self._is_broken = True
            return
        kind = event.get("type")
        if kind == "error":
            self._is_broken = True
        elif kind == "message_start":
            self._on_start(as_dict(event.get("message")))
        elif kind in ("content_block_start", "content_block_delta", "content_block_stop"):
            self._on_block(kind, event)
        elif kind == "message_delta" and self._message is not None:
            self._has_delta = True
            self._message.update(as_dict(event.get("delta")))
            self._usage.update({name: value for name, value
                                in as_dict(event.get("usage")).items() if value is not None})
        elif kind == "message_stop":
            self._is_stopped = True
        # ping and event types added later carry nothing the message keeps

    def _on_start(self, message: dict[str, Any]) -> None:
        if self._message is not None:
            self._is_broken = True
            return
        self._message = dict(message)
        self._usage = dict(as_dict(message.get("usage")))

    def _on_block(self, kind: str, event: dict[str, Any]) -> None:
        index = event.get("index")
        if self._message is None or not isinstance(index, int):
            self._is_broken = True
            return
        if kind == "content_block_start":
            if index in self._blocks:
                self._is_broken = True
            else:
                self._blocks[index] = _Block(dict(as_dict(event.get("content_block"))))
            return
        block = self._blocks.get(index)
        if block is None or block.is_stopped:
            self._is_broken = True
        elif kind == "content_block_delta":
            block.add(as_dict(event.get("delta")))
        elif not block.stop():
            self._is_broken = True

    def result(self) -> dict[str, Any] | None:
        self._close()
        if (self._is_broken or not self._is_stopped or not self._has_delta
                or self._message is None
                or any(not block.is_stopped for block in self._blocks.values())
                or sorted(self._blocks) != list(range(len(self._blocks)))):
            return None
        message = dict(self._message)
        message["content"] = [self._blocks[index].block for index in sorted(self._blocks)]
        message["usage"] = dict(self._usage)
        return message


CODEC = ReplayCodec("msg_", "toolu_", refresh, stream_events, AnthropicAssembler)
