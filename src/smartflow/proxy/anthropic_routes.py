"""Anthropic's API in front of the gateway: native passthrough and /v1/messages.

* ``/anthropic/{path}`` (every method) goes to the Anthropic API as it came:
  all headers kept (anthropic-version, anthropic-beta, user-agent, ...)
  except hop-by-hop ones, host and accept-encoding (so the tap can read the
  stream); the caller's key replaced by the configured Anthropic key when
  there is one. The body passes byte for byte unless the model name carries
  Claude Code's ``[1m]`` suffix, which is stripped (only then is the JSON
  re-serialised). Streams are relayed as bytes, with a tap for usage.
* ``POST /v1/messages`` (and ``/v1/messages/count_tokens``): the model picks
  the target; an Anthropic target gets the same passthrough, any other is
  translated (``providers.anthropic_inbound``), streams included.
* ``HEAD`` probes (Claude Code sends them) on ``/``, ``/v1/messages`` and the
  ``/anthropic`` roots answer 200 locally.

Errors on these routes use Anthropic's shape ``{"type":"error","error":{...}}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response, StreamingResponse
from smartflow.providers.anthropic_inbound import (
    AnthropicStreamEncoder,
    anthropic_error_body,
    anthropic_request_to_openai,
    openai_response_to_anthropic,
)
from smartflow.providers.base import ProviderError, StreamDecoder, Target, UpstreamCall
from smartflow.proxy.accounting import cost_from, note_cost
from smartflow.proxy.catalog import ANTHROPIC_PUBLIC_API_BASE, ModelNotFound
from smartflow.proxy.chat import MODEL_OVERRIDE_HEADER, CallState, adapter_for
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.cost import estimate_prompt_tokens, prices_for
from smartflow.proxy.headers import cost_trailer
from smartflow.proxy.relay import (
    AnthropicTap,
    PassthroughTransform,
    StreamOutcome,
    StreamTransform,
    anthropic_error_event,
    anthropic_usage_from_message,
    openai_usage,
    relay,
)
from smartflow.proxy.upstream import Upstream, read_body, send
from smartflow.proxy.validation import (
    ChatRequestFacts,
    parse_json_object,
    validate_anthropic_messages,
)

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]

ONE_MILLION_SUFFIX = "[1m]"
_ONE_MILLION_SUFFIX_BYTES = b"[1m]"
DROPPED_REQUEST_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    "host", "content-length", "accept-encoding", MODEL_OVERRIDE_HEADER,
})
DROPPED_RESPONSE_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "content-length", "content-type", "content-encoding", "date", "server",
})
LOCAL_HEAD_PATHS = frozenset({"", "v1", "v1/messages", "v1/messages/count_tokens"})


def anthropic_error_response(status: int, message: str,
                             headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, orjson.dumps(anthropic_error_body(status, message)), headers or [])


def _anthropic_errors(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response | StreamingResponse:
        try:
            return await handler(request)
        except HTTPError as exc:
            return anthropic_error_response(exc.status, exc.message, exc.headers)
        except ProviderError as exc:
            return anthropic_error_response(exc.status, exc.message)

    return wrapped


def strip_one_million_suffix(model: str) -> str:
    return model.removesuffix(ONE_MILLION_SUFFIX)


class AnthropicUpstream:
    """Where native Anthropic traffic goes, and with which key."""

    __slots__ = ("api_base", "api_key")

    def __init__(self, context: ProxyContext) -> None:
        first = context.catalog.first_config_of("anthropic")
        self.api_base = (first.api_base if first is not None and first.api_base
                         else ANTHROPIC_PUBLIC_API_BASE).rstrip("/")
        self.api_key = context.catalog.provider_key("anthropic")

    def url(self, path: str, query_string: bytes, api_base: str | None = None) -> str:
        base = (api_base or self.api_base).rstrip("/")
        path = path.lstrip("/")
        if base.endswith("/v1") and (path == "v1" or path.startswith("v1/")):
            path = path[3:]
        url = f"{base}/{path}" if path else base
        return url + "?" + query_string.decode("latin-1") if query_string else url


def forward_headers(context: ProxyContext, request: Request,
                    api_key: str) -> list[tuple[str, str]]:
    """The caller's headers minus hop-by-hop ones; its key replaced by ``api_key`` if any."""
    authenticator = context.authenticator
    out: list[tuple[str, str]] = []
    for raw_name, raw_value in request.headers:
        name = raw_name.decode("latin-1")
        if name in DROPPED_REQUEST_HEADERS or name.startswith(":"):
            continue
        value = raw_value.decode("latin-1")
        if name == "authorization" or name == "x-api-key":
            if api_key:
                continue
            presented = value[7:].strip() if value[:7].lower() == "bearer " else value
            if authenticator.is_master_key(presented):
                continue  # the gateway's own key never goes upstream
        out.append((name, value))
    if api_key:
        out.append(("x-api-key", api_key))
    return out


