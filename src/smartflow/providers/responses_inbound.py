"""The OpenAI Responses API (``POST /v1/responses``) in front of any model.

The gateway's ``/v1/responses`` may route to a model whose adapter speaks
OpenAI chat shapes. This module translates that direction: a Responses
request into a chat request, a chat completion back into a ``response``
object, chat chunks into the Responses event stream, and (the reverse, for
Responses as a provider wire and for round-trip tests) a chat request into a
Responses request, a ``response`` into a completion, and Responses SSE into
chat chunks. All sans-IO.

What Codex CLI (0.17x) sends, seen on the wire: ``instructions`` empty, the
system prompt as ``developer`` message items; ``input`` items of type
``message`` (``input_text``/``output_text``/``input_image`` parts),
``function_call`` / ``function_call_output``, ``custom_tool_call`` /
``custom_tool_call_output`` (freeform tools such as ``apply_patch``) and
``reasoning`` (with ``encrypted_content``, since ``include`` asks for it and
``store`` is false); ``tools`` of type ``function``, ``custom`` (with a lark
grammar ``format``), ``namespace`` (``{"type":"namespace","name":
"multi_agent_v1","description":...,"tools":[function tools]}``) and the hosted
``web_search``; ``tool_choice: "auto"``, ``parallel_tool_calls``,
``reasoning: {"summary":"auto"}``, ``prompt_cache_key``, ``client_metadata``.

Translation rules worth knowing:

* A namespace's member tools become hub functions named ``<namespace>__<name>``;
  a call to one comes back as a ``function_call`` item with ``name`` the
  member's name and ``namespace`` set, as OpenAI reports it.
* A custom (freeform) tool becomes a function taking one string,
  ``{"input": ...}``, its grammar quoted in the description; its calls come
  back as ``custom_tool_call`` items carrying the raw ``input``.
* Hosted tools (``web_search``, ``file_search``, ``code_interpreter``,
  ``computer_use_preview``, ``image_generation``, ``mcp``, ``local_shell`` and
  any other non-function type) run only on OpenAI's side: they are dropped, so
  the model simply does not use them, unless ``tool_choice`` forces one, which
  is refused with 400 ``unsupported_hosted_tool``.
* ``reasoning`` items (OpenAI's encrypted reasoning) and the records of hosted
  tool calls in the input are dropped: another model cannot read them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from smartflow.gateway_error import GatewayError
from smartflow.http.errors import error_type_for_status
from smartflow.providers.base import ProviderError, Usage
from smartflow.providers.hub import ask_to_stream, joined_text_content, unreadable_upstream
from smartflow.providers.openai import SHAPE_ERRORS, bad_request, openai_usage
from smartflow.providers.sse import sse_event
from smartflow.providers.sse_decoder import SSEChunkDecoder

NAMESPACE_SEPARATOR = "__"
MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
CLIENT_TOOL_TYPES = frozenset({"function", "custom", "namespace"})
TOOL_CALL_ITEMS = frozenset({"function_call", "custom_tool_call", "local_shell_call"})
TOOL_OUTPUT_ITEMS = frozenset({"function_call_output", "custom_tool_call_output",
                               "local_shell_call_output"})

INCOMPLETE_REASONS: dict[str, str] = {"length": "max_output_tokens",
                                      "content_filter": "content_filter"}
FINISH_FOR_INCOMPLETE: dict[str, str] = {"max_output_tokens": "length",
                                         "content_filter": "content_filter"}


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def input_items_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items (a string is one user message).

    Items keep their fields; a message written without ``type`` (the API's
    "easy" form) gets ``"type": "message"``."""
    raw = body.get("input")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": raw}]}]
    if not isinstance(raw, list):
        raise bad_request("input: expected a string or an array of items", "input")
    items: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise bad_request(f"input[{index}]: expected an object", "input")
        items.append(item if "type" in item else {"type": "message", **item})
    return items


# -- tool names ---------------------------------------------------------------


def hub_tool_name(name: str, namespace: str | None = None) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


@dataclass(frozen=True, slots=True)
class ToolNames:
    """How the hub function names of a request map back to its Responses tools."""

    namespaced: dict[str, tuple[str, str]]  # hub name -> (namespace, member name)
    custom: frozenset[str]  # hub names of custom (freeform) tools

    def item_fields(self, hub_name: str) -> dict[str, str]:
        """``name`` (and ``namespace``) of the item for a call of ``hub_name``."""
        found = self.namespaced.get(hub_name)
        if found is None:
            return {"name": hub_name}
        return {"name": found[1], "namespace": found[0]}


