"""Audit shipper entry point: wiring only (the shipper is smartflow.audit.shipper).

Runs in a child forked by the supervisor (title ``smartflow: shipper``),
which restarts it like a worker when it dies. On SIGTERM it finishes the
batch in hand (or leaves it pending for its next life) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

from smartflow.audit.shipper import Shipper, ShipperMetrics, build_sinks
from smartflow.process.exit_codes import EXIT_OK
from smartflow.process.json_log import log_event
from smartflow.process.worker_context import WorkerContext
from smartflow.store.fast_client import create_store_client


def preload() -> None:
    """Import, before the fork, what the shipper needs (not the sinks' drivers:
    the gateway workers share this memory and never use them)."""
    import smartflow.audit.replay  # noqa: F401


# Shipping is background work: under full load the gateway workers get the
# CPU and the backlog waits in the stream; it drains as soon as there is slack.
SHIPPER_NICENESS = 10


def run(context: WorkerContext) -> int:
    import uvloop

    with contextlib.suppress(OSError):
        os.nice(SHIPPER_NICENESS)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_ship(context))


async def _ship(context: WorkerContext) -> int:
    settings = context.settings
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    client = create_store_client(context.redis_url, cluster=settings.state.redis_cluster,
                                 timeout_s=max(settings.state.redis_timeout, 5.0))
    # A stable name: a restarted shipper finds its predecessor's unacknowledged
    # batch under it and ships that first.
    consumer = f"{socket.gethostname()}:{context.slot}"
    shipper = Shipper(client, build_sinks(settings.audit), settings.audit, consumer=consumer,
                      metrics=ShipperMetrics())
    log_event("info", "shipper_started", consumer=consumer,
              sinks=[sink.name for sink in shipper.sinks])
    context.report_ready()
    heartbeat = loop.create_task(context.beat_forever())
    try:
        await shipper.run(stopping)
    finally:
        heartbeat.cancel()
        with contextlib.suppress(Exception):
            await shipper.aclose()
        with contextlib.suppress(Exception):
            await client.aclose()
    return EXIT_OK
