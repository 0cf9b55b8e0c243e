"""The supervisor's live children: forking them, hearing that they are
ready, reaping them, and what it remembers about each in between.

Each child gets, made before the fork, a readiness pipe (it writes one
byte once serving; EOF without it means it died first) and a page of shared
memory for its heartbeat. `snapshots()` turns the book into the frozen
`WorkerState`s the plan reads.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from smartflow.process.exit_codes import describe_wait_status
from smartflow.process.heartbeat import Heartbeat
from smartflow.process.json_log import log_event
from smartflow.process.plan_types import ChildExit, WorkerState
from smartflow.process.worker_context import READY_BYTE

# Runs in the forked child with its readiness pipe's write end and its heartbeat.
ChildMain = Callable[[int, Heartbeat], NoReturn]


@dataclass(slots=True)
class Child:
    """What the supervisor keeps about one live child."""

    pid: int
    role: str
    slot: int
    generation: int
    started_at: float
    heartbeat: Heartbeat
    ready_fd: int | None          # the readiness pipe's read end, until it has spoken
    ready_at: float | None = None
    is_retiring: bool = False
    kill_at: float | None = None
    is_killed: bool = False

    def snapshot(self) -> WorkerState:
        return WorkerState(
            pid=self.pid, role=self.role, slot=self.slot, generation=self.generation,
            started_at=self.started_at, ready_at=self.ready_at,
            last_beat=self.heartbeat.last_beat(), is_retiring=self.is_retiring,
            kill_at=self.kill_at, is_killed=self.is_killed,
        )


class Children:
    def __init__(self) -> None:
        self._by_pid: dict[int, Child] = {}

    def __getitem__(self, pid: int) -> Child:
        return self._by_pid[pid]

    def snapshots(self) -> tuple[WorkerState, ...]:
        return tuple(child.snapshot() for child in self._by_pid.values())

    def ready_fds(self) -> list[int]:
        """The readiness pipes still to be heard from (to wait on)."""
        return [c.ready_fd for c in self._by_pid.values() if c.ready_fd is not None]

    def fork(self, role: str, slot: int, generation: int, main: ChildMain) -> int:
        """Fork a child that runs `main` (which never returns); its pid."""
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        heartbeat = Heartbeat()
        # Objects made so far are never freed by the children: keep the
        # cyclic GC from touching (and so copying) their pages in every one.
        gc.freeze()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            main(ready_w, heartbeat)
        os.close(ready_w)
        self._by_pid[pid] = Child(
            pid=pid, role=role, slot=slot, generation=generation,
            started_at=time.monotonic(), heartbeat=heartbeat, ready_fd=ready_r,
        )
        return pid

    def read_readiness(self) -> None:
        """Mark the children whose readiness byte has arrived as ready."""
        waiting = {c.ready_fd: c for c in self._by_pid.values() if c.ready_fd is not None}
        if not waiting:
            return
        try:
            readable, _, _ = select.select(list(waiting), [], [], 0)
        except InterruptedError:
            return
        for fd in readable:
            child = waiting[fd]
            try:
                data = os.read(fd, 16)
            except OSError:
                data = b""
            os.close(fd)
            child.ready_fd = None
            if data.startswith(READY_BYTE):
                child.ready_at = time.monotonic()
                log_event("info", "worker_ready", worker_pid=child.pid, role=child.role,
                          slot=child.slot, generation=child.generation)
            # EOF without the byte: it died before it was ready; the reap says why.

    def reap(self) -> tuple[ChildExit, ...]:
        """Collect the children that have exited, and forget them."""
        exits: list[ChildExit] = []
        for pid in list(self._by_pid):
            try:
                waited_pid, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited_pid, status = pid, 0
            if waited_pid == 0:
                continue
            child = self._by_pid.pop(pid)
            if child.ready_fd is not None:
                os.close(child.ready_fd)
            child.heartbeat.close()
            from smartflow.telemetry.metrics import mark_worker_dead

            mark_worker_dead(pid)
            exit_code, description = describe_wait_status(status)
            exits.append(ChildExit(
                pid=pid, role=child.role, slot=child.slot, generation=child.generation,
                exit_code=exit_code, description=description,
                was_ready=child.ready_at is not None, was_retiring=child.is_retiring,
            ))
        return tuple(exits)

    def release_in_child(self) -> None:
        """In a freshly forked child: close the siblings' pipes and heartbeats."""
        for child in self._by_pid.values():
            if child.ready_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(child.ready_fd)
            child.heartbeat.close()
