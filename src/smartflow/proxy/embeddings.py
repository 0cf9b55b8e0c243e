"""POST /v1/embeddings."""

from __future__ import annotations

from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.proxy.chat import (
    CallState,
    Handler,
    adapter_for,
    build_call,
    open_call,
    read_json_body,
    relay_json,
    resolve_target,
)
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.validation import validate_embeddings


def make_embeddings_handler(context: ProxyContext) -> Handler:
    async def embeddings(request: Request) -> Response:
        body = await read_json_body(context, request)
        model = validate_embeddings(body)
        target = resolve_target(context, request, model)
        adapter = adapter_for(context, target)
        state = CallState(request, target)
        call = build_call(lambda: adapter.embeddings_request(target, body))
        upstream, failed = await open_call(state, context, adapter, call)
        if upstream is None:
            return failed  # type: ignore[return-value]
        decode = None if adapter.speaks_openai else (
            lambda raw: adapter.embeddings_response(target, upstream.status, upstream.headers,
                                                    raw))
        return await relay_json(state, upstream, body, decode)

    return embeddings  # type: ignore[return-value]
