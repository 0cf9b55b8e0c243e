"""The Anthropic Messages API in front of a non-Anthropic model.

The gateway's ``POST /v1/messages`` may route to a model whose adapter speaks
OpenAI shapes. This module translates that direction: an Anthropic request
into an OpenAI chat request, an OpenAI completion back into an Anthropic
message, OpenAI stream chunks into Anthropic SSE events, and OpenAI-shaped
errors into Anthropic's error shape. All sans-IO.

Anthropic-only features with no OpenAI equivalent (``top_k``, ``thinking``,
cache_control markers, server tools such as web search) are dropped or
rejected as noted at each place.
"""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.dialects.anthropic_errors import anthropic_error_body
from smartflow.gateway_error import GatewayError
from smartflow.providers.hub import (
    arguments_object,
    ask_to_stream,
    joined_text_content,
    unreadable_upstream,
)
from smartflow.providers.openai import SHAPE_ERRORS, bad_request
from smartflow.providers.sse import sse_event as named_sse_event

FINISH_TO_STOP_REASON: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


PING_EVENT = b'event: ping\ndata: {"type":"ping"}\n\n'


# -- request: Anthropic -> OpenAI ---------------------------------------------


def _data_url(source: dict[str, Any], where: str) -> str:
    kind = source.get("type")
    if kind == "base64":
        media_type = source.get("media_type", "application/octet-stream")
        return f"data:{media_type};base64,{source.get('data', '')}"
    if kind == "url":
        url = source.get("url")
        if isinstance(url, str):
            return url
    raise bad_request(f"{where}.source: expected a base64 or url source", where)


def _text_of_blocks(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}: expected a string or a list of blocks", where)
    pieces: list[str] = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            pieces.append(str(block.get("text", "")))
    return "".join(pieces)


def _openai_part(block: dict[str, Any], where: str) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    if kind == "image":
        return {"type": "image_url",
                "image_url": {"url": _data_url(block.get("source") or {}, where)}}
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") == "text":
            return {"type": "text", "text": str(source.get("data", ""))}
        return {"type": "file", "file": {"file_data": _data_url(source, where),
                                         "filename": str(block.get("title") or "document")}}
    if kind in ("thinking", "redacted_thinking"):
        return None  # the other model cannot use Anthropic's signed reasoning
    raise bad_request(f"{where}: content block type {kind!r} is not supported here", where)


def _tool_result_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"{where}.tool_use_id: required on tool_result blocks", where)
    content = block.get("content")
    text: str | list[dict[str, Any]]
    if isinstance(content, list):
        parts = [p for i, b in enumerate(content) if isinstance(b, dict)
                 if (p := _openai_part(b, f"{where}.content[{i}]")) is not None]
        text = joined_text_content(parts)
    else:
        text = "" if content is None else str(content)
    if block.get("is_error") and isinstance(text, str):
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _user_messages(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}: expected a string or a list of blocks", where)
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        block_where = f"{where}[{index}]"
        if not isinstance(block, dict):
            raise bad_request(f"{block_where}: expected an object", block_where)
        if block.get("type") == "tool_result":
            tool_messages.append(_tool_result_message(block, block_where))
            continue
        part = _openai_part(block, block_where)
        if part is not None:
            parts.append(part)
    # OpenAI wants tool answers right after the assistant turn that asked
    messages = tool_messages
    if parts:
        messages.append({"role": "user", "content": joined_text_content(parts)})
    return messages


def _assistant_message(content: Any, where: str) -> dict[str, Any] | None:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise bad_request(f"{where}: expected a string or a list of blocks", where)
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        block_where = f"{where}[{index}]"
        if not isinstance(block, dict):
            raise bad_request(f"{block_where}: expected an object", block_where)
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            tool_calls.append({
                "id": str(block.get("id", "")),
                "type": "function",
                "function": {"name": str(block.get("name", "")),
                             "arguments": orjson.dumps(block.get("input") or {}).decode()},
            })
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise bad_request(f"{block_where}: block type {kind!r} is not supported in an "
                              "assistant turn here", block_where)
    if not texts and not tool_calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad_request("tools: expected a list", "tools")
    converted: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise bad_request(f"{where}: expected an object with a name", where)
        tool_type = tool.get("type")
        if tool_type not in (None, "custom") or "input_schema" not in tool:
            raise bad_request(f"{where}: server tool {tool.get('name')!r} is only available on "
                              "Anthropic models", where)
        function: dict[str, Any] = {"name": tool["name"],
                                    "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description"):
            function["description"] = tool["description"]
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: Any) -> tuple[Any, bool]:
    """(OpenAI tool_choice, parallel tool calls allowed)."""
    if not isinstance(choice, dict):
        raise bad_request("tool_choice: expected an object", "tool_choice")
    kind = choice.get("type")
    parallel = not choice.get("disable_parallel_tool_use", False)
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise bad_request("tool_choice.type: expected auto, any, tool or none", "tool_choice")


def anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request dict as an OpenAI chat request dict.

    Raises ProviderError(400) naming the offending field on bad input.
    """
    try:
        return _anthropic_request_to_openai(body)
    except SHAPE_ERRORS as exc:
        raise bad_request(f"the request has a field of the wrong type or shape "
                          f"({type(exc).__name__}: {exc})") from None


def _anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise bad_request("messages: expected a non-empty list", "messages")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of_blocks(system, "system")})
    for index, message in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where}: expected an object", where)
        role = message.get("role")
        content = message.get("content")
        if role == "user":
            messages.extend(_user_messages(content, f"{where}.content"))
        elif role == "assistant":
            assistant = _assistant_message(content, f"{where}.content")
            if assistant is not None:
                messages.append(assistant)
        elif role == "system":
            # Claude Code sends system messages mid-conversation (under its
            # mid-conversation-system beta); OpenAI's format has them too.
            messages.append({"role": "system",
                             "content": _text_of_blocks(content, f"{where}.content")})
        else:
            raise bad_request(f"{where}.role: expected user, assistant or system", where)
    request: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise bad_request("max_tokens: expected a positive integer", "max_tokens")
        request["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            request[name] = body[name]
    stop = body.get("stop_sequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
            raise bad_request("stop_sequences: expected a list of strings", "stop_sequences")
        request["stop"] = stop
    tools = body.get("tools")
    if tools:
        request["tools"] = _tools(tools)
        if body.get("tool_choice") is not None:
            choice, parallel = _tool_choice(body["tool_choice"])
            request["tool_choice"] = choice
            if not parallel:
                request["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        request["user"] = metadata["user_id"]
    if body.get("stream"):
        ask_to_stream(request)
    return request


# -- response: OpenAI -> Anthropic --------------------------------------------


def _anthropic_usage(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    prompt = int(usage.get("prompt_tokens") or 0)
    return {"input_tokens": max(prompt - cached, 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0}


def _message_id(openai_id: Any) -> str:
    text = str(openai_id or "")
    return text if text.startswith("msg_") else f"msg_{text}" if text else "msg_smartflow"


def openai_response_to_anthropic(completion: dict[str, Any], *,
                                 model: str | None = None) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` dict as an Anthropic ``message`` dict (first choice).

    Raises ProviderError(502) when the completion is not shaped like one."""
    try:
        return _openai_response_to_anthropic(completion, model)
    except SHAPE_ERRORS as exc:
        raise unreadable_upstream("completion", exc) from None


def _openai_response_to_anthropic(completion: dict[str, Any],
                                  model: str | None) -> dict[str, Any]:
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": str(call.get("id", "")),
                        "name": str(function.get("name", "")),
                        "input": arguments_object(function.get("arguments"))})
    finish = choice.get("finish_reason") or "stop"
    stop_reason = FINISH_TO_STOP_REASON.get(finish, "end_turn")
    if any(block["type"] == "tool_use" for block in content):
        stop_reason = "tool_use"
    return {
        "id": _message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model or completion.get("model") or "",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _anthropic_usage(completion.get("usage")),
    }


# -- streaming: OpenAI chunks -> Anthropic SSE --------------------------------


def sse_event(payload: dict[str, Any]) -> bytes:
    """One Anthropic SSE frame: ``event: <type>`` then the JSON ``data:`` line."""
    return named_sse_event(payload["type"], payload)


