"""The real gateway (`python -m smartflow.cli serve`) as a subprocess.

The process runs in its own session, so `stop()` can SIGKILL the whole
group (supervisor, workers, embedded redis) if a graceful stop hangs, and a
test never leaves processes behind. stdout and stderr are merged and read by
a thread into `output_lines`, so a test can assert what was printed (for
example, no "Traceback"). Readiness is GET /health/ready answering 200 over
a plain socket: no client library, no event loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from .lifecycle import ManagedService
from .ports import LOOPBACK_HOST, free_port

GATEWAY_MODULE = "smartflow.cli"
_OUTPUT_TAIL_LINES = 200


class GatewayError(RuntimeError):
    """The gateway did not become ready, or misbehaved while stopping."""


# -- TOML -------------------------------------------------------------------------

def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return _toml_string(key)


def _toml_string(value: str) -> str:
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        .replace("\r", "\\r").replace("\t", "\\t")
    )
    escaped = "".join(
        f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in escaped
    )
    return f'"{escaped}"'


def _toml_value(value: object, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Mapping):
        inner = ", ".join(
            f"{_toml_key(str(k))} = {_toml_value(v, f'{where}.{k}')}" for k, v in value.items()
        )
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, f"{where}[]") for v in value) + "]"
    raise TypeError(f"{where}: cannot write {type(value).__name__} as TOML")


def _is_table_array(value: object) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(item, Mapping) for item in value)
    )


def _write_table(lines: list[str], prefix: str, table: Mapping[str, object]) -> None:
    # Plain keys must come before any sub-table header, or they would land in it.
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value, prefix + key)}")
    for key, value in table.items():
        name = prefix + _toml_key(key)
        if isinstance(value, Mapping):
            lines.extend(["", f"[{name}]"])
            _write_table(lines, name + ".", value)
        elif isinstance(value, (list, tuple)) and _is_table_array(value):
            for item in value:
                lines.extend(["", f"[[{name}]]"])
                _write_table(lines, name + ".", item)


def to_toml(data: Mapping[str, object]) -> str:
    """Serialise nested dicts/lists/scalars as TOML; lists of dicts become [[tables]]."""
    lines: list[str] = []
    _write_table(lines, "", data)
    return "\n".join(lines).lstrip("\n") + "\n"


# -- processes --------------------------------------------------------------------

def _read_proc(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the comm field (state, ppid, pgrp, ...)."""
    stat = _read_proc(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` that are still alive (zombies excluded)."""
    children: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and fields[1] == str(pid) and fields[0] != "Z":
            children.append(int(entry))
    return sorted(children)


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry))
    return sorted(members)


def titled_child(pid: int, title: str) -> int | None:
    """The child of `pid` whose process title is `title` (e.g. "smartflow: shipper")."""
    wanted = title.encode()
    for child in child_pids(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as handle:
                if handle.read().startswith(wanted):
                    return child
        except OSError:
            continue
    return None


def _process_name(pid: int) -> str:
    return (_read_proc(f"/proc/{pid}/comm") or "").strip()


def http_get_status(port: int, path: str, host: str = LOOPBACK_HOST, timeout_s: float = 1.0) -> int | None:
    """Status code of GET `path` over a fresh HTTP/1.1 connection; None if no answer."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n" not in head and len(head) < 8192:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return None
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) >= 2 and status_line[0].startswith(b"HTTP/") and status_line[1].isdigit():
        return int(status_line[1])
    return None


class GatewayProcess(ManagedService):
    """One `smartflow serve` process tree; see the module docstring.

    `config` is a dict (written as TOML), TOML text, or None (an empty file:
    pure defaults). `env` entries override the inherited environment, from
    which any SMARTFLOW_* variables are dropped so a developer's shell cannot
    change what a test sees. The config file and default data dir live in
    `directory` (a fresh temp dir unless given).
    """

    def __init__(
        self,
        config: Mapping[str, object] | str | None = None,
        *,
        port: int | None = None,
        workers: int = 2,
        directory: Path | None = None,
        data_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        ready_path: str = "/health/ready",
        ready_timeout_s: float = 20.0,
        module: str = GATEWAY_MODULE,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.host = LOOPBACK_HOST
        self.workers = workers
        self._owns_directory = directory is None
        self.directory = Path(directory) if directory is not None else Path(
            tempfile.mkdtemp(prefix="smartflow-gw-")
        )
        self.data_dir = Path(data_dir) if data_dir is not None else self.directory / "data"
        self.config_path = self.directory / "config.toml"
        self.config_text = config if isinstance(config, str) else to_toml(config or {})
        self.env_overrides = dict(env or {})
        self.extra_args = tuple(extra_args)
        self.ready_path = ready_path
        self.ready_timeout_s = ready_timeout_s
        self.module = module
        self.output_lines: list[str] = []
        self.stray_pids_at_stop: list[int] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    # -- facts ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise GatewayError("gateway not started")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", self.module, "serve",
            "--config", str(self.config_path),
            "--port", str(self.port),
            "--workers", str(self.workers),
            "--data-dir", str(self.data_dir),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env_overrides)
        return env

    def output_text(self) -> str:
        return "\n".join(list(self.output_lines))

    def output_tail(self, lines: int = _OUTPUT_TAIL_LINES) -> str:
        return "\n".join(list(self.output_lines)[-lines:])

    def log_events(self, name: str) -> list[dict[str, object]]:
        """The gateway's JSON log records whose "event" is `name`, in order."""
        found: list[dict[str, object]] = []
        for line in list(self.output_lines):
            if f'"{name}"' not in line:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(line)
                if isinstance(record, dict) and record.get("event") == name:
                    found.append(record)
        return found

    def child_pids(self) -> list[int]:
        """Every live direct child of the supervisor (workers, embedded redis, ...)."""
        return child_pids(self.pid) if self.is_running else []

    def worker_pids(self) -> list[int]:
        """Live direct children of the supervisor other than redis-server."""
        return [p for p in self.child_pids() if not _process_name(p).startswith("redis")]

    def wait_worker_pids(self, count: int, timeout_s: float = 20.0, *,
                         ready: bool = False) -> list[int]:
        """Wait until exactly `count` workers are alive (and with `ready`, each
        has reported ready: the supervisor watches a worker's heartbeat only
        from then on); their pids."""
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.worker_pids()
            if len(pids) == count and (not ready or set(pids) <= {
                    event.get("worker_pid") for event in self.log_events("worker_ready")}):
                return pids
            if time.monotonic() > deadline:
                raise GatewayError(
                    f"expected {count} workers within {timeout_s:.0f} s, have {pids}; "
                    f"output:\n{self.output_tail()}"
                )
            time.sleep(0.05)

    def wait_output(self, text: str, timeout_s: float = 20.0) -> str:
        """Wait until an output line contains `text`; that line."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            lines = list(self.output_lines)
            for line in lines[seen:]:
                if text in line:
                    return line
            seen = len(lines)
            if time.monotonic() > deadline:
                raise GatewayError(
                    f"no output line containing {text!r} within {timeout_s:.0f} s; "
                    f"output:\n{self.output_tail()}"
                )
            time.sleep(0.05)

    # -- control --------------------------------------------------------------------

    def start(self) -> None:
        """Write the config, spawn the gateway, return once `ready_path` answers 200."""
        if self._process is not None:
            raise GatewayError("gateway already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        self._process = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=self.directory,
            start_new_session=True,
        )
        self._reader = threading.Thread(
            target=self._read_output, name=f"gateway-output-{self._process.pid}", daemon=True
        )
        self._reader.start()
        try:
            self.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.stop(timeout_s=5.0)
            raise

    def _read_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            for raw in self._process.stdout:
                self.output_lines.append(raw.decode(errors="replace").rstrip("\n"))
        except (OSError, ValueError):
            pass  # pipe closed under us by close(): the output so far is kept

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        """Poll `ready_path` until 200; GatewayError with the output if it never comes."""
        deadline = time.monotonic() + timeout_s
        last_status: int | None = None
        while True:
            code = self.returncode
            if code is not None:
                self._join_reader()
                raise GatewayError(
                    f"gateway exited with status {code} before it was ready; "
                    f"command: {' '.join(self.argv())}\noutput:\n{self.output_tail()}"
                )
            last_status = http_get_status(self.port, self.ready_path, timeout_s=1.0)
            if last_status == 200:
                return
            if time.monotonic() > deadline:
                raise GatewayError(
                    f"gateway on port {self.port} not ready within {timeout_s:.0f} s "
                    f"(last {self.ready_path} status: {last_status}); "
                    f"command: {' '.join(self.argv())}\noutput:\n{self.output_tail()}"
                )
            time.sleep(0.05)

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the supervisor only."""
        os.kill(self.pid, sig)

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        """Wait for the supervisor to exit by itself; its exit status."""
        if self._process is None:
            raise GatewayError("gateway not started")
        try:
            return self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise GatewayError(
                f"gateway did not exit within {timeout_s:.0f} s; output:\n{self.output_tail()}"
            ) from None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the supervisor, wait, then SIGKILL the whole group.

        Returns the supervisor's exit status (None if never started). Any
        process of the group still alive after the supervisor exited is
        killed and recorded in `stray_pids_at_stop`, so a test can assert
        that a graceful stop leaves nothing behind.
        """
        process = self._process
        if process is None:
            return None
        pgid = process.pid  # start_new_session: the supervisor leads its own group
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._killpg(pgid)
                process.wait(timeout=10.0)
        strays = group_pids(pgid)
        if strays:
            self.stray_pids_at_stop = strays
            self._killpg(pgid)
        self._join_reader()
        return process.returncode

    @staticmethod
    def _killpg(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5.0)

    def close(self) -> None:
        """Stop the gateway and remove its temp dir (if the harness made it)."""
        try:
            self.stop()
        finally:
            if self._process is not None and self._process.stdout is not None:
                self._process.stdout.close()
            if self._owns_directory:
                shutil.rmtree(self.directory, ignore_errors=True)


class GatewayNodes:
    """Gateway nodes (one supervisor each) with one configuration, typically
    on one shared Redis: what holds across nodes is tested on these."""

    def __init__(self, config: Mapping[str, object], directory: Path, *, count: int = 2,
                 workers: int = 2) -> None:
        self.gateways = [GatewayProcess(config, workers=workers, directory=directory / f"node-{i}")
                         for i in range(count)]
        try:
            for gateway in self.gateways:
                gateway.start()
        except BaseException:
            self.close()
            raise

    @property
    def urls(self) -> list[str]:
        return [gateway.url for gateway in self.gateways]

    def close(self) -> None:
        for gateway in self.gateways:
            gateway.close()

    def output(self) -> str:
        return "\n".join(gateway.output_text() for gateway in self.gateways)
