"""GET /v1/models and GET /v1/models/{id}, in OpenAI's list shape."""

from __future__ import annotations

import orjson

from smartflow.dialects import openai as openai_dialect
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Handler
from smartflow.proxy.catalog import ModelNotFound
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.exchange import CallRunner

CREATED_AT = 1_700_000_000  # configured models have no creation date; a fixed one keeps clients happy


def _model_object(name: str, provider: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": CREATED_AT, "owned_by": provider}


def make_models_handlers(context: ProxyContext,
                         runner: CallRunner) -> tuple[Handler, Handler]:
    listing = orjson.dumps({"object": "list", "data": [
        _model_object(m.name, m.provider) for m in context.catalog.listed_models()]})

    async def list_models(request: Request) -> Response:
        refused = await runner.authenticate_only(request, openai_dialect.DIALECT)
        if refused is not None:
            return refused
        return Response(200, listing)

    async def get_model(request: Request) -> Response:
        refused = await runner.authenticate_only(request, openai_dialect.DIALECT)
        if refused is not None:
            return refused
        name = request.path_params.get("model_id", "")
        try:
            target = context.catalog.resolve(name)
        except ModelNotFound as exc:
            raise HTTPError(404, exc.message, "invalid_request_error", "model", "model_not_found") from None
        if not target:
            raise HTTPError(404)
        return Response(200, orjson.dumps(_model_object(name, target.provider)))

    return list_models, get_model
