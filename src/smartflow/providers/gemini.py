"""Google Gemini (Generative Language API) adapter.

``generateContent`` for whole answers, ``streamGenerateContent?alt=sse`` for
streams (without ``alt=sse`` Gemini streams a JSON array, not events), and
``batchEmbedContents`` for embeddings.

Translation notes:

* System/developer messages become ``systemInstruction``; assistant turns are
  role ``model``; tool results are ``functionResponse`` parts in a user turn,
  named by looking the ``tool_call_id`` up in the earlier assistant tool calls
  (Gemini matches results to calls by function name, not id).
* Gemini's function calls carry no id on most models; we mint ids
  (``call_<responseId>_<candidate>_<n>``) so the caller can answer them. A
  call's ``thoughtSignature`` (thinking models want it back next turn) rides
  in the id after ``__thought__`` and is put back on the functionCall part.
* JSON schemas (tool parameters, response_format) are passed as Gemini's
  OpenAPI-subset ``Schema``, with the JSON-Schema keywords it rejects removed.
* Gemini reports an API key it does not know as 400 ``API_KEY_INVALID``; we
  report that as 401, which is what an OpenAI client expects.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import quote

import orjson

from smartflow.http.errors import error_type_for_status
from smartflow.providers.base import (
    Headers,
    ProviderError,
    Target,
    UpstreamCall,
    Usage,
)
from smartflow.providers.openai import (
    SHAPE_ERRORS,
    bad_request,
    bad_shape,
    call_headers,
    embedding_texts,
    is_context_length_message,
    json_object,
    not_json_event,
    openai_usage,
    retry_after_from,
    stop_sequences,
    text_of,
)
from smartflow.providers.sse_decoder import SSEChunkDecoder

GEMINI_API_BASE = "https://generativelanguage.googleapis.com"
THOUGHT_SIGNATURE_SEPARATOR = "__thought__"

FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop",
    "OTHER": "stop",
}

STATUS_BY_GOOGLE_CODE: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

# JSON-Schema keywords Gemini's Schema type does not accept.
_UNSUPPORTED_SCHEMA_KEYS = frozenset(
    {"$schema", "$id", "additionalProperties", "strict", "$comment", "examples", "default"})

_TOKEN_LIMIT_PHRASES = ("exceeds the maximum number of tokens", "input token count",
                        "token count exceeds", "too many tokens")


def gemini_schema(schema: Any) -> Any:
    """A JSON schema with the keywords Gemini rejects removed (recursively)."""
    if isinstance(schema, dict):
        cleaned: dict[str, Any] = {}
        for key, value in schema.items():
            if key in _UNSUPPORTED_SCHEMA_KEYS:
                continue
            if key == "type" and isinstance(value, list):
                # JSON Schema's ["string", "null"] is Gemini's type + nullable
                kinds = [kind for kind in value if kind != "null"]
                cleaned["type"] = kinds[0] if kinds else "string"
                if len(kinds) < len(value):
                    cleaned["nullable"] = True
            elif key == "properties" and isinstance(value, dict):
                # property names are the caller's, never keywords to drop
                cleaned[key] = {name: gemini_schema(sub) for name, sub in value.items()}
            elif key in ("enum", "required"):
                cleaned[key] = value
            else:
                cleaned[key] = gemini_schema(value)
        return cleaned
    if isinstance(schema, list):
        return [gemini_schema(item) for item in schema]
    return schema


# -- request -----------------------------------------------------------------


def _guess_mime_type(url: str) -> str:
    lowered = url.lower().split("?", 1)[0]
    for suffix, mime in ((".png", "image/png"), (".jpg", "image/jpeg"), (".jpeg", "image/jpeg"),
                         (".webp", "image/webp"), (".gif", "image/gif"),
                         (".pdf", "application/pdf")):
        if lowered.endswith(suffix):
            return mime
    return "image/jpeg"


def _media_part(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep or ";base64" not in header:
            raise bad_request(f"{where}: data URLs must be base64-encoded", where)
        return {"inlineData": {"mimeType": header[5:].split(";", 1)[0] or "image/png",
                               "data": data}}
    if url.startswith(("http://", "https://", "gs://")):
        return {"fileData": {"mimeType": _guess_mime_type(url), "fileUri": url}}
    raise bad_request(f"{where}: expected a data: or http(s) URL", where)


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or a list of parts", where)
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        part_where = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise bad_request(f"{part_where}.image_url.url: expected a string", part_where)
            parts.append(_media_part(url, part_where))
        elif kind == "file":
            file = part.get("file") or {}
            data = file.get("file_data") if isinstance(file, dict) else None
            if not isinstance(data, str):
                raise bad_request(f"{part_where}.file.file_data: expected a data URL", part_where)
            parts.append(_media_part(data, part_where))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}",
                                         "data": str(audio.get("data", ""))}})
        else:
            raise bad_request(f"{part_where}: content part type {kind!r} is not supported",
                              part_where)
    return parts


def _function_call_part(call: Any, where: str) -> tuple[str, dict[str, Any]]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request(f"{where}.function.name: expected a string", where)
    arguments = function.get("arguments")
    if isinstance(arguments, str) and arguments:
        try:
            args = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            raise bad_request(f"{where}.function.arguments: not valid JSON", where) from None
    else:
        args = arguments if isinstance(arguments, dict) else {}
    if not isinstance(args, dict):
        raise bad_request(f"{where}.function.arguments: must be a JSON object", where)
    part: dict[str, Any] = {"functionCall": {"name": function["name"], "args": args}}
    call_id = call.get("id")
    if isinstance(call_id, str) and THOUGHT_SIGNATURE_SEPARATOR in call_id:
        part["thoughtSignature"] = call_id.split(THOUGHT_SIGNATURE_SEPARATOR, 1)[1]
    return function["name"], part


def _function_response_part(message: dict[str, Any], names_by_id: dict[str, str],
                            where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    name = names_by_id.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        name = message.get("name") if isinstance(message.get("name"), str) else None
    if name is None:
        raise bad_request(f"{where}.tool_call_id: no earlier assistant tool call has id "
                          f"{call_id!r}", where)
    text = text_of(message.get("content"), f"{where}.content")
    response: Any
    try:
        response = orjson.loads(text) if text[:1] in ("{",) else None
    except orjson.JSONDecodeError:
        response = None
    if not isinstance(response, dict):
        response = {"result": text}
    return {"functionResponse": {"name": name, "response": response}}


def openai_to_gemini_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request dict as a Gemini ``GenerateContentRequest`` dict.

    Raises ProviderError(400) naming the problem for a malformed request."""
    try:
        return _openai_to_gemini_request(body)
    except SHAPE_ERRORS as exc:
        raise bad_request(f"the request has a field of the wrong type or shape "
                          f"({type(exc).__name__}: {exc})") from None


