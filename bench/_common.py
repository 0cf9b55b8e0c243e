"""Shared machinery for the benchmarks: installs, processes, load tools, parsing.

Everything a bench installs or writes at run time goes under ``bench/.venv-*``
or ``bench/.work/`` (both git-ignored): the repository stays small.

The load generators are wrk (HTTP/1.1) and h2load (HTTP/2, h2c prior
knowledge). Their text output is parsed here; the parsers are pure functions
so they can be checked against captured output without running anything.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"
PEERS_DIR = BENCH_DIR / "peers"
NGINX_MOCK_DIR = BENCH_DIR / "nginx_mock"
REPO_PYTHON = REPO_DIR / ".venv" / "bin" / "python"


# --------------------------------------------------------------------------- installs


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_apt(binary: str, package: str) -> str:
    """Return the path of ``binary``, installing the Debian ``package`` if absent."""
    found = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.access(p, os.X_OK)), None
    )
    if found:
        return found
    log(f"installing {package} (apt) for {binary}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.access(
        f"/usr/sbin/{binary}", os.X_OK) else None)
    if not found:
        raise SystemExit(f"{package} installed but {binary} is still not on PATH")
    return found


def ensure_venv(name: str, requirements: Sequence[str], probe_modules: Sequence[str]) -> Path:
    """Create ``bench/<name>`` with ``requirements`` unless ``probe_modules`` import there.

    Returns the venv's ``bin`` directory.
    """
    venv = BENCH_DIR / name
    python = venv / "bin" / "python"
    probe = "import " + ", ".join(probe_modules) if probe_modules else "pass"
    if python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True,
                                          check=False).returncode == 0:
        return venv / "bin"
    if not python.exists():
        log(f"creating {venv.relative_to(REPO_DIR)}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log(f"pip install into {venv.relative_to(REPO_DIR)}: {' '.join(requirements)}")
    subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    return venv / "bin"


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout_s: float = 1.0) -> int | None:
    """GET ``url``; the status code, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


@dataclass
class ServerProcess:
    """A server started in its own process group, so stop() reaches its workers."""

    name: str
    argv: list[str]
    port: int
    ready_path: str = "/health"
    cwd: Path | None = None
    env: dict[str, str] | None = None
    log_path: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_path or WORK_DIR / f"{self.name}.log"
        out = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the child
        self.popen = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        out.close()

    def wait_ready(self, timeout_s: float, poll_s: float = 0.05) -> float:
        """Block until ``ready_path`` answers 200; the seconds it took."""
        assert self.popen is not None
        started = time.perf_counter()
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode} before it was ready; "
                    f"log tail:\n{self.log_tail()}")
            if http_status(self.base_url + self.ready_path, timeout_s=1.0) == 200:
                return time.perf_counter() - started
            time.sleep(poll_s)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s; log tail:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        # Workers that outlived their parent are still in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(servers: Sequence[ServerProcess], ready_timeout_s: float) -> Iterator[None]:
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(ready_timeout_s)
        yield
    finally:
        for server in servers:
            server.stop()


# --------------------------------------------------------------------------- git worktrees


def _git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True,
                          check=check, timeout=120)


def resolve_commit(ref: str) -> str:
    """The full sha of ``ref`` (a branch, tag, ``HEAD~5``, a short sha), or SystemExit."""
    done = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"bench: {ref!r} is not a commit in {REPO_DIR}")
    return done.stdout.strip()


def remove_worktree(path: Path) -> None:
    """Remove the git worktree at ``path`` (and the directory, registered or not)."""
    if path.exists():
        _git("worktree", "remove", "--force", str(path), check=False)
    if path.exists():  # not a registered worktree (or git refused): just a directory
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def git_worktree(ref: str, path: Path) -> Iterator[str]:
    """A detached checkout of ``ref`` at ``path`` for the duration; yields its sha.

    Only ``path`` (git-ignored, under bench/.work/) and git's own worktree
    metadata are written: the main working tree, its index and HEAD are left
    alone. A leftover checkout at ``path`` from an interrupted run is replaced.
    """
    sha = resolve_commit(ref)
    remove_worktree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # --force: also when git still has ``path`` registered but its directory is gone.
    done = _git("worktree", "add", "--force", "--detach", str(path), sha, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench: git worktree add {path} {sha[:12]} failed: "
                         f"{(done.stderr or done.stdout).strip()[-300:]}")
    try:
        yield sha
    finally:
        remove_worktree(path)


