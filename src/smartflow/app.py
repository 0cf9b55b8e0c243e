"""The gateway application: one Router holding every route a worker serves.

Operational routes live here (liveness, readiness, metrics, and the
benchmark-only routes); the LLM API routes are registered by
`smartflow.proxy.register_proxy_routes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

from smartflow.config import audit_enabled
from smartflow.http.request import Request
from smartflow.http.response import Response, StreamingResponse, error_response, json_response
from smartflow.http.router import Router
from smartflow.telemetry.metrics import METRICS_CONTENT_TYPE, render_metrics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis

    from smartflow.admin.context import AdminContext
    from smartflow.audit.log_query import LogReader
    from smartflow.config import Settings
    from smartflow.http.transport import RequestObserver
    from smartflow.policy.runtime import PolicyRuntime
    from smartflow.proxy.context import ProxyContext
    from smartflow.store.fast_client import StoreClient
    from smartflow.telemetry.access_log import AccessLog
    from smartflow.telemetry.metrics import RequestMetrics

logger = logging.getLogger("smartflow.app")

READINESS_PING_TIMEOUT_S = 1.0
MAX_BENCH_STREAM_CHUNKS = 10_000
MAX_BENCH_STREAM_INTERVAL_MS = 10_000

_HEALTH_BODY = b'{"status":"ok"}'
_READY_BODY = b'{"status":"ready"}'


def build_app(
    settings: Settings,
    redis: Redis,
    *,
    metrics_dir: str | None = None,
    on_shutdown: list[Callable[[], Awaitable[None]]] | None = None,
    store_url: str | None = None,
    index_name: str = "",
    consume_index_feed: bool = True,
    encoder: object | None = None,
    ner: object | None = None,
) -> Router:
    """The worker's Router: health, readiness, metrics, bench routes and the proxy.

    ``store_url``: the Redis holding keys, budgets and the vault; without it
    the proxy knows the master key only and there is no admin API.
    ``index_name``: the node's shared-memory embedding index, made by the
    supervisor ("": this process makes its own); ``consume_index_feed``:
    this process is the node's one consumer of the index feed. ``encoder``:
    the embedding model the supervisor loaded before forking (shared pages);
    ``ner`` likewise the guardrails' name-and-address model.

    Call it with the worker's event loop running. Whatever must be closed
    when the worker exits (the proxy's upstream pool) is appended to
    `on_shutdown`; the worker awaits each after draining.
    """
    router = Router()

    async def health(request: Request) -> Response:
        return Response(200, _HEALTH_BODY)

    async def ready(request: Request) -> Response:
        try:
            await asyncio.wait_for(redis.ping(), READINESS_PING_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            return error_response(
                503,
                f"Redis is not answering: {type(exc).__name__}: {exc}"[:300],
                type="server_error",
                code="redis_unavailable",
            )
        return Response(200, _READY_BODY)

    async def metrics(request: Request) -> Response:
        # Reading one small mmap file per process: a millisecond or so; not
        # worth a thread.
        return Response(200, render_metrics(metrics_dir), content_type=METRICS_CONTENT_TYPE)

    router.add("GET", "/health", health)
    router.add("GET", "/health/ready", ready)
    router.add("GET", "/metrics", metrics)
    if settings.server.bench_routes:
        _add_bench_routes(router)

    # The LLM proxy: imported here, not at module top, so the supervisor's
    # pre-fork import of this module stays light.
    from smartflow.proxy import build_proxy_context, register_proxy_routes

    keys = None
    store_client = None
    if store_url:
        from smartflow.keys.runtime import build_keys_runtime
        from smartflow.store.fast_client import create_store_client

        store_client = create_store_client(store_url, cluster=settings.state.redis_cluster,
                                           timeout_s=settings.state.redis_timeout)
        keys = build_keys_runtime(settings, store_client, redis_url=store_url)
        keys.start()
    proxy_context = build_proxy_context(settings, provider_environ=settings.provider_env,
                                        redis=redis, keys=keys)
    proxy_context.store = store_client
    if store_client is not None and store_url:
        from smartflow.routing.runtime import build_routing_runtime
        from smartflow.telemetry.alerts import build_alerter

        alerter = build_alerter(settings.alerts, pool=proxy_context.pool, client=store_client)
        proxy_context.routing = build_routing_runtime(
            settings, proxy_context.catalog, store_client, redis_url=store_url, alerter=alerter)
        proxy_context.routing.start()
    if store_client is not None and audit_enabled(settings):
        from smartflow.audit.runtime import build_audit_runtime

        proxy_context.audit = build_audit_runtime(settings, store_client)
        proxy_context.audit.start()
    _add_cache(settings, proxy_context, store_client, store_url, redis, on_shutdown,
               index_name=index_name, consume_index_feed=consume_index_feed, encoder=encoder)
    if settings.policy.enabled:
        from smartflow.policy.runtime import build_policy_runtime

        proxy_context.policy = build_policy_runtime(
            settings, store_client=store_client, redis_url=store_url,
            embeddings=proxy_context.embeddings, ner=ner)
        proxy_context.policy.start_soon()
    register_proxy_routes(router, proxy_context)
    if keys is not None:
        from smartflow.admin import register_admin_routes
        from smartflow.admin.context import build_admin_context

        config_chains = proxy_context.routing.config_chains if proxy_context.routing else ()
        admin = build_admin_context(settings, keys, proxy_context.pool,
                                    config_chains=config_chains)
        from smartflow.audit.log_query import build_log_reader

        log_reader = build_log_reader(settings.audit)  # no I/O: the pool opens on first use
        register_admin_routes(router, admin, log_reader)
        if log_reader is not None and on_shutdown is not None:
            on_shutdown.append(log_reader.aclose)
        if proxy_context.routing is not None:
            from smartflow.admin.routing_status_routes import register_routing_status_route

            register_routing_status_route(router, admin, proxy_context.routing)
        from smartflow.admin.cache_routes import register_cache_routes

        # SCAN must reach every shard of a cluster: the embeddings' cluster-aware
        # client (closed with them); off a cluster, the worker's own.
        embeddings = proxy_context.embeddings
        scan_client = (embeddings.redis if settings.state.redis_cluster and embeddings is not None
                       else redis)
        register_cache_routes(router, admin, proxy_context.cache, scan_client,
                              mode=settings.cache.mode)
        _add_policy_routes(router, admin, proxy_context.policy, log_reader)
    if on_shutdown is not None:
        on_shutdown.append(proxy_context.aclose)
        if store_client is not None:
            on_shutdown.append(store_client.aclose)
    return router


def _add_policy_routes(router: Router, admin: AdminContext, policy: PolicyRuntime | None,
                       log_reader: LogReader | None) -> None:
    """Guardrails, policies, attachments; documents and feedback; compliance."""
    from smartflow.admin.compliance_routes import register_compliance_routes

    register_compliance_routes(router, admin, log_reader)
    if policy is None or policy.store is None:
        return
    from smartflow.admin.policy_routes import register_policy_routes

    register_policy_routes(router, admin, policy.store, policy.engine)
    if policy.learning is not None:
        from smartflow.admin.learning_routes import register_learning_routes

        register_learning_routes(router, admin, policy.learning)


def _add_cache(settings: Settings, context: ProxyContext, store_client: StoreClient | None,
               store_url: str | None, redis: Redis,
               on_shutdown: list[Callable[[], Awaitable[None]]] | None, *,
               index_name: str, consume_index_feed: bool, encoder: object | None) -> None:
    """The local embedding model, the node's index, and the response cache."""
    import socket

    from smartflow.cache.runtime import FlushListener, build_cache
    from smartflow.config import cache_enabled, encoder_wanted, index_wanted
    from smartflow.embeddings.runtime import EmbeddingRuntime

    node_id = f"{socket.gethostname()}/{index_name or os.getpid()}"
    embeddings = EmbeddingRuntime(
        settings.embeddings, redis_url=store_url or "", cluster=settings.state.redis_cluster,
        node_id=node_id, index_name=index_name, encoder=encoder,
        consume_feed=consume_index_feed and bool(store_url) and index_wanted(settings))
    context.embeddings = embeddings
    embeddings.start(warm=encoder_wanted(settings))
    if store_client is None or not store_url or not cache_enabled(settings):
        return
    try:
        cache = build_cache(settings, store_client, embeddings)
    except Exception:  # the semantic tier's pieces; the exact tiers need none of them
        logger.exception("the semantic cache tier is off on this worker: setting it up failed")
        cache = build_cache(settings, store_client, None)
    context.cache = cache
    cache.stats.start()
    listener = FlushListener(cache, store_url)
    listener.start()
    if on_shutdown is not None:
        on_shutdown.append(listener.aclose)


def _add_bench_routes(router: Router) -> None:
    """Routes for benchmarks and process-model tests; only with server.bench_routes."""

    async def echo(request: Request) -> Response:
        content_type = request.header("content-type") or "application/octet-stream"
        return Response(200, await request.body(), content_type=content_type)

    async def stream(request: Request) -> StreamingResponse:
        chunks = _bounded_int(request, "chunks", 10, MAX_BENCH_STREAM_CHUNKS)
        interval_ms = _bounded_int(request, "interval_ms", 10, MAX_BENCH_STREAM_INTERVAL_MS)
        return StreamingResponse(
            _numbered_lines(chunks, interval_ms / 1000.0), content_type="text/plain"
        )

    async def worker(request: Request) -> Response:
        # Which worker answered: lets tests pin a connection to one process.
        return json_response({"pid": os.getpid()})

    router.add("POST", "/bench/echo", echo)
    router.add("GET", "/bench/stream", stream)
    router.add("GET", "/bench/worker", worker)


def _bounded_int(request: Request, name: str, default: int, maximum: int) -> int:
    from smartflow.http.errors import HTTPError

    values = request.query.get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise HTTPError(400, f"{name}: expected an integer", param=name) from None
    if not 0 <= value <= maximum:
        raise HTTPError(400, f"{name}: must be between 0 and {maximum}", param=name)
    return value


async def _numbered_lines(count: int, interval_s: float) -> AsyncIterator[bytes]:
    for index in range(count):
        if index and interval_s:
            await asyncio.sleep(interval_s)
        yield b"line %d\n" % index


class _BothObservers:
    """Metrics and access log behind the one observer slot the server has."""

    __slots__ = ("_access_log", "_metrics")

    def __init__(self, metrics: RequestMetrics, access_log: AccessLog) -> None:
        self._metrics = metrics
        self._access_log = access_log

    def on_request_start(self, request: Request) -> None:
        self._metrics.on_request_start(request)

    def on_request_end(
        self, request: Request, status: int, duration_s: float, bytes_sent: int, route: str
    ) -> None:
        self._metrics.on_request_end(request, status, duration_s, bytes_sent, route)
        self._access_log.on_request_end(request, status, duration_s, bytes_sent, route)


class RequestTelemetry:
    """A worker's per-request telemetry: the observer, and its periodic flush."""

    def __init__(self, metrics: RequestMetrics, access_log: AccessLog | None) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.observer: RequestObserver = (
            metrics if access_log is None else _BothObservers(metrics, access_log)
        )

    def flush(self) -> None:
        self.metrics.flush()
        if self.access_log is not None:
            self.access_log.flush()

    async def run_flusher(self, interval_s: float) -> None:
        """Flush every `interval_s` until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    self.flush()
                except Exception as exc:  # noqa: BLE001 - telemetry must not stop a worker
                    from smartflow.process.json_log import log_event

                    log_event("error", "telemetry_flush_failed",
                              message=f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                self.flush()

    def close(self) -> None:
        self.flush()
        if self.access_log is not None:
            self.access_log.close()
