"""GET /v1/models and GET /v1/models/{id}, in OpenAI's list shape."""

from __future__ import annotations

import orjson

from smartflow.dialects import openai as openai_dialect
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Handler
from smartflow.keys.records import model_allowed
from smartflow.proxy.call import Principal
from smartflow.proxy.catalog import ModelNotFound
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.exchange import CallRunner

CREATED_AT = 1_700_000_000  # configured models have no creation date; a fixed one keeps clients happy


def _model_object(name: str, provider: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": CREATED_AT, "owned_by": provider}


def _visible(principal: Principal, name: str) -> bool:
    """A virtual key sees the models its key and team patterns allow."""
    entry = principal.entry
    if entry is None:
        return True
    return model_allowed(entry.key.models, name) and (
        entry.team is None or model_allowed(entry.team.models, name))


def make_models_handlers(context: ProxyContext,
                         runner: CallRunner) -> tuple[Handler, Handler]:
    routing = context.routing
    generation: int | None = None
    models: list[tuple[str, str]] = []
    listing = b""

    def current() -> tuple[list[tuple[str, str]], bytes]:
        """Config models, plus (with routing) groups and chains made through the
        admin API; rebuilt only when those change."""
        nonlocal generation, models, listing
        now = routing.generation if routing is not None else 0
        if generation != now:
            models = (routing.listed_models() if routing is not None else
                      [(m.name, m.provider) for m in context.catalog.listed_models()])
            listing = orjson.dumps({"object": "list", "data": [
                _model_object(name, provider) for name, provider in models]})
            generation = now
        return models, listing

    async def list_models(request: Request) -> Response:
        principal = await runner.authenticate_only(request, openai_dialect.DIALECT)
        if isinstance(principal, Response):
            return principal
        models, listing = current()
        if principal.entry is None:
            return Response(200, listing)
        return Response(200, orjson.dumps({"object": "list", "data": [
            _model_object(name, provider) for name, provider in models
            if _visible(principal, name)]}))

    async def get_model(request: Request) -> Response:
        principal = await runner.authenticate_only(request, openai_dialect.DIALECT)
        if isinstance(principal, Response):
            return principal
        name = request.path_params.get("model_id", "")
        listed = dict(current()[0])
        if name in listed:
            if not _visible(principal, name):
                raise HTTPError(404, f"The model {name!r} does not exist or you do not have "
                                     "access to it.", "invalid_request_error", "model",
                                "model_not_found")
            return Response(200, orjson.dumps(_model_object(name, listed[name])))
        try:
            target = context.catalog.resolve(name)
        except ModelNotFound as exc:
            raise HTTPError(404, exc.message, "invalid_request_error", "model", "model_not_found") from None
        if not target or not _visible(principal, name):
            raise HTTPError(404, f"The model {name!r} does not exist or you do not have access "
                                 "to it.", "invalid_request_error", "model", "model_not_found")
        return Response(200, orjson.dumps(_model_object(name, target.provider)))

    return list_models, get_model
