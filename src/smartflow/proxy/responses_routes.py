"""The OpenAI Responses API in front of the gateway: ``/v1/responses`` and its stored answers.

* ``POST /v1/responses``: the model picks the deployment. An OpenAI
  deployment gets the request natively at its ``/v1/responses`` (the body's
  bytes as they came unless the model name changes or a chain is expanded)
  and its answer, streamed or whole, errors included, comes back as it was
  sent. Any other deployment gets the request translated to the hub
  (chat-completions) shape and its answer translated back, streams as the
  full typed event sequence (``providers.responses_inbound``).
* ``previous_response_id``: answers are stored in Redis
  (``proxy.responses_store``), so the next turn may land on any worker or
  node. A stored chain is expanded here, for every provider (a native
  upstream then needs no state of its own); an id the gateway never stored
  goes to a native upstream as it came (it may be the upstream's own) and
  is a 404 for any other.
* ``GET /v1/responses/{id}``, ``DELETE``, ``GET .../input_items``: from the
  store, only to the key that made the answer (or an admin).

Errors use OpenAI's JSON error shape; a stream that fails midway ends with
the Responses ``error`` event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from smartflow.dialects import responses as responses_dialect
from smartflow.dialects.base import Dialect
from smartflow.dialects.checks import parse_json_object
from smartflow.gateway_error import GatewayError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.providers.base import ProviderAdapter, UpstreamCall, join_url
from smartflow.providers.openai import OPENAI_API_BASE, bearer_auth, call_headers
from smartflow.providers.responses_inbound import (
    ResponsesStreamEncoder,
    input_items_of,
    new_response_id,
    openai_response_to_responses,
    responses_request_to_openai,
)
from smartflow.proxy.call import Call, Principal
from smartflow.proxy.exchange import CallRunner, Exchange
from smartflow.proxy.openai_routes import body_with_model, requested_model, translated_reader
from smartflow.proxy.pipeline import Reply, Stage
from smartflow.proxy.relay import PassthroughTransform
from smartflow.proxy.responses_store import (
    ResponsesStore,
    StoredResponse,
    may_read,
    not_found_error,
    owner_of,
)

# Providers whose API has /v1/responses: the request goes there as it came.
NATIVE_PROVIDERS = frozenset({"openai"})
# Caller headers an OpenAI upstream may act on (beta features, the client's name).
FORWARDED_NATIVE_HEADERS = ("openai-beta", "user-agent", "originator", "session_id")
PREVIOUS_ID = "previous_response_id"
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20


def _for_native_upstream(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier turns as input for an upstream that never saw them: item ids
    name state only their maker holds, and a reasoning item without its
    encrypted content is such a reference too."""
    out: list[dict[str, Any]] = []
    for item in items:
        if item.get("type") == "reasoning" and not item.get("encrypted_content"):
            continue
        if "id" in item:
            item = {name: value for name, value in item.items() if name != "id"}
        out.append(item)
    return out


class ResponsesOperation:
    name = "responses"
    dialect: Dialect = responses_dialect.DIALECT

    def __init__(self, *, capture_stream_text: bool) -> None:
        self._capture = capture_stream_text

    def prepare(self, call: Call) -> None:
        body = parse_json_object(call.raw_body)
        facts = responses_dialect.validate_responses(body)
        call.body = body
        call.model = requested_model(call, facts.model)
        call.is_stream = facts.is_stream
        call.wants_usage = True

    def exchange_for(self, call: Call, adapter: ProviderAdapter) -> Exchange:
        target = call.target
        body = call.body
        assert target is not None and body is not None

        def keep(response: dict[str, Any]) -> None:
            call.response_object = response

        if target.provider in NATIVE_PROVIDERS:
            return self._native(call, body, keep)
        previous = body.get(PREVIOUS_ID)
        if previous and call.history is None:
            raise not_found_error(str(previous), PREVIOUS_ID)
        hub = responses_request_to_openai(body, prior_items=call.history or ())
        upstream_call = adapter.chat_request(target, hub, stream=call.is_stream)
        response_id = new_response_id()
        model = call.model

        def to_caller(completion: dict[str, Any]) -> dict[str, Any]:
            response = openai_response_to_responses(completion, response_id=response_id,
                                                     model=model, request=body)
            keep(response)
            return response

        def transform() -> responses_dialect.ResponsesFromOpenAI:
            return responses_dialect.ResponsesFromOpenAI(
                adapter.chat_stream_decoder(target, include_usage=True),
                ResponsesStreamEncoder(response_id, model, body), on_final=keep)

        return Exchange(upstream_call, translated_reader(adapter, target, to_caller), transform)

    def _native(self, call: Call, body: dict[str, Any],
                keep: Callable[[dict[str, Any]], None]) -> Exchange:
        target = call.target
        assert target is not None
        history = call.history
        if history is None:
            raw = body_with_model(call.raw_body, body, target.model)
        else:  # the stored turns replace the id the upstream never saw
            body = {name: value for name, value in body.items() if name != PREVIOUS_ID}
            body["model"] = target.model
            body["input"] = _for_native_upstream(history) + input_items_of(body)
            raw = orjson.dumps(body)
        headers = call_headers(target, bearer_auth(target.api_key), stream=call.is_stream)
        request = call.request
        for name in FORWARDED_NATIVE_HEADERS:
            value = request.header(name)
            if value is not None and not any(own == name for own, _ in headers):
                headers.append((name, value))
        url = join_url(target.api_base or OPENAI_API_BASE, "responses")
        upstream_call = UpstreamCall("POST", url, headers, raw)
        capture = self._capture

        def transform() -> PassthroughTransform:
            return PassthroughTransform(
                responses_dialect.ResponsesTap(capture_text=capture, on_final=keep),
                responses_dialect.error_event)

        return Exchange(upstream_call, None, transform, is_native=True)


