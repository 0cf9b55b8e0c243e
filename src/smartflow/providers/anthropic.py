"""Anthropic Messages API adapter: OpenAI chat requests in, Anthropic wire out.

Translation rules worth knowing (the rest is mechanical):

* Every ``system``/``developer`` message becomes part of the top-level
  ``system`` prompt, in order; Anthropic has no mid-conversation system turn.
* ``tool`` messages become ``tool_result`` blocks inside a *user* message, and
  consecutive messages of the same role are merged, because Anthropic requires
  strictly alternating turns and all results of one tool round in one message.
* ``max_tokens`` is mandatory upstream: ``max_completion_tokens``, then
  ``max_tokens``, then ``target.options["max_tokens"]``, then 4096.
* ``temperature`` is clamped to Anthropic's 0..1 range (OpenAI allows 0..2).
* ``response_format`` has no Anthropic equivalent; a JSON schema or JSON-object
  request is turned into a system-prompt instruction (best effort).
* The ``model`` field of translated responses is the public model name the
  caller asked for, not the upstream id.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from smartflow.providers.base import (
    Headers,
    ProviderError,
    Target,
    UnsupportedOperation,
    UpstreamCall,
    Usage,
    join_url,
)
from smartflow.providers.openai import (
    SHAPE_ERRORS,
    bad_request,
    bad_shape,
    call_headers,
    is_context_length_message,
    json_object,
    openai_usage,
    retry_after_from,
    stop_sequences,
)
from smartflow.providers.sse_decoder import SSEChunkDecoder

ANTHROPIC_API_BASE = "https://api.anthropic.com"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

STOP_REASON_TO_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}



# -- request: OpenAI -> Anthropic ---------------------------------------------


def _text_of(content: Any, where: str) -> str:
    """Plain text of an OpenAI content value (string or list of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces: list[str] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                pieces.append(str(part.get("text", "")))
            elif isinstance(part, str):
                pieces.append(part)
            else:
                raise bad_request(f"{where}: only text parts are allowed here", where)
        return "".join(pieces)
    raise bad_request(f"{where}: content must be a string or a list of parts", where)


def _image_source(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep or ";base64" not in header:
            raise bad_request(f"{where}: data URLs must be base64-encoded", where)
        media_type = header[5:].split(";", 1)[0] or "image/png"
        return {"type": "base64", "media_type": media_type, "data": data}
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise bad_request(f"{where}: image_url must be a data: or http(s) URL", where)


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or a list of parts", where)
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        part_where = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise bad_request(f"{part_where}: each content part must be an object", part_where)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"{part_where}.text: expected a string", part_where)
            if text:
                blocks.append(_with_cache_control({"type": "text", "text": text}, part))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise bad_request(f"{part_where}.image_url.url: expected a string", part_where)
            blocks.append({"type": "image", "source": _image_source(url, part_where)})
        elif kind == "file":
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            if not isinstance(data, str) or not data.startswith("data:"):
                raise bad_request(f"{part_where}.file.file_data: expected a base64 data URL",
                                  part_where)
            source = _image_source(data, part_where)
            blocks.append({"type": "document", "source": source})
        else:
            raise bad_request(
                f"{part_where}: content part type {kind!r} is not supported by Anthropic",
                part_where)
    return blocks


def _with_cache_control(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    # clients that know Anthropic mark prompt-cache breakpoints on OpenAI parts
    cache_control = part.get("cache_control")
    if isinstance(cache_control, dict):
        block["cache_control"] = cache_control
    return block


def _system_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, list):
        blocks = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad_request(f"{where}: only text parts are allowed here", where)
            if part.get("text"):
                blocks.append(_with_cache_control({"type": "text", "text": str(part["text"])},
                                                  part))
        return blocks
    text = _text_of(content, where)
    return [{"type": "text", "text": text}] if text else []


def _tool_arguments(arguments: Any, where: str) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        raise bad_request(f"{where}: arguments must be a JSON string", where)
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise bad_request(f"{where}: arguments are not valid JSON", where) from None
    if not isinstance(parsed, dict):
        raise bad_request(f"{where}: arguments must be a JSON object", where)
    return parsed


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text_of(message.get("content"), f"{where}.content")
    if text:
        blocks.append({"type": "text", "text": text})
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise bad_request(f"{where}.tool_calls: expected a list", where)
    for index, call in enumerate(tool_calls):
        call_where = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"{call_where}.function.name: expected a string", call_where)
        blocks.append({
            "type": "tool_use",
            "id": str(call.get("id") or f"toolu_{index}"),
            "name": function["name"],
            "input": _tool_arguments(function.get("arguments"), f"{call_where}.function"),
        })
    return blocks


