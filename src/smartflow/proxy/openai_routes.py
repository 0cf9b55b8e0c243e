"""The OpenAI routes: POST /v1/chat/completions, /v1/completions and /v1/embeddings.

Each is an ``Operation`` run by the one ``CallRunner``. An upstream that
speaks OpenAI's format gets the request as the caller sent it (model
replaced) and its answer is relayed byte for byte; any other provider's
adapter translates the request, and its answer is decoded and re-encoded
as OpenAI's (streams chunk by chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from smartflow.dialects import openai as openai_dialect
from smartflow.dialects.base import Dialect
from smartflow.dialects.checks import ChatRequestFacts, parse_json_object
from smartflow.dialects.openai import DecodingTransform, find_usage_object, openai_usage
from smartflow.http.response import Response
from smartflow.providers.base import Headers, ProviderAdapter, ProviderError, Target
from smartflow.proxy.accounting import openai_completion_chars
from smartflow.proxy.call import Call
from smartflow.proxy.completions import (
    chat_chunk_to_text_chunk,
    chat_to_text_completion,
    completions_to_chat,
)
from smartflow.proxy.exchange import Answer, Exchange

MODEL_OVERRIDE_HEADER = "x-smartflow-model"


def requested_model(call: Call, model: str) -> str:
    """The body's model, unless the caller overrides it with x-smartflow-model."""
    return call.request.header(MODEL_OVERRIDE_HEADER) or model


def body_with_model(raw: bytes, body: dict[str, Any] | None, model: str | None) -> bytes:
    """A native request's body with ``model`` set; the very same bytes when nothing
    changes (the common case: the upstream gets what the caller sent)."""
    if body is None or model is None or body.get("model") == model:
        return raw
    body = dict(body)
    body["model"] = model
    return orjson.dumps(body)


def relayed_answer(raw: bytes, headers: Headers) -> Answer:
    """An OpenAI answer relayed as it came: only its usage object is decoded."""
    usage_obj = find_usage_object(raw)
    if usage_obj is not None:
        return Answer(raw, openai_usage(usage_obj))
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProviderError(502, "The upstream returned a body that is not JSON.",
                            code="bad_upstream_response") from None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return Answer(raw, openai_usage(usage), openai_completion_chars(parsed))


def prepare_chat_like(call: Call, validate: Callable[[dict[str, Any]], ChatRequestFacts]) -> None:
    """Chat and legacy completions: parse, validate, and note what the call asks for."""
    body = parse_json_object(call.raw_body)
    facts = validate(body)
    call.body = body
    call.model = requested_model(call, facts.model)
    call.is_stream = facts.is_stream
    call.wants_usage = facts.wants_usage


def encoded_answer(completion: dict[str, Any]) -> Answer:
    return Answer(orjson.dumps(completion), openai_usage(completion.get("usage")),
                  openai_completion_chars(completion))


def translated_reader(adapter: ProviderAdapter, target: Target,
                      to_caller: Callable[[dict[str, Any]], dict[str, Any]]
                      ) -> Callable[[bytes, Headers], Answer]:
    """How a translated whole answer is read: the provider's body to the hub
    completion (its usage and text are what the call is billed on), then to
    the caller's format by ``to_caller``."""
    def read(raw: bytes, headers: Headers) -> Answer:
        completion = adapter.chat_response(target, 200, headers, raw)
        return Answer(orjson.dumps(to_caller(completion)), openai_usage(completion.get("usage")),
                      openai_completion_chars(completion))

    return read


def _as_is(completion: dict[str, Any]) -> dict[str, Any]:
    return completion


class ChatOperation:
    name = "chat"
    dialect: Dialect = openai_dialect.DIALECT

    def __init__(self, *, capture_stream_text: bool = False) -> None:
        self._capture = capture_stream_text

    def prepare(self, call: Call) -> None:
        prepare_chat_like(call, openai_dialect.validate_chat)

    def exchange_for(self, call: Call, adapter: ProviderAdapter) -> Exchange:
        target = call.target
        assert target is not None and call.body is not None
        upstream_call = adapter.chat_request(target, call.body, stream=call.is_stream)
        if adapter.speaks_openai:
            return Exchange(upstream_call, relayed_answer)
        capture = self._capture

        def transform() -> DecodingTransform:
            decoder = adapter.chat_stream_decoder(target, include_usage=call.wants_usage)
            return DecodingTransform(decoder, capture_text=capture)

        return Exchange(upstream_call, translated_reader(adapter, target, _as_is), transform)


class CompletionsOperation:
    """Legacy text completions; a chat translation for adapters without them
    (only a single prompt can be translated that way)."""

    name = "completions"
    dialect: Dialect = openai_dialect.DIALECT

    def prepare(self, call: Call) -> None:
        prepare_chat_like(call, openai_dialect.validate_completions)

    def exchange_for(self, call: Call, adapter: ProviderAdapter) -> Exchange:
        target = call.target
        assert target is not None and call.body is not None
        native: Callable[..., Any] | None = getattr(adapter, "completions_request", None)
        if adapter.speaks_openai and native is not None:
            return Exchange(native(target, call.body, stream=call.is_stream), relayed_answer)
        upstream_call = adapter.chat_request(target, completions_to_chat(call.body),
                                             stream=call.is_stream)

        def transform() -> DecodingTransform:
            decoder = adapter.chat_stream_decoder(target, include_usage=call.wants_usage)
            return DecodingTransform(decoder, reshape=chat_chunk_to_text_chunk)

        return Exchange(upstream_call,
                        translated_reader(adapter, target, chat_to_text_completion), transform)


class EmbeddingsOperation:
    name = "embeddings"
    dialect: Dialect = openai_dialect.DIALECT

    def prepare(self, call: Call) -> None:
        body = parse_json_object(call.raw_body)
        call.body = body
        call.model = requested_model(call, openai_dialect.validate_embeddings(body))

    def exchange_for(self, call: Call, adapter: ProviderAdapter) -> Exchange | Response:
        target = call.target
        assert target is not None and call.body is not None
        upstream_call = adapter.embeddings_request(target, call.body)
        if adapter.speaks_openai:
            return Exchange(upstream_call, relayed_answer)

        def read(raw: bytes, headers: Headers) -> Answer:
            return encoded_answer(adapter.embeddings_response(target, 200, headers, raw))

        return Exchange(upstream_call, read)
