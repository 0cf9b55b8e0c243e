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

import orjson

from smartflow.dialects import gemini as gemini_dialect
from smartflow.dialects.base import Dialect
from smartflow.dialects.checks import parse_json_object
from smartflow.dialects.openai import openai_usage
from smartflow.gateway_error import GatewayError, Reason
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.providers.base import Headers, ProviderAdapter, UpstreamCall
from smartflow.providers.gemini import model_url
from smartflow.providers.gemini_inbound import (
    GeminiStreamEncoder,
    estimate_gemini_tokens,
    gemini_request_to_openai,
    openai_response_to_gemini,
)
from smartflow.providers.openai import call_headers
from smartflow.proxy.accounting import openai_completion_chars
from smartflow.proxy.call import Call
from smartflow.proxy.exchange import Answer, CallRunner, Exchange
from smartflow.proxy.headers import TOKENS_ESTIMATED_HEADER
from smartflow.proxy.openai_routes import requested_model
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
            url = model_url(target, self.action)
            if call.is_stream:
                url += "?alt=sse"
            auth = [("x-goog-api-key", target.api_key)] if target.api_key else []
            headers = call_headers(target, auth, stream=call.is_stream)
            return Exchange(UpstreamCall("POST", url, headers, call.raw_body), is_native=True)
        if self.action == COUNT_TOKENS:
            return Response(200, orjson.dumps({"totalTokens": estimate_gemini_tokens(body)}),
                            [(TOKENS_ESTIMATED_HEADER, "true")])
        model = call.model
        hub = gemini_request_to_openai(body, model=model, stream=call.is_stream)
        upstream_call = adapter.chat_request(target, hub, stream=call.is_stream)

        def read(raw: bytes, headers: Headers) -> Answer:
            completion = adapter.chat_response(target, 200, headers, raw)
            answer = openai_response_to_gemini(completion, model=model)
            return Answer(orjson.dumps(answer), openai_usage(completion.get("usage")),
                          openai_completion_chars(completion))

        def transform() -> gemini_dialect.GeminiFromOpenAI:
            return gemini_dialect.GeminiFromOpenAI(
                adapter.chat_stream_decoder(target, include_usage=True),
                GeminiStreamEncoder(model))

        return Exchange(upstream_call, read, transform)


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
