"""Gateway worker entry point: wiring only (the pieces live in src/smartflow/).

Runs in a child forked by the supervisor: binds its own SO_REUSEPORT socket,
starts a fresh uvloop, serves the app, tells the supervisor it is ready, and
on SIGTERM retires gracefully: accept what is already queued on its socket,
stop listening, drain in-flight requests and streams, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import pkgutil
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from smartflow.app import RequestTelemetry, build_app
from smartflow.http.transport import HTTPServer
from smartflow.process.binding import bind_listener
from smartflow.process.exit_codes import EXIT_BIND_FAILED, EXIT_OK
from smartflow.process.json_log import log_event
from smartflow.process.tls import build_server_ssl_context
from smartflow.process.worker_context import WorkerContext
from smartflow.proxy.errors import protocol_error_body
from smartflow.store.redis_client import create_redis_client
from smartflow.telemetry.access_log import AccessLog
from smartflow.telemetry.metrics import FLUSH_INTERVAL_S, RequestMetrics

# Test hook: a worker exits with this status right at boot (crash-loop tests).
BOOT_EXIT_ENV = "SMARTFLOW_TEST_WORKER_BOOT_EXIT"


def preload() -> None:
    """Import, in the supervisor before it forks, what every worker needs.

    Called after PROMETHEUS_MULTIPROC_DIR is set (prometheus_client reads it
    at import). Imported once here, the modules are shared copy-on-write by
    all workers, and a respawned worker is serving within milliseconds.
    """
    import prometheus_client.multiprocess  # noqa: F401
    import redis.asyncio  # noqa: F401
    import uvloop  # noqa: F401

    # The proxy's modules are imported lazily by build_app; importing them
    # here keeps that work out of every worker's boot (and off a respawn).
    import smartflow.admin
    import smartflow.identity
    import smartflow.keys
    import smartflow.policy
    import smartflow.providers
    import smartflow.proxy

    # The guardrails' modules too: their patterns compile at import (~0.3 s),
    # which every worker's first call would otherwise wait for.
    for package in (smartflow.proxy, smartflow.providers, smartflow.keys, smartflow.admin,
                    smartflow.identity, smartflow.policy):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            try:
                importlib.import_module(module.name)
            except ImportError:
                pass  # a part still being written: the worker runs without it


def run(context: WorkerContext) -> int:
    """The worker process's whole life; returns its exit status."""
    boot_exit = os.environ.get(BOOT_EXIT_ENV, "")
    if boot_exit.isdigit():
        log_event("error", "worker_boot_exit", message=f"{BOOT_EXIT_ENV}={boot_exit}")
        return int(boot_exit)
    server = context.settings.server
    try:
        sock = bind_listener(server.host, server.port)
    except OSError as exc:
        log_event("error", "bind_failed", host=server.host, port=server.port,
                  message=exc.strerror or str(exc))
        return EXIT_BIND_FAILED
    import uvloop

    if context.index_name or context.encoder is not None:
        # A worker is one core's worth of work: BLAS threads of its own would
        # only fight the other workers (a one-row product took 190 us, not 15).
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        threadpool_limits(1)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(context, sock))


async def _serve(context: WorkerContext, sock: socket.socket) -> int:
    settings = context.settings
    loop = asyncio.get_running_loop()
    retire = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, retire.set)

    redis = create_redis_client(context.redis_url)
    metrics = RequestMetrics()
    access_log = (
        AccessLog.open_in(Path(settings.server.data_dir)) if settings.server.access_log else None
    )
    telemetry = RequestTelemetry(metrics, access_log)
    closers: list[Callable[[], Awaitable[None]]] = []
    app = build_app(settings, redis, metrics_dir=context.metrics_dir, on_shutdown=closers,
                    store_url=context.redis_url, index_name=context.index_name,
                    encoder=context.encoder, ner=context.ner,
                    consume_index_feed=context.role == "gateway" and context.slot == 1)
    server = HTTPServer(
        app, settings.server, ssl_context=build_server_ssl_context(settings.server),
        observer=telemetry.observer, error_body_for=protocol_error_body,
    )
    await server.start(sock)
    context.report_ready()
    try:
        async with asyncio.TaskGroup() as tasks:
            heartbeat = tasks.create_task(context.beat_forever())
            flusher = tasks.create_task(telemetry.run_flusher(FLUSH_INTERVAL_S))
            await retire.wait()
            await server.accept_backlog_and_close_listener()
            await server.drain(settings.server.shutdown_timeout)
            flusher.cancel()
            heartbeat.cancel()
    finally:
        telemetry.close()
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
        with contextlib.suppress(Exception):
            await redis.aclose()
    return EXIT_OK
