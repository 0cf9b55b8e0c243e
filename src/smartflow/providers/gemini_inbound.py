"""The Gemini API (``generateContent``) in front of a non-Gemini model.

The gateway's ``/v1beta/models/{model}:generateContent`` (and its streaming
and ``countTokens`` siblings) may route to a model whose adapter speaks
OpenAI shapes. This module translates that direction: a Gemini
``GenerateContentRequest`` into an OpenAI chat request, an OpenAI completion
back into a ``GenerateContentResponse``, OpenAI stream chunks into Gemini's
``alt=sse`` frames, and errors into Google's error shape. All sans-IO.

Translation notes:

* Gemini matches function responses to calls by name, OpenAI by id. A call
  keeps its own ``id`` when it has one; otherwise it gets ``call_<n>``
  (numbered through the conversation, so the same history gives the same ids
  every turn), and a later response takes the id of the earliest unanswered
  call of its name.
* Thought parts and thought signatures are dropped: another model cannot use
  Gemini's reasoning. ``topK``, ``thinkingConfig``, safety settings and
  cached content have no OpenAI equivalent and are ignored; Google's own
  tools (search, code execution, ...) are refused.
* Gemini never streams partial function-call arguments, so the stream
  encoder holds a call's fragments and sends the call whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from smartflow.gateway_error import GatewayError
from smartflow.providers.hub import arguments_object, ask_to_stream, unreadable_upstream
from smartflow.providers.openai import SHAPE_ERRORS, bad_request

FINISH_TO_GEMINI: dict[str, str] = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "tool_calls": "STOP",  # Gemini ends a function-calling turn with STOP
    "function_call": "STOP",
    "content_filter": "SAFETY",
}

# Google's canonical error codes by HTTP status (google.rpc.Code's HTTP mapping).
# 502 has none of its own: a gateway-made 502 is an upstream that could not
# serve, which Google's clients retry as UNAVAILABLE.
GOOGLE_STATUS_BY_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

SSE_FRAME_END = b"\r\n\r\n"  # Google frames its events with CRLF line ends

_SCHEMA_DROPPED_KEYS = frozenset({"propertyOrdering"})
_RESULT_KEYS = ("output", "result", "content")


# -- errors -------------------------------------------------------------------


def google_status(status: int) -> str:
    """Google's error ``status`` name for an HTTP status."""
    found = GOOGLE_STATUS_BY_HTTP.get(status)
    if found is not None:
        return found
    return "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"


def _retry_delay(retry_after: str | None) -> str | None:
    if not retry_after:
        return None
    try:
        seconds = float(retry_after)
    except ValueError:
        return None  # an HTTP date: the Retry-After header carries it
    return f"{max(seconds, 0.0):g}s"


def gemini_error_body(status: int, message: str,
                      retry_after: str | None = None) -> dict[str, Any]:
    """Google's ``{"error": {"code", "message", "status"}}``.

    A 429 with a known wait carries a ``RetryInfo`` detail: that is where
    Google's clients (Gemini CLI among them) read how long to back off.
    """
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": google_status(status)}
    delay = _retry_delay(retry_after) if status in (429, 503) else None
    if delay is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                             "retryDelay": delay}]
    return {"error": error}


def gemini_error_of(exc: GatewayError) -> dict[str, Any]:
    return gemini_error_body(exc.status, exc.message, exc.retry_after)


def sse_frame(payload: dict[str, Any]) -> bytes:
    """One ``alt=sse`` event as Google writes it: ``data: <json>`` and CRLF CRLF."""
    return b"data: " + orjson.dumps(payload) + SSE_FRAME_END


# -- request: Gemini -> OpenAI ------------------------------------------------


