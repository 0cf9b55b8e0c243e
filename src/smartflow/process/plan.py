"""Every decision the supervisor makes, as one pure function.

`plan(state, now)` reads a `SupervisorState` snapshot and returns the
actions to take, in order, always ending in `Wait` or `Exit`. It does no
I/O and reads no clock, so a test can drive any scenario (crash loops,
wedged workers, rolling reloads, drains past their deadline) without a fork.

One pass, after gunicorn's arbiter:

1. signals: SIGTERM/SIGINT/SIGQUIT start a drain (a second one while an
   orderly drain runs kills everything); SIGHUP asks for a reload.
2. reaped children: an exit the supervisor asked for is noted; exit status
   3 (the worker could not bind) halts with 3 and is never respawned;
   anything else is a crash: it feeds the role's backoff, and too many
   within the window halt with 4.
3. while stopping: retire every worker, SIGKILL those past their drain
   deadline, exit once none is left.
4. otherwise, kill what must die (drain overdue, heartbeat older than
   worker_timeout, never ready after the boot timeout) and reconcile each
   role to its wanted count: spawn into the free slots (once the backoff
   allows), and once a generation is complete and ready, retire the older
   one (a reload brings new workers up before the old ones drain).
"""

from __future__ import annotations

import signal

from smartflow.process.backoff import RestartBackoff
from smartflow.process.exit_codes import (
    EXIT_BIND_FAILED,
    EXIT_CRASH_LOOP,
    EXIT_OK,
    EXIT_STARTUP_FAILED,
)
from smartflow.process.plan_types import (
    Action,
    ChildExit,
    Exit,
    Halt,
    HaltCause,
    Kill,
    KillReason,
    NoteExit,
    RecordCrash,
    Reload,
    ReportServing,
    RestartRedis,
    Retire,
    RoleState,
    Spawn,
    Stop,
    SupervisorState,
    Wait,
    WorkerState,
)

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


