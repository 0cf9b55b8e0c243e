"""Anthropic's API in front of the gateway: ``/v1/messages``, count_tokens and ``/anthropic/*``.

* ``POST /v1/messages`` and ``POST /anthropic/v1/messages`` (and their
  ``count_tokens``): the model picks the deployment. For a non-Anthropic
  deployment ``count_tokens`` is estimated, marked by
  ``x-smartflow-tokens-estimated: true``. An Anthropic deployment
  gets the request natively — headers kept (anthropic-version,
  anthropic-beta, user-agent, ...) except hop-by-hop ones, host and
  accept-encoding; the caller's key replaced by the deployment's; the body
  byte for byte unless the model name changes — and its answer, errors and
  streams included, comes back as it was sent. Any other deployment is
  translated (``providers.anthropic_inbound``), streams included, so Claude
  Code pointed at ``<gateway>/anthropic`` works with any configured model.
  On ``/anthropic`` a name the catalog does not know goes to Anthropic as it
  came; on ``/v1/messages`` it is a 404.
* Claude Code's ``[1m]`` model suffix is stripped before resolving.
* ``/anthropic/{path}`` (every other path and method) goes to the Anthropic
  API natively.
* ``HEAD`` probes (Claude Code sends them) on ``/``, ``/v1/messages`` and the
  ``/anthropic`` roots answer 200 locally.

Errors on these routes use Anthropic's shape ``{"type":"error","error":{...}}``.
"""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.dialects import anthropic as anthropic_dialect
from smartflow.dialects.anthropic import AnthropicFromOpenAI
from smartflow.dialects.base import Dialect
from smartflow.dialects.checks import parse_json_object
from smartflow.http.request import Request
from smartflow.http.response import Response, StreamingResponse
from smartflow.http.router import Router
from smartflow.providers.anthropic_inbound import (
    AnthropicStreamEncoder,
    anthropic_request_to_openai,
    openai_response_to_anthropic,
)
from smartflow.providers.base import ProviderAdapter, Target, UpstreamCall
from smartflow.proxy.call import Call
from smartflow.proxy.catalog import ANTHROPIC_PUBLIC_API_BASE
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.cost import estimate_prompt_tokens, prices_for
from smartflow.proxy.exchange import CallRunner, Exchange
from smartflow.proxy.headers import TOKENS_ESTIMATED_HEADER
from smartflow.proxy.openai_routes import (
    MODEL_OVERRIDE_HEADER,
    body_with_model,
    requested_model,
    translated_reader,
)

ONE_MILLION_SUFFIX = "[1m]"
_ONE_MILLION_SUFFIX_BYTES = b"[1m]"
DROPPED_REQUEST_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    "host", "content-length", "accept-encoding", MODEL_OVERRIDE_HEADER,
})
LOCAL_HEAD_PATHS = frozenset({"", "v1", "v1/messages", "v1/messages/count_tokens"})
MESSAGES_PATH = "v1/messages"
COUNT_TOKENS_PATH = "v1/messages/count_tokens"


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


def _native_target(native: AnthropicUpstream, context: ProxyContext, model: str) -> Target:
    """Where a name the catalog does not know goes on /anthropic: Anthropic itself."""
    return Target(public_name=model or "anthropic", provider="anthropic", model=model,
                  api_base=native.api_base, api_key=native.api_key,
                  prices=prices_for(None, model, context.prices))


