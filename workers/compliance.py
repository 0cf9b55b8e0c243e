"""Compliance API entry point: wiring only (the server is smartflow.compliance.server).

Runs in a child forked by the supervisor (title ``smartflow: compliance``)
when ``[compliance] port`` is set, and is restarted like a worker when it
dies. It listens on its own port (not the gateway's), so compliance reports
keep answering while gateway workers restart or are saturated with calls.
On SIGTERM it finishes the requests in hand and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from smartflow.compliance.server import serve_compliance
from smartflow.process.exit_codes import EXIT_OK
from smartflow.process.json_log import log_event
from smartflow.process.worker_context import WorkerContext


def run(context: WorkerContext) -> int:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(context))


async def _serve(context: WorkerContext) -> int:
    settings = context.settings
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    heartbeat = loop.create_task(context.beat_forever())
    compliance = settings.compliance
    log_event("info", "compliance_started", host=compliance.host, port=compliance.port)
    try:
        await serve_compliance(settings, compliance.host, compliance.port,
                               store_url=context.redis_url, stop=stopping,
                               on_listening=context.report_ready)
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
    return EXIT_OK
