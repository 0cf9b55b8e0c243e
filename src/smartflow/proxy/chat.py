"""POST /v1/chat/completions, and the call machinery the other OpenAI routes share.

Path of one call: auth -> parse + validate (400s before any upstream call)
-> resolve the model (404) -> adapter builds the upstream call -> send ->
non-2xx: the adapter's error in OpenAI's shape -> 2xx: bytes relayed as they
came when the upstream speaks OpenAI, else decoded by the adapter and
re-encoded. Cost and the x-smartflow-* headers are added on the way out.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response, StreamingResponse
from smartflow.providers import get_adapter
from smartflow.providers.base import ProviderAdapter, ProviderError, Target, UpstreamCall
from smartflow.proxy.accounting import (
    cost_from,
    note_call,
    note_cost,
    openai_completion_chars,
)
from smartflow.proxy.catalog import ModelNotFound
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.cost import estimate_prompt_tokens
from smartflow.proxy.errors import provider_error_response
from smartflow.proxy.headers import (
    cost_trailer,
    new_call_id,
    passthrough_headers,
    smartflow_headers,
)
from smartflow.proxy.relay import (
    DecodingTransform,
    OpenAITap,
    PassthroughTransform,
    StreamOutcome,
    StreamTransform,
    find_usage_object,
    openai_usage,
    relay,
)
from smartflow.proxy.upstream import Upstream, read_body, send
from smartflow.proxy.validation import parse_json_object, validate_chat

MODEL_OVERRIDE_HEADER = "x-smartflow-model"

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


def model_not_found(exc: ModelNotFound) -> HTTPError:
    return HTTPError(404, exc.message, "invalid_request_error", "model", "model_not_found")


def resolve_target(context: ProxyContext, request: Request, model: str) -> Target:
    override = request.header(MODEL_OVERRIDE_HEADER)
    try:
        return context.catalog.resolve(override or model)
    except ModelNotFound as exc:
        raise model_not_found(exc) from None


def adapter_for(context: ProxyContext, target: Target) -> ProviderAdapter:
    """The target's adapter, imported on first use and kept (no import machinery per call)."""
    adapter = context.adapters.get(target.provider)
    if adapter is not None:
        return adapter
    try:
        adapter = get_adapter(target.provider)
    except (KeyError, ImportError):
        raise HTTPError(500, f"No adapter for provider {target.provider!r}.",
                        "server_error") from None
    context.adapters[target.provider] = adapter
    return adapter


async def read_json_body(context: ProxyContext, request: Request) -> dict[str, Any]:
    context.authenticator.check(request)
    return parse_json_object(await request.body())


class CallState:
    """One proxied call: identity, timing and the headers it answers with."""

    __slots__ = ("call_id", "request", "started_s", "target")

    def __init__(self, request: Request, target: Target) -> None:
        self.request = request
        self.target = target
        self.call_id = new_call_id()
        self.started_s = time.perf_counter()
        note_call(request, target, self.call_id)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started_s) * 1000.0

    def headers(self, upstream: Upstream | None, cost_usd: float | None) -> list[tuple[str, str]]:
        out = smartflow_headers(self.call_id, self.target.provider, self.elapsed_ms(), cost_usd)
        if upstream is not None:
            out.extend(passthrough_headers(upstream.headers))
        return out

    def error(self, error: ProviderError, upstream: Upstream | None = None) -> Response:
        return provider_error_response(error, self.headers(upstream, 0.0))


def build_call(make: Callable[[], UpstreamCall]) -> UpstreamCall:
    """The adapter's call; its ProviderError (unsupported, bad shape) as an HTTPError."""
    try:
        return make()
    except ProviderError as exc:
        raise HTTPError(exc.status, exc.message, exc.type, exc.param, exc.code) from None


async def open_call(state: CallState, context: ProxyContext, adapter: ProviderAdapter,
                    call: UpstreamCall) -> tuple[Upstream | None, Response | None]:
    """(upstream, None) on 2xx; (None, error response) otherwise."""
    try:
        upstream = await send(context, state.target, call)
    except ProviderError as exc:
        return None, state.error(exc)
    if 200 <= upstream.status < 300:
        return upstream, None
    try:
        body = await read_body(upstream)
    except ProviderError as exc:
        return None, state.error(exc, upstream)
    error = adapter.error_from_upstream(state.target, upstream.status, upstream.headers, body)
    return None, state.error(error, upstream)


