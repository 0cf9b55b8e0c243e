"""The LLM proxy: OpenAI-compatible routes and Anthropic routes.

The worker builds one ``ProxyContext`` (``build_proxy_context(settings)``)
once its event loop runs, registers the routes with
``register_proxy_routes(router, context)``, and awaits ``context.aclose()``
when it shuts down.
"""

from __future__ import annotations

from smartflow.http.router import Router
from smartflow.proxy.context import ProxyContext, build_proxy_context

__all__ = ["ProxyContext", "build_proxy_context", "register_proxy_routes"]


def register_proxy_routes(router: Router, context: ProxyContext) -> ProxyContext:
    """Add /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models[/{id}],
    /v1/messages[/count_tokens] and /anthropic/{path} to ``router``.

    The caller owns ``context`` and closes it (its upstream pool) at shutdown.
    Returns the context.
    """
    from smartflow.proxy.anthropic_routes import register_anthropic_routes
    from smartflow.proxy.chat import make_chat_handler
    from smartflow.proxy.completions import make_completions_handler
    from smartflow.proxy.embeddings import make_embeddings_handler
    from smartflow.proxy.models import make_models_handlers

    router.add("POST", "/v1/chat/completions", make_chat_handler(context))
    router.add("POST", "/v1/completions", make_completions_handler(context))
    router.add("POST", "/v1/embeddings", make_embeddings_handler(context))
    list_models, get_model = make_models_handlers(context)
    router.add("GET", "/v1/models", list_models)
    router.add("GET", "/v1/models/{model_id:path}", get_model)
    register_anthropic_routes(router, context)
    return context