# --------------------------------------------------------------------------- memory


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: split after the last ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    tree = _children_map()
    found: list[int] = []
    stack = list(tree.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(tree.get(child, []))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True, slots=True)
class MemoryReport:
    worker_count: int
    rss_kib_total: int
    pss_kib_total: int
    supervisor_rss_kib: int

    @property
    def rss_mib_per_worker(self) -> float:
        return self.rss_kib_total / 1024 / max(1, self.worker_count)

    @property
    def pss_mib_per_worker(self) -> float:
        return self.pss_kib_total / 1024 / max(1, self.worker_count)


# Helper processes that are not request workers: not counted as workers.
_NOT_WORKERS = ("redis-server", "resource_tracker", "semaphore_tracker", "py-spy")


def workers_cpu_s(server: ServerProcess) -> float:
    """CPU seconds (user + system) the gateway's request workers have used."""
    assert server.popen is not None
    total = 0.0
    for pid in descendants(server.popen.pid):
        if not cmdline(pid).startswith("smartflow: worker"):
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def worker_pids(root_pid: int) -> list[int]:
    """The request-serving processes under ``root_pid`` (itself when it has none)."""
    pids = [p for p in descendants(root_pid)
            if not any(marker in cmdline(p) for marker in _NOT_WORKERS)]
    return pids or [root_pid]


def memory_report(root_pid: int) -> MemoryReport:
    pids = worker_pids(root_pid)
    return MemoryReport(
        worker_count=len(pids),
        rss_kib_total=sum(_status_kib(p, "VmRSS") for p in pids),
        pss_kib_total=sum(_pss_kib(p) for p in pids),
        supervisor_rss_kib=_status_kib(root_pid, "VmRSS") if root_pid not in pids else 0,
    )


# --------------------------------------------------------------------------- load results


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int = 0
    socket_errors: int = 0
    tool: str = ""

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


_UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^([\d.]+)(us|ms|s|m|h)$")


