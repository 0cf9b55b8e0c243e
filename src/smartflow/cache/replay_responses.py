"""Replay for the OpenAI Responses API: a ``response`` <-> its event stream.

The events and their fields are the ones ``ResponsesStreamEncoder`` writes
for a translated stream (``response.created``, ``response.in_progress``, per
output item ``output_item.added``, its parts and deltas, ``output_item.done``,
then ``response.completed`` with the whole response), each with an ``event:``
line and a ``sequence_number`` counting from 0.

A replayed response gets a new id, timestamp and output item ids (derived
from the new id, so the whole and the streamed replay of one hit agree).
Call ids (``call_id``) stay: the caller answers a call by them.

The assembler needs no deltas: the terminal ``response.completed`` event
carries the whole response. Any other ending (``response.incomplete``,
``response.failed``, an ``error`` event, none at all) is not an answer to keep.
"""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.cache.replay_common import (
    ReplayCodec,
    SSEAssembler,
    as_dict,
    as_list,
    derived_id,
    pieces,
)
from smartflow.providers.sse import SSEEvent, sse_event

_ENDINGS = {"incomplete": "response.incomplete", "failed": "response.failed"}
_FAILED_ENDINGS = frozenset({"response.incomplete", "response.failed", "error"})
_ITEM_PREFIXES = {"message": "msg", "function_call": "fc", "reasoning": "rs",
                  "custom_tool_call": "ctc"}


def refresh(answer: dict[str, Any], *, new_id: str, created: int) -> dict[str, Any]:
    response = {**answer, "id": new_id, "created_at": created}
    if response.get("completed_at") is not None:
        response["completed_at"] = created
    if isinstance(answer.get("output"), list):
        response["output"] = [_renamed(item, new_id, index)
                              for index, item in enumerate(answer["output"])]
    return response


def _renamed(item: Any, new_id: str, index: int) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return item
    old = item["id"]
    prefix = old.split("_", 1)[0] if "_" in old else _ITEM_PREFIXES.get(
        str(item.get("type")), "item")
    return {**item, "id": derived_id(new_id, prefix, index)}


class _Events:
    """Responses events, numbered as they are written."""

    __slots__ = ("out", "sequence")

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.sequence = 0

    def add(self, kind: str, payload: dict[str, Any]) -> None:
        self.out.append(sse_event(kind, {"type": kind, **payload,
                                         "sequence_number": self.sequence}))
        self.sequence += 1


def stream_events(answer: dict[str, Any], *, include_usage: bool) -> list[bytes]:
    del include_usage  # the terminal event always carries the whole response, usage too
    events = _Events()
    snapshot = {**answer, "status": "in_progress", "output": [], "usage": None, "error": None,
                "incomplete_details": None}
    if "completed_at" in answer:
        snapshot["completed_at"] = None
    events.add("response.created", {"response": snapshot})
    events.add("response.in_progress", {"response": snapshot})
    for index, item in enumerate(as_list(answer.get("output"))):
        if isinstance(item, dict):
            _item_events(events, index, item)
    status = answer.get("status")
    events.add(_ENDINGS.get(status, "response.completed") if isinstance(status, str)
               else "response.completed", {"response": answer})
    return events.out