def response_headers(upstream: Upstream) -> list[tuple[str, str]]:
    return [(name, value) for name, value in upstream.headers
            if name not in DROPPED_RESPONSE_HEADERS]


def _fallback_target(context: ProxyContext, model: str, api_base: str, api_key: str) -> Target:
    """A target for accounting when the model is not one the catalog resolves."""
    return Target(public_name=model or "anthropic", provider="anthropic", model=model,
                  api_base=api_base, api_key=api_key,
                  prices=prices_for(None, model, context.prices))


def _rewrite_model(raw: bytes, body: dict[str, Any] | None, model: str | None) -> bytes:
    """The body with ``model`` set; the very same bytes when nothing changes."""
    if body is None or model is None or body.get("model") == model:
        return raw
    body = dict(body)
    body["model"] = model
    return orjson.dumps(body)


async def passthrough(context: ProxyContext, request: Request, state: CallState,
                      url: str, headers: list[tuple[str, str]], body: bytes,
                      request_body: dict[str, Any] | None) -> Response | StreamingResponse:
    call = UpstreamCall(request.method, url, headers, body)
    try:
        upstream = await send(context, state.target, call)
    except ProviderError as exc:
        return anthropic_error_response(exc.status, exc.message, state.headers(None, 0.0))
    content_type = upstream.header("content-type") or "application/json"
    out_headers = response_headers(upstream)
    is_ok = 200 <= upstream.status < 300
    if is_ok and content_type.startswith("text/event-stream"):
        prompt_tokens = estimate_prompt_tokens(request_body or {})

        def on_end(outcome: StreamOutcome) -> bytes:
            cost = cost_from(state.target, outcome.usage, estimated_prompt_tokens=prompt_tokens,
                             estimated_completion_chars=outcome.approx_text_chars)
            note_cost(request, cost)
            return cost_trailer(cost.usd)

        transform = PassthroughTransform(
            AnthropicTap(capture_text=context.capture_stream_text), anthropic_error_event)
        proxy = context.settings.proxy
        chunks = relay(upstream.iter_bytes(), transform, close_source=upstream.aclose,
                       keepalive_interval_s=proxy.stream_keepalive_interval,
                       idle_timeout_s=proxy.stream_idle_timeout, on_end=on_end)
        headers_out = state.headers(None, None) + out_headers
        return StreamingResponse(chunks, upstream.status, headers_out, content_type)
    try:
        data = b"" if request.method == "HEAD" else await read_body(upstream)
    except ProviderError as exc:
        return anthropic_error_response(exc.status, exc.message, state.headers(None, 0.0))
    finally:
        if request.method == "HEAD":
            await upstream.aclose()
    usd = 0.0
    if is_ok and b'"usage"' in data:
        try:
            usage = anthropic_usage_from_message(orjson.loads(data))
        except orjson.JSONDecodeError:
            usage = None
        if usage is not None:
            cost = cost_from(state.target, usage, estimated_prompt_tokens=0,
                             estimated_completion_chars=0)
            note_cost(request, cost)
            usd = cost.usd
    return Response(upstream.status, data, state.headers(None, usd) + out_headers, content_type)


