"""The pre-fork supervisor: starts the embedded Redis, forks gateway workers,
keeps the wanted number alive, rolls them on SIGHUP and drains them on
SIGTERM/SIGINT. It does no request work itself.

Shape (after gunicorn's arbiter): signal handlers do nothing but wake the loop
(`signal.set_wakeup_fd` writes the signal number into a self-pipe); one loop
waits in `select()` on that pipe and on the workers' readiness pipes, then
handles the signals (SIGCHLD reaps), then reconciles the worker set to what
is wanted. All decisions happen in the loop, none in a handler.

The loop is a plain `select()`, not asyncio: forking from inside a running
event loop leaves each child sharing the parent's epoll state, and every
worker must start a fresh uvloop of its own.

Workers:
  * each child binds its OWN listening socket (SO_REUSEPORT) after the fork,
    so the kernel spreads connections over workers and a worker that exits
    takes only its own queue with it;
  * a child writes one byte to its readiness pipe once it is accepting;
  * a ready child proves its event loop is turning by stamping the time into
    a shared-memory heartbeat every second; one whose heartbeat is older than
    `supervisor.worker_timeout` is wedged (a blocked loop never recovers by
    itself) and is killed with SIGKILL, then reaped and replaced like any
    other death;
  * exit status is a contract: 3 = could not bind (halt the gateway with 3,
    never respawn), anything else unexpected is a crash: respawn at once,
    then with exponential backoff; `crash_loop_restarts` crashes within
    `crash_loop_window` seconds halt the gateway with exit 4.

SIGHUP re-reads the config (an invalid one is logged and ignored), starts a
new generation of workers, and only once all of them are ready sends SIGTERM
to the old ones, which finish what they have in flight and exit.

Log lines are single JSON objects on stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import logging
import mmap
import os
import select
import signal
import socket
import ssl
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from smartflow.config import ConfigError, ServerSettings, Settings, load_settings, worker_count

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_CONFIG_ERROR = 2
EXIT_BIND_FAILED = 3
EXIT_CRASH_LOOP = 4

WORKER_BOOT_TIMEOUT_S = 30.0
WORKER_HEARTBEAT_INTERVAL_S = 1.0
# Retiring workers get shutdown_timeout to drain, plus this much to exit.
KILL_GRACE_S = 2.0
FIRST_BACKOFF_S = 0.1
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_IDLE_WAKEUP_S = 1.0
_PR_SET_PDEATHSIG = 1
_READY_BYTE = b"R"
_HEARTBEAT_STAMP = struct.Struct("d")
_HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def log_event(level: str, event: str, **fields: Any) -> None:
    """One JSON line on stderr (written with one os.write, so lines never tear)."""
    record = {"ts": round(time.time(), 3), "level": level, "event": event, "pid": os.getpid()}
    record.update(fields)
    line = orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
    with contextlib.suppress(OSError):
        os.write(2, line)


class JsonLinesHandler(logging.Handler):
    """Routes `logging` records (the HTTP server's, the proxy's) into the same
    single-line JSON format as `log_event`, tracebacks included as a field."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))
            log_event(record.levelname.lower(), "log", **fields)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def install_json_logging(level: int = logging.INFO) -> None:
    """Send every `logging` record to stderr as one JSON line (inherited by workers)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(JsonLinesHandler())
    root.setLevel(level)


class StartupError(Exception):
    """The gateway cannot start; carries the exit status to use."""

    def __init__(self, message: str, exit_code: int = EXIT_STARTUP_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Heartbeat:
    """When a worker's event loop last turned (`time.monotonic()`, which is
    system-wide on Linux), in a page of anonymous shared memory mapped before
    the fork: the worker stamps it and the supervisor reads it with plain
    memory accesses, no syscalls and no files, however many workers there are.
    """

    __slots__ = ("_memory",)

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, _HEARTBEAT_STAMP.size)  # MAP_SHARED: survives fork
        self.beat()

    def beat(self) -> None:
        _HEARTBEAT_STAMP.pack_into(self._memory, 0, time.monotonic())

    def last_beat(self) -> float:
        stamp: float = _HEARTBEAT_STAMP.unpack_from(self._memory, 0)[0]
        return stamp

    def close(self) -> None:
        self._memory.close()


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """Everything a worker process is told by the supervisor."""

    settings: Settings          # server.port is the concrete port (never 0)
    redis_url: str
    metrics_dir: str
    ready_fd: int               # write one byte here once accepting
    generation: int
    supervisor_pid: int
    heartbeat: Heartbeat | None = None  # beat every WORKER_HEARTBEAT_INTERVAL_S once ready

    def report_ready(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, _READY_BYTE)
            os.close(self.ready_fd)

    def report_alive(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()


WorkerEntry = Callable[[WorkerContext], int]


@dataclass(slots=True)
class _Worker:
    pid: int
    generation: int
    ready_fd: int | None
    started_at: float
    heartbeat: Heartbeat
    ready_at: float = 0.0
    is_ready: bool = False
    is_retiring: bool = False
    is_hung: bool = False       # killed for a stale heartbeat, not yet reaped
    kill_at: float | None = None

    def last_sign_of_life(self) -> float:
        # The ready time covers a worker whose first beat is not stamped yet.
        return max(self.heartbeat.last_beat(), self.ready_at)


class RestartBackoff:
    """When to start a replacement worker, and when crashing means stop trying.

    The first death in a quiet period is replaced at once (a one-off crash
    must heal fast); each further death within `window_s` doubles the wait,
    up to `max_delay_s`. `limit` deaths within `window_s` is a crash loop.
    """

    def __init__(self, *, limit: int, window_s: float, max_delay_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_delay_s = max_delay_s
        self._deaths: deque[float] = deque()
        self.next_spawn_at = 0.0

    def _prune(self, now: float) -> None:
        while self._deaths and now - self._deaths[0] > self.window_s:
            self._deaths.popleft()

    def record_death(self, now: float) -> None:
        self._prune(now)
        self._deaths.append(now)
        recent = len(self._deaths)
        delay_s = 0.0 if recent <= 1 else min(FIRST_BACKOFF_S * 2 ** (recent - 2), self.max_delay_s)
        self.next_spawn_at = max(self.next_spawn_at, now + delay_s)

    def is_crash_loop(self, now: float) -> bool:
        self._prune(now)
        return self.limit > 0 and len(self._deaths) >= self.limit

    @property
    def recent_deaths(self) -> int:
        return len(self._deaths)


def _describe_status(status: int) -> tuple[int | None, str]:
    """(exit code or None, human description) of a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return None, f"killed by {name}"
    code = os.waitstatus_to_exitcode(status)
    return code, f"exit status {code}"