class _Pass:
    """The decisions of one pass, and what they change for the rest of it."""

    def __init__(self, state: SupervisorState, now: float) -> None:
        self.state = state
        self.now = now
        self.actions: list[Action] = []
        self.is_stopping = state.is_stopping
        self.exit_code = state.exit_code
        self.backoffs: dict[str, RestartBackoff] = {r.name: r.backoff for r in state.roles}
        self.retired: set[int] = set()
        self.killed: set[int] = set()

    # -- what this pass has already decided ---------------------------------------

    def is_retiring(self, worker: WorkerState) -> bool:
        return worker.is_retiring or worker.pid in self.retired

    def is_killed(self, worker: WorkerState) -> bool:
        return worker.is_killed or worker.pid in self.killed

    def begin_stop(self, exit_code: int) -> None:
        # The first failure decides the exit status; an operator's stop (0)
        # never hides one.
        if self.exit_code is None or self.exit_code == EXIT_OK:
            self.exit_code = exit_code
        self.is_stopping = True

    def retire(self, worker: WorkerState) -> None:
        timeouts = self.state.timeouts
        kill_at = self.now + timeouts.shutdown_timeout_s + timeouts.kill_grace_s
        self.actions.append(Retire(worker.pid, kill_at))
        self.retired.add(worker.pid)

    def kill(self, worker: WorkerState, reason: KillReason, silent_s: float | None = None) -> None:
        self.actions.append(Kill(worker.pid, signal.SIGKILL, reason, silent_s))
        self.killed.add(worker.pid)

    # -- the steps ------------------------------------------------------------------

    def handle_signals(self) -> bool:
        """Act on the stop signals; whether a reload was asked for."""
        wants_reload = False
        for sig in self.state.signals:
            if sig == signal.SIGHUP:
                wants_reload = True
            elif sig in STOP_SIGNALS:
                if not self.is_stopping:
                    self.actions.append(Stop(sig))
                    self.begin_stop(EXIT_OK)
                elif self.exit_code == EXIT_OK and sig != signal.SIGQUIT:
                    # A second Ctrl-C / SIGTERM: stop waiting for the drain.
                    for worker in self.state.workers:
                        if not self.is_killed(worker):
                            self.kill(worker, KillReason.STOP_FORCED)
            # SIGCHLD only wakes the loop: every pass reaps.
        return wants_reload

    def handle_exits(self) -> None:
        for child in self.state.exits:
            self.handle_exit(child)

    def handle_exit(self, child: ChildExit) -> None:
        if child.was_retiring or self.is_stopping:
            self.actions.append(NoteExit(child))
            return
        if child.exit_code == EXIT_BIND_FAILED:
            self.actions.append(Halt(EXIT_BIND_FAILED, HaltCause.BIND_FAILED, child.pid))
            self.begin_stop(EXIT_BIND_FAILED)
            return
        backoff = self.backoffs[child.role].after_death(self.now)
        self.backoffs[child.role] = backoff
        self.actions.append(RecordCrash(child, backoff))
        if backoff.is_crash_loop(self.now):
            self.actions.append(Halt(EXIT_CRASH_LOOP, HaltCause.CRASH_LOOP, child.pid))
            self.begin_stop(EXIT_CRASH_LOOP)

    def handle_redis(self) -> bool:
        """Whether a redis restart was asked for."""
        if self.is_stopping:
            return False
        if self.state.redis_failure is not None:
            self.actions.append(
                Halt(EXIT_STARTUP_FAILED, HaltCause.REDIS_FAILED, detail=self.state.redis_failure)
            )
            self.begin_stop(EXIT_STARTUP_FAILED)
            return False
        if self.state.is_redis_down:
            self.actions.append(RestartRedis())
            return True
        return False

    def kill_overdue(self) -> None:
        for worker in self.state.workers:
            if (worker.kill_at is not None and self.now >= worker.kill_at
                    and not self.is_killed(worker)):
                self.kill(worker, KillReason.DRAIN_OVERDUE)

    def drain(self) -> None:
        for worker in self.state.workers:
            if not self.is_retiring(worker):
                self.retire(worker)
        self.kill_overdue()

    def is_heartbeat_watched(self, worker: WorkerState) -> bool:
        # Before ready the boot timeout applies; a retiring worker has its
        # drain deadline (kill_at) instead.
        return (self.state.timeouts.worker_timeout_s > 0 and worker.is_ready
                and not self.is_retiring(worker) and not self.is_killed(worker)
                and not self.is_stopping)

    def kill_hung(self) -> None:
        worker_timeout_s = self.state.timeouts.worker_timeout_s
        for worker in self.state.workers:
            if not self.is_heartbeat_watched(worker):
                continue
            silent_s = self.now - worker.last_sign_of_life()
            if silent_s > worker_timeout_s:
                self.kill(worker, KillReason.HUNG, silent_s)

    def reconcile(self, role: RoleState) -> bool:
        """Bring `role` towards its wanted count; whether it is complete and ready."""
        generation = self.state.generation
        current = sorted(
            (w for w in self.state.workers
             if w.role == role.name and w.generation == generation and not self.is_retiring(w)),
            key=lambda w: w.slot,
        )
        if len(current) < role.wanted:
            if self.now >= self.backoffs[role.name].next_spawn_at:
                # A replacement takes the slot (and so the title) of the one it replaces.
                taken = {w.slot for w in current}
                free = [s for s in range(1, role.wanted + 1) if s not in taken]
                for slot in free[: role.wanted - len(current)]:
                    self.actions.append(Spawn(role.name, slot, generation))
        else:
            for extra in current[role.wanted:]:
                self.retire(extra)
            current = current[: role.wanted]
        is_complete = len(current) == role.wanted and all(w.is_ready for w in current)
        if is_complete:
            for worker in self.state.workers:
                if (worker.role == role.name and worker.generation != generation
                        and not self.is_retiring(worker)):
                    self.retire(worker)
        for worker in current:
            if (self.is_boot_watched(worker)
                    and self.now - worker.started_at > self.state.timeouts.boot_timeout_s):
                self.kill(worker, KillReason.BOOT_TIMEOUT)
        return is_complete

    def is_boot_watched(self, worker: WorkerState) -> bool:
        return (not worker.is_ready and worker.generation == self.state.generation
                and not self.is_retiring(worker) and not self.is_killed(worker)
                and not self.is_stopping)

    def report_serving(self) -> None:
        pids = tuple(
            w.pid for w in self.state.workers
            if w.generation == self.state.generation and not self.is_retiring(w)
        )
        self.actions.append(ReportServing(pids))

    def wait_timeout_s(self) -> float:
        """Until the next thing that is due without any event to announce it."""
        now = self.now
        timeouts = self.state.timeouts
        deadlines = [now + timeouts.idle_wakeup_s]
        deadlines.extend(b.next_spawn_at for b in self.backoffs.values() if b.next_spawn_at > now)
        for worker in self.state.workers:
            if self.is_killed(worker):
                continue  # its reap comes with a SIGCHLD
            if worker.pid in self.retired:
                deadlines.append(now + timeouts.shutdown_timeout_s + timeouts.kill_grace_s)
            elif worker.kill_at is not None:
                deadlines.append(worker.kill_at)
            if self.is_heartbeat_watched(worker):
                deadlines.append(worker.last_sign_of_life() + timeouts.worker_timeout_s)
            if self.is_boot_watched(worker):
                deadlines.append(worker.started_at + timeouts.boot_timeout_s)
        return max(0.0, min(deadlines) - now)


def plan(state: SupervisorState, now: float) -> list[Action]:
    """The actions for one pass of the arbiter loop, ending in Wait or Exit."""
    step = _Pass(state, now)
    wants_reload = step.handle_signals()
    step.handle_exits()
    wants_redis = step.handle_redis()
    if step.is_stopping:
        step.drain()
        if not state.workers:
            step.actions.append(Exit(step.exit_code if step.exit_code is not None else EXIT_OK))
            return step.actions
        step.actions.append(Wait(step.wait_timeout_s()))
        return step.actions
    step.kill_overdue()
    step.kill_hung()
    complete = [step.reconcile(role) for role in state.roles]
    if all(complete) and not state.has_reported_serving:
        step.report_serving()
    if wants_reload:
        # The new generation is spawned by the next pass, which plans with
        # the reloaded settings; it comes at once.
        step.actions.append(Reload())
    step.actions.append(Wait(0.0 if wants_reload or wants_redis else step.wait_timeout_s()))
    return step.actions