class ResponsesHistoryStage(Stage):
    """Loads the earlier turns ``previous_response_id`` names onto the Call."""

    slot = "pre_call"

    def __init__(self, store: ResponsesStore) -> None:
        self._store = store

    async def on_enter(self, call: Call) -> Reply | None:
        body = call.body
        previous = body.get(PREVIOUS_ID) if body is not None else None
        if not previous:
            return None
        stored = await self._store.load(str(previous), wait_for_recent=True)
        if stored is None:
            return None  # the exchange decides: native upstreams may know it
        if not may_read(stored, call.identity):
            raise not_found_error(str(previous), PREVIOUS_ID)
        call.history = stored.conversation
        return None


class ResponsesStoreStage(Stage):
    """Keeps a successful answer for the next turn (unless ``store: false``)."""

    slot = "post_call"

    def __init__(self, store: ResponsesStore) -> None:
        self._store = store

    async def on_exit(self, call: Call) -> None:
        body = call.body
        if call.status != 200 or body is None or body.get("store") is False:
            return
        response = call.response_object
        if response is None and not call.is_stream and call.answer_body:
            try:
                parsed = orjson.loads(call.answer_body)
            except orjson.JSONDecodeError:
                return
            response = parsed if isinstance(parsed, dict) else None
        if response is None or response.get("status") not in ("completed", "incomplete"):
            return
        await self._store.save(response, input_items_of(body), call.history or [],
                               owner_of(call.identity))


def _error(error: GatewayError) -> Response:
    return Response(error.status, responses_dialect.DIALECT.error_body(error))


def _list_params(request: Request) -> tuple[int, str, str | None]:
    query = request.query
    raw_limit = (query.get("limit") or [str(DEFAULT_LIST_LIMIT)])[0]
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise GatewayError(400, f"limit: expected an integer from 1 to {MAX_LIST_LIMIT}, "
                                f"got {raw_limit!r}.", "invalid_request_error",
                           "invalid_value", "limit")
    order = (query.get("order") or ["desc"])[0]
    if order not in ("asc", "desc"):
        raise GatewayError(400, f"order: expected 'asc' or 'desc', got {order!r}.",
                           "invalid_request_error", "invalid_value", "order")
    after = query.get("after")
    return limit, order, after[0] if after else None


def input_items_page(stored: StoredResponse, limit: int, order: str,
                     after: str | None) -> dict[str, Any]:
    """One page of a stored response's input items, as OpenAI lists them."""
    items = list(stored.input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return {"object": "list", "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > limit}


def register_responses_routes(router: Router, runner: CallRunner, store: ResponsesStore,
                              *, capture_stream_text: bool) -> None:
    """``runner``'s pipeline must hold the ``ResponsesHistoryStage`` and
    ``ResponsesStoreStage`` of ``store``."""
    operation = ResponsesOperation(capture_stream_text=capture_stream_text)
    dialect = responses_dialect.DIALECT

    async def create(request: Request) -> Reply:
        return await runner.run(request, operation)

    async def readable(request: Request) -> StoredResponse | Response:
        principal = await runner.authenticate_only(request, dialect)
        if not isinstance(principal, Principal):
            return principal
        response_id = request.path_params["response_id"]
        try:
            stored = await store.load(response_id)
        except GatewayError as exc:
            return _error(exc)
        if stored is None or not may_read(stored, principal):
            return _error(not_found_error(response_id))
        return stored

    async def get(request: Request) -> Response:
        stored = await readable(request)
        if isinstance(stored, Response):
            return stored
        return Response(200, orjson.dumps(stored.response))

    async def delete(request: Request) -> Response:
        stored = await readable(request)
        if isinstance(stored, Response):
            return stored
        response_id = request.path_params["response_id"]
        try:
            await store.delete(response_id)
        except GatewayError as exc:
            return _error(exc)
        return Response(200, orjson.dumps({"id": response_id, "object": "response",
                                           "deleted": True}))

    async def input_items(request: Request) -> Response:
        stored = await readable(request)
        if isinstance(stored, Response):
            return stored
        try:
            limit, order, after = _list_params(request)
        except GatewayError as exc:
            return _error(exc)
        return Response(200, orjson.dumps(input_items_page(stored, limit, order, after)))

    router.add("POST", "/v1/responses", create)
    router.add("GET", "/v1/responses/{response_id}", get)
    router.add("DELETE", "/v1/responses/{response_id}", delete)
    router.add("GET", "/v1/responses/{response_id}/input_items", input_items)