def tool_names_of(request: dict[str, Any]) -> ToolNames:
    namespaced: dict[str, tuple[str, str]] = {}
    custom: set[str] = set()
    tools = request.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "custom" and isinstance(tool.get("name"), str):
            custom.add(tool["name"])
        elif tool.get("type") == "namespace" and isinstance(tool.get("name"), str):
            members = tool.get("tools")
            for member in members if isinstance(members, list) else ():
                if isinstance(member, dict) and isinstance(member.get("name"), str):
                    name = hub_tool_name(member["name"], tool["name"])
                    namespaced[name] = (tool["name"], member["name"])
                    if member.get("type") == "custom":
                        custom.add(name)
    return ToolNames(namespaced, frozenset(custom))


# -- request: Responses -> hub ------------------------------------------------


def hosted_tool_error(kind: str) -> GatewayError:
    return GatewayError(400, f"tool_choice forces the hosted tool {kind!r}, which runs only on "
                             "OpenAI's platform and is not available for this model",
                        "invalid_request_error", "unsupported_hosted_tool", "tools")


def _hub_part(part: dict[str, Any], where: str) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise bad_request(f"{where}: only images given by image_url (a URL or data URL) "
                              "are supported for this model", where)
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file: dict[str, Any] = {}
        for name in ("file_data", "file_id", "filename"):
            if isinstance(part.get(name), str):
                file[name] = part[name]
        if "file_data" not in file and "file_id" not in file:
            raise bad_request(f"{where}: input_file needs file_data or file_id here", where)
        return {"type": "file", "file": file}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio")}
    raise bad_request(f"{where}: content part type {kind!r} is not supported here", where)


def _hub_message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise bad_request(f"{where}.role: expected user, assistant, system or developer", where)
    content = item.get("content")
    if content is None or isinstance(content, str):
        return {"role": role, "content": content or ""}
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: expected a string or a list of parts", where)
    parts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict):
            raise bad_request(f"{where}.content[{index}]: expected an object", where)
        converted = _hub_part(part, f"{where}.content[{index}]")
        if converted is not None:
            parts.append(converted)
    if role != "user":
        # assistant and system turns are text for every provider
        return {"role": role, "content": "".join(p["text"] for p in parts if p["type"] == "text")}
    return {"role": role, "content": joined_text_content(parts)}


def _hub_tool_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    kind = item.get("type")
    call_id = item.get("call_id") or item.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"{where}.call_id: required on {kind} items", where)
    namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
    if kind == "function_call":
        name = hub_tool_name(str(item.get("name", "")), namespace)
        arguments = item.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments or {}).decode()
    elif kind == "custom_tool_call":
        name = hub_tool_name(str(item.get("name", "")), namespace)
        arguments = orjson.dumps({"input": str(item.get("input", ""))}).decode()
    else:  # local_shell_call: the model's shell action, kept as a call for the history
        name = "local_shell"
        arguments = orjson.dumps(item.get("action") or {}).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_output_text(output: Any) -> str | list[dict[str, Any]]:
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        parts = [p for i, part in enumerate(output) if isinstance(part, dict)
                 if (p := _hub_part(part, f"output[{i}]")) is not None]
        return joined_text_content(parts)
    return orjson.dumps(output).decode()


def _hub_tool_message(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = item.get("call_id") or item.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"{where}.call_id: required on {item.get('type')} items", where)
    return {"role": "tool", "tool_call_id": call_id,
            "content": _tool_output_text(item.get("output"))}


def _hub_messages(items: Iterable[dict[str, Any]], messages: list[dict[str, Any]]) -> None:
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where}: expected an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_hub_message(item, where))
        elif kind in TOOL_CALL_ITEMS:
            call = _hub_tool_call(item, where)
            last = messages[-1] if messages else None
            # an assistant turn's text and the calls right after it are one chat message
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if last.get("content") == "":
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind in TOOL_OUTPUT_ITEMS:
            messages.append(_hub_tool_message(item, where))
        elif kind == "item_reference":
            raise bad_request(f"{where}: item_reference is not supported for this model; "
                              "send the item itself", "input")
        # else: reasoning, compaction and the records of hosted tool calls (web_search_call,
        # file_search_call, ...) are OpenAI's own; another model cannot use them.


def _custom_tool_parameters() -> dict[str, Any]:
    return {"type": "object", "properties": {"input": {"type": "string"}},
            "required": ["input"], "additionalProperties": False}


def _custom_description(tool: dict[str, Any]) -> str:
    description = str(tool.get("description") or "")
    fmt = tool.get("format")
    note = "Call with {\"input\": <the raw text input>}."
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        note += (f" The input must follow this {fmt.get('syntax', '')} grammar:\n"
                 f"{fmt.get('definition', '')}")
    return f"{description}\n\n{note}" if description else note