def openai_json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI-subset ``Schema`` as JSON Schema: lowercase types, and
    ``nullable`` as a ``"null"`` type (the inverse of ``gemini_schema``)."""
    if isinstance(schema, list):
        return [openai_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_DROPPED_KEYS or key == "nullable":
            continue
        if key == "type" and isinstance(value, str):
            converted["type"] = value.lower()
        elif key == "properties" and isinstance(value, dict):
            # property names are the caller's, never keywords to convert
            converted[key] = {name: openai_json_schema(sub) for name, sub in value.items()}
        elif key in ("enum", "required", "example", "default"):
            converted[key] = value
        else:
            converted[key] = openai_json_schema(value)
    if schema.get("nullable") is True:
        kind = converted.get("type")
        if isinstance(kind, str) and kind != "null":
            converted["type"] = [kind, "null"]
    return converted


def _text_parts(content: Any, where: str) -> list[str]:
    """The texts of a Content (or a bare string, or a list of parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    parts = content.get("parts") if isinstance(content, dict) else content
    if not isinstance(parts, list):
        raise bad_request(f"{where}.parts: expected a list of parts", where)
    return [str(part["text"]) for part in parts
            if isinstance(part, dict) and "text" in part and not part.get("thought")]


def _media_part(blob: Any, where: str) -> dict[str, Any]:
    if not isinstance(blob, dict):
        raise bad_request(f"{where}: expected an object", where)
    mime = str(blob.get("mimeType") or "application/octet-stream")
    data = blob.get("data")
    if not isinstance(data, str):
        raise bad_request(f"{where}.data: expected base64 text", where)
    if mime.startswith("audio/"):
        return {"type": "input_audio",
                "input_audio": {"data": data, "format": mime.split("/", 1)[1]}}
    url = f"data:{mime};base64,{data}"
    if mime.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": url}}
    return {"type": "file", "file": {"file_data": url, "filename": "document"}}


def _file_part(file_data: Any, where: str) -> dict[str, Any]:
    if not isinstance(file_data, dict) or not isinstance(file_data.get("fileUri"), str):
        raise bad_request(f"{where}.fileUri: expected a string", where)
    uri = file_data["fileUri"]
    mime = str(file_data.get("mimeType") or "")
    if uri.startswith(("http://", "https://")) and (mime.startswith("image/") or not mime):
        return {"type": "image_url", "image_url": {"url": uri}}
    raise bad_request(f"{where}: fileData ({mime or 'unknown type'}) is only available on "
                      "Gemini models; send the bytes as inlineData", where)


def _tool_content(response: Any) -> str:
    """A functionResponse's ``response`` as tool-message text: the text itself
    when it is a lone ``output``/``result`` string, else the JSON."""
    if isinstance(response, dict) and len(response) == 1:
        key, value = next(iter(response.items()))
        if key in _RESULT_KEYS and isinstance(value, str):
            return value
    return orjson.dumps(response if response is not None else {}).decode()


class _CallIds:
    """Tool-call ids across one conversation; see the module docstring."""

    def __init__(self) -> None:
        self._minted = 0
        self._waiting: list[tuple[str, str]] = []  # (name, id) of unanswered calls

    def for_call(self, call: dict[str, Any]) -> str:
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_{self._minted}"
            self._minted += 1
        self._waiting.append((str(call.get("name", "")), call_id))
        return call_id

    def for_response(self, response: dict[str, Any], where: str) -> str:
        given = response.get("id")
        name = str(response.get("name", ""))
        for position, (_, waiting_id) in enumerate(self._waiting):
            if isinstance(given, str) and given == waiting_id:
                del self._waiting[position]
                return waiting_id
        # Clients mint ids of their own when the model sent none (Gemini CLI
        # does), so an id that matches no call still finds its call by name.
        for position, (waiting_name, waiting_id) in enumerate(self._waiting):
            if waiting_name == name:
                del self._waiting[position]
                return waiting_id
        raise bad_request(f"{where}: no earlier functionCall named {name!r} is waiting for "
                          "this response", where)


def _simplify(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _said_parts(parts: list[Any], where: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Each part with its place, but thoughts: another model cannot use Gemini's."""
    for index, part in enumerate(parts):
        part_where = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise bad_request(f"{part_where}: expected an object", part_where)
        if not part.get("thought"):
            yield part, part_where


def _user_messages(parts: list[Any], ids: _CallIds, where: str) -> list[dict[str, Any]]:
    tool_messages: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    for part, part_where in _said_parts(parts, where):
        if "functionResponse" in part:
            response = part["functionResponse"]
            if not isinstance(response, dict):
                raise bad_request(f"{part_where}.functionResponse: expected an object",
                                  part_where)
            tool_messages.append({
                "role": "tool",
                "tool_call_id": ids.for_response(response, f"{part_where}.functionResponse"),
                "content": _tool_content(response.get("response"))})
        elif "text" in part:
            content.append({"type": "text", "text": str(part["text"])})
        elif "inlineData" in part:
            content.append(_media_part(part["inlineData"], f"{part_where}.inlineData"))
        elif "fileData" in part:
            content.append(_file_part(part["fileData"], f"{part_where}.fileData"))
        elif "functionCall" in part:
            raise bad_request(f"{part_where}: a functionCall belongs in a model turn",
                              part_where)
        elif "thoughtSignature" in part:
            continue  # a bare signature carries nothing another model can use
        else:
            raise bad_request(f"{part_where}: this part type is only available on Gemini "
                              "models", part_where)
    # OpenAI wants tool answers right after the assistant turn that asked
    messages = tool_messages
    if content:
        messages.append({"role": "user", "content": _simplify(content)})
    return messages


def _model_message(parts: list[Any], ids: _CallIds, where: str) -> dict[str, Any] | None:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for part, part_where in _said_parts(parts, where):
        if "functionCall" in part:
            call = part["functionCall"]
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise bad_request(f"{part_where}.functionCall.name: expected a string",
                                  part_where)
            args = call.get("args")
            tool_calls.append({
                "id": ids.for_call(call),
                "type": "function",
                "function": {"name": call["name"],
                             "arguments": orjson.dumps(args if args is not None else {}
                                                       ).decode()}})
        elif "text" in part:
            # a streamed answer kept as received is many parts of one text
            texts.append(str(part["text"]))
        elif "thoughtSignature" in part or "executableCode" in part or (
                "codeExecutionResult" in part):
            continue
        else:
            raise bad_request(f"{part_where}: this part type is not supported in a model "
                              "turn here", part_where)
    if not texts and not tool_calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _append_model_message(messages: list[dict[str, Any]], message: dict[str, Any]) -> None:
    """Consecutive model turns are one assistant message (OpenAI wants the tool
    results right after the one message that holds the calls)."""
    last = messages[-1] if messages else None
    if last is None or last["role"] != "assistant":
        messages.append(message)
        return
    if message.get("content"):
        last["content"] = (last.get("content") or "") + message["content"]
    if message.get("tool_calls"):
        last["tool_calls"] = [*(last.get("tool_calls") or ()), *message["tool_calls"]]


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise bad_request("contents: expected a non-empty list", "contents")
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction", body.get("system_instruction"))
    if system:
        text = "\n\n".join(_text_parts(system, "systemInstruction"))
        if text:
            messages.append({"role": "system", "content": text})
    ids = _CallIds()
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        if not isinstance(content, dict):
            raise bad_request(f"{where}: expected an object", where)
        parts = content.get("parts")
        if not isinstance(parts, list):
            raise bad_request(f"{where}.parts: expected a list", where)
        role = content.get("role") or "user"
        if role == "model":
            message = _model_message(parts, ids, f"{where}.parts")
            if message is not None:
                _append_model_message(messages, message)
        elif role in ("user", "function"):
            messages.extend(_user_messages(parts, ids, f"{where}.parts"))
        else:
            raise bad_request(f"{where}.role: expected user or model", where)
    return messages


def _function_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad_request("tools: expected a list", "tools")
    converted: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise bad_request(f"{where}: expected an object", where)
        others = [key for key in tool if key not in ("functionDeclarations",
                                                       "function_declarations")]
        if others:
            raise bad_request(f"{where}: the {others[0]} tool is only available on Gemini "
                              "models", where)
        declarations = tool.get("functionDeclarations", tool.get("function_declarations"))
        if not isinstance(declarations, list):
            raise bad_request(f"{where}.functionDeclarations: expected a list", where)
        for position, declaration in enumerate(declarations):
            converted.append(_function_tool(declaration,
                                            f"{where}.functionDeclarations[{position}]"))
    return converted


def _function_tool(declaration: Any, where: str) -> dict[str, Any]:
    if not isinstance(declaration, dict) or not isinstance(declaration.get("name"), str):
        raise bad_request(f"{where}: expected an object with a name", where)
    if declaration.get("parametersJsonSchema") is not None:
        parameters = declaration["parametersJsonSchema"]  # JSON Schema already
    elif declaration.get("parameters") is not None:
        parameters = openai_json_schema(declaration["parameters"])
    else:
        parameters = {"type": "object", "properties": {}}
    function: dict[str, Any] = {"name": declaration["name"], "parameters": parameters}
    if declaration.get("description"):
        function["description"] = declaration["description"]
    return {"type": "function", "function": function}


def _tool_choice(tool_config: Any, tools: list[dict[str, Any]]
                 ) -> tuple[Any, list[dict[str, Any]]]:
    """(OpenAI tool_choice or None, the tools offered under it)."""
    if not isinstance(tool_config, dict):
        raise bad_request("toolConfig: expected an object", "toolConfig")
    config = tool_config.get("functionCallingConfig")
    if config is None:
        return None, tools
    if not isinstance(config, dict):
        raise bad_request("toolConfig.functionCallingConfig: expected an object",
                          "toolConfig")
    mode = str(config.get("mode") or "AUTO").upper()
    if mode in ("AUTO", "MODE_UNSPECIFIED", "VALIDATED"):
        return "auto", tools
    if mode == "NONE":
        return "none", tools
    if mode != "ANY":
        raise bad_request("toolConfig.functionCallingConfig.mode: expected AUTO, ANY or NONE",
                          "toolConfig")
    allowed = config.get("allowedFunctionNames")
    if not allowed:
        return "required", tools
    if not isinstance(allowed, list) or not all(isinstance(name, str) for name in allowed):
        raise bad_request("toolConfig.functionCallingConfig.allowedFunctionNames: expected "
                          "a list of names", "toolConfig")
    if len(allowed) == 1:
        return {"type": "function", "function": {"name": allowed[0]}}, tools
    # OpenAI cannot name several: offer only the allowed ones, and require one
    return "required", [tool for tool in tools if tool["function"]["name"] in allowed]


def _response_format(config: dict[str, Any]) -> dict[str, Any] | None:
    if config.get("responseMimeType") != "application/json":
        return None
    schema = config.get("responseJsonSchema", config.get("_responseJsonSchema"))
    if schema is None and config.get("responseSchema") is not None:
        schema = openai_json_schema(config["responseSchema"])
    if schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}


def _generation_config(config: Any, request: dict[str, Any]) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise bad_request("generationConfig: expected an object", "generationConfig")
    for gemini_name, openai_name in (("temperature", "temperature"), ("topP", "top_p"),
                                     ("presencePenalty", "presence_penalty"),
                                     ("frequencyPenalty", "frequency_penalty"),
                                     ("seed", "seed")):
        if config.get(gemini_name) is not None:
            request[openai_name] = config[gemini_name]
    max_tokens = config.get("maxOutputTokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise bad_request("generationConfig.maxOutputTokens: expected a positive integer",
                              "generationConfig")
        request["max_tokens"] = max_tokens
    stop = config.get("stopSequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
            raise bad_request("generationConfig.stopSequences: expected a list of strings",
                              "generationConfig")
        request["stop"] = stop
    count = config.get("candidateCount")
    if count is not None and count != 1:
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise bad_request("generationConfig.candidateCount: expected a positive integer",
                              "generationConfig")
        request["n"] = count
    response_format = _response_format(config)
    if response_format is not None:
        request["response_format"] = response_format


def gemini_request_to_openai(body: dict[str, Any], *, model: str,
                             stream: bool) -> dict[str, Any]:
    """A Gemini ``GenerateContentRequest`` dict as an OpenAI chat request dict.

    ``model`` comes from the URL (Gemini has none in the body). Raises
    ProviderError(400) naming the offending field on bad input.
    """
    try:
        return _gemini_request_to_openai(body, model, stream)
    except SHAPE_ERRORS as exc:
        raise bad_request(f"the request has a field of the wrong type or shape "
                          f"({type(exc).__name__}: {exc})") from None


def _gemini_request_to_openai(body: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    request: dict[str, Any] = {"model": model, "messages": _messages(body)}
    _generation_config(body.get("generationConfig", body.get("generation_config")), request)
    tools = body.get("tools")
    if tools:
        converted = _function_tools(tools)
        tool_config = body.get("toolConfig", body.get("tool_config"))
        if tool_config is not None:
            choice, converted = _tool_choice(tool_config, converted)
            if choice is not None and converted:
                request["tool_choice"] = choice
        if converted:
            request["tools"] = converted
    if stream:
        ask_to_stream(request)
    return request


# -- response: OpenAI -> Gemini -----------------------------------------------


def gemini_usage_metadata(usage: Any) -> dict[str, int] | None:
    """OpenAI's usage as ``usageMetadata``: prompt includes cached tokens (as in
    both APIs); reasoning tokens are Gemini's ``thoughtsTokenCount``, apart
    from ``candidatesTokenCount``."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details")
    cached = int(prompt_details.get("cached_tokens") or 0) if isinstance(
        prompt_details, dict) else 0
    completion_details = usage.get("completion_tokens_details")
    thoughts = int(completion_details.get("reasoning_tokens") or 0) if isinstance(
        completion_details, dict) else 0
    thoughts = min(thoughts, completion)
    metadata = {"promptTokenCount": prompt, "candidatesTokenCount": completion - thoughts,
                "totalTokenCount": prompt + completion}
    if cached:
        metadata["cachedContentTokenCount"] = cached
    if thoughts:
        metadata["thoughtsTokenCount"] = thoughts
    return metadata


def _function_call_part(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"name": str(name or ""), "args": arguments_object(arguments)}
    if call_id:
        call["id"] = str(call_id)
    return {"functionCall": call}


def gemini_finish_reason(finish: Any) -> str:
    if not finish:
        return "STOP"
    return FINISH_TO_GEMINI.get(str(finish), "OTHER")


def openai_response_to_gemini(completion: dict[str, Any], *, model: str,
                              include_thoughts: bool = True) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` dict as a Gemini ``GenerateContentResponse``.

    Raises ProviderError(502) when the completion is not shaped like one."""
    try:
        return _openai_response_to_gemini(completion, model, include_thoughts)
    except SHAPE_ERRORS as exc:
        raise unreadable_upstream("completion", exc) from None


def _openai_response_to_gemini(completion: dict[str, Any], model: str,
                               include_thoughts: bool) -> dict[str, Any]:
    candidates: list[dict[str, Any]] = []
    for position, choice in enumerate(completion.get("choices") or ()):
        message = choice.get("message") or {}
        parts: list[dict[str, Any]] = []
        reasoning = message.get("reasoning_content")
        if include_thoughts and isinstance(reasoning, str) and reasoning:
            parts.append({"text": reasoning, "thought": True})
        text = message.get("content")
        if isinstance(text, list):
            text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
        if text:
            parts.append({"text": str(text)})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            parts.append(_function_call_part(call.get("id"), function.get("name"),
                                             function.get("arguments")))
        candidates.append({"content": {"role": "model", "parts": parts or [{"text": ""}]},
                           "finishReason": gemini_finish_reason(choice.get("finish_reason")),
                           "index": int(choice.get("index", position))})
    response: dict[str, Any] = {"candidates": candidates}
    metadata = gemini_usage_metadata(completion.get("usage"))
    if metadata is not None:
        response["usageMetadata"] = metadata
    response["modelVersion"] = model or str(completion.get("model") or "")
    if completion.get("id"):
        response["responseId"] = str(completion["id"])
    return response


# -- streaming: OpenAI chunks -> Gemini SSE -----------------------------------


class _PendingCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []

    def part(self) -> dict[str, Any]:
        return _function_call_part(self.id, self.name, "".join(self.arguments))


class GeminiStreamEncoder:
    """OpenAI ``chat.completion.chunk`` dicts in, Gemini ``alt=sse`` frames out.

    ``feed(chunk)`` per chunk, ``finish()`` at the end of the upstream stream,
    ``error(exc)`` for a mid-stream failure. Text (and thought) deltas go out
    as they come. A function call is held until it is whole: until text of
    the same candidate follows it, or the end. The last frame carries every
    candidate's ``finishReason`` and the ``usageMetadata``; Gemini CLI takes a
    stream whose last frame has no finish reason for a broken one.
    """

    def __init__(self, model: str, *, response_id: str | None = None,
                 include_thoughts: bool = True) -> None:
        self._model = model
        self._response_id = response_id
        self._include_thoughts = include_thoughts
        self._finished = False
        self._candidates: list[int] = []  # indexes seen, in order
        self._calls: dict[int, dict[int, _PendingCall]] = {}  # candidate -> tool index -> call
        self._finish: dict[int, str] = {}
        self._usage: dict[str, int] | None = None

    def _frame(self, candidates: list[dict[str, Any]], *, last: bool = False) -> bytes:
        response: dict[str, Any] = {"candidates": candidates}
        if last and self._usage is not None:
            response["usageMetadata"] = self._usage
        response["modelVersion"] = self._model
        if self._response_id:
            response["responseId"] = self._response_id
        return sse_frame(response)

    def _flush_calls(self, index: int, parts: list[dict[str, Any]]) -> None:
        pending = self._calls.pop(index, None)
        if pending:
            # in the hub's tool index order, whichever call's fragment came first
            parts.extend(pending[tool_index].part() for tool_index in sorted(pending))

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """Frames for one chunk; ProviderError(502) for a chunk not shaped like one."""
        if self._finished:
            return b""
        try:
            return self._feed(chunk)
        except SHAPE_ERRORS as exc:
            raise unreadable_upstream("completion", exc) from None

    def _feed(self, chunk: dict[str, Any]) -> bytes:
        if self._response_id is None and chunk.get("id"):
            self._response_id = str(chunk["id"])
        if "error" in chunk and not chunk.get("choices"):
            self._finished = True
            return sse_frame(self._upstream_error(chunk["error"]))
        metadata = gemini_usage_metadata(chunk.get("usage"))
        if metadata is not None:
            self._usage = metadata
        parts_by_candidate: dict[int, list[dict[str, Any]]] = {}
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index", 0))
            if index not in self._candidates:
                self._candidates.append(index)
            parts = parts_by_candidate.setdefault(index, [])
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if reasoning and self._include_thoughts:
                self._flush_calls(index, parts)
                parts.append({"text": str(reasoning), "thought": True})
            text = delta.get("content")
            if text:
                self._flush_calls(index, parts)
                parts.append({"text": str(text)})
            for call in delta.get("tool_calls") or ():
                self._tool_delta(index, call)
            finish = choice.get("finish_reason")
            if finish:
                self._finish[index] = str(finish)
        candidates = [{"content": {"role": "model", "parts": parts}, "index": index}
                      for index, parts in parts_by_candidate.items() if parts]
        return self._frame(candidates) if candidates else b""

    def _tool_delta(self, index: int, call: dict[str, Any]) -> None:
        pending = self._calls.setdefault(index, {})
        tool_index = int(call.get("index", 0))
        found = pending.get(tool_index)
        if found is None:
            found = pending[tool_index] = _PendingCall()
        # the id and name come once, in the first fragment; some servers repeat them
        if call.get("id") and not found.id:
            found.id = str(call["id"])
        function = call.get("function") or {}
        if function.get("name") and not found.name:
            found.name = str(function["name"])
        fragment = function.get("arguments")
        if fragment:
            found.arguments.append(str(fragment))

    def finish(self) -> bytes:
        """The last frame: held function calls, finish reasons and usage."""
        if self._finished:
            return b""
        self._finished = True
        candidates: list[dict[str, Any]] = []
        for index in self._candidates or [0]:
            parts: list[dict[str, Any]] = []
            self._flush_calls(index, parts)
            # an empty text part, as Gemini itself ends a stream with nothing left to say
            candidates.append({"content": {"role": "model", "parts": parts or [{"text": ""}]},
                               "finishReason": gemini_finish_reason(self._finish.get(index)),
                               "index": index})
        return self._frame(candidates, last=True)

    @staticmethod
    def _upstream_error(error: Any) -> dict[str, Any]:
        if not isinstance(error, dict):
            return gemini_error_body(500, str(error))
        message = str(error.get("message") or "upstream error")
        code = error.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else (
            429 if error.get("type") == "rate_limit_error" else 500)
        return gemini_error_body(status, message)

    def error(self, exc: GatewayError) -> bytes:
        """A mid-stream error frame; the stream is over after it."""
        self._finished = True
        return sse_frame(gemini_error_of(exc))


# -- countTokens for models without a tokenizer endpoint ----------------------


def estimate_gemini_tokens(body: dict[str, Any]) -> int:
    """A rough ``totalTokens`` for ``:countTokens`` routed to a model with no
    counting endpoint: about four bytes of JSON text a token. Takes both
    request forms, ``{"contents"}`` and ``{"generateContentRequest"}``."""
    if not isinstance(body, dict):
        return 1
    inner = body.get("generateContentRequest")
    source = inner if isinstance(inner, dict) else body
    counted = [source[name] for name in ("systemInstruction", "contents", "tools")
               if source.get(name) is not None]
    return max(1, len(orjson.dumps(counted)) // 4)