def _set_parent_death_signal(sig: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def resolve_listen_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _type, _proto, _canon, address = infos[0]
    return family, address


def bind_listener(host: str, port: int, *, listen: bool = True, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (and SO_REUSEADDR).

    With `listen=False` the socket only holds the port: it takes no
    connections (Linux puts only listening sockets in the reuse-port group).
    """
    family, address = resolve_listen_address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        if listen:
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _is_something_listening(host: str, port: int) -> bool:
    try:
        family, address = resolve_listen_address(host, port)
        connect_to = address
        if family == socket.AF_INET and address[0] == "0.0.0.0":
            connect_to = ("127.0.0.1", port)
        elif family == socket.AF_INET6 and address[0] == "::":
            connect_to = ("::1", port, 0, 0)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.3)
            return probe.connect_ex(connect_to) == 0
    except OSError:
        return False


def build_server_ssl_context(server: ServerSettings) -> ssl.SSLContext | None:
    """The listening side's TLS context (ALPN: h2, then http/1.1), or None without TLS."""
    if not server.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def load_gateway_entry() -> WorkerEntry:
    """`workers.gateway.run`, imported now (before forking, so workers share it).

    `workers/` sits at the repository root, beside `src/`; when it is not on
    sys.path already (the console script, `python -m` from another dir) it is
    found relative to this package's source tree.
    """
    try:
        module = importlib.import_module("workers.gateway")
    except ModuleNotFoundError as exc:
        if exc.name not in ("workers", "workers.gateway"):
            raise
        root = Path(__file__).resolve().parents[2]
        if not (root / "workers" / "gateway.py").is_file():
            raise StartupError(
                f"worker entry point workers/gateway.py not found (looked in {root})"
            ) from None
        sys.path.insert(0, str(root))
        module = importlib.import_module("workers.gateway")
    preload = getattr(module, "preload", None)
    if preload is not None:
        preload()
    entry: WorkerEntry = module.run
    return entry


class Supervisor:
    """Runs the process tree until stopped; `run()` returns the exit status."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | None,
        overrides: Mapping[str, Mapping[str, object]] | None = None,
        worker_entry: WorkerEntry | None = None,
    ) -> None:
        self._settings = settings
        self._config_path = config_path
        self._overrides = overrides
        self._worker_entry = worker_entry
        self._generation = 1
        self._workers: dict[int, _Worker] = {}
        self._redis: Any = None  # EmbeddedRedis when embedded
        self._redis_url = settings.state.redis_url
        self._metrics_dir = ""
        self._supervisor_metrics: Any = None
        self._port_holder: socket.socket | None = None
        self._signal_r = -1
        self._signal_w = -1
        self._exit_code: int | None = None
        self._is_stopping = False
        self._has_reported_serving = False
        self._backoff = self._make_backoff(settings)
        self._pid = os.getpid()

    @staticmethod
    def _make_backoff(settings: Settings) -> RestartBackoff:
        return RestartBackoff(
            limit=settings.supervisor.crash_loop_restarts,
            window_s=settings.supervisor.crash_loop_window,
            max_delay_s=settings.supervisor.restart_backoff_max,
        )

    # -- start-up -----------------------------------------------------------------

    def run(self) -> int:
        try:
            self._start()
        except StartupError as exc:
            log_event("error", "startup_failed", message=str(exc))
            self._cleanup()
            return exc.exit_code
        try:
            self._loop()
        finally:
            self._cleanup()
        exit_code = self._exit_code if self._exit_code is not None else EXIT_OK
        log_event("info", "stopped", exit_code=exit_code)
        return exit_code

    def _start(self) -> None:
        server = self._settings.server
        data_dir = Path(server.data_dir).resolve()
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"server.data_dir: cannot create {data_dir}: {exc}") from None
        # Workers get the absolute path: nothing depends on their cwd.
        self._settings = _with_server(self._settings, data_dir=str(data_dir))
        try:
            build_server_ssl_context(self._settings.server)  # fail here, not in every worker
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(
                f"server.tls_cert_file: cannot load the certificate and key "
                f"({self._settings.server.tls_cert_file}, {self._settings.server.tls_key_file}): "
                f"{exc}",
                EXIT_CONFIG_ERROR,
            ) from None
        self._install_signal_handlers()
        self._hold_port()
        if not self._redis_url:
            # Refuses a data dir another running gateway owns, before we touch it.
            self._launch_embedded_redis(data_dir)
        # Must happen before anything imports prometheus_client: it chooses
        # its value class (mmap files or in-memory) once, at import.
        from smartflow.telemetry.metrics import prepare_multiprocess_dir

        self._metrics_dir = str(prepare_multiprocess_dir(data_dir))
        os.environ[MULTIPROC_ENV] = self._metrics_dir
        # The imports overlap with redis-server's own start-up.
        if self._worker_entry is None:
            self._worker_entry = load_gateway_entry()
        if self._redis is not None:
            self._wait_embedded_redis()
        from smartflow.telemetry.metrics import SupervisorMetrics

        self._supervisor_metrics = SupervisorMetrics()
        log_event(
            "info", "starting", host=server.host, port=self._settings.server.port,
            workers=worker_count(self._settings), data_dir=str(data_dir),
            redis="embedded" if self._redis is not None else "external",
            config=self._config_path or "(built-in defaults)",
        )

    def _install_signal_handlers(self) -> None:
        self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        for sig in _HANDLED_SIGNALS:
            # The handler does nothing: the C-level handler already wrote the
            # signal number to the wake-up pipe, which the loop reads.
            signal.signal(sig, _ignore_signal)

    def _hold_port(self) -> None:
        server = self._settings.server
        if server.port and _is_something_listening(server.host, server.port):
            raise StartupError(
                f"server.port: {server.host}:{server.port} is already in use by another process",
                EXIT_BIND_FAILED,
            )
        try:
            self._port_holder = bind_listener(server.host, server.port, listen=False)
        except OSError as exc:
            raise StartupError(
                f"server.port: cannot bind {server.host}:{server.port}: {exc.strerror or exc}",
                EXIT_BIND_FAILED,
            ) from None
        port = self._port_holder.getsockname()[1]
        if port != server.port:  # port 0: every worker must bind the port picked here
            self._settings = _with_server(self._settings, port=port)

    def _launch_embedded_redis(self, data_dir: Path) -> None:
        from smartflow.store.embedded_redis import EmbeddedRedis, EmbeddedRedisError

        redis = EmbeddedRedis(data_dir, self._settings.state.redis_server_bin)
        try:
            redis.launch()
        except EmbeddedRedisError as exc:
            raise StartupError(f"embedded redis: {exc}") from None
        self._redis = redis
        self._redis_url = redis.url

    def _wait_embedded_redis(self) -> None:
        from smartflow.store.embedded_redis import EmbeddedRedisError

        try:
            self._redis.wait_ready()
        except EmbeddedRedisError as exc:
            raise StartupError(f"embedded redis: {exc}") from None
        log_event("info", "redis_started", redis_pid=self._redis.pid, url=self._redis_url)

    # -- the loop -----------------------------------------------------------------

    def _loop(self) -> None:
        self._reconcile(time.monotonic())
        while True:
            if self._is_stopping and not self._workers:
                return
            ready_fds = {w.ready_fd: w for w in self._workers.values() if w.ready_fd is not None}
            try:
                readable, _, _ = select.select(
                    [self._signal_r, *ready_fds], [], [], self._wait_timeout_s()
                )
            except InterruptedError:
                readable = []
            signals: list[int] = []
            for fd in readable:
                if fd == self._signal_r:
                    signals.extend(self._read_signals())
                else:
                    self._on_ready_pipe(ready_fds[fd])
            for sig in signals:
                self._handle_signal(sig)
            self._reap()
            self._check_redis()
            self._reconcile(time.monotonic())

    def _wait_timeout_s(self) -> float:
        now = time.monotonic()
        deadlines = [now + _IDLE_WAKEUP_S]
        if self._backoff.next_spawn_at > now:
            deadlines.append(self._backoff.next_spawn_at)
        worker_timeout_s = self._settings.supervisor.worker_timeout
        for worker in self._workers.values():
            if worker.kill_at is not None:
                deadlines.append(worker.kill_at)
            if worker_timeout_s > 0 and self._is_heartbeat_watched(worker):
                deadlines.append(worker.last_sign_of_life() + worker_timeout_s)
        return max(0.0, min(deadlines) - now)

    def _read_signals(self) -> list[int]:
        signals: list[int] = []
        while True:
            try:
                data = os.read(self._signal_r, 256)
            except BlockingIOError:
                break
            if not data:
                break
            signals.extend(data)
        return signals

    def _on_ready_pipe(self, worker: _Worker) -> None:
        assert worker.ready_fd is not None
        try:
            data = os.read(worker.ready_fd, 16)
        except OSError:
            data = b""
        os.close(worker.ready_fd)
        worker.ready_fd = None
        if data.startswith(_READY_BYTE):
            worker.is_ready = True
            worker.ready_at = time.monotonic()
            log_event("info", "worker_ready", worker_pid=worker.pid, generation=worker.generation)
        # EOF without the byte: the worker died before it was ready; the reap
        # that follows says why.

    def _handle_signal(self, sig: int) -> None:
        if sig == signal.SIGCHLD:
            return  # every loop pass reaps
        if sig == signal.SIGHUP:
            self._reload()
        elif sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            if self._is_stopping:
                if self._exit_code == EXIT_OK and sig != signal.SIGQUIT:
                    # A second Ctrl-C / SIGTERM: stop waiting for the drain.
                    log_event("warning", "stop_forced")
                    self._kill_all(signal.SIGKILL)
                return
            log_event("info", "stopping", signal=signal.Signals(sig).name,
                      shutdown_timeout_s=self._settings.server.shutdown_timeout)
            self._begin_stop(EXIT_OK)

    # -- reaping and health ---------------------------------------------------------

    def _reap(self) -> None:
        now = time.monotonic()
        for pid in list(self._workers):
            try:
                waited_pid, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited_pid, status = pid, 0
            if waited_pid == 0:
                continue
            worker = self._workers.pop(pid)
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
            worker.heartbeat.close()
            from smartflow.telemetry.metrics import mark_worker_dead

            mark_worker_dead(pid)
            self._on_worker_exit(worker, status, now)

    def _on_worker_exit(self, worker: _Worker, status: int, now: float) -> None:
        code, description = _describe_status(status)
        if worker.is_retiring or self._is_stopping:
            level = "info" if code == 0 else "warning"
            log_event(level, "worker_exited", worker_pid=worker.pid, status=description)
            return
        if code == EXIT_BIND_FAILED:
            server = self._settings.server
            log_event(
                "error", "halt",
                message=f"worker {worker.pid} could not bind {server.host}:{server.port}; "
                "the address is in use or not available",
                exit_code=EXIT_BIND_FAILED,
            )
            self._begin_stop(EXIT_BIND_FAILED)
            return
        self._backoff.record_death(now)
        log_event(
            "error", "worker_died", worker_pid=worker.pid, status=description,
            was_ready=worker.is_ready, recent_deaths=self._backoff.recent_deaths,
        )
        if self._supervisor_metrics is not None:
            self._supervisor_metrics.record_worker_restart()
        if self._backoff.is_crash_loop(now):
            supervisor = self._settings.supervisor
            log_event(
                "error", "halt",
                message=f"crash loop: {self._backoff.recent_deaths} worker deaths within "
                f"{supervisor.crash_loop_window:g} s (supervisor.crash_loop_restarts = "
                f"{supervisor.crash_loop_restarts}); see the worker errors above",
                exit_code=EXIT_CRASH_LOOP,
            )
            self._begin_stop(EXIT_CRASH_LOOP)

    def _check_redis(self) -> None:
        redis = self._redis
        if redis is None or self._is_stopping or redis.is_running():
            return
        log_event("error", "redis_died", message="embedded redis-server exited; restarting it")
        from smartflow.store.embedded_redis import EmbeddedRedisError

        try:
            redis.start()
        except EmbeddedRedisError as exc:
            log_event("error", "halt", message=f"embedded redis: {exc}",
                      exit_code=EXIT_STARTUP_FAILED)
            self._begin_stop(EXIT_STARTUP_FAILED)
            return
        log_event("info", "redis_restarted", redis_pid=redis.pid)

    # -- reconcile ----------------------------------------------------------------

    def _reconcile(self, now: float) -> None:
        self._kill_overdue(now)
        if self._is_stopping:
            return
        self._kill_hung(now)
        wanted = worker_count(self._settings)
        current = sorted(
            (w for w in self._workers.values()
             if w.generation == self._generation and not w.is_retiring),
            key=lambda w: w.started_at,
        )
        if len(current) < wanted and now >= self._backoff.next_spawn_at:
            for _ in range(wanted - len(current)):
                self._spawn()
                if self._is_stopping:
                    return
            return
        for extra in current[: max(0, len(current) - wanted)]:
            self._retire(extra, now)
        if len(current) >= wanted and all(w.is_ready for w in current):
            for worker in list(self._workers.values()):
                if worker.generation != self._generation and not worker.is_retiring:
                    self._retire(worker, now)
            if not self._has_reported_serving:
                self._has_reported_serving = True
                server = self._settings.server
                log_event("info", "serving", host=server.host, port=server.port,
                          url=f"http://{server.host}:{server.port}",
                          worker_pids=[w.pid for w in current])
        for worker in current:
            if not worker.is_ready and now - worker.started_at > WORKER_BOOT_TIMEOUT_S:
                log_event("error", "worker_boot_timeout", worker_pid=worker.pid)
                self._signal(worker.pid, signal.SIGKILL)
                worker.kill_at = None

    def _kill_overdue(self, now: float) -> None:
        for worker in self._workers.values():
            if worker.kill_at is not None and now >= worker.kill_at:
                log_event("warning", "worker_killed", worker_pid=worker.pid,
                          reason="did not exit within shutdown_timeout")
                self._signal(worker.pid, signal.SIGKILL)
                worker.kill_at = None

    def _is_heartbeat_watched(self, worker: _Worker) -> bool:
        # Before ready the boot timeout applies; a retiring worker has its
        # drain deadline (kill_at) instead.
        return (worker.is_ready and not worker.is_retiring and not worker.is_hung
                and not self._is_stopping)

    def _kill_hung(self, now: float) -> None:
        worker_timeout_s = self._settings.supervisor.worker_timeout
        if worker_timeout_s <= 0:
            return
        for worker in self._workers.values():
            if not self._is_heartbeat_watched(worker):
                continue
            silent_s = now - worker.last_sign_of_life()
            if silent_s > worker_timeout_s:
                log_event("error", "worker_timeout", worker_pid=worker.pid,
                          seconds_since_heartbeat=round(silent_s, 3),
                          worker_timeout_s=worker_timeout_s,
                          message="worker event loop blocked; killing it with SIGKILL")
                worker.is_hung = True
                self._signal(worker.pid, signal.SIGKILL)

    def _retire(self, worker: _Worker, now: float) -> None:
        worker.is_retiring = True
        worker.kill_at = now + self._settings.server.shutdown_timeout + KILL_GRACE_S
        self._signal(worker.pid, signal.SIGTERM)

    def _begin_stop(self, exit_code: int) -> None:
        if self._exit_code is None or self._exit_code == EXIT_OK:
            self._exit_code = exit_code
        self._is_stopping = True
        if self._port_holder is not None:
            self._port_holder.close()
            self._port_holder = None
        now = time.monotonic()
        for worker in self._workers.values():
            if not worker.is_retiring:
                self._retire(worker, now)

    def _kill_all(self, sig: int) -> None:
        for pid in self._workers:
            self._signal(pid, sig)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _reload(self) -> None:
        try:
            fresh = load_settings(self._config_path, overrides=self._overrides)
        except ConfigError as exc:
            log_event("error", "reload_refused", message=str(exc),
                      detail="keeping the running workers and their config")
            return
        old = self._settings.server
        # The listening address, data dir and Redis are held by this process:
        # changing them needs a restart.
        pinned: dict[str, Any] = {"host": old.host, "port": old.port, "data_dir": old.data_dir}
        wanted = {"host": fresh.server.host, "port": fresh.server.port or old.port,
                  "data_dir": str(Path(fresh.server.data_dir).resolve())}
        changed = sorted(k for k, v in pinned.items() if wanted[k] != v)
        if changed or fresh.state != self._settings.state:
            log_event("warning", "reload_partial",
                      message="server.host/port/data_dir and [state] need a restart; "
                      "keeping the old values", keys=changed)
        fresh = dataclasses.replace(
            fresh, server=dataclasses.replace(fresh.server, **pinned), state=self._settings.state
        )
        self._settings = fresh
        self._backoff = self._make_backoff(fresh)
        self._generation += 1
        log_event("info", "reloading", generation=self._generation,
                  workers=worker_count(fresh))

    # -- forking ------------------------------------------------------------------

    def _spawn(self) -> None:
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        heartbeat = Heartbeat()
        # Objects made so far are never freed by the workers: keep the cyclic
        # GC from touching (and so copying) their pages in every child.
        gc.freeze()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            self._run_child(ready_w, heartbeat)  # never returns
        os.close(ready_w)
        self._workers[pid] = _Worker(
            pid=pid, generation=self._generation, ready_fd=ready_r, started_at=time.monotonic(),
            heartbeat=heartbeat,
        )
        log_event("info", "worker_started", worker_pid=pid, generation=self._generation)

    def _run_child(self, ready_fd: int, heartbeat: Heartbeat) -> None:
        exit_code = EXIT_STARTUP_FAILED
        try:
            signal.set_wakeup_fd(-1)
            for sig in _HANDLED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            # Ctrl-C reaches the whole foreground group; the supervisor turns it
            # into an orderly SIGTERM to each worker.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            _set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != self._pid:
                os._exit(EXIT_OK)
            for fd in (self._signal_r, self._signal_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            for worker in self._workers.values():
                if worker.ready_fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(worker.ready_fd)
                worker.heartbeat.close()  # the siblings' heartbeats are not ours
            if self._port_holder is not None:
                self._port_holder.close()
            context = WorkerContext(
                settings=self._settings,
                redis_url=self._redis_url,
                metrics_dir=self._metrics_dir,
                ready_fd=ready_fd,
                generation=self._generation,
                supervisor_pid=self._pid,
                heartbeat=heartbeat,
            )
            assert self._worker_entry is not None
            exit_code = self._worker_entry(context)
        except SystemExit as exc:
            exit_code = exc.code if isinstance(exc.code, int) else EXIT_STARTUP_FAILED
        except BaseException as exc:  # noqa: BLE001 - report, then exit the child
            log_event("error", "worker_crashed", message=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(exit_code)

    # -- shutdown -----------------------------------------------------------------

    def _cleanup(self) -> None:
        if self._port_holder is not None:
            self._port_holder.close()
            self._port_holder = None
        if self._redis is not None:
            self._redis.stop()
            log_event("info", "redis_stopped")
            self._redis = None
        if self._signal_w >= 0:
            signal.set_wakeup_fd(-1)
            for fd in (self._signal_r, self._signal_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._signal_r = self._signal_w = -1
        if self._metrics_dir:
            import shutil

            shutil.rmtree(self._metrics_dir, ignore_errors=True)


def _ignore_signal(signum: int, frame: object) -> None:
    return None


def _with_server(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, **changes))


def serve(
    settings: Settings,
    *,
    config_path: str | None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
) -> int:
    """Run the gateway until SIGTERM/SIGINT; the process exit status."""
    install_json_logging()
    return Supervisor(settings, config_path=config_path, overrides=overrides).run()


__all__ = [
    "EXIT_BIND_FAILED", "EXIT_CONFIG_ERROR", "EXIT_CRASH_LOOP", "EXIT_OK",
    "EXIT_STARTUP_FAILED", "Heartbeat", "RestartBackoff", "StartupError", "Supervisor",
    "WorkerContext", "bind_listener", "load_gateway_entry", "log_event", "serve",
]