def _hub_function(tool: dict[str, Any], namespace: str | None, where: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request(f"{where}.name: required", "tools")
    function: dict[str, Any] = {"name": hub_tool_name(name, namespace)}
    if tool.get("type") == "custom":
        function["description"] = _custom_description(tool)
        function["parameters"] = _custom_tool_parameters()
    else:
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _hub_tools(tools: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(hub function tools, the hosted tool types that were dropped)."""
    if not isinstance(tools, list):
        raise bad_request("tools: expected an array", "tools")
    converted: list[dict[str, Any]] = []
    hosted: list[str] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise bad_request(f"{where}: expected an object", "tools")
        kind = tool.get("type")
        if kind in ("function", "custom"):
            converted.append(_hub_function(tool, None, where))
        elif kind == "namespace":
            namespace = tool.get("name")
            members = tool.get("tools")
            if not isinstance(namespace, str) or not namespace or not isinstance(members, list):
                raise bad_request(f"{where}: a namespace needs a name and a tools array",
                                  "tools")
            for number, member in enumerate(members):
                member_where = f"{where}.tools[{number}]"
                if not isinstance(member, dict) or member.get("type") not in ("function",
                                                                              "custom"):
                    raise bad_request(f"{member_where}: expected a function or custom tool",
                                      "tools")
                converted.append(_hub_function(member, namespace, member_where))
        else:
            hosted.append(str(kind))
    return converted, hosted


def _forced_name(choice: dict[str, Any]) -> str | None:
    name = choice.get("name")
    if not isinstance(name, str):
        return None
    namespace = choice.get("namespace")
    return hub_tool_name(name, namespace if isinstance(namespace, str) else None)


def _apply_tool_choice(choice: Any, request: dict[str, Any], hosted: list[str]) -> None:
    tools: list[dict[str, Any]] = request.get("tools", [])
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise bad_request("tool_choice: expected auto, none, required or an object",
                              "tool_choice")
        if choice == "required" and not tools and hosted:
            raise hosted_tool_error(hosted[0])
        if tools:
            request["tool_choice"] = choice
        return
    if not isinstance(choice, dict):
        raise bad_request("tool_choice: expected a string or an object", "tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = _forced_name(choice)
        if name is None:
            raise bad_request("tool_choice.name: required", "tool_choice")
        request["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif kind == "allowed_tools":
        allowed: list[Any] = choice["tools"] if isinstance(choice.get("tools"), list) else []
        names = {n for t in allowed if isinstance(t, dict) and t.get("type") in ("function",
                                                                                 "custom")
                 if (n := _forced_name(t)) is not None}
        mode = choice.get("mode", "auto")
        request["tools"] = [t for t in tools if t["function"]["name"] in names]
        if not request["tools"]:
            del request["tools"]
            hosted_allowed = [str(t.get("type")) for t in allowed if isinstance(t, dict)]
            if mode == "required" and hosted_allowed:
                raise hosted_tool_error(hosted_allowed[0])
            return
        request["tool_choice"] = "required" if mode == "required" else "auto"
    else:
        raise hosted_tool_error(str(kind))


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        spec: dict[str, Any] = {"name": fmt.get("name") or "response",
                                "schema": fmt.get("schema") or {}}
        for name in ("strict", "description"):
            if fmt.get(name) is not None:
                spec[name] = fmt[name]
        return {"type": "json_schema", "json_schema": spec}
    return None


def responses_request_to_openai(body: dict[str, Any], *,
                                prior_items: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A Responses request as a hub chat request; ``prior_items`` (the inputs and
    outputs of the responses it continues) go before its own input.

    Raises ProviderError(400) naming the offending field on bad input, and
    GatewayError(400, code ``unsupported_hosted_tool``) when tool_choice
    forces a tool only OpenAI can run.
    """
    try:
        return _responses_request_to_openai(body, prior_items)
    except SHAPE_ERRORS as exc:
        raise bad_request(f"the request has a field of the wrong type or shape "
                          f"({type(exc).__name__}: {exc})") from None


def _responses_request_to_openai(body: dict[str, Any],
                                 prior_items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise bad_request("instructions: expected a string", "instructions")
    _hub_messages([*prior_items, *input_items_of(body)], messages)
    request: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 1:
            raise bad_request("max_output_tokens: expected a positive integer",
                              "max_output_tokens")
        request["max_tokens"] = max_output
    for name in ("temperature", "top_p", "user"):
        if body.get(name) is not None:
            request[name] = body[name]
    hosted: list[str] = []
    if body.get("tools"):
        tools, hosted = _hub_tools(body["tools"])
        if tools:
            request["tools"] = tools
    _apply_tool_choice(body.get("tool_choice"), request, hosted)
    if "tools" in request and isinstance(body.get("parallel_tool_calls"), bool):
        request["parallel_tool_calls"] = body["parallel_tool_calls"]
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        request["response_format"] = response_format
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        request["reasoning_effort"] = reasoning["effort"]
    if body.get("stream"):
        ask_to_stream(request)
    return request


# -- response: hub -> Responses -----------------------------------------------


def responses_usage(usage: Any) -> dict[str, Any] | None:
    """A hub usage object as the Responses usage object."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details,
                                                                        dict) else 0
    reasoning = _count(completion_details.get("reasoning_tokens")) if isinstance(
        completion_details, dict) else 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def response_shell(response_id: str, model: str, request: dict[str, Any],
                   created_at: int) -> dict[str, Any]:
    """A ``response`` object with no output yet, echoing the request's parameters."""
    reasoning: dict[str, Any] = (request["reasoning"] if isinstance(request.get("reasoning"), dict)
                                 else {})
    return {
        "id": response_id, "object": "response", "created_at": created_at,
        "status": "in_progress", "background": False, "error": None,
        "incomplete_details": None, "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"), "model": model, "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default", "store": request.get("store", True),
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"), "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0), "truncation": request.get("truncation", "disabled"),
        "usage": None, "user": request.get("user"), "metadata": request.get("metadata") or {},
    }


def _close_response(response: dict[str, Any], finish: str | None, usage: Any) -> None:
    reason = INCOMPLETE_REASONS.get(finish or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["usage"] = responses_usage(usage)


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning",
            "summary": [{"type": "summary_text", "text": text}]}


def _custom_input(arguments: str) -> str:
    """The raw input of a custom tool call from the hub's ``{"input": ...}`` arguments."""
    try:
        parsed = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return arguments  # what the model wrote rather than nothing
    if isinstance(parsed, dict) and isinstance(parsed.get("input"), str):
        return parsed["input"]
    return arguments


def _call_item(names: ToolNames, item_id: str, call_id: str, hub_name: str,
               arguments: str, status: str) -> dict[str, Any]:
    if hub_name in names.custom:
        return {"id": item_id, "type": "custom_tool_call", "status": status, "call_id": call_id,
                **names.item_fields(hub_name), "input": _custom_input(arguments)}
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            **names.item_fields(hub_name), "arguments": arguments}