def _tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"{where}.tool_call_id: required on tool messages", where)
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, list):
        block["content"] = _user_blocks(content, f"{where}.content")
    else:
        block["content"] = _text_of(content, f"{where}.content")
    return block


def _system_and_messages(
    messages: Any,
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """(text blocks of each system message, Anthropic turns)."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: expected a non-empty list", "messages")
    system: list[list[dict[str, Any]]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where}: expected an object", where)
        role = message.get("role")
        if role in ("system", "developer"):
            blocks = _system_blocks(message.get("content"), f"{where}.content")
            if blocks:
                system.append(blocks)
            continue
        if role == "user":
            anthropic_role = "user"
            blocks = _user_blocks(message.get("content"), f"{where}.content")
        elif role == "assistant":
            anthropic_role, blocks = "assistant", _assistant_blocks(message, where)
        elif role == "tool":
            anthropic_role, blocks = "user", [_tool_result_block(message, where)]
        else:
            raise bad_request(f"{where}.role: {role!r} is not supported", where)
        if not blocks:
            continue  # Anthropic rejects empty turns; an empty message carries no meaning
        if turns and turns[-1]["role"] == anthropic_role:
            previous = turns[-1]["content"]
            if blocks[0]["type"] == "tool_result":
                # tool results must lead the user turn that answers the tool round
                split = next((i for i, b in enumerate(previous) if b["type"] != "tool_result"),
                             len(previous))
                previous[split:split] = blocks
            else:
                previous.extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    return system, turns


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad_request("tools: expected a list", "tools")
    converted: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(
                function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"{where}: only function tools with a name are supported", where)
        entry: dict[str, Any] = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        converted.append(entry)
    return converted


def _tool_choice(choice: Any, parallel_tool_calls: Any) -> dict[str, Any] | None:
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        result = {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise bad_request("tool_choice: expected auto, none, required or a named function",
                          "tool_choice")
    if parallel_tool_calls is False:
        result = dict(result or {"type": "auto"})
        if result["type"] != "none":
            result["disable_parallel_tool_use"] = True
    return result


def _response_format_instruction(response_format: Any) -> str | None:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "Respond only with a single valid JSON object, and nothing else."
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return ("Respond only with a single valid JSON value that conforms to this JSON "
                "schema, and nothing else:\n" + orjson.dumps(schema or {}).decode())
    return None


def openai_to_anthropic_request(body: dict[str, Any], model: str, *,
                                default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """An OpenAI chat request dict as an Anthropic Messages request dict.

    Raises ProviderError(400) naming the problem for a malformed request."""
    try:
        return _openai_to_anthropic_request(body, model, default_max_tokens=default_max_tokens)
    except SHAPE_ERRORS as exc:
        raise bad_request(f"the request has a field of the wrong type or shape "
                          f"({type(exc).__name__}: {exc})") from None


def _openai_to_anthropic_request(body: dict[str, Any], model: str, *,
                                default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """An OpenAI chat request dict as an Anthropic Messages request dict."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise bad_request("n: Anthropic models return one choice; n must be 1", "n")
    system, turns = _system_and_messages(body.get("messages"))
    instruction = _response_format_instruction(body.get("response_format"))
    if instruction:
        system.append([{"type": "text", "text": instruction}])
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    request: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        if any("cache_control" in block for blocks in system for block in blocks):
            request["system"] = [block for blocks in system for block in blocks]
        else:
            request["system"] = "\n\n".join("".join(b["text"] for b in blocks)
                                             for blocks in system)
    temperature = body.get("temperature")
    if temperature is not None:
        request["temperature"] = min(float(temperature), 1.0)
    if body.get("top_p") is not None:
        request["top_p"] = body["top_p"]
    if body.get("top_k") is not None:
        request["top_k"] = body["top_k"]
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = stop_sequences(stop)
    tools = body.get("tools")
    if tools:
        request["tools"] = _tools(tools)
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            request["tool_choice"] = choice
    user = body.get("user")
    if isinstance(user, str) and user:
        request["metadata"] = {"user_id": user}
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        request["thinking"] = thinking
    if body.get("stream"):
        request["stream"] = True
    return request


# -- response: Anthropic -> OpenAI --------------------------------------------


def usage_from_anthropic(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cache_read + cache_write
    return Usage(prompt, int(usage.get("output_tokens") or 0), cache_read)


def anthropic_to_openai_response(message: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic ``message`` dict as an OpenAI ``chat.completion`` dict."""
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            tool_calls.append({
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""),
                             "arguments": orjson.dumps(block.get("input") or {}).decode()},
            })
        elif kind == "thinking":
            reasoning.append(block.get("thinking", ""))
    reply: dict[str, Any] = {"role": "assistant",
                             "content": "".join(texts) if texts or not tool_calls else None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)
    finish = STOP_REASON_TO_FINISH.get(message.get("stop_reason") or "end_turn", "stop")
    return {
        "id": message.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
        "usage": openai_usage(usage_from_anthropic(message.get("usage"))),
    }


# -- streaming ----------------------------------------------------------------


class AnthropicStreamDecoder(SSEChunkDecoder):
    """Anthropic SSE events in, OpenAI ``chat.completion.chunk`` dicts out.

    A mid-stream ``error`` event raises ``ProviderError`` (as the OpenAI decoder
    does); chunks decoded before it in the same ``feed`` are returned first and
    the error is raised by the next ``feed``/``close``.
    """

    def __init__(self, model: str, *, include_usage: bool) -> None:
        super().__init__("anthropic", model, include_usage=include_usage, chunk_id="")
        self._tool_index_by_block: dict[int, int] = {}
        self._finished = False
        self._usage_sent = False
        self._raw_usage: dict[str, Any] = {}

    def _on_close(self, out: list[dict[str, Any]]) -> None:
        self._send_usage(out)

    def _send_usage(self, out: list[dict[str, Any]]) -> None:
        if self._include_usage and self.usage is not None and not self._usage_sent:
            self._usage_sent = True
            out.append(self._usage_chunk(self.usage))

    def _on_event(self, data: str, out: list[dict[str, Any]]) -> None:
        if not data:
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return  # not an event we can read; Anthropic only sends JSON payloads
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                self._start(out)
                out.append(self._chunk({"content": delta.get("text", "")}))
            elif delta_type == "input_json_delta":
                tool_index = self._tool_index_by_block.get(event.get("index", 0))
                fragment = delta.get("partial_json", "")
                if tool_index is not None and fragment:
                    out.append(self._chunk({"tool_calls": [
                        {"index": tool_index, "function": {"arguments": fragment}}]}))
            elif delta_type == "thinking_delta":
                self._start(out)
                out.append(self._chunk({"reasoning_content": delta.get("thinking", "")}))
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            block_type = block.get("type")
            self._start(out)
            if block_type == "tool_use":
                tool_index = len(self._tool_index_by_block)
                self._tool_index_by_block[event.get("index", 0)] = tool_index
                out.append(self._chunk({"tool_calls": [{
                    "index": tool_index, "id": block.get("id", ""), "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""}}]}))
                initial = block.get("input")
                if initial:  # Anthropic sends {} here and the input as deltas; be safe
                    out.append(self._chunk({"tool_calls": [{"index": tool_index, "function": {
                        "arguments": orjson.dumps(initial).decode()}}]}))
            elif block_type == "text" and block.get("text"):
                out.append(self._chunk({"content": block["text"]}))
        elif kind == "message_start":
            message = event.get("message") or {}
            self._id = message.get("id", "") or self._id
            self._raw_usage.update(message.get("usage") or {})
            self.usage = usage_from_anthropic(self._raw_usage)
            self._start(out)
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._raw_usage.update({k: v for k, v in usage.items() if v is not None})
                self.usage = usage_from_anthropic(self._raw_usage)
            stop_reason = delta.get("stop_reason")
            if stop_reason and not self._finished:
                self._finished = True
                self._start(out)
                self.finish_reason = STOP_REASON_TO_FINISH.get(stop_reason, "stop")
                out.append(self._chunk({}, self.finish_reason))
        elif kind == "message_stop":
            self._send_usage(out)
        elif kind == "error" and self.error is None:
            self.error = _error_from_payload(event, 500, None)


# -- errors -------------------------------------------------------------------


def _error_from_payload(payload: Any, status: int, retry_after: str | None) -> ProviderError:
    error = payload.get("error") if isinstance(payload, dict) else None
    anthropic_type = ""
    message = ""
    if isinstance(error, dict):
        anthropic_type = str(error.get("type") or "")
        message = str(error.get("message") or "")
    if anthropic_type == "overloaded_error" or status == 529:
        # 529 is Anthropic-only; callers and retry logic understand 503
        return ProviderError(503, message or "Anthropic is overloaded", None,
                             "overloaded", None, retry_after)
    if not message:
        message = f"Anthropic returned HTTP {status}"
    lowered = message.lower()
    code: str | None = None
    if is_context_length_message(message):
        code = "context_length_exceeded"
    elif status == 429:
        code = "rate_limit_exceeded"
    elif anthropic_type == "not_found_error" and "model" in lowered:
        code = "model_not_found"
    # Anthropic's own type names are not OpenAI's; the caller's dialect
    # names the error from its status.
    openai_type = None
    return ProviderError(status, message, openai_type, code, None, retry_after)


def anthropic_error(status: int, headers: Headers, body: bytes) -> ProviderError:
    """An Anthropic error response in OpenAI's terms."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    if payload is None:
        text = body[:500].decode("utf-8", "replace").strip()
        payload = {"error": {"message": text}} if text else None
    return _error_from_payload(payload, status, retry_after_from(headers))


# -- the adapter --------------------------------------------------------------


def messages_url(api_base: str, suffix: str = "messages") -> str:
    base = api_base.rstrip("/")
    if base.endswith("/v1"):
        return f"{base}/{suffix}"
    return join_url(base, f"/v1/{suffix}")


def anthropic_headers(target: Target, *, stream: bool) -> Headers:
    """Auth and version headers; the deployment's own (anthropic-beta, or a
    different anthropic-version) replace ours of the same name."""
    auth = [("x-api-key", target.api_key),
            ("anthropic-version", target.api_version or DEFAULT_ANTHROPIC_VERSION)]
    return call_headers(target, auth, stream=stream)


class AnthropicAdapter:
    name = "anthropic"
    speaks_openai = False

    def chat_request(self, target: Target, body: dict[str, Any], *, stream: bool) -> UpstreamCall:
        default_max = int(target.options.get("max_tokens", DEFAULT_MAX_TOKENS))
        request = openai_to_anthropic_request(
            body, target.model, default_max_tokens=default_max)
        if stream:
            request["stream"] = True
        else:
            request.pop("stream", None)
        return UpstreamCall("POST", messages_url(target.api_base or ANTHROPIC_API_BASE),
                            anthropic_headers(target, stream=stream), orjson.dumps(request))

    def chat_response(self, target: Target, status: int, headers: Headers,
                      body: bytes) -> dict[str, Any]:
        message = json_object(body, "anthropic")
        if message.get("type") == "error":
            raise _error_from_payload(message, 502, None)
        try:
            return anthropic_to_openai_response(message, target.public_name)
        except SHAPE_ERRORS as exc:
            raise bad_shape("anthropic", exc) from None

    def chat_stream_decoder(self, target: Target, *, include_usage: bool) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder(target.public_name, include_usage=include_usage)

    def embeddings_request(self, target: Target, body: dict[str, Any]) -> UpstreamCall:
        raise UnsupportedOperation(self.name, "embeddings")

    def embeddings_response(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> dict[str, Any]:
        raise UnsupportedOperation(self.name, "embeddings")

    def error_from_upstream(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> ProviderError:
        return anthropic_error(status, headers, body)


ADAPTER = AnthropicAdapter()