def duration_to_ms(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _UNIT_TO_MS[match.group(2)]


_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_WRK_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", re.MULTILINE)
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(output: str) -> LoadResult:
    """Parse ``wrk --latency`` output."""
    rps = _WRK_RPS.search(output)
    total = _WRK_TOTAL.search(output)
    if not rps or not total:
        raise ValueError(f"unrecognised wrk output:\n{output}")
    percentiles = {m.group(1): duration_to_ms(m.group(2))
                   for m in _WRK_PERCENTILE.finditer(output)}
    non2xx = _WRK_NON2XX.search(output)
    sock = _WRK_SOCKET.search(output)
    if int(total.group(1)) == 0:  # wrk prints 0us percentiles when nothing completed
        percentiles = {}
    # wrk counts a read error when a server closes an idle keep-alive connection
    # at the end of a run; connect/write/timeout errors are the real failures,
    # but all are reported so nothing is hidden.
    return LoadResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=percentiles.get("50", math.nan),
        p99_ms=percentiles.get("99", math.nan),
        requests=int(total.group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        tool="wrk",
    )


_H2_FINISHED = re.compile(r"^finished in [\d.]+\w*, ([\d.]+) req/s", re.MULTILINE)
_H2_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout", re.MULTILINE)
_H2_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.MULTILINE)
_H2_TIME_FOR_REQUEST = re.compile(
    r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", re.MULTILINE)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def parse_h2load(output: str, log_text: str | None = None) -> LoadResult:
    """Parse h2load's summary; percentiles come from its ``--log-file`` when given.

    Each log line is ``<start unix us>\\t<status>\\t<elapsed us>``. Without a
    log the mean request time stands in for p50 and the max for p99.
    """
    finished = _H2_FINISHED.search(output)
    requests = _H2_REQUESTS.search(output)
    if not finished or not requests:
        raise ValueError(f"unrecognised h2load output:\n{output}")
    codes = _H2_STATUS.search(output)
    non2xx = sum(int(g) for g in codes.groups()[1:]) if codes else 0
    total, started = int(requests.group(1)), int(requests.group(2))
    failed = int(requests.group(5))
    p50 = p99 = math.nan
    if int(requests.group(3)) == 0:  # nothing done: the summary's 0us times mean nothing
        pass
    elif log_text:
        elapsed_ms = sorted(int(line.split("\t")[2]) / 1000.0
                            for line in log_text.splitlines() if line.count("\t") >= 2)
        p50, p99 = percentile(elapsed_ms, 0.50), percentile(elapsed_ms, 0.99)
    else:
        times = _H2_TIME_FOR_REQUEST.search(output)
        if times:
            p50, p99 = duration_to_ms(times.group(3)), duration_to_ms(times.group(2))
    return LoadResult(
        requests_per_s=float(finished.group(1)),
        p50_ms=p50,
        p99_ms=p99,
        requests=int(requests.group(4)),
        non_2xx=non2xx,
        # "failed" holds the non-2xx answers and, in a timed run, the requests
        # queued but never started when time ran out: neither is a transport
        # failure. ("errored" and "timeout" are already inside "failed".)
        socket_errors=max(0, failed - non2xx - (total - started)),
        tool="h2load",
    )


# --------------------------------------------------------------------------- load drivers


def wrk_post_script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    """Write a wrk Lua script that POSTs ``body`` with ``headers``."""
    level = 1
    while f"]{'=' * level}]".encode() in body:
        level += 1
    eq = "=" * level
    lines = ['wrk.method = "POST"']
    for name, value in headers.items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    lines.append(f"wrk.body = [{eq}[{body.decode()}]{eq}]")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(url: str, connections: int, duration_s: float, *, script: Path | None = None,
            script_args: Sequence[str] = (), threads: int = 1,
            timeout_s: float = 10.0) -> LoadResult:
    """wrk --latency; ``script_args`` reach the Lua script's ``init(args)``."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
            f"--timeout={timeout_s:g}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=duration_s + timeout_s + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def h2_clients_and_streams(concurrency: int, streams_per_connection: int) -> tuple[int, int]:
    """Split ``concurrency`` in-flight requests into connections x streams."""
    streams = max(1, min(concurrency, streams_per_connection))
    return max(1, math.ceil(concurrency / streams)), streams


def run_h2load(url: str, concurrency: int, duration_s: float, warmup_s: float, *,
               streams_per_connection: int = 8, data_file: Path | None = None,
               headers: dict[str, str] | None = None, threads: int = 1) -> LoadResult:
    clients, streams = h2_clients_and_streams(concurrency, streams_per_connection)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    log_file = WORK_DIR / "h2load-requests.log"
    log_file.unlink(missing_ok=True)
    argv = ["h2load", "-t", str(threads), "-c", str(clients), "-m", str(streams),
            "-D", f"{max(1, round(duration_s))}", f"--warm-up-time={max(0, round(warmup_s))}",
            f"--log-file={log_file}"]
    if data_file is not None:
        argv += ["-d", str(data_file)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=duration_s + warmup_s + 60)
    if done.returncode != 0 and "finished in" not in done.stdout:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr or done.stdout}")
    log_text = log_file.read_text() if log_file.exists() else None
    return parse_h2load(done.stdout, log_text)


# --------------------------------------------------------------------------- reporting


def median_result(results: Sequence[LoadResult]) -> LoadResult:
    """The run with the median req/s (keeps one run's latencies together)."""
    ordered = sorted(results, key=lambda r: r.requests_per_s)
    return ordered[(len(ordered) - 1) // 2]


def ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator or math.isnan(numerator) or math.isnan(denominator):
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def fmt_ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def machine_note() -> str:
    """One line on how busy the machine was: ratios from a loaded machine are noisier."""
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {one:.1f} (1 min) / {five:.1f} (5 min)"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=False)))
             for row in [header, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def positive_int_list(text: str) -> list[int]:
    """argparse type for "1,32,128"."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def run_cli(main: Callable[[], int]) -> None:
    """Run a bench's main; a failed install or tool exits with one clear line."""
    try:
        raise SystemExit(main())
    except subprocess.CalledProcessError as exc:
        command = " ".join(str(a) for a in exc.cmd) if isinstance(exc.cmd, list) else exc.cmd
        raise SystemExit(f"bench: `{command}` failed with exit code {exc.returncode}") from None
    except KeyboardInterrupt:
        raise SystemExit("bench: interrupted") from None


def python_import_time_s(python: str, module: str, runs: int = 7,
                         env: dict[str, str] | None = None) -> float:
    """Median wall time of ``python -c 'import module'`` minus bare interpreter start."""
    def median_wall(code: str) -> float:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([python, "-c", code], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    return max(0.0, median_wall(f"import {module}") - median_wall("pass"))


def write_results(file_name: str, args: object, results: dict[str, object]) -> None:
    """Save a run to bench/results/<file_name> with its settings and machine note."""
    import json  # off the hot path: only for the results file

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / file_name
    document = {"settings": vars(args), "machine": machine_note(), **results}
    out.write_text(json.dumps(document, indent=2, default=str))
    log(f"wrote {out.relative_to(REPO_DIR)}")
