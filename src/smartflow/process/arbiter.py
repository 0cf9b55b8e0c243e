"""The pre-fork supervisor: starts the embedded Redis, forks the processes
of each role (gateway workers today), keeps the wanted number alive, rolls
them on SIGHUP and drains them on SIGTERM/SIGINT. It does no request work.

The loop, after gunicorn's arbiter, in three steps a pass:

  gather   read the signals the self-pipe collected, the readiness pipes,
           reap exited children, read every heartbeat: one frozen
           SupervisorState;
  plan     `plan(state, now)` (plan.py) decides, purely;
  execute  carry out the actions in order: fork, signal, log, remember;
           the last one waits in `select()` (or exits).

The loop is a plain `select()`, not asyncio: forking from inside a running
event loop leaves each child sharing the parent's epoll state, and every
worker must start a fresh uvloop of its own.

Children:
  * each gateway worker binds its OWN listening socket (SO_REUSEPORT) after
    the fork; the supervisor only holds the port with a non-listening one;
  * a child writes one byte to its readiness pipe once it is serving;
  * a ready child stamps a shared-memory heartbeat every second; one whose
    heartbeat is older than `supervisor.worker_timeout` is wedged and is
    killed with SIGKILL, then reaped and replaced like any other death;
  * each carries a title: `smartflow: worker N`, N its slot in its role.

Log lines are single JSON objects on stderr.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

from smartflow.config import ConfigError, Settings, load_settings
from smartflow.process import startup
from smartflow.process.backoff import RestartBackoff
from smartflow.process.child import run_child
from smartflow.process.children import Children
from smartflow.process.exit_codes import EXIT_OK, StartupError
from smartflow.process.heartbeat import Heartbeat
from smartflow.process.json_log import install_json_logging, log_event
from smartflow.process.plan import plan
from smartflow.process.plan_types import (
    Action,
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
    Timeouts,
    Wait,
)
from smartflow.process.reload import merge_reloaded
from smartflow.process.roles import RoleSpec, default_roles, load_role_entry
from smartflow.process.signals import SignalPipe
from smartflow.process.title import SUPERVISOR_TITLE, set_process_title
from smartflow.process.worker_context import WorkerContext, WorkerEntry

if TYPE_CHECKING:
    from smartflow.store.embedded_redis import EmbeddedRedis
    from smartflow.telemetry.metrics import SupervisorMetrics


class Arbiter:
    """Runs the process tree until stopped; `run()` returns the exit status."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | None,
        overrides: Mapping[str, Mapping[str, object]] | None = None,
        roles: tuple[RoleSpec, ...] | None = None,
    ) -> None:
        self._settings = settings
        self._config_path = config_path
        self._overrides = overrides
        self._roles = {role.name: role for role in (roles or default_roles())}
        self._entries: dict[str, WorkerEntry] = {}
        self._generation = 1
        self._children = Children()
        self._backoffs = self._fresh_backoffs(settings)
        self._redis: EmbeddedRedis | None = None
        self._redis_url = settings.state.redis_url
        self._redis_failure: str | None = None
        self._metrics_dir = ""
        self._index_name = ""
        self._encoder: object | None = None
        self._ner: object | None = None
        self._supervisor_metrics: SupervisorMetrics | None = None
        self._port_holder: socket.socket | None = None
        self._signals = SignalPipe()
        self._is_stopping = False
        self._exit_code: int | None = None
        self._has_reported_serving = False
        self._pid = os.getpid()

    def _fresh_backoffs(self, settings: Settings) -> dict[str, RestartBackoff]:
        backoff = RestartBackoff.from_settings(settings.supervisor)
        return {name: backoff for name in self._roles}

    # -- start-up -----------------------------------------------------------------

    def run(self) -> int:
        try:
            self._start()
        except StartupError as exc:
            log_event("error", "startup_failed", message=str(exc))
            self._cleanup()
            return exc.exit_code
        except BaseException:
            self._cleanup()  # no redis-server or metrics dir left behind
            raise
        try:
            exit_code = self._loop()
        finally:
            self._cleanup()
        log_event("info", "stopped", exit_code=exit_code)
        return exit_code

    def _start(self) -> None:
        settings = startup.prepare_data_dir(self._settings)
        startup.check_tls(settings)
        # Installed before anything slow: a Ctrl-C during start-up is queued,
        # then handled by the loop like any other.
        self._signals.install()
        self._port_holder, settings = startup.hold_port(settings)
        self._settings = settings
        if not self._redis_url:
            self._redis = startup.launch_embedded_redis(settings)
            self._redis_url = self._redis.url
        self._metrics_dir = startup.prepare_metrics_dir(settings)
        self._index_name = startup.create_node_index(settings, self._pid)
        self._encoder = startup.preload_encoder(settings)
        self._ner = startup.preload_ner(settings)
        # The imports overlap with redis-server's own start-up.
        for role in self._roles.values():
            self._entries[role.name] = load_role_entry(role)
        if self._redis is not None:
            startup.wait_embedded_redis(self._redis)
            log_event("info", "redis_started", redis_pid=self._redis.pid, url=self._redis_url)
        from smartflow.telemetry.metrics import SupervisorMetrics

        self._supervisor_metrics = SupervisorMetrics()
        server = settings.server
        log_event(
            "info", "starting", host=server.host, port=server.port,
            workers=self._wanted_counts(), data_dir=server.data_dir,
            redis="embedded" if self._redis is not None else "external",
            config=self._config_path or "(built-in defaults)",
        )

    def _wanted_counts(self) -> dict[str, int] | int:
        counts = {name: role.count(self._settings) for name, role in self._roles.items()}
        running = {name: count for name, count in counts.items() if count} or counts
        # Gateway workers alone: the plain number, as the log has always said.
        return next(iter(running.values())) if len(running) == 1 else running

    # -- the loop -----------------------------------------------------------------

    def _loop(self) -> int:
        while True:
            state = self._gather()
            for action in plan(state, time.monotonic()):
                if isinstance(action, Exit):
                    return action.exit_code
                self._execute(action)

    def _gather(self) -> SupervisorState:
        signals = self._signals.read_pending()
        self._children.read_readiness()
        exits = self._children.reap()
        redis = self._redis
        settings = self._settings
        return SupervisorState(
            generation=self._generation,
            roles=tuple(
                RoleState(name, role.count(settings), self._backoffs[name])
                for name, role in self._roles.items()
            ),
            workers=self._children.snapshots(),
            timeouts=Timeouts(
                worker_timeout_s=settings.supervisor.worker_timeout,
                shutdown_timeout_s=settings.server.shutdown_timeout,
            ),
            exits=exits,
            signals=signals,
            is_stopping=self._is_stopping,
            exit_code=self._exit_code,
            has_reported_serving=self._has_reported_serving,
            is_redis_down=redis is not None and not redis.is_running(),
            redis_failure=self._redis_failure,
        )

    # -- carrying out the plan ----------------------------------------------------

    def _execute(self, action: Action) -> None:
        match action:
            case Spawn(role=role, slot=slot, generation=generation):
                self._spawn(self._roles[role], slot, generation)
            case Kill():
                self._kill(action)
            case Retire(pid=pid, kill_at=kill_at):
                retiring = self._children[pid]
                retiring.is_retiring = True
                retiring.kill_at = kill_at
                self._send(pid, signal.SIGTERM)
            case RecordCrash(child=child, backoff=backoff):
                self._backoffs[child.role] = backoff
                log_event("error", "worker_died", worker_pid=child.pid, role=child.role,
                          slot=child.slot, status=child.description, was_ready=child.was_ready,
                          recent_deaths=backoff.recent_deaths)
                if self._supervisor_metrics is not None:
                    self._supervisor_metrics.record_worker_restart()
            case NoteExit(child=child):
                level = "info" if child.exit_code == 0 else "warning"
                log_event(level, "worker_exited", worker_pid=child.pid, role=child.role,
                          status=child.description)
            case Stop(signal=sig):
                log_event("info", "stopping", signal=signal.Signals(sig).name,
                          shutdown_timeout_s=self._settings.server.shutdown_timeout)
                self._begin_stop(EXIT_OK)
            case Halt():
                log_event("error", "halt", message=self._halt_message(action),
                          exit_code=action.exit_code)
                self._begin_stop(action.exit_code)
            case Reload():
                self._reload()
            case RestartRedis():
                self._restart_redis()
            case ReportServing(pids=pids):
                self._has_reported_serving = True
                server = self._settings.server
                log_event("info", "serving", host=server.host, port=server.port,
                          url=f"http://{server.host}:{server.port}", worker_pids=list(pids))
            case Wait(timeout_s=timeout_s):
                self._wait(timeout_s)
            case Exit():
                raise AssertionError("Exit is handled by the loop")

    def _kill(self, action: Kill) -> None:
        child = self._children[action.pid]
        child.is_killed = True
        child.kill_at = None
        if action.reason is KillReason.HUNG:
            # The silence is logged unrounded: rounded, 2.0004 s past a 2 s
            # timeout would read as 2.0, as if it had not exceeded it.
            log_event("error", "worker_timeout", worker_pid=child.pid, role=child.role,
                      slot=child.slot, seconds_since_heartbeat=action.silent_s,
                      worker_timeout_s=self._settings.supervisor.worker_timeout,
                      message="worker event loop blocked; killing it with SIGKILL")
        elif action.reason is KillReason.DRAIN_OVERDUE:
            log_event("warning", "worker_killed", worker_pid=child.pid,
                      reason="did not exit within shutdown_timeout")
        elif action.reason is KillReason.BOOT_TIMEOUT:
            log_event("error", "worker_boot_timeout", worker_pid=child.pid)
        else:
            log_event("warning", "stop_forced", worker_pid=child.pid)
        self._send(child.pid, action.signal)

    def _halt_message(self, halt: Halt) -> str:
        if halt.cause is HaltCause.BIND_FAILED:
            server = self._settings.server
            return (f"worker {halt.worker_pid} could not bind {server.host}:{server.port}; "
                    "the address is in use or not available")
        if halt.cause is HaltCause.CRASH_LOOP:
            supervisor = self._settings.supervisor
            return (f"crash loop: {supervisor.crash_loop_restarts} worker deaths within "
                    f"{supervisor.crash_loop_window:g} s (supervisor.crash_loop_restarts = "
                    f"{supervisor.crash_loop_restarts}); see the worker errors above")
        return f"embedded redis: {halt.detail}"

    def _begin_stop(self, exit_code: int) -> None:
        # The first failure decides the exit status; an operator's stop (0)
        # never hides one. plan() applies the same rule.
        if self._exit_code is None or self._exit_code == EXIT_OK:
            self._exit_code = exit_code
        self._is_stopping = True
        if self._port_holder is not None:
            self._port_holder.close()
            self._port_holder = None

    def _wait(self, timeout_s: float) -> None:
        try:
            select.select([self._signals.read_fd, *self._children.ready_fds()], [], [], timeout_s)
        except InterruptedError:
            pass

    @staticmethod
    def _send(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _reload(self) -> None:
        try:
            fresh = load_settings(self._config_path, overrides=self._overrides)
        except ConfigError as exc:
            log_event("error", "reload_refused", message=str(exc),
                      detail="keeping the running workers and their config")
            return
        merged, needs_restart = merge_reloaded(self._settings, fresh)
        if needs_restart:
            log_event("warning", "reload_partial",
                      message="server.host/port/data_dir and [state] need a restart; "
                      "keeping the old values", keys=needs_restart)
        self._settings = merged
        # A fresh config gets a fresh crash history.
        self._backoffs = self._fresh_backoffs(merged)
        self._generation += 1
        log_event("info", "reloading", generation=self._generation,
                  workers=self._wanted_counts())

    def _restart_redis(self) -> None:
        redis = self._redis
        assert redis is not None
        log_event("error", "redis_died", message="embedded redis-server exited; restarting it")
        from smartflow.store.embedded_redis import EmbeddedRedisError

        try:
            redis.start()
        except EmbeddedRedisError as exc:
            self._redis_failure = str(exc)  # the next plan halts
            return
        log_event("info", "redis_restarted", redis_pid=redis.pid)

    # -- forking ------------------------------------------------------------------

    def _spawn(self, role: RoleSpec, slot: int, generation: int) -> None:
        entry = self._entries[role.name]

        def main(ready_fd: int, heartbeat: Heartbeat) -> NoReturn:
            context = WorkerContext(
                settings=self._settings, redis_url=self._redis_url,
                metrics_dir=self._metrics_dir, ready_fd=ready_fd, generation=generation,
                supervisor_pid=self._pid, role=role.name, slot=slot, heartbeat=heartbeat,
                index_name=self._index_name, encoder=self._encoder, ner=self._ner,
            )
            run_child(entry, context, title=role.title(slot),
                      release_inherited=self._release_in_child)

        pid = self._children.fork(role.name, slot, generation, main)
        log_event("info", "worker_started", worker_pid=pid, role=role.name, slot=slot,
                  generation=generation)

    def _release_in_child(self) -> None:
        """In a fresh child: drop what belongs to the supervisor alone."""
        self._signals.close()
        self._children.release_in_child()  # the siblings' pipes and heartbeats
        if self._port_holder is not None:
            self._port_holder.close()

    # -- shutdown -----------------------------------------------------------------

    def _cleanup(self) -> None:
        if self._port_holder is not None:
            self._port_holder.close()
            self._port_holder = None
        if self._redis is not None:
            self._redis.stop()
            log_event("info", "redis_stopped")
            self._redis = None
        self._signals.close()
        if self._index_name:
            startup.remove_node_index(self._index_name)
            self._index_name = ""
        if self._metrics_dir:
            import shutil

            shutil.rmtree(self._metrics_dir, ignore_errors=True)


def serve(
    settings: Settings,
    *,
    config_path: str | None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
) -> int:
    """Run the gateway until SIGTERM/SIGINT; the process exit status."""
    install_json_logging()
    set_process_title(SUPERVISOR_TITLE)
    return Arbiter(settings, config_path=config_path, overrides=overrides).run()


__all__ = ["Arbiter", "serve"]