def openai_response_to_responses(completion: dict[str, Any], *, response_id: str, model: str,
                                 request: dict[str, Any]) -> dict[str, Any]:
    """A hub ``chat.completion`` as a Responses ``response`` object (first choice).

    Raises ProviderError(502) when the completion is not shaped like one."""
    try:
        return _openai_response_to_responses(completion, response_id, model, request)
    except SHAPE_ERRORS as exc:
        raise unreadable_upstream("completion", exc) from None


def _openai_response_to_responses(completion: dict[str, Any], response_id: str, model: str,
                                  request: dict[str, Any]) -> dict[str, Any]:
    created = completion.get("created")
    response = response_shell(response_id, model, request,
                              created if isinstance(created, int) else int(time.time()))
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    _close_response(response, finish, completion.get("usage"))
    item_status = "incomplete" if response["status"] == "incomplete" else "completed"
    output: list[dict[str, Any]] = response["output"]
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        output.append(_reasoning_item(_item_id("rs"), reasoning))
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
    if text:
        output.append(_message_item(_item_id("msg"), text, item_status))
    names = tool_names_of(request)
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments or {}).decode()
        output.append(_call_item(names, _item_id("fc"), str(call.get("id") or _item_id("call")),
                                 str(function.get("name", "")), arguments, "completed"))
    return response


# -- streaming: hub chunks -> Responses SSE -----------------------------------


_TEXT_DELTA_HEAD = (b'event: response.output_text.delta\ndata: '
                    b'{"type":"response.output_text.delta",')


@dataclass(slots=True)
class _OpenItem:
    """An output item being streamed: its place, id and what it has said so far."""

    output_index: int
    item_id: str
    kind: str  # "message" | "reasoning" | "call"
    pieces: list[str]
    call_id: str = ""
    hub_name: str = ""
    delta_head: bytes = b""  # a text delta event's bytes up to its delta (one per delta)


