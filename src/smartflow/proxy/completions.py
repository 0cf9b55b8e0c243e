"""POST /v1/completions (legacy text completions).

OpenAI-speaking adapters (openai, azure, openai_compatible, mock) get the
request as is. For the others the prompt becomes one user message, the chat
answer is turned back into a ``text_completion`` (streams too, chunk by
chunk); only a single prompt can be translated that way.
"""

from __future__ import annotations

from typing import Any

from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response, StreamingResponse
from smartflow.proxy.chat import (
    CallState,
    Handler,
    adapter_for,
    build_call,
    open_call,
    read_json_body,
    relay_json,
    resolve_target,
    stream_result,
)
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.relay import DecodingTransform, OpenAITap, PassthroughTransform
from smartflow.proxy.validation import validate_completions

_LEGACY_ONLY_FIELDS = ("prompt", "echo", "suffix", "best_of", "logprobs")


def completions_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise HTTPError(400, "This model takes a single text prompt on /v1/completions.",
                            param="prompt", code="unsupported_prompt")
        prompt = prompt[0]
    chat = {key: value for key, value in body.items() if key not in _LEGACY_ONLY_FIELDS}
    chat["messages"] = [{"role": "user", "content": prompt}]
    return chat


def chat_to_text_completion(completion: dict[str, Any]) -> dict[str, Any]:
    choices = []
    for position, choice in enumerate(completion.get("choices") or ()):
        message = choice.get("message") if isinstance(choice, dict) else None
        text = message.get("content") if isinstance(message, dict) else None
        choices.append({"text": text if isinstance(text, str) else "",
                        "index": choice.get("index", position) if isinstance(choice, dict)
                        else position,
                        "logprobs": None,
                        "finish_reason": choice.get("finish_reason")
                        if isinstance(choice, dict) else None})
    out = {"id": completion.get("id", ""), "object": "text_completion",
           "created": completion.get("created", 0), "model": completion.get("model", ""),
           "choices": choices}
    if completion.get("usage") is not None:
        out["usage"] = completion["usage"]
    return out


def chat_chunk_to_text_chunk(chunk: dict[str, Any]) -> dict[str, Any] | None:
    choices = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        finish = choice.get("finish_reason")
        if not text and not finish:
            continue
        choices.append({"text": text or "", "index": choice.get("index", 0), "logprobs": None,
                        "finish_reason": finish})
    usage = chunk.get("usage")
    if not choices and usage is None:
        return None
    out = {"id": chunk.get("id", ""), "object": "text_completion",
           "created": chunk.get("created", 0), "model": chunk.get("model", ""),
           "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def make_completions_handler(context: ProxyContext) -> Handler:
    async def completions(request: Request) -> Response | StreamingResponse:
        body = await read_json_body(context, request)
        facts = validate_completions(body)
        target = resolve_target(context, request, facts.model)
        adapter = adapter_for(context, target)
        native = adapter.speaks_openai and hasattr(adapter, "completions_request")
        state = CallState(request, target)
        if native:
            call = build_call(lambda: adapter.completions_request(  # type: ignore[attr-defined]
                target, body, stream=facts.is_stream))
        else:
            chat_body = completions_to_chat(body)
            call = build_call(lambda: adapter.chat_request(target, chat_body,
                                                           stream=facts.is_stream))
        upstream, failed = await open_call(state, context, adapter, call)
        if upstream is None:
            return failed  # type: ignore[return-value]
        if not facts.is_stream:
            if native:
                return await relay_json(state, upstream, body, None)
            return await relay_json(state, upstream, body, lambda raw: chat_to_text_completion(
                adapter.chat_response(target, upstream.status, upstream.headers, raw)))
        if native:
            transform = PassthroughTransform(OpenAITap())
        else:
            decoder = adapter.chat_stream_decoder(target, include_usage=facts.wants_usage)
            transform = DecodingTransform(decoder, reshape=chat_chunk_to_text_chunk)  # type: ignore[assignment]
        return stream_result(state, context, upstream, transform, body)

    return completions
