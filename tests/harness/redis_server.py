"""A real redis-server on a free loopback port, in its own temp dir.

Started with no persistence (`--save ''`, `--appendonly no`) unless asked,
so a test's data dies with the process. `stop()` then `start()` brings the
server back on the same port and dir: that is how tests simulate a Redis
restart (with persistence on, the data survives it; without, it does not).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .lifecycle import ManagedService, read_log_tail
from .ports import LOOPBACK_HOST, free_port


class RedisServerError(RuntimeError):
    """redis-server could not be started or did not answer in time."""


def redis_command(port: int, *args: str, host: str = LOOPBACK_HOST, timeout_s: float = 2.0) -> bytes:
    """Send one command in RESP and return the raw first reply line (e.g. b'+PONG').

    A few bytes on a plain socket keep the harness free of any event loop, so
    fixtures can use it from sync code and from inside a running async test.
    """
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(b"".join(parts))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


class RedisServer(ManagedService):
    """One redis-server process; see the module docstring.

    `directory` (default: a fresh temp dir, removed by `close()`) holds the
    log file and, with `persistence=True`, the append-only file.
    """

    def __init__(
        self,
        *,
        binary: str = "redis-server",
        port: int | None = None,
        directory: Path | None = None,
        persistence: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        resolved = shutil.which(binary)
        if resolved is None:
            raise RedisServerError(
                f"{binary!r} not found on PATH: run scripts/test.sh (it installs redis-server)"
            )
        self.binary = resolved
        self.host = LOOPBACK_HOST
        self.port = port if port is not None else free_port()
        self._owns_directory = directory is None
        self.directory = Path(directory) if directory is not None else Path(
            tempfile.mkdtemp(prefix="smartflow-redis-")
        )
        self.persistence = persistence
        self.extra_args = extra_args
        self.log_path = self.directory / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", "",
            "--save", "",
        ]
        if self.persistence:
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            argv += ["--appendonly", "no"]
        argv += list(self.extra_args)
        return argv

    def start(self, timeout_s: float = 15.0) -> None:
        """Start (or restart after `stop()`) on the same port; return once PING answers."""
        if self.is_running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with status {self._process.returncode} "
                    f"on port {self.port}:\n{self.log_tail()}"
                )
            try:
                if redis_command(self.port, "PING", timeout_s=0.5) == b"+PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RedisServerError(
                    f"redis-server on port {self.port} did not answer PING within "
                    f"{timeout_s:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL. Safe to call twice."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)

    def flush(self) -> None:
        """Empty every database (FLUSHALL)."""
        reply = redis_command(self.port, "FLUSHALL")
        if reply != b"+OK":
            raise RedisServerError(f"FLUSHALL answered {reply!r}")

    def ping(self) -> bool:
        try:
            return redis_command(self.port, "PING", timeout_s=0.5) == b"+PONG"
        except OSError:
            return False

    def log_tail(self) -> str:
        return read_log_tail(self.log_path)

    def close(self) -> None:
        """Stop the server and remove its temp dir (if the harness made it)."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