class ResponsesStreamEncoder:
    """Hub ``chat.completion.chunk`` dicts in, Responses SSE event bytes out.

    ``feed(chunk)`` per chunk, ``finish()`` at the end of the upstream stream,
    ``error(exc)`` for a mid-stream failure; ``response`` is the final
    ``response`` object once either has run. A text or reasoning item is
    closed when another item opens; tool call items stay open until the end,
    so parallel calls whose argument fragments interleave land in the right
    item. A custom tool's input is sent whole when its item closes: the hub
    streams it as fragments of JSON, not of the raw text.
    """

    def __init__(self, response_id: str, model: str, request: dict[str, Any]) -> None:
        self._response = response_shell(response_id, model, request, int(time.time()))
        self._names = tool_names_of(request)
        self._sequence = 0
        self._started = False
        self._final: dict[str, Any] | None = None
        self._items: list[dict[str, Any] | None] = []  # finished items by output_index
        self._flow: _OpenItem | None = None  # the open message or reasoning item
        self._calls: dict[int, _OpenItem] = {}  # hub tool index -> its open item
        self._finish: str | None = None
        self._usage: Any = None

    @property
    def response(self) -> dict[str, Any] | None:
        return self._final

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        event = {"type": kind, **payload, "sequence_number": self._sequence}
        self._sequence += 1
        return sse_event(kind, event)

    def _snapshot(self, status: str) -> dict[str, Any]:
        response = dict(self._response)
        response["status"] = status
        return response

    def start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return (self._event("response.created", {"response": self._snapshot("in_progress")})
                + self._event("response.in_progress",
                              {"response": self._snapshot("in_progress")}))

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """Events for one chunk; ProviderError(502) for a chunk not shaped like one."""
        if self._final is not None:
            return b""
        try:
            return self._feed(chunk)
        except SHAPE_ERRORS as exc:
            raise unreadable_upstream("chunk", exc) from None

    def _feed(self, chunk: dict[str, Any]) -> bytes:
        out = [self.start()]
        if "error" in chunk and not chunk.get("choices"):
            error = chunk.get("error")
            message = (str(error.get("message", "upstream error")) if isinstance(error, dict)
                       else str(error))
            out.append(self.error(ProviderError(500, message)))
            return b"".join(out)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # a response carries one answer
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                self._flow_delta("reasoning", reasoning, out)
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._flow_delta("message", text, out)
            for call in delta.get("tool_calls") or ():
                self._call_delta(call, out)
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return b"".join(out)

    def _new_index(self) -> int:
        self._items.append(None)
        return len(self._items) - 1

    def _flow_delta(self, kind: str, text: str, out: list[bytes]) -> None:
        item = self._flow
        if item is None or item.kind != kind:
            self._close_flow(out)
            item = _OpenItem(self._new_index(), _item_id("msg" if kind == "message" else "rs"),
                             kind, [])
            self._flow = item
            if kind == "message":
                out.append(self._event("response.output_item.added", {
                    "output_index": item.output_index,
                    "item": {"id": item.item_id, "type": "message", "status": "in_progress",
                             "role": "assistant", "content": []}}))
                out.append(self._event("response.content_part.added", {
                    **self._text_place(item),
                    "part": {"type": "output_text", "text": "", "annotations": [],
                             "logprobs": []}}))
            else:
                out.append(self._event("response.output_item.added", {
                    "output_index": item.output_index,
                    "item": {"id": item.item_id, "type": "reasoning", "summary": []}}))
                out.append(self._event("response.reasoning_summary_part.added", {
                    **self._summary_place(item), "part": {"type": "summary_text", "text": ""}}))
        item.pieces.append(text)
        if kind == "message":
            # The most frequent event by far: written from a per-item head, the
            # same bytes _event would write.
            if not item.delta_head:
                item.delta_head = _TEXT_DELTA_HEAD + orjson.dumps(
                    self._text_place(item))[1:-1] + b',"delta":'
            out.append(item.delta_head + orjson.dumps(text) + b',"logprobs":[],'
                       b'"sequence_number":' + str(self._sequence).encode() + b"}\n\n")
            self._sequence += 1
        else:
            out.append(self._event("response.reasoning_summary_text.delta",
                                   {**self._summary_place(item), "delta": text}))

    @staticmethod
    def _text_place(item: _OpenItem) -> dict[str, Any]:
        return {"item_id": item.item_id, "output_index": item.output_index, "content_index": 0}

    @staticmethod
    def _summary_place(item: _OpenItem) -> dict[str, Any]:
        return {"item_id": item.item_id, "output_index": item.output_index, "summary_index": 0}

    def _close_flow(self, out: list[bytes]) -> None:
        item, self._flow = self._flow, None
        if item is None:
            return
        text = "".join(item.pieces)
        if item.kind == "message":
            status = "incomplete" if self._finish in INCOMPLETE_REASONS else "completed"
            done = _message_item(item.item_id, text, status)
            out.append(self._event("response.output_text.done",
                                   {**self._text_place(item), "text": text, "logprobs": []}))
            out.append(self._event("response.content_part.done",
                                   {**self._text_place(item), "part": done["content"][0]}))
        else:
            done = _reasoning_item(item.item_id, text)
            out.append(self._event("response.reasoning_summary_text.done",
                                   {**self._summary_place(item), "text": text}))
            out.append(self._event("response.reasoning_summary_part.done",
                                   {**self._summary_place(item), "part": done["summary"][0]}))
        self._done_item(item, done, out)

    def _done_item(self, item: _OpenItem, done: dict[str, Any], out: list[bytes]) -> None:
        self._items[item.output_index] = done
        out.append(self._event("response.output_item.done",
                               {"output_index": item.output_index, "item": done}))

    def _call_delta(self, call: dict[str, Any], out: list[bytes]) -> None:
        index = int(call.get("index", 0))
        function = call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            self._close_flow(out)
            item = _OpenItem(self._new_index(), _item_id("fc"), "call", [],
                             str(call.get("id") or _item_id("call")),
                             str(function.get("name") or ""))
            self._calls[index] = item
            added = _call_item(self._names, item.item_id, item.call_id, item.hub_name, "",
                               "in_progress")
            out.append(self._event("response.output_item.added",
                                   {"output_index": item.output_index, "item": added}))
        elif function.get("name") and not item.hub_name:
            item.hub_name = str(function["name"])
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
            item.pieces.append(fragment)
            if item.hub_name not in self._names.custom:
                out.append(self._event("response.function_call_arguments.delta", {
                    "item_id": item.item_id, "output_index": item.output_index,
                    "delta": fragment}))

    def _close_call(self, item: _OpenItem, out: list[bytes]) -> None:
        done = _call_item(self._names, item.item_id, item.call_id, item.hub_name,
                          "".join(item.pieces), "completed")
        place = {"item_id": item.item_id, "output_index": item.output_index}
        if done["type"] == "custom_tool_call":
            if done["input"]:
                out.append(self._event("response.custom_tool_call_input.delta",
                                       {**place, "delta": done["input"]}))
            out.append(self._event("response.custom_tool_call_input.done",
                                   {**place, "input": done["input"]}))
        else:
            out.append(self._event("response.function_call_arguments.done",
                                   {**place, "name": done["name"],
                                    "arguments": done["arguments"]}))
        self._done_item(item, done, out)

    def finish(self) -> bytes:
        """Close open items and end the response (``response.completed`` or ``.incomplete``)."""
        if self._final is not None:
            return b""
        out = [self.start()]
        self._close_flow(out)
        for item in sorted(self._calls.values(), key=lambda open_item: open_item.output_index):
            self._close_call(item, out)
        response = self._snapshot("completed")
        response["output"] = [item for item in self._items if item is not None]
        _close_response(response, self._finish, self._usage)
        self._final = response
        kind = "response.incomplete" if response["status"] == "incomplete" else (
            "response.completed")
        out.append(self._event(kind, {"response": response}))
        return b"".join(out)

    def error(self, exc: GatewayError) -> bytes:
        """An ``error`` event then ``response.failed``; the stream is over after them."""
        if self._final is not None:
            return b""
        out = [self.start()]
        code = stream_error_code(exc)
        out.append(self._event("error", {"code": code, "message": exc.message,
                                         "param": exc.param}))
        response = self._snapshot("failed")
        response["output"] = [item for item in self._items if item is not None]
        response["error"] = {"code": code, "message": exc.message}
        response["usage"] = responses_usage(self._usage)
        self._final = response
        out.append(self._event("response.failed", {"response": response}))
        return b"".join(out)