def _item_events(events: _Events, index: int, item: dict[str, Any]) -> None:
    kind = item.get("type")
    added = dict(item)
    if "status" in item:
        added["status"] = "in_progress"
    place = {"item_id": item.get("id"), "output_index": index}
    if kind == "message":
        added["content"] = []
        events.add("response.output_item.added", {"output_index": index, "item": added})
        for content_index, part in enumerate(as_list(item.get("content"))):
            if isinstance(part, dict):
                _part_events(events, {**place, "content_index": content_index}, part)
    elif kind == "function_call" and isinstance(item.get("arguments"), str):
        added["arguments"] = ""
        events.add("response.output_item.added", {"output_index": index, "item": added})
        for piece in pieces(item["arguments"]):
            events.add("response.function_call_arguments.delta", {**place, "delta": piece})
        events.add("response.function_call_arguments.done",
                   {**place, "name": item.get("name"), "arguments": item["arguments"]})
    elif kind == "custom_tool_call" and isinstance(item.get("input"), str):
        added["input"] = ""
        events.add("response.output_item.added", {"output_index": index, "item": added})
        for piece in pieces(item["input"]):
            events.add("response.custom_tool_call_input.delta", {**place, "delta": piece})
        events.add("response.custom_tool_call_input.done", {**place, "input": item["input"]})
    elif kind == "reasoning":
        added["summary"] = []
        events.add("response.output_item.added", {"output_index": index, "item": added})
        for summary_index, part in enumerate(as_list(item.get("summary"))):
            if isinstance(part, dict):
                _summary_events(events, {**place, "summary_index": summary_index}, part)
    else:
        # Hosted tool calls and the like: nothing streams but the item itself.
        events.add("response.output_item.added", {"output_index": index, "item": added})
    events.add("response.output_item.done", {"output_index": index, "item": item})


def _part_events(events: _Events, place: dict[str, Any], part: dict[str, Any]) -> None:
    kind = part.get("type")
    if kind == "output_text" and isinstance(part.get("text"), str):
        added = {**part, "text": "", "annotations": []}
        if "logprobs" in part:
            added["logprobs"] = []
        events.add("response.content_part.added", {**place, "part": added})
        for piece in pieces(part["text"]):
            events.add("response.output_text.delta", {**place, "delta": piece, "logprobs": []})
        for annotation_index, annotation in enumerate(as_list(part.get("annotations"))):
            events.add("response.output_text.annotation.added",
                       {**place, "annotation_index": annotation_index,
                        "annotation": annotation})
        events.add("response.output_text.done",
                   {**place, "text": part["text"], "logprobs": as_list(part.get("logprobs"))})
    elif kind == "refusal" and isinstance(part.get("refusal"), str):
        events.add("response.content_part.added", {**place, "part": {**part, "refusal": ""}})
        for piece in pieces(part["refusal"]):
            events.add("response.refusal.delta", {**place, "delta": piece})
        events.add("response.refusal.done", {**place, "refusal": part["refusal"]})
    else:
        events.add("response.content_part.added", {**place, "part": part})
    events.add("response.content_part.done", {**place, "part": part})


def _summary_events(events: _Events, place: dict[str, Any], part: dict[str, Any]) -> None:
    text = part.get("text")
    text = text if isinstance(text, str) else ""
    events.add("response.reasoning_summary_part.added", {**place, "part": {**part, "text": ""}})
    for piece in pieces(text):
        events.add("response.reasoning_summary_text.delta", {**place, "delta": piece})
    events.add("response.reasoning_summary_text.done", {**place, "text": text})
    events.add("response.reasoning_summary_part.done", {**place, "part": part})


# -- assembling a stream ------------------------------------------------------------


class ResponsesAssembler(SSEAssembler):
    """Responses events in; the response of ``response.completed`` out."""

    __slots__ = ("_final",)

    def __init__(self) -> None:
        super().__init__()
        self._final: dict[str, Any] | None = None

    def _on_event(self, event: SSEEvent) -> None:
        name, data = event.event, event.data
        if self._is_broken or self._final is not None:
            return
        if name and name != "response.completed" and name not in _FAILED_ENDINGS:
            return  # the deltas: the terminal event repeats all they say
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._is_broken = True
            return
        kind = as_dict(event).get("type")
        if kind in _FAILED_ENDINGS:
            self._is_broken = True
        elif kind == "response.completed":
            response = as_dict(event).get("response")
            if isinstance(response, dict) and response.get("status") == "completed":
                self._final = response
            else:
                self._is_broken = True

    def result(self) -> dict[str, Any] | None:
        self._close()
        return None if self._is_broken else self._final


CODEC = ReplayCodec("resp_", "fc_", refresh, stream_events, ResponsesAssembler)