class MessagesOperation:
    """``/v1/messages`` and its ``count_tokens``; see the module docstring."""

    dialect: Dialect = anthropic_dialect.DIALECT

    def __init__(self, context: ProxyContext, native: AnthropicUpstream, upstream_path: str,
                 *, unknown_models_go_native: bool) -> None:
        self._context = context
        self._native = native
        self._upstream_path = upstream_path
        self._unknown_models_go_native = unknown_models_go_native
        self.name = "count_tokens" if upstream_path == COUNT_TOKENS_PATH else "messages"

    def prepare(self, call: Call) -> None:
        body = parse_json_object(call.raw_body)
        facts = anthropic_dialect.validate_anthropic_messages(body)
        call.body = body
        call.model = strip_one_million_suffix(requested_model(call, facts.model))
        call.is_stream = facts.is_stream and self.name == "messages"
        if self._unknown_models_go_native:
            call.fallback_target = _native_target(self._native, self._context, call.model)

    def exchange_for(self, call: Call, adapter: ProviderAdapter) -> Exchange | Response:
        target = call.target
        body = call.body
        assert target is not None and body is not None
        if target.provider == "anthropic":
            native = self._native
            url = native.url(self._upstream_path, call.request.query_string,
                             target.api_base or None)
            headers = forward_headers(self._context, call.request,
                                      target.api_key or native.api_key)
            raw = body_with_model(call.raw_body, body, target.model)
            return Exchange(UpstreamCall("POST", url, headers, raw), is_native=True)
        if self.name == "count_tokens":
            # No counting endpoint elsewhere: an estimate (clients pace compaction with it).
            return Response(200, orjson.dumps({"input_tokens": estimate_prompt_tokens(body)}),
                            [(TOKENS_ESTIMATED_HEADER, "true")])
        requested = str(body.get("model"))
        upstream_call = adapter.chat_request(target, anthropic_request_to_openai(body),
                                             stream=call.is_stream)

        def transform() -> AnthropicFromOpenAI:
            return AnthropicFromOpenAI(adapter.chat_stream_decoder(target, include_usage=True),
                                       AnthropicStreamEncoder(requested))

        def to_caller(completion: dict[str, Any]) -> dict[str, Any]:
            return openai_response_to_anthropic(completion, model=requested)

        return Exchange(upstream_call, translated_reader(adapter, target, to_caller), transform)


class PassthroughOperation:
    """Any other ``/anthropic/{path}``: to the Anthropic API as it came."""

    name = "passthrough"
    dialect: Dialect = anthropic_dialect.DIALECT

    def __init__(self, context: ProxyContext, native: AnthropicUpstream) -> None:
        self._context = context
        self._native = native

    def prepare(self, call: Call) -> None:
        request = call.request
        raw = call.raw_body
        model = ""
        body: dict[str, Any] | None = None
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
            call.raw_body = body_with_model(raw, body, model)
        call.body = body
        call.model = model
        call.target = _native_target(self._native, self._context, model)

    def exchange_for(self, call: Call, adapter: ProviderAdapter) -> Exchange:
        request = call.request
        native = self._native
        url = native.url(request.path_params.get("path", ""), request.query_string)
        headers = forward_headers(self._context, request, native.api_key)
        return Exchange(UpstreamCall(request.method, url, headers, call.raw_body),
                        is_native=True)


def register_anthropic_routes(router: Router, context: ProxyContext, runner: CallRunner) -> None:
    native = AnthropicUpstream(context)
    messages_op = MessagesOperation(context, native, MESSAGES_PATH,
                                    unknown_models_go_native=False)
    count_op = MessagesOperation(context, native, COUNT_TOKENS_PATH,
                                 unknown_models_go_native=False)
    prefixed_messages_op = MessagesOperation(context, native, MESSAGES_PATH,
                                             unknown_models_go_native=True)
    prefixed_count_op = MessagesOperation(context, native, COUNT_TOKENS_PATH,
                                          unknown_models_go_native=True)
    passthrough_op = PassthroughOperation(context, native)

    async def head_ok(request: Request) -> Response:
        return Response(200, b"", content_type=None)

    async def messages(request: Request) -> Response | StreamingResponse:
        return await runner.run(request, messages_op)

    async def count_tokens(request: Request) -> Response | StreamingResponse:
        return await runner.run(request, count_op)

    async def anthropic_prefixed(request: Request) -> Response | StreamingResponse:
        path = request.path_params.get("path", "").strip("/")
        if request.method == "HEAD" and path in LOCAL_HEAD_PATHS:
            return Response(200, b"", content_type=None)
        if request.method == "POST" and path == MESSAGES_PATH:
            return await runner.run(request, prefixed_messages_op)
        if request.method == "POST" and path == COUNT_TOKENS_PATH:
            return await runner.run(request, prefixed_count_op)
        return await runner.run(request, passthrough_op)

    all_methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    router.add("HEAD", "/", head_ok)
    router.add("HEAD", "/anthropic", head_ok)
    router.add("HEAD", "/anthropic/", head_ok)
    router.add("HEAD", "/v1", head_ok)
    router.add(["POST"], "/v1/messages", messages)
    router.add(["HEAD"], "/v1/messages", head_ok)
    router.add(["POST"], "/v1/messages/count_tokens", count_tokens)
    router.add(["HEAD"], "/v1/messages/count_tokens", head_ok)
    router.add(all_methods, "/anthropic/{path:path}", anthropic_prefixed)