def _openai_to_gemini_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request dict as a Gemini ``GenerateContentRequest`` dict."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: expected a non-empty list", "messages")
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where}: expected an object", where)
        role = message.get("role")
        parts: list[dict[str, Any]]
        if role in ("system", "developer"):
            text = text_of(message.get("content"), f"{where}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            gemini_role, parts = "user", _user_parts(message.get("content"), f"{where}.content")
        elif role == "assistant":
            gemini_role = "model"
            text = text_of(message.get("content"), f"{where}.content")
            parts = [{"text": text}] if text else []
            for call_index, call in enumerate(message.get("tool_calls") or ()):
                name, part = _function_call_part(call, f"{where}.tool_calls[{call_index}]")
                if isinstance(call.get("id"), str):
                    names_by_id[call["id"]] = name
                parts.append(part)
        elif role == "tool":
            gemini_role = "user"
            parts = [_function_response_part(message, names_by_id, where)]
        else:
            raise bad_request(f"{where}.role: {role!r} is not supported", where)
        if not parts:
            continue
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    for openai_name, gemini_name in (("temperature", "temperature"), ("top_p", "topP"),
                                     ("top_k", "topK"), ("seed", "seed"),
                                     ("presence_penalty", "presencePenalty"),
                                     ("frequency_penalty", "frequencyPenalty")):
        if body.get(openai_name) is not None:
            config[gemini_name] = body[openai_name]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = stop_sequences(stop)
    if body.get("n") and body["n"] != 1:
        config["candidateCount"] = body["n"]
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
        if kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if schema:
                config["responseSchema"] = gemini_schema(schema)
    if config:
        request["generationConfig"] = config
    tools = body.get("tools")
    if tools:
        request["tools"] = [{"functionDeclarations": _function_declarations(tools)}]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config is not None:
            request["toolConfig"] = tool_config
    return request


def _function_declarations(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad_request("tools: expected a list", "tools")
    declarations: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"tools[{index}]: only function tools with a name are supported",
                              f"tools[{index}]")
        declaration: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        parameters = function.get("parameters")
        if parameters and parameters.get("properties"):
            declaration["parameters"] = gemini_schema(parameters)
        declarations.append(declaration)
    return declarations


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        mode: dict[str, Any] = {"mode": "AUTO"}
    elif choice == "none":
        mode = {"mode": "NONE"}
    elif choice == "required":
        mode = {"mode": "ANY"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        mode = {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    else:
        raise bad_request("tool_choice: expected auto, none, required or a named function",
                          "tool_choice")
    return {"functionCallingConfig": mode}


# -- response ----------------------------------------------------------------


def usage_from_gemini(metadata: Any) -> Usage:
    if not isinstance(metadata, dict):
        return Usage()
    completion = int(metadata.get("candidatesTokenCount") or 0) + int(
        metadata.get("thoughtsTokenCount") or 0)
    return Usage(int(metadata.get("promptTokenCount") or 0), completion,
                 int(metadata.get("cachedContentTokenCount") or 0))


def _tool_call(part: dict[str, Any], response_id: str, candidate_index: int,
               call_index: int) -> dict[str, Any]:
    call = part["functionCall"]
    # most Gemini models send no call id; ours must differ between turns, because
    # clients key tool results by id across the whole conversation
    call_id = str(call.get("id") or f"call_{response_id}_{candidate_index}_{call_index}")
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        # thinking models need the signature back with the call in the next turn;
        # the id is the one thing every OpenAI client echoes back unchanged
        call_id += THOUGHT_SIGNATURE_SEPARATOR + signature
    return {"id": call_id,
            "type": "function",
            "function": {"name": str(call.get("name", "")),
                         "arguments": orjson.dumps(call.get("args") or {}).decode()}}


def _finish_reason(raw: Any, has_tool_calls: bool) -> str | None:
    if not raw:
        return None
    if has_tool_calls:
        return "tool_calls"
    return FINISH_REASONS.get(str(raw), "stop")


def gemini_to_openai_response(response: dict[str, Any], model: str) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    response_id = str(response.get("responseId") or "gemini" + secrets.token_hex(6))
    candidates = response.get("candidates") or []
    for position, candidate in enumerate(candidates):
        index = int(candidate.get("index", position))
        texts: list[str] = []
        thoughts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for part in (candidate.get("content") or {}).get("parts") or ():
            if "functionCall" in part:
                tool_calls.append(_tool_call(part, response_id, index, len(tool_calls)))
            elif "text" in part:
                (thoughts if part.get("thought") else texts).append(str(part["text"]))
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(texts) if texts or not tool_calls else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        choices.append({"index": index, "message": message, "logprobs": None,
                        "finish_reason": _finish_reason(candidate.get("finishReason") or "STOP",
                                                        bool(tool_calls))})
    if not choices:
        # a prompt blocked by safety filters comes back 200 with no candidates
        choices.append({"index": 0, "message": {"role": "assistant", "content": None},
                        "logprobs": None, "finish_reason": "content_filter"})
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": openai_usage(usage_from_gemini(response.get("usageMetadata"))),
    }


class GeminiStreamDecoder(SSEChunkDecoder):
    """Gemini SSE (one ``GenerateContentResponse`` per event) in, OpenAI chunks out.

    Gemini's ``usageMetadata`` is cumulative and repeats on every event, so
    the last one wins and the usage chunk goes out at ``close()``. An error
    object in the stream raises ``ProviderError`` (after the chunks decoded
    before it have been returned).
    """

    def __init__(self, model: str, *, include_usage: bool) -> None:
        super().__init__("gemini", model, include_usage=include_usage,
                         chunk_id="gemini" + secrets.token_hex(6))
        # one start and one finish chunk per candidate, so these are per index
        self._started_indexes: set[int] = set()
        self._finished: set[int] = set()
        self._tool_counts: dict[int, int] = {}

    def _on_close(self, out: list[dict[str, Any]]) -> None:
        if self._include_usage and self.usage is not None:
            out.append(self._usage_chunk(self.usage))

    def _on_event(self, data: str, out: list[dict[str, Any]]) -> None:
        try:
            response = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise not_json_event("gemini", data) from None
        if not isinstance(response, dict):
            return
        if "error" in response:
            if self.error is None:
                status = _status_of(response)
                self.error = gemini_error_from_payload(response, status or 500, None)
            return
        if response.get("responseId"):
            self._id = str(response["responseId"])
        if response.get("usageMetadata"):
            self.usage = usage_from_gemini(response["usageMetadata"])
        for position, candidate in enumerate(response.get("candidates") or ()):
            index = int(candidate.get("index", position))
            if index not in self._started_indexes:
                self._started_indexes.add(index)
                out.append(self._chunk({"role": "assistant", "content": ""}, index=index))
            for part in (candidate.get("content") or {}).get("parts") or ():
                if "functionCall" in part:
                    count = self._tool_counts.get(index, 0)
                    self._tool_counts[index] = count + 1
                    call = _tool_call(part, self._id, index, count)
                    call["index"] = count
                    out.append(self._chunk({"tool_calls": [call]}, index=index))
                elif part.get("text"):
                    key = "reasoning_content" if part.get("thought") else "content"
                    out.append(self._chunk({key: part["text"]}, index=index))
            raw_finish = candidate.get("finishReason")
            if raw_finish and index not in self._finished:
                self._finished.add(index)
                reason = _finish_reason(raw_finish, self._tool_counts.get(index, 0) > 0)
                self.finish_reason = reason
                out.append(self._chunk({}, reason, index))
        if not response.get("candidates") and (response.get("promptFeedback") or {}).get(
                "blockReason") and 0 not in self._finished:
            self._finished.add(0)
            if 0 not in self._started_indexes:
                self._started_indexes.add(0)
                out.append(self._chunk({"role": "assistant", "content": ""}))
            self.finish_reason = "content_filter"
            out.append(self._chunk({}, "content_filter"))


# -- errors ------------------------------------------------------------------


def _status_of(payload: dict[str, Any]) -> int | None:
    error = payload.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, int):
            return code
        return STATUS_BY_GOOGLE_CODE.get(str(error.get("status")))
    return None


def gemini_error_from_payload(payload: Any, status: int,
                              retry_after: str | None) -> ProviderError:
    if isinstance(payload, list) and payload:  # the non-SSE stream wraps errors in an array
        payload = payload[0]
    error = payload.get("error") if isinstance(payload, dict) else None
    message = ""
    google_status = ""
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        google_status = str(error.get("status") or "")
        if status < 400:
            status = STATUS_BY_GOOGLE_CODE.get(google_status, 500)
    if not message:
        message = f"gemini returned HTTP {status}"
    lowered = message.lower()
    if "api key not valid" in lowered or "api_key_invalid" in lowered:
        return ProviderError(401, message, "authentication_error", "invalid_api_key")
    if is_context_length_message(message) or any(p in lowered for p in _TOKEN_LIMIT_PHRASES):
        return ProviderError(400, message, "invalid_request_error", "context_length_exceeded")
    code = None
    if status == 429:
        code = "rate_limit_exceeded"
    elif google_status:
        code = google_status.lower()
    error_type = error_type_for_status(status)
    if status == 504:
        error_type = "timeout_error"
    return ProviderError(status, message, error_type, code, None,
                         retry_after if status in (429, 503) else None)


def gemini_error(status: int, headers: Headers, body: bytes) -> ProviderError:
    try:
        payload: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        text = body[:500].decode("utf-8", "replace").strip()
        payload = {"error": {"message": text}} if text else None
    return gemini_error_from_payload(payload, status, retry_after_from(headers))


# -- the adapter -------------------------------------------------------------


def model_url(target: Target, action: str) -> str:
    base = (target.api_base or GEMINI_API_BASE).rstrip("/")
    if not base.endswith(("/v1beta", "/v1", "/v1alpha")):
        base += "/" + (target.api_version or "v1beta")
    model = target.model if target.model.startswith(("models/", "tunedModels/")) else (
        "models/" + target.model)
    return f"{base}/{quote(model, safe='/')}:{action}"


class GeminiAdapter:
    name = "gemini"
    speaks_openai = False

    def _headers(self, target: Target, *, stream: bool) -> Headers:
        auth = [("x-goog-api-key", target.api_key)] if target.api_key else []
        return call_headers(target, auth, stream=stream)

    def native_request(self, target: Target, action: str, body: bytes, *,
                       stream: bool) -> UpstreamCall:
        """``body`` (a Gemini API request) to the deployment's ``action``; a stream
        is asked for as server-sent events."""
        url = model_url(target, action) + "?alt=sse" if stream else model_url(target, action)
        return UpstreamCall("POST", url, self._headers(target, stream=stream), body)

    def chat_request(self, target: Target, body: dict[str, Any], *, stream: bool) -> UpstreamCall:
        action = "streamGenerateContent" if stream else "generateContent"
        return self.native_request(target, action, orjson.dumps(openai_to_gemini_request(body)),
                                   stream=stream)

    def chat_response(self, target: Target, status: int, headers: Headers,
                      body: bytes) -> dict[str, Any]:
        try:
            return gemini_to_openai_response(json_object(body, self.name), target.public_name)
        except SHAPE_ERRORS as exc:
            raise bad_shape("gemini", exc) from None

    def chat_stream_decoder(self, target: Target, *, include_usage: bool) -> GeminiStreamDecoder:
        return GeminiStreamDecoder(target.public_name, include_usage=include_usage)

    def embeddings_request(self, target: Target, body: dict[str, Any]) -> UpstreamCall:
        texts = embedding_texts(body, "gemini")
        model = target.model if target.model.startswith("models/") else "models/" + target.model
        requests: list[dict[str, Any]] = []
        for text in texts:
            item: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
            if body.get("dimensions"):
                item["outputDimensionality"] = body["dimensions"]
            requests.append(item)
        return UpstreamCall("POST", model_url(target, "batchEmbedContents"),
                            self._headers(target, stream=False),
                            orjson.dumps({"requests": requests}))

    def embeddings_response(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> dict[str, Any]:
        payload = json_object(body, self.name)
        data = [{"object": "embedding", "index": index,
                 "embedding": embedding.get("values", [])}
                for index, embedding in enumerate(payload.get("embeddings") or ())]
        return {"object": "list", "data": data, "model": target.public_name,
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    def error_from_upstream(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> ProviderError:
        return gemini_error(status, headers, body)


ADAPTER = GeminiAdapter()