def stream_error_code(exc: GatewayError) -> str:
    """The ``code`` of a Responses ``error`` event for ``exc``."""
    if exc.code:
        return exc.code
    if exc.status == 429:
        return "rate_limit_exceeded"
    if exc.status >= 500:
        return "server_error"
    return exc.type or error_type_for_status(exc.status)


# -- the reverse: hub request/response -> Responses, Responses SSE -> hub -----


def _responses_content(role: str, content: Any) -> str | list[dict[str, Any]]:
    if content is None:
        return ""
    if isinstance(content, str):
        return [{"type": "output_text" if role == "assistant" else "input_text",
                 "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "output_text" if role == "assistant" else "input_text",
                          "text": str(part.get("text", ""))})
        elif kind == "image_url":
            image = part.get("image_url") or {}
            url = image.get("url") if isinstance(image, dict) else image
            converted: dict[str, Any] = {"type": "input_image", "image_url": url}
            if isinstance(image, dict) and image.get("detail"):
                converted["detail"] = image["detail"]
            parts.append(converted)
        elif kind == "file":
            parts.append({"type": "input_file", **(part.get("file") or {})})
        elif kind == "input_audio":
            parts.append({"type": "input_audio", "input_audio": part.get("input_audio")})
    return parts


def _responses_input(messages: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}]: expected an object", "messages")
        role = message.get("role")
        if role == "tool":
            content = message.get("content")
            output = content if isinstance(content, str) else _responses_content("user",
                                                                                  content)
            items.append({"type": "function_call_output",
                          "call_id": str(message.get("tool_call_id", "")), "output": output})
            continue
        if role == "function":  # the deprecated single-function form
            items.append({"type": "function_call_output", "call_id": str(message.get("name")),
                          "output": str(message.get("content") or "")})
            continue
        content = message.get("content")
        if content or role != "assistant" or not message.get("tool_calls"):
            items.append({"type": "message", "role": str(role),
                          "content": _responses_content(str(role), content)})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            items.append({"type": "function_call", "call_id": str(call.get("id", "")),
                          "name": str(function.get("name", "")),
                          "arguments": str(function.get("arguments") or "")})
    return items


def _responses_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict):
        function = choice.get("function") or {}
        return {"type": "function", "name": function.get("name")}
    return choice


