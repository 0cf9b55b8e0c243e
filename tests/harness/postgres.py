"""A real PostgreSQL 15 cluster in a temp dir, on a free loopback port.

initdb and pg_ctl refuse to run as root, and tests here do run as root, so
every PostgreSQL command then runs as the `postgres` user (`runuser -u
postgres --`) with the temp dir chowned to it. Trust auth on 127.0.0.1 only;
the unix socket lives inside the temp dir so nothing touches
/var/run/postgresql. Durability is switched off (fsync, synchronous_commit,
full_page_writes) because the cluster is thrown away after the run.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .lifecycle import ManagedService, read_log_tail
from .ports import LOOPBACK_HOST, free_port

DEBIAN_PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")


class PostgresServerError(RuntimeError):
    """PostgreSQL could not be found, initialised, started or stopped."""


def find_pg_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's PG 15 dir."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        bin_dir = Path(on_path).resolve().parent
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    if (DEBIAN_PG_BIN_DIR / "initdb").exists() and (DEBIAN_PG_BIN_DIR / "pg_ctl").exists():
        return DEBIAN_PG_BIN_DIR
    raise PostgresServerError(
        "PostgreSQL 15 not found (no initdb on PATH nor in "
        f"{DEBIAN_PG_BIN_DIR}): run scripts/test.sh, which installs postgresql-15"
    )


class PostgresServer(ManagedService):
    """One throw-away PostgreSQL cluster; see the module docstring."""

    def __init__(self, *, port: int | None = None, directory: Path | None = None) -> None:
        self.bin_dir = find_pg_bin_dir()
        self.host = LOOPBACK_HOST
        self.port = port if port is not None else free_port()
        self.user = "postgres"
        self.database = "postgres"
        self._owns_directory = directory is None
        self.directory = Path(directory) if directory is not None else Path(
            tempfile.mkdtemp(prefix="smartflow-pg-")
        )
        self.data_dir = self.directory / "data"
        self.socket_dir = self.directory / "sock"
        self.log_path = self.directory / "postgres.log"
        self._run_as = self._pick_run_as_user()
        self._is_initialised = False

    @property
    def dsn(self) -> str:
        return self.dsn_of(self.database)

    def dsn_of(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str) -> str:
        """A new, empty database named `prefix` and a random suffix; its DSN.
        Test files share the session's server: each works in its own database."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        self._client_tool("createdb", name)
        return self.dsn_of(name)

    def drop_database(self, dsn: str) -> None:
        """Drop the database `dsn` names, closing its connections first."""
        self._client_tool("dropdb", "--force", "--if-exists", dsn.rsplit("/", 1)[1])

    def _client_tool(self, tool: str, *args: str) -> None:
        result = self._run(tool, "-h", self.host, "-p", str(self.port), "-U", self.user, *args,
                           timeout_s=60)
        if result.returncode != 0:
            raise PostgresServerError(f"{tool} {' '.join(args)} failed with status "
                                      f"{result.returncode}: {result.stderr.strip()}")

    @staticmethod
    def _pick_run_as_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresServerError(
                "running as root but there is no 'postgres' user to run PostgreSQL as: "
                "install the postgresql-15 package (scripts/test.sh does)"
            ) from None

    def _command(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / tool), *args]
        if self._run_as is not None:
            argv = ["runuser", "-u", self._run_as.pw_name, "--", *argv]
        return argv

    def _run(self, tool: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        # cwd inside our dir: the postgres user may not be allowed into the caller's cwd.
        result = subprocess.run(
            self._command(tool, *args),
            check=False,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            stdin=subprocess.DEVNULL,
        )
        return result

    def _chown_tree(self) -> None:
        if self._run_as is None:
            return
        uid, gid = self._run_as.pw_uid, self._run_as.pw_gid
        os.chown(self.directory, uid, gid)
        for root, dirs, files in os.walk(self.directory):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid)

    def _initialise(self, timeout_s: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown_tree()
        result = self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-U", self.user,
            "-A", "trust",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
            timeout_s=timeout_s,
        )
        if result.returncode != 0:
            raise PostgresServerError(
                f"initdb failed with status {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        self._is_initialised = True

    def start(self, timeout_s: float = 90.0) -> None:
        """initdb (first time only), start the server, return once it accepts queries."""
        if not self._is_initialised:
            self._initialise(timeout_s)
        options = " ".join(
            [
                f"-p {self.port}",
                f"-c listen_addresses={self.host}",
                f"-c unix_socket_directories={self.socket_dir}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        result = self._run(
            "pg_ctl",
            "-D", str(self.data_dir),
            "-l", str(self.log_path),
            "-o", options,
            "-w",
            "-t", str(int(timeout_s)),
            "start",
            timeout_s=timeout_s + 10,
        )
        if result.returncode != 0:
            raise PostgresServerError(
                f"pg_ctl start failed with status {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n{self.log_tail()}"
            )
        self._wait_accepting(timeout_s)

    def _wait_accepting(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            result = self._run(
                "pg_isready", "-h", self.host, "-p", str(self.port), "-U", self.user, timeout_s=10
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresServerError(
                    f"PostgreSQL on port {self.port} not ready within {timeout_s:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    @property
    def is_running(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (pg_ctl -m fast); SIGKILL the postmaster if that fails."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        result = self._run(
            "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout_s)),
            "stop", timeout_s=timeout_s + 10,
        )
        if result.returncode == 0:
            return
        try:
            postmaster_pid = int(pid_file.read_text().split("\n", 1)[0])
            os.kill(postmaster_pid, 9)
        except (OSError, ValueError):
            pass

    def log_tail(self) -> str:
        return read_log_tail(self.log_path)

    def close(self) -> None:
        """Stop the server and remove its temp dir (if the harness made it)."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
