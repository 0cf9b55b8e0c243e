"""The LLM proxy: OpenAI-compatible routes and Anthropic routes, on one call pipeline.

The worker builds one ``ProxyContext`` (``build_proxy_context(settings)``)
once its event loop runs, registers the routes with
``register_proxy_routes(router, context)``, and awaits ``context.aclose()``
when it shuts down.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from smartflow.http.router import Handler, Router
from smartflow.proxy.context import ProxyContext, build_proxy_context

logger = logging.getLogger("smartflow.proxy")

if TYPE_CHECKING:
    from smartflow.embeddings.runtime import EmbeddingRuntime
    from smartflow.http.request import Request
    from smartflow.http.response import Response
    from smartflow.proxy.call import Principal
    from smartflow.proxy.exchange import CallRunner
    from smartflow.proxy.pipeline import Stage

__all__ = ["ProxyContext", "build_proxy_context", "register_proxy_routes"]


def register_proxy_routes(router: Router, context: ProxyContext,
                          extra_stages: Iterable[Stage] = ()) -> ProxyContext:
    """Add /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models[/{id}],
    /v1/messages[/count_tokens], /anthropic/{path}, the Gemini API's
    /v1beta/models/{model}:{action} and /v1/responses[/{id}] to
    ``router``, every provider route running through one pipeline.

    ``extra_stages`` join the default ones (``proxy.stages.default_stages``),
    each in its slot. The caller owns ``context`` and closes it (its upstream
    pool) at shutdown. Returns the context.
    """
    from smartflow.proxy.anthropic_routes import register_anthropic_routes
    from smartflow.proxy.exchange import CallRunner, Operation
    from smartflow.proxy.gemini_routes import register_gemini_routes
    from smartflow.proxy.models import make_models_handlers
    from smartflow.proxy.openai_routes import (
        ChatOperation,
        CompletionsOperation,
        EmbeddingsOperation,
    )
    from smartflow.proxy.pipeline import Pipeline
    from smartflow.proxy.responses_routes import (
        ResponsesHistoryStage,
        ResponsesStoreStage,
        register_responses_routes,
    )
    from smartflow.proxy.responses_store import ResponsesStore
    from smartflow.proxy.stages import default_stages

    stages = [*default_stages(context), *extra_stages]
    runner = CallRunner(context, Pipeline(stages))

    def route_to(operation: Operation) -> Handler:
        # A partial, not a wrapping coroutine: one frame less on every call.
        return functools.partial(runner.run, operation=operation)

    router.add("POST", "/v1/chat/completions",
               route_to(ChatOperation(capture_stream_text=context.capture_stream_text)))
    router.add("POST", "/v1/completions", route_to(CompletionsOperation()))
    router.add("POST", "/v1/embeddings", route_to(EmbeddingsOperation()))
    list_models, get_model = make_models_handlers(context, runner)
    router.add("GET", "/v1/models", list_models)
    router.add("GET", "/v1/models/{model_id:path}", get_model)
    register_anthropic_routes(router, context, runner)
    register_gemini_routes(router, runner)
    # Only this route's pipeline pays for loading and keeping conversations.
    store = ResponsesStore(context.store, ttl_s=context.settings.responses.store_ttl,
                           max_bytes=context.settings.responses.max_stored_bytes)
    responses_runner = CallRunner(context, Pipeline(
        [*stages, ResponsesHistoryStage(store), ResponsesStoreStage(store)]))
    register_responses_routes(router, responses_runner, store,
                              capture_stream_text=context.capture_stream_text)
    embeddings = context.embeddings
    if (embeddings is not None and embeddings.has_store
            and context.settings.vector_stores.enabled):
        _add_vector_stores(router, context, embeddings, runner)
    return context


def _add_vector_stores(router: Router, context: ProxyContext, embeddings: EmbeddingRuntime,
                       runner: CallRunner) -> None:
    """/v1/vector_stores and /v1/rag: an optional feature; a failure to set it up
    is logged and leaves the rest of the gateway serving."""
    from smartflow.dialects import openai as openai_dialect
    from smartflow.vectorstores.routes import register_vector_store_routes
    from smartflow.vectorstores.service import VectorStoreService

    stores = context.settings.vector_stores

    async def authenticate(request: Request) -> Principal | Response:
        return await runner.authenticate_only(request, openai_dialect.DIALECT)

    try:
        service = VectorStoreService(
            embeddings.redis, embeddings.ready_batcher, embeddings.feed, embeddings.index,
            chunk_size=stores.chunk_size, chunk_overlap=stores.chunk_overlap,
            max_file_bytes=stores.max_file_bytes)
    except Exception:
        logger.exception("vector stores are off on this worker: setting them up failed")
        return
    register_vector_store_routes(router, service, authenticate)