def openai_request_to_responses(hub: dict[str, Any]) -> dict[str, Any]:
    """A hub chat request as a Responses request (for a Responses-speaking upstream).

    System and developer messages stay input items in place (not
    ``instructions``); ``stop``, ``n`` and logprobs have no Responses
    equivalent and are dropped. ``store`` is false: the gateway keeps state."""
    request: dict[str, Any] = {"model": hub.get("model"),
                               "input": _responses_input(hub.get("messages")),
                               "store": False}
    max_tokens = hub.get("max_completion_tokens") or hub.get("max_tokens")
    if max_tokens is not None:
        request["max_output_tokens"] = max_tokens
    for name in ("temperature", "top_p", "user", "parallel_tool_calls", "metadata"):
        if hub.get(name) is not None:
            request[name] = hub[name]
    tools = []
    for tool in hub.get("tools") or ():
        function = tool.get("function") or {}
        converted: dict[str, Any] = {"type": "function", "name": function.get("name"),
                                     "parameters": function.get("parameters")}
        if function.get("description"):
            converted["description"] = function["description"]
        if isinstance(function.get("strict"), bool):
            converted["strict"] = function["strict"]
        tools.append(converted)
    if tools:
        request["tools"] = tools
    if hub.get("tool_choice") is not None:
        request["tool_choice"] = _responses_tool_choice(hub["tool_choice"])
    response_format = hub.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_object":
            request["text"] = {"format": {"type": "json_object"}}
        elif response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema") or {}
            request["text"] = {"format": {"type": "json_schema", **spec}}
    if isinstance(hub.get("reasoning_effort"), str):
        request["reasoning"] = {"effort": hub["reasoning_effort"]}
    if hub.get("stream"):
        request["stream"] = True
    return request