class AnthropicStreamEncoder:
    """OpenAI ``chat.completion.chunk`` dicts in, Anthropic SSE event bytes out.

    Use: ``start()`` once (optional: ``feed`` starts the message when needed),
    ``feed(chunk)`` per chunk, ``finish()`` at the end of the upstream stream;
    ``ping()`` for keep-alives and ``error(exc)`` for a mid-stream failure.
    Text and reasoning blocks are closed when another block opens; tool_use
    blocks stay open until the end, so parallel tool calls whose argument
    fragments interleave still land in the right block.
    """

    def __init__(self, model: str, *, message_id: str | None = None,
                 input_tokens: int = 0) -> None:
        self._model = model
        self._message_id = message_id
        self._input_tokens = input_tokens  # an estimate for message_start; the real count
        # (from the upstream's usage chunk) goes in message_delta
        self._started = False
        self._finished = False
        self._next_block = 0
        self._open_flow_block: tuple[int, str] | None = None  # (index, "text"|"thinking")
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool index -> block index
        self._stop_reason: str | None = None
        self._usage: dict[str, int] | None = None

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self._message_id or "msg_smartflow", "type": "message", "role": "assistant",
            "model": self._model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0}}
        return sse_event({"type": "message_start", "message": message}) + PING_EVENT

    @staticmethod
    def ping() -> bytes:
        return PING_EVENT

    def _close_flow_block(self, out: list[bytes]) -> None:
        if self._open_flow_block is not None:
            out.append(sse_event({"type": "content_block_stop",
                                  "index": self._open_flow_block[0]}))
            self._open_flow_block = None

    def _flow_block(self, kind: str, out: list[bytes]) -> int:
        if self._open_flow_block is not None and self._open_flow_block[1] == kind:
            return self._open_flow_block[0]
        self._close_flow_block(out)
        index = self._next_block
        self._next_block += 1
        block: dict[str, Any] = ({"type": "text", "text": ""} if kind == "text"
                                 else {"type": "thinking", "thinking": "", "signature": ""})
        out.append(sse_event({"type": "content_block_start", "index": index,
                              "content_block": block}))
        self._open_flow_block = (index, kind)
        return index

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """Events for one chunk; ProviderError(502) for a chunk not shaped like one."""
        if self._finished:
            return b""
        try:
            return self._feed(chunk)
        except SHAPE_ERRORS as exc:
            raise unreadable_upstream("completion", exc) from None

    def _feed(self, chunk: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if not self._started:
            if self._message_id is None and chunk.get("id"):
                self._message_id = _message_id(chunk["id"])
            out.append(self.start())
        if "error" in chunk and not chunk.get("choices"):
            out.append(self._error_bytes(chunk))
            self._finished = True
            return b"".join(out)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = _anthropic_usage(usage)
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # Anthropic messages carry one answer
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if reasoning:
                index = self._flow_block("thinking", out)
                out.append(sse_event({"type": "content_block_delta", "index": index,
                                      "delta": {"type": "thinking_delta", "thinking": reasoning}}))
            text = delta.get("content")
            if text:
                index = self._flow_block("text", out)
                out.append(sse_event({"type": "content_block_delta", "index": index,
                                      "delta": {"type": "text_delta", "text": text}}))
            for call in delta.get("tool_calls") or ():
                self._tool_delta(call, out)
            finish = choice.get("finish_reason")
            if finish:
                self._stop_reason = FINISH_TO_STOP_REASON.get(finish, "end_turn")
        return b"".join(out)

    def _tool_delta(self, call: dict[str, Any], out: list[bytes]) -> None:
        tool_index = int(call.get("index", 0))
        function = call.get("function") or {}
        block_index = self._tool_blocks.get(tool_index)
        if block_index is None:
            self._close_flow_block(out)
            block_index = self._next_block
            self._next_block += 1
            self._tool_blocks[tool_index] = block_index
            out.append(sse_event({"type": "content_block_start", "index": block_index,
                                  "content_block": {"type": "tool_use",
                                                    "id": str(call.get("id") or
                                                              f"toolu_{tool_index}"),
                                                    "name": str(function.get("name") or ""),
                                                    "input": {}}}))
        fragment = function.get("arguments")
        if fragment:
            out.append(sse_event({"type": "content_block_delta", "index": block_index,
                                  "delta": {"type": "input_json_delta",
                                            "partial_json": fragment}}))

    def finish(self) -> bytes:
        """Close open blocks and end the message (message_delta, message_stop)."""
        if self._finished:
            return b""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        self._close_flow_block(out)
        for block_index in sorted(self._tool_blocks.values()):
            out.append(sse_event({"type": "content_block_stop", "index": block_index}))
        stop_reason = self._stop_reason or "end_turn"
        if self._tool_blocks:
            stop_reason = "tool_use"
        usage = self._usage or {"input_tokens": self._input_tokens, "output_tokens": 0}
        out.append(sse_event({"type": "message_delta",
                              "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                              "usage": usage}))
        out.append(sse_event({"type": "message_stop"}))
        self._finished = True
        return b"".join(out)

    def _error_bytes(self, chunk: dict[str, Any]) -> bytes:
        error = chunk.get("error") or {}
        message = str(error.get("message", "upstream error")) if isinstance(error, dict) else str(
            error)
        status = 500
        if isinstance(error, dict) and error.get("type") == "rate_limit_error":
            status = 429
        return sse_event(anthropic_error_body(status, message))

    def error(self, exc: GatewayError) -> bytes:
        """A mid-stream ``error`` event; the stream is over after it."""
        self._finished = True
        prefix = b"" if self._started else self.start()
        return prefix + sse_event(anthropic_error_from_provider_error(exc)[1])


# -- errors -------------------------------------------------------------------


def anthropic_error_from_provider_error(exc: GatewayError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, Anthropic error body) for an OpenAI-shaped ProviderError."""
    return exc.status, anthropic_error_body(exc.status, exc.message)


def openai_error_to_anthropic(status: int, body: bytes | dict[str, Any]) -> dict[str, Any]:
    """An OpenAI error body (bytes or parsed) as Anthropic's ``{"type":"error",...}``."""
    payload: Any = body
    if isinstance(body, bytes):
        try:
            payload = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            payload = {"error": {"message": body[:500].decode("utf-8", "replace")}}
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or f"upstream returned HTTP {status}")
    elif isinstance(error, str):
        message = error
    else:
        message = f"upstream returned HTTP {status}"
    return anthropic_error_body(status, message)


# -- count_tokens for models without a tokenizer endpoint --------------------


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """A rough ``input_tokens`` for ``POST /v1/messages/count_tokens`` routed to a
    model with no counting endpoint: about four bytes of JSON text a token
    (clients such as Claude Code use it to pace compaction, not to bill)."""
    if not isinstance(body, dict):
        return 1
    counted = [body.get("system"), body.get("messages"), body.get("tools")]
    return max(1, len(orjson.dumps(counted)) // 4)
