"""What a forked process is told by the supervisor, and how it answers
(readiness once, then heartbeats)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from smartflow.config import Settings
from smartflow.process.heartbeat import HEARTBEAT_INTERVAL_S, Heartbeat

READY_BYTE = b"R"


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """Everything a worker process is told by the supervisor."""

    settings: Settings          # server.port is the concrete port (never 0)
    redis_url: str
    metrics_dir: str
    ready_fd: int               # write one byte here once accepting
    generation: int
    supervisor_pid: int
    role: str                   # the role's name, "gateway"
    slot: int                   # 1..count within the role; a replacement keeps the slot
    heartbeat: Heartbeat | None = None  # beat every HEARTBEAT_INTERVAL_S once ready
    index_name: str = ""        # the node's shared-memory embedding index ("": none)
    encoder: object | None = None  # the embedding model, loaded before the fork (or None)
    ner: object | None = None  # the guardrails' NER model, loaded before the fork (or None)

    def report_ready(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, READY_BYTE)
            os.close(self.ready_fd)

    def report_alive(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()

    async def beat_forever(self) -> None:
        """Tell the supervisor this process's event loop is turning.

        It runs on the loop itself, so a loop blocked by a handler stops the
        beats, and the supervisor kills the process after supervisor.worker_timeout.
        """
        while True:
            self.report_alive()
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)


# A role's entry point: runs in the forked child, returns its exit status.
WorkerEntry = Callable[[WorkerContext], int]