def usage_from_responses(usage: Any) -> Usage | None:
    """A Responses usage object as a ``Usage``; None when absent."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(_count(usage.get("input_tokens")), _count(usage.get("output_tokens")), cached)


def _hub_usage(usage: Any) -> dict[str, Any] | None:
    found = usage_from_responses(usage)
    if found is None:
        return None
    hub = openai_usage(found)
    details = usage.get("output_tokens_details")
    if isinstance(details, dict) and _count(details.get("reasoning_tokens")):
        hub["completion_tokens_details"] = {
            "reasoning_tokens": _count(details.get("reasoning_tokens"))}
    return hub


def _finish_of(response: dict[str, Any], has_calls: bool) -> str:
    if has_calls:
        return "tool_calls"
    details = response.get("incomplete_details")
    if response.get("status") == "incomplete" and isinstance(details, dict):
        return FINISH_FOR_INCOMPLETE.get(str(details.get("reason")), "length")
    return "stop"


def _hub_call_of_item(item: dict[str, Any]) -> dict[str, Any]:
    namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
    name = hub_tool_name(str(item.get("name", "")), namespace)
    if item.get("type") == "custom_tool_call":
        arguments = orjson.dumps({"input": str(item.get("input", ""))}).decode()
    else:
        arguments = str(item.get("arguments") or "")
    return {"id": str(item.get("call_id", "")), "type": "function",
            "function": {"name": name, "arguments": arguments}}


def responses_to_openai_response(resp: dict[str, Any]) -> dict[str, Any]:
    """A Responses ``response`` object as a hub ``chat.completion``.

    Raises ProviderError(502) when it is not shaped like one."""
    try:
        return _responses_to_openai_response(resp)
    except SHAPE_ERRORS as exc:
        raise unreadable_upstream("response", exc) from None


def _responses_to_openai_response(resp: dict[str, Any]) -> dict[str, Any]:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in resp.get("output") or ():
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "refusal":
                    texts.append(str(part.get("refusal", "")))
        elif kind in ("function_call", "custom_tool_call"):
            calls.append(_hub_call_of_item(item))
        elif kind == "reasoning":
            reasoning.extend(str(part.get("text", "")) for part in item.get("summary") or ())
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    completion: dict[str, Any] = {
        "id": str(resp.get("id", "")), "object": "chat.completion",
        "created": _count(resp.get("created_at")) or int(time.time()),
        "model": str(resp.get("model", "")),
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": _finish_of(resp, bool(calls))}]}
    usage = _hub_usage(resp.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion


def _provider_error(code: Any, message: Any) -> ProviderError:
    code_text = str(code) if code else None
    status = {"rate_limit_exceeded": 429, "context_length_exceeded": 400,
              "invalid_prompt": 400, "insufficient_quota": 429}.get(code_text or "", 500)
    return ProviderError(status, str(message or "the upstream response failed"), None,
                         code_text)


@dataclass(slots=True)
class _DecodedCall:
    tool_index: int
    is_custom: bool
    has_delta: bool = False


class ResponsesStreamDecoder(SSEChunkDecoder):
    """Responses SSE events in, hub ``chat.completion.chunk`` dicts out.

    Text comes from ``response.output_text.delta``, reasoning summaries become
    ``reasoning_content``, each function or custom tool call item becomes one
    hub tool call (a custom tool's raw input is sent as the JSON string of
    ``{"input": ...}``, escaped fragment by fragment). An item that arrives
    whole in ``response.output_item.done`` without deltas is still decoded.
    ``response.failed`` and ``error`` events raise ``ProviderError``.
    """

    def __init__(self, model: str = "", *, include_usage: bool = True) -> None:
        super().__init__("openai-responses", model, include_usage=include_usage, chunk_id="")
        self._calls: dict[str, _DecodedCall] = {}  # item id and output index -> call
        self._ncalls = 0
        self._text_items: set[str] = set()  # message items that sent deltas
        self._finished = False

    def _key(self, event: dict[str, Any]) -> str:
        return str(event.get("item_id") or event.get("output_index", ""))

    def _on_event(self, data: str, out: list[dict[str, Any]]) -> None:
        if not data or data == "[DONE]":
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return  # not an event we can read; Responses events are JSON
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            self._start(out)
            self._text_items.add(self._key(event))
            out.append(self._chunk({"content": str(event.get("delta", ""))}))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            self._start(out)
            out.append(self._chunk({"reasoning_content": str(event.get("delta", ""))}))
        elif kind == "response.function_call_arguments.delta":
            self._call_fragment(event, str(event.get("delta", "")), out)
        elif kind == "response.custom_tool_call_input.delta":
            self._call_fragment(event, orjson.dumps(str(event.get("delta", ""))).decode()[1:-1],
                                out)
        elif kind == "response.output_item.added":
            self._item_added(event, out)
        elif kind == "response.output_item.done":
            self._item_done(event, out)
        elif kind in ("response.created", "response.in_progress"):
            response = event.get("response") or {}
            self._id = str(response.get("id") or self._id)
            self._start(out)
        elif kind in ("response.completed", "response.incomplete"):
            self._complete(event.get("response") or {}, out)
        elif kind == "response.failed":
            error = (event.get("response") or {}).get("error") or {}
            self.error = _provider_error(error.get("code"), error.get("message"))
        elif kind == "error":
            self.error = _provider_error(event.get("code"), event.get("message"))

    def _item_added(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        item = event.get("item") or {}
        if item.get("type") not in ("function_call", "custom_tool_call"):
            return
        self._start(out)
        is_custom = item.get("type") == "custom_tool_call"
        call = _DecodedCall(self._ncalls, is_custom)
        self._ncalls += 1
        self._calls[str(item.get("id") or event.get("output_index", ""))] = call
        self._calls.setdefault(str(event.get("output_index", "")), call)
        hub_call = _hub_call_of_item(item)
        # a custom call's arguments open here and close when its item is done
        hub_call["function"]["arguments"] = '{"input":"' if is_custom else ""
        out.append(self._chunk({"tool_calls": [{"index": call.tool_index, **hub_call}]}))

    def _call_fragment(self, event: dict[str, Any], fragment: str,
                       out: list[dict[str, Any]]) -> None:
        call = self._calls.get(self._key(event)) or self._calls.get(
            str(event.get("output_index", "")))
        if call is None or not fragment:
            return
        call.has_delta = True
        out.append(self._chunk({"tool_calls": [{"index": call.tool_index,
                                                "function": {"arguments": fragment}}]}))

    def _item_done(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        item = event.get("item") or {}
        kind = item.get("type")
        if kind == "message" and str(item.get("id")) not in self._text_items:
            text = "".join(str(part.get("text", "")) for part in item.get("content") or ()
                           if part.get("type") == "output_text")
            if text:
                self._start(out)
                out.append(self._chunk({"content": text}))
            return
        if kind not in ("function_call", "custom_tool_call"):
            return
        call = self._calls.get(str(item.get("id"))) or self._calls.get(
            str(event.get("output_index", "")))
        if call is None:  # no ``added`` event came: the whole call is here
            self._item_added(event, out)
            call = self._calls[str(item.get("id") or event.get("output_index", ""))]
        rest = ""
        if not call.has_delta:
            rest = (orjson.dumps(str(item.get("input", ""))).decode()[1:-1] if call.is_custom
                    else str(item.get("arguments") or ""))
        if call.is_custom:
            rest += '"}'
        if rest:
            out.append(self._chunk({"tool_calls": [{"index": call.tool_index,
                                                    "function": {"arguments": rest}}]}))
        call.has_delta = True

    def _complete(self, response: dict[str, Any], out: list[dict[str, Any]]) -> None:
        if self._finished:
            return
        self._finished = True
        self._start(out)
        self.usage = usage_from_responses(response.get("usage")) or self.usage
        self.finish_reason = _finish_of(response, self._ncalls > 0)
        out.append(self._chunk({}, self.finish_reason))
        if self._include_usage and self.usage is not None:
            out.append(self._usage_chunk(self.usage))
