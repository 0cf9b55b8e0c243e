"""Start and stop the embedded redis-server the supervisor runs when no
`[state] redis_url` is configured.

It listens only on a unix socket in the data dir (`--port 0`), with AOF on so
live config and counters survive a restart. The child gets a parent-death
signal (Linux `prctl(PR_SET_PDEATHSIG, SIGTERM)`: redis shuts down cleanly,
flushing its AOF) so a supervisor killed with SIGKILL never leaves an
orphaned redis behind holding the socket.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_BYTES = 2000
# sun_path holds 108 bytes; a deep data dir gets its socket in a short temp dir.
_MAX_SOCKET_PATH_CHARS = 100


class EmbeddedRedisError(RuntimeError):
    """redis-server could not be found, started, or did not answer PING."""


def _set_parent_death_signal() -> None:
    # Runs in the child between fork and exec: only async-signal-safe work.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own stop() still cleans up
    # Own process group: a Ctrl-C on the terminal reaches the supervisor,
    # which stops redis last, after the workers have drained.
    os.setpgid(0, 0)


def ping_unix_socket(socket_path: str, timeout_s: float = 0.5) -> bool:
    """True when a redis-server answers PING on `socket_path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(socket_path)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """One redis-server child on a unix socket inside `directory`."""

    def __init__(self, directory: Path, binary: str = "redis-server") -> None:
        self.directory = directory
        self.binary = binary
        self.socket_path = directory / "redis.sock"
        self._socket_dir: Path | None = None
        if len(str(self.socket_path.resolve())) > _MAX_SOCKET_PATH_CHARS:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="smartflow-redis-"))
            self.socket_path = self._socket_dir / "redis.sock"
        self.log_path = directory / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start redis-server; return once it answers PING on its socket."""
        self.launch()
        self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Start redis-server without waiting for it (see `wait_ready`)."""
        resolved = shutil.which(self.binary)
        if resolved is None:
            raise EmbeddedRedisError(
                f"state.redis_server_bin: {self.binary!r} not found on PATH "
                "(install redis-server or set state.redis_url)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            if ping_unix_socket(str(self.socket_path)):
                raise EmbeddedRedisError(
                    f"a redis-server already answers on {self.socket_path}: "
                    "is another smartflow running with this data_dir?"
                )
            self.socket_path.unlink()
        argv = [
            resolved,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", str(self.log_path),
        ]
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_set_parent_death_signal,  # noqa: PLW1509 - only prctl + setpgid
            close_fds=True,
        )

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Return once redis answers PING; EmbeddedRedisError if it exits or stays silent."""
        if self._process is None:
            raise EmbeddedRedisError("redis-server was not launched")
        deadline = time.monotonic() + timeout_s
        delay_s = 0.002
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise EmbeddedRedisError(
                    f"redis-server exited with status {code} at start:\n{self.log_tail()}"
                )
            if self.socket_path.exists() and ping_unix_socket(str(self.socket_path)):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedRedisError(
                    f"redis-server did not answer PING within {timeout_s:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.05)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (redis flushes the AOF), then SIGKILL; remove the socket. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