def json_result(state: CallState, upstream: Upstream, body: bytes, usage_obj: Any,
                request_body: dict[str, Any], completion: Any) -> Response:
    usage = openai_usage(usage_obj) if usage_obj is not None else None
    cost = cost_from(state.target, usage,
                     estimated_prompt_tokens=estimate_prompt_tokens(request_body),
                     estimated_completion_chars=openai_completion_chars(completion))
    note_cost(state.request, cost)
    return Response(200, body, state.headers(upstream, cost.usd))


async def relay_json(state: CallState, upstream: Upstream, request_body: dict[str, Any],
                     decode: Callable[[bytes], dict[str, Any]] | None) -> Response:
    """A whole JSON answer: the upstream's bytes when ``decode`` is None, else re-encoded."""
    try:
        raw = await read_body(upstream)
    except ProviderError as exc:
        return state.error(exc, upstream)
    if decode is None:
        # The bytes go out as they came; only the usage object is decoded.
        usage_obj = find_usage_object(raw)
        if usage_obj is not None:
            return json_result(state, upstream, raw, usage_obj, request_body, None)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return state.error(ProviderError(502, "The upstream returned a body that is not "
                                                  "JSON.", "server_error",
                                             "bad_upstream_response"), upstream)
        usage_obj = parsed.get("usage") if isinstance(parsed, dict) else None
        return json_result(state, upstream, raw, usage_obj, request_body, parsed)
    try:
        completion = decode(raw)
    except ProviderError as exc:
        return state.error(exc, upstream)
    return json_result(state, upstream, orjson.dumps(completion), completion.get("usage"),
                       request_body, completion)


def stream_result(state: CallState, context: ProxyContext, upstream: Upstream,
                  transform: StreamTransform, request_body: dict[str, Any]) -> StreamingResponse:
    prompt_tokens = estimate_prompt_tokens(request_body)

    def on_end(outcome: StreamOutcome) -> bytes:
        cost = cost_from(state.target, outcome.usage, estimated_prompt_tokens=prompt_tokens,
                         estimated_completion_chars=outcome.approx_text_chars)
        note_cost(state.request, cost)
        fields = getattr(state.request, "log_fields", None)
        if isinstance(fields, dict):
            if outcome.finish_reason:
                fields["finish_reason"] = outcome.finish_reason
            if outcome.error is not None:
                fields["stream_error"] = outcome.error.code or outcome.error.type
        return cost_trailer(cost.usd)

    proxy = context.settings.proxy
    chunks = relay(upstream.iter_bytes(), transform, close_source=upstream.aclose,
                   keepalive_interval_s=proxy.stream_keepalive_interval,
                   idle_timeout_s=proxy.stream_idle_timeout, on_end=on_end)
    headers = state.headers(upstream, None)
    headers.append(("cache-control", "no-cache"))
    return StreamingResponse(chunks, 200, headers, "text/event-stream")


def make_chat_handler(context: ProxyContext) -> Handler:
    capture_text = context.capture_stream_text

    async def chat_completions(request: Request) -> Response | StreamingResponse:
        body = await read_json_body(context, request)
        facts = validate_chat(body)
        target = resolve_target(context, request, facts.model)
        adapter = adapter_for(context, target)
        state = CallState(request, target)
        call = build_call(lambda: adapter.chat_request(target, body, stream=facts.is_stream))
        upstream, failed = await open_call(state, context, adapter, call)
        if upstream is None:
            return failed  # type: ignore[return-value]
        if not facts.is_stream:
            decode = None if adapter.speaks_openai else (
                lambda raw: adapter.chat_response(target, upstream.status, upstream.headers, raw))
            return await relay_json(state, upstream, body, decode)
        transform: StreamTransform
        if adapter.speaks_openai:
            transform = PassthroughTransform(OpenAITap(capture_text=capture_text))
        else:
            decoder = adapter.chat_stream_decoder(target, include_usage=facts.wants_usage)
            transform = DecodingTransform(decoder, capture_text=capture_text)
        return stream_result(state, context, upstream, transform, body)

    return chat_completions
