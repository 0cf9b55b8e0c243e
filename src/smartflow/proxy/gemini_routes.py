"""The Gemini API in front of the gateway: ``/v1beta/models/{model}:{action}`` (and ``/v1``).

* ``:generateContent``, ``:streamGenerateContent`` (server-sent events, as
  with ``alt=sse``; the gateway does not write Google's JSON-array stream)
  and ``:countTokens``. The model in the path picks the deployment.
* A Gemini deployment gets the request natively (the body's bytes as they
  came: the model is in the URL) and its answer comes back as it was sent.
  Any other deployment gets it translated to the hub (chat-completions)
  shape and its answer translated back (``providers.gemini_inbound``);
  ``:countTokens`` is then estimated, and says so in
  ``x-smartflow-tokens-estimated: true``.
* The caller's key comes as ``x-goog-api-key`` or ``?key=`` (both are
  accepted by the authenticate stage); it never goes upstream.

Errors use Google's shape ``{"error":{"code":...,"message":...,"status":...}}``.
"""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.dialects import gemini as gemini_dialect
from smartflow.dialects.base import Dialect
from smartflow.dialects.checks import parse_json_object
from smartflow.gateway_error import GatewayError, Reason
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.providers.base import ProviderAdapter
from smartflow.providers.gemini import ADAPTER as GEMINI
from smartflow.providers.gemini_inbound import (
    GeminiStreamEncoder,
    estimate_gemini_tokens,
    gemini_request_to_openai,
    openai_response_to_gemini,
)
from smartflow.proxy.call import Call
from smartflow.proxy.exchange import CallRunner, Exchange
from smartflow.proxy.headers import TOKENS_ESTIMATED_HEADER
from smartflow.proxy.openai_routes import requested_model, translated_reader
from smartflow.proxy.pipeline import Reply

GENERATE = "generateContent"
STREAM = "streamGenerateContent"
COUNT_TOKENS = "countTokens"
ACTIONS = (GENERATE, STREAM, COUNT_TOKENS)


def split_model_action(model_action: str) -> tuple[str, str]:
    """``gemini-2.5-pro:generateContent`` -> (``gemini-2.5-pro``, ``generateContent``)."""
    model, sep, action = model_action.rpartition(":")
    if not sep or not model or action not in ACTIONS:
        raise GatewayError(404, f"Method not found: models/{model_action} (this gateway "
                                f"answers {', '.join(ACTIONS)}).", code="not_found",
                           reason=Reason.CLIENT)
    return model.removeprefix("models/"), action


class GeminiOperation:
    dialect: Dialect = gemini_dialect.DIALECT

    def __init__(self, action: str) -> None:
        self.action = action
        self.name = {GENERATE: "generate", STREAM: "generate",
                     COUNT_TOKENS: "count_tokens"}[action]

    def prepare(self, call: Call) -> None:
        body = parse_json_object(call.raw_body)
        model = call.request.path_params["model"]
        if self.action == COUNT_TOKENS:
            gemini_dialect.validate_gemini_count_tokens(body, model=model)
        else:
            gemini_dialect.validate_gemini(body, model=model, stream=self.action == STREAM)
        call.body = body
        call.model = requested_model(call, model)
        call.is_stream = self.action == STREAM

    def exchange_for(self, call: Call, adapter: ProviderAdapter) -> Exchange | Response:
        target = call.target
        body = call.body
        assert target is not None and body is not None
        if target.provider == "gemini":
            upstream_call = GEMINI.native_request(target, self.action, call.raw_body,
                                                  stream=call.is_stream)
            return Exchange(upstream_call, is_native=True)
        if self.action == COUNT_TOKENS:
            return Response(200, orjson.dumps({"totalTokens": estimate_gemini_tokens(body)}),
                            [(TOKENS_ESTIMATED_HEADER, "true")])
        model = call.model
        hub = gemini_request_to_openai(body, model=model, stream=call.is_stream)
        upstream_call = adapter.chat_request(target, hub, stream=call.is_stream)

        def transform() -> gemini_dialect.GeminiFromOpenAI:
            return gemini_dialect.GeminiFromOpenAI(
                adapter.chat_stream_decoder(target, include_usage=True),
                GeminiStreamEncoder(model))

        def to_caller(completion: dict[str, Any]) -> dict[str, Any]:
            return openai_response_to_gemini(completion, model=model)

        return Exchange(upstream_call, translated_reader(adapter, target, to_caller), transform)


def register_gemini_routes(router: Router, runner: CallRunner) -> None:
    operations = {action: GeminiOperation(action) for action in ACTIONS}
    dialect = gemini_dialect.DIALECT

    async def model_action(request: Request) -> Reply:
        try:
            model, action = split_model_action(request.path_params["model_action"])
        except GatewayError as exc:
            return Response(exc.status, dialect.error_body(exc))
        request.path_params["model"] = model
        return await runner.run(request, operations[action])

    # v1beta is what Google's SDKs and Gemini CLI call; v1 is the stable API.
    router.add("POST", "/v1beta/models/{model_action:path}", model_action)
    router.add("POST", "/v1/models/{model_action:path}", model_action)