class AnthropicFromOpenAI:
    """A non-Anthropic stream (decoded to OpenAI chunks) re-encoded as Anthropic events."""

    __slots__ = ("_chars", "_decoder", "_encoder")

    def __init__(self, decoder: StreamDecoder, encoder: AnthropicStreamEncoder) -> None:
        self._decoder = decoder
        self._encoder = encoder
        self._chars = 0

    def _encode(self, chunks: list[dict[str, Any]]) -> bytes:
        out = []
        for chunk in chunks:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    self._chars += len(delta["content"])
            out.append(self._encoder.feed(chunk))
        return b"".join(out)

    def feed(self, data: bytes) -> bytes:
        return self._encode(self._decoder.feed(data))

    def close(self) -> bytes:
        return self._encode(self._decoder.close()) + self._encoder.finish()

    def error_event(self, error: ProviderError) -> bytes:
        return self._encoder.error(error)

    def outcome(self) -> StreamOutcome:
        return StreamOutcome(self._decoder.usage, self._decoder.finish_reason,
                             approx_text_chars=self._chars)


def register_anthropic_routes(router: Any, context: ProxyContext) -> None:
    native = AnthropicUpstream(context)

    def resolve(request: Request, model: str) -> Target:
        name = request.header(MODEL_OVERRIDE_HEADER) or model
        try:
            return context.catalog.resolve(strip_one_million_suffix(name))
        except ModelNotFound as exc:
            raise HTTPError(404, exc.message, code="model_not_found") from None

    async def head_ok(request: Request) -> Response:
        return Response(200, b"", content_type=None)

    @_anthropic_errors
    async def anthropic_passthrough(request: Request) -> Response | StreamingResponse:
        path = request.path_params.get("path", "")
        if request.method == "HEAD" and path.strip("/") in LOCAL_HEAD_PATHS:
            return Response(200, b"", content_type=None)
        context.authenticator.check(request)
        raw = b"" if request.method in ("GET", "HEAD") else await request.body()
        body: dict[str, Any] | None = None
        model = ""
        if raw and (request.header("content-type") or "").startswith("application/json"):
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                body = parsed
                if isinstance(parsed.get("model"), str):
                    model = parsed["model"]
        if _ONE_MILLION_SUFFIX_BYTES in raw and model.endswith(ONE_MILLION_SUFFIX):
            model = strip_one_million_suffix(model)
            raw = _rewrite_model(raw, body, model)
        target = _fallback_target(context, model, native.api_base, native.api_key)
        state = CallState(request, target)
        url = native.url(path, request.query_string)
        return await passthrough(context, request, state, url,
                                 forward_headers(context, request, native.api_key), raw, body)

    async def native_or_parsed(
        request: Request, upstream_path: str
    ) -> tuple[Response | StreamingResponse | None, CallState, dict[str, Any], ChatRequestFacts]:
        """Authenticate, parse and resolve an Anthropic-format request. For an
        Anthropic target it is forwarded natively to ``upstream_path`` and the
        response comes first; otherwise that is None and the caller answers."""
        context.authenticator.check(request)
        raw = await request.body()
        body = parse_json_object(raw)
        facts = validate_anthropic_messages(body)
        target = resolve(request, facts.model)
        state = CallState(request, target)
        if target.provider != "anthropic":
            return None, state, body, facts
        api_key = target.api_key or native.api_key
        url = native.url(upstream_path, request.query_string, target.api_base or None)
        response = await passthrough(context, request, state, url,
                                     forward_headers(context, request, api_key),
                                     _rewrite_model(raw, body, target.model), body)
        return response, state, body, facts

    @_anthropic_errors
    async def messages(request: Request) -> Response | StreamingResponse:
        response, state, body, facts = await native_or_parsed(request, "v1/messages")
        if response is not None:
            return response
        return await translated(request, state, body, facts.is_stream)

    async def translated(request: Request, state: CallState, body: dict[str, Any],
                         is_stream: bool) -> Response | StreamingResponse:
        target = state.target
        adapter = adapter_for(context, target)
        openai_body = anthropic_request_to_openai(body)  # ProviderError(400) on bad input
        call = adapter.chat_request(target, openai_body, stream=is_stream)
        try:
            upstream = await send(context, target, call)
        except ProviderError as exc:
            return anthropic_error_response(exc.status, exc.message, state.headers(None, 0.0))
        if not 200 <= upstream.status < 300:
            try:
                data = await read_body(upstream)
            except ProviderError as exc:
                return anthropic_error_response(exc.status, exc.message,
                                                state.headers(upstream, 0.0))
            error = adapter.error_from_upstream(target, upstream.status, upstream.headers, data)
            headers = state.headers(upstream, 0.0)
            if error.retry_after:
                headers.append(("retry-after", error.retry_after))
            return anthropic_error_response(error.status, error.message, headers)
        requested_model = str(body.get("model"))
        if not is_stream:
            try:
                data = await read_body(upstream)
                completion = adapter.chat_response(target, upstream.status, upstream.headers,
                                                   data)
            except ProviderError as exc:
                return anthropic_error_response(exc.status, exc.message,
                                                state.headers(upstream, 0.0))
            usage_obj = completion.get("usage")
            cost = cost_from(target, openai_usage(usage_obj) if usage_obj else None,
                             estimated_prompt_tokens=estimate_prompt_tokens(body),
                             estimated_completion_chars=0)
            note_cost(request, cost)
            message = openai_response_to_anthropic(completion, model=requested_model)
            return Response(200, orjson.dumps(message), state.headers(upstream, cost.usd))
        decoder = adapter.chat_stream_decoder(target, include_usage=True)
        transform: StreamTransform = AnthropicFromOpenAI(
            decoder, AnthropicStreamEncoder(requested_model))
        prompt_tokens = estimate_prompt_tokens(body)

        def on_end(outcome: StreamOutcome) -> bytes:
            cost = cost_from(target, outcome.usage, estimated_prompt_tokens=prompt_tokens,
                             estimated_completion_chars=outcome.approx_text_chars)
            note_cost(request, cost)
            return cost_trailer(cost.usd)

        proxy = context.settings.proxy
        chunks = relay(upstream.iter_bytes(), transform, close_source=upstream.aclose,
                       keepalive_interval_s=proxy.stream_keepalive_interval,
                       idle_timeout_s=proxy.stream_idle_timeout, on_end=on_end)
        headers = state.headers(upstream, None)
        headers.append(("cache-control", "no-cache"))
        return StreamingResponse(chunks, 200, headers, "text/event-stream")

    @_anthropic_errors
    async def count_tokens(request: Request) -> Response | StreamingResponse:
        response, state, body, _facts = await native_or_parsed(request,
                                                               "v1/messages/count_tokens")
        if response is not None:
            return response
        return Response(200, orjson.dumps({"input_tokens": estimate_prompt_tokens(body)}),
                        state.headers(None, 0.0))

    all_methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    router.add("HEAD", "/", head_ok)
    router.add("HEAD", "/anthropic", head_ok)
    router.add("HEAD", "/anthropic/", head_ok)
    router.add("HEAD", "/v1", head_ok)
    router.add(["POST"], "/v1/messages", messages)
    router.add(["HEAD"], "/v1/messages", head_ok)
    router.add(["POST"], "/v1/messages/count_tokens", count_tokens)
    router.add(["HEAD"], "/v1/messages/count_tokens", head_ok)
    router.add(all_methods, "/anthropic/{path:path}", anthropic_passthrough)
