"""A mock of Google's Generative Language API (Gemini), on our own HTTP server.

Real paths (``/v1beta/models/{model}:{action}``), real auth (``x-goog-api-key``
or ``?key=``; an unknown key is 400 ``API_KEY_INVALID`` and a missing one 403,
as Google does), the function-call/function-response turn checks, a token
limit, ``?alt=sse`` streaming framed ``data: {...}\\r\\n\\r\\n`` (and a JSON array
without it), cumulative ``usageMetadata`` and deterministic answers (first or
allowed tool called when tools are offered; ``candidateCount`` honoured).
Embeddings: ``batchEmbedContents`` and ``embedContent``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from smartflow.http import Request, Response, Router, StreamingResponse, json_response

from .anthropic_mock import (
    api_key_of,
    before_answer,
    estimate_tokens,
    failure_response,
    knob,
    paced,
    sample_arguments,
    take_failure,
    words,
)
from .state import UpstreamState, record

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def gemini_error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message,
                      "status": _STATUS_NAMES.get(status, "UNKNOWN")}}


def _error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> Response:
    body = gemini_error(status, message)
    if details:
        body["error"]["details"] = details
    return json_response(body, status)


def _check_auth(state: UpstreamState, request: Request) -> Response | None:
    key = request.header("x-goog-api-key")
    if key is None:
        key = (request.query.get("key") or [None])[0]
    if key is None:
        return _error(403, "Method doesn't allow unregistered callers (callers without "
                           "established identity). Please use API Key or other form of API "
                           "consumer identity to call this API.")
    if key != api_key_of(state, "gemini"):
        return _error(400, "API key not valid. Please pass a valid API key.", [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
            "domain": "googleapis.com"}])
    return None


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
            return (f"* GenerateContentRequest.contents[{index}].role: Please use a valid role: "
                    "user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{index}].parts: contents.parts must not " \
                   "be empty."
        responses = [p["functionResponse"] for p in parts if "functionResponse" in p]
        if responses:
            previous = contents[index - 1] if index > 0 else {}
            calls = [p["functionCall"] for p in previous.get("parts") or () if
                     "functionCall" in p]
            if not calls:
                return ("Please ensure that function response turn comes immediately after a "
                        "function call turn.")
            if len(calls) != len(responses):
                return ("Please ensure that the number of function response parts is equal to "
                        "the number of function call parts of the function call turn.")
            if sorted(c.get("name") for c in calls) != sorted(r.get("name") for r in responses):
                return "function response names must match the function call names."
    return None


def _plan(state: UpstreamState, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    last_parts = body["contents"][-1].get("parts") or []
    responses = [p["functionResponse"] for p in last_parts if "functionResponse" in p]
    declarations = [d for tool in body.get("tools") or ()
                    for d in tool.get("functionDeclarations") or ()]
    config = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {})
    if declarations and not responses and config.get("mode", "AUTO") != "NONE":
        allowed = config.get("allowedFunctionNames") or []
        chosen = next((d for d in declarations if d.get("name") in allowed), declarations[0])
        return "", {"name": chosen.get("name", ""),
                    "args": sample_arguments(chosen.get("parameters"))}
    reply_text = knob(state, "reply_text", None)
    if reply_text is not None:
        return reply_text, None
    if responses:
        return "The tool returned: " + orjson.dumps(responses[0].get("response")).decode(), None
    said = "".join(str(p.get("text", "")) for p in last_parts)
    return f"You said: {said[:200]}", None


def _embedding(text: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % len(digest)] - 128) / 128, 6) for i in range(dimensions)]


def build_gemini_mock(state: UpstreamState) -> Router:
    router = Router()

    async def list_models(request: Request) -> Response:
        denied = _check_auth(state, request)
        if denied is not None:
            return denied
        return json_response({"models": [{"name": f"models/{name}", "displayName": name}
                                         for name in knob(state, "gemini_models",
                                                          ("gemini-2.5-flash",))]})

    async def model_action(request: Request) -> Response | StreamingResponse:
        recorded = await record(state, request)
        denied = _check_auth(state, request)
        if denied is not None:
            return denied
        model, sep, action = request.path_params["model_action"].rpartition(":")
        if not sep:
            return _error(404, f"models/{action} is not found for API version v1beta")
        failure = take_failure(state)
        if failure is not None:
            return failure_response(failure, gemini_error)
        body = recorded.json
        if recorded.body and body is None:
            return _error(400, "Invalid JSON payload received.")
        if action == "batchEmbedContents":
            items = body.get("requests") if isinstance(body, dict) else None
            if not isinstance(items, list) or not items:
                return _error(400, "* BatchEmbedContentsRequest.requests: requests is required")
            vectors = []
            for item in items:
                text = "".join(str(p.get("text", "")) for p in
                               ((item.get("content") or {}).get("parts") or ()))
                vectors.append({"values": _embedding(text, item.get("outputDimensionality", 8))})
            return json_response({"embeddings": vectors})
        if action == "embedContent":
            parts = ((body or {}).get("content") or {}).get("parts") or ()
            text = "".join(str(p.get("text", "")) for p in parts)
            return json_response({"embedding": {"values": _embedding(text, 8)}})
        if action not in ("generateContent", "streamGenerateContent", "countTokens"):
            return _error(404, f"Method {action} not found")
        problem = _validate(body)
        if problem is not None:
            return _error(400, problem)
        prompt_tokens = estimate_tokens([body.get("systemInstruction"), body["contents"],
                                         body.get("tools")])
        if action == "countTokens":
            return json_response({"totalTokens": prompt_tokens})
        window = int(knob(state, "context_window_tokens", 1_048_576))
        if prompt_tokens > window:
            return _error(400, f"The input token count ({prompt_tokens}) exceeds the maximum "
                               f"number of tokens allowed ({window}).")
        await before_answer(state)
        text, call = _plan(state, body)
        config = body.get("generationConfig") or {}
        candidate_count = int(config.get("candidateCount") or 1)
        pieces = words(text) if call is None else []
        finish = "STOP"
        limit = config.get("maxOutputTokens")
        if limit and len(pieces) > limit:
            pieces, finish = pieces[:limit], "MAX_TOKENS"
        output_tokens = len(pieces) if call is None else max(1, estimate_tokens(call))
        response_id = f"mockresp{len(state.requests):04d}"

        def usage(candidates_tokens: int) -> dict[str, Any]:
            metadata = {"promptTokenCount": prompt_tokens,
                        "candidatesTokenCount": candidates_tokens,
                        "totalTokenCount": prompt_tokens + candidates_tokens}
            cached = int(knob(state, "cached_tokens", 0))
            if cached:
                metadata["cachedContentTokenCount"] = cached
            return metadata

        def frame(parts: list[dict[str, Any]], finish_reason: str | None,
                  candidates_tokens: int) -> dict[str, Any]:
            candidates = []
            for index in range(candidate_count):
                candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"},
                                             "index": index}
                if finish_reason:
                    candidate["finishReason"] = finish_reason
                candidates.append(candidate)
            return {"candidates": candidates, "usageMetadata": usage(candidates_tokens),
                    "modelVersion": model, "responseId": response_id}

        if call is not None:
            frames = [frame([{"functionCall": call}], "STOP", output_tokens)]
        else:
            frames = [frame([{"text": piece}], finish if i == len(pieces) - 1 else None, i + 1)
                      for i, piece in enumerate(pieces)] or [frame([{"text": ""}], finish, 0)]
        if action == "generateContent":
            whole = [{"functionCall": call}] if call is not None else [{"text": "".join(pieces)}]
            return json_response(frame(whole, finish, output_tokens))
        if (request.query.get("alt") or [""])[0] != "sse":
            return json_response(frames)  # Gemini streams a JSON array without alt=sse

        # Google frames each event with CRLF line ends
        sse = [b"data: " + orjson.dumps(item) + b"\r\n\r\n" for item in frames]
        return StreamingResponse(paced(state, sse))

    router.add("GET", "/v1beta/models", list_models)
    router.add("POST", "/v1beta/models/{model_action}", model_action)
    return router
