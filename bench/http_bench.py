#!/usr/bin/env python3
"""Gateway core performance: Smartflow's HTTP server against the Python ASGI servers.

Every server runs the same trivial routes with the same number of workers:
GET /health (small JSON) and POST /bench/echo (echo a 1 KiB body). wrk drives
HTTP/1.1 keep-alive, h2load drives HTTP/2 (h2c prior knowledge) for the
servers that speak it. Servers are interleaved at every load point so machine
noise hits them alike. Also measured: Smartflow's cold start (spawn to
/health/ready == 200, embedded redis) and its import time.

    python3 bench/http_bench.py --quick            # smoke run: c=32, 3 s
    python3 bench/http_bench.py --json             # full run, writes bench/results/http_bench.json
    python3 bench/http_bench.py --servers smartflow,uvicorn-h11 --duration 15

Runs with any Python 3.11+; installs wrk/h2load (apt) and the peer servers
(bench/.venv-peers) on first use.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PEERS_DIR,
    REPO_DIR,
    REPO_PYTHON,
    WORK_DIR,
    LoadResult,
    ServerProcess,
    ensure_apt,
    ensure_venv,
    fmt_ms,
    format_table,
    free_port,
    log,
    machine_note,
    median_result,
    positive_int_list,
    python_import_time_s,
    ratio,
    run_cli,
    run_h2load,
    run_wrk,
    write_results,
    wrk_post_script,
)

PEER_REQUIREMENTS = ("uvicorn", "httptools", "uvloop", "hypercorn", "granian")
PEER_PROBE = ("uvicorn", "httptools", "uvloop", "hypercorn", "granian")
ALL_SERVERS = ("smartflow", "uvicorn-h11", "uvicorn-httptools", "hypercorn", "granian-asgi",
               "granian-rsgi")
H2_SERVERS = frozenset({"smartflow", "hypercorn", "granian-asgi", "granian-rsgi"})
RATIO_PEERS = ("uvicorn-h11", "hypercorn", "uvicorn-httptools", "granian-asgi", "granian-rsgi")
ECHO_BODY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Scenario:
    protocol: str  # "h1" | "h2"
    method: str
    path: str

    @property
    def label(self) -> str:
        return f"{self.protocol} {self.method} {self.path}"


SCENARIOS = (
    Scenario("h1", "GET", "/health"),
    Scenario("h1", "POST", "/bench/echo"),
    Scenario("h2", "GET", "/health"),
    Scenario("h2", "POST", "/bench/echo"),
)


# --------------------------------------------------------------------------- servers


def smartflow_argv() -> list[str]:
    script = REPO_PYTHON.parent / "smartflow"
    return [str(script)] if script.exists() else [str(REPO_PYTHON), "-m", "smartflow.cli"]


def smartflow_available() -> str | None:
    """None when `smartflow serve` can run here, else why not."""
    if not REPO_PYTHON.exists():
        return f"{REPO_PYTHON} does not exist (make the repo venv first)"
    done = subprocess.run([*smartflow_argv(), "serve", "--help"], capture_output=True,
                          text=True, cwd=REPO_DIR, timeout=60, check=False)
    if done.returncode != 0:
        return "`smartflow serve --help` failed: " + (done.stderr or done.stdout).strip()[-300:]
    return None


def write_smartflow_config(path: Path, extra: str = "") -> Path:
    # access_log off: the peers log nothing either, so all do the same work.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[server]\n"
        "access_log = false\n"
        "bench_routes = true\n"
        + extra
    )
    return path


def smartflow_server(port: int, workers: int, name: str = "smartflow",
                     config: Path | None = None) -> ServerProcess:
    config = config or write_smartflow_config(WORK_DIR / "smartflow-http.toml")
    data_dir = WORK_DIR / f"data-{name}"
    shutil.rmtree(data_dir, ignore_errors=True)
    argv = [*smartflow_argv(), "serve", "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--data-dir", str(data_dir)]
    return ServerProcess(name, argv, port, ready_path="/health/ready", cwd=REPO_DIR)


def peer_server(name: str, port: int, workers: int, peer_bin: Path) -> ServerProcess:
    host, w = "127.0.0.1", str(workers)
    uvicorn = [str(peer_bin / "uvicorn"), "asgi_app:app", "--host", host, "--port", str(port),
               "--workers", w, "--no-access-log", "--log-level", "warning", "--loop", "uvloop"]
    granian = [str(peer_bin / "granian"), "--host", host, "--port", str(port), "--workers", w,
               "--loop", "uvloop", "--log-level", "warning"]
    argv = {
        "uvicorn-h11": [*uvicorn, "--http", "h11"],
        "uvicorn-httptools": [*uvicorn, "--http", "httptools"],
        "hypercorn": [str(peer_bin / "hypercorn"), "asgi_app:app", "-b", f"{host}:{port}",
                      "-w", w, "-k", "uvloop", "--log-level", "warning",
                      "--config", str(PEERS_DIR / "hypercorn.toml")],
        "granian-asgi": [*granian, "--interface", "asgi", "asgi_app:app"],
        "granian-rsgi": [*granian, "--interface", "rsgi", "rsgi_app:app"],
    }[name]
    return ServerProcess(name, argv, port, ready_path="/health", cwd=PEERS_DIR)


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True, slots=True)
class Measurement:
    scenario: str
    concurrency: int
    server: str
    result: LoadResult | None
    error: str = ""


def drive(server: ServerProcess, scenario: Scenario, concurrency: int, duration_s: float,
          warmup_s: float, h2_streams: int, post_script: Path, body_file: Path) -> LoadResult:
    url = server.base_url + scenario.path
    if scenario.protocol == "h1":
        script = post_script if scenario.method == "POST" else None
        if warmup_s > 0:
            run_wrk(url, concurrency, warmup_s, script=script)
        return run_wrk(url, concurrency, duration_s, script=script)
    return run_h2load(url, concurrency, duration_s, warmup_s,
                      streams_per_connection=h2_streams,
                      data_file=body_file if scenario.method == "POST" else None,
                      headers={"content-type": "application/json"}
                      if scenario.method == "POST" else None)


def measure_all(servers: dict[str, ServerProcess], scenarios: list[Scenario],
                concurrencies: list[int], args: argparse.Namespace) -> list[Measurement]:
    body = (b'{"pad":"' + b"x" * (ECHO_BODY_BYTES - 10) + b'"}')
    assert len(body) == ECHO_BODY_BYTES
    body_file = WORK_DIR / "echo-body.json"
    body_file.write_bytes(body)
    post_script = wrk_post_script(WORK_DIR / "echo.lua", body,
                                  {"Content-Type": "application/json"})
    measurements: list[Measurement] = []
    names = list(servers)
    for round_index in range(args.rounds):
        for scenario in scenarios:
            for concurrency in concurrencies:
                # Rotate the order each round so no server always goes first.
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    if scenario.protocol == "h2" and name not in H2_SERVERS:
                        continue
                    server = servers[name]
                    if server.popen is None or server.popen.poll() is not None:
                        measurements.append(Measurement(scenario.label, concurrency, name,
                                                        None, "server not running"))
                        continue
                    log(f"round {round_index + 1}: {scenario.label} c={concurrency} {name}")
                    try:
                        result = drive(server, scenario, concurrency, args.duration,
                                       args.warmup, args.h2_streams, post_script, body_file)
                        measurements.append(Measurement(scenario.label, concurrency, name,
                                                        result))
                    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                        message = str(exc).strip().splitlines()[0][:200] if str(exc) else "?"
                        log(f"  failed: {message}")
                        measurements.append(Measurement(scenario.label, concurrency, name,
                                                        None, message))
    return merge_rounds(measurements)


def merge_rounds(measurements: list[Measurement]) -> list[Measurement]:
    grouped: dict[tuple[str, int, str], list[Measurement]] = {}
    for m in measurements:
        grouped.setdefault((m.scenario, m.concurrency, m.server), []).append(m)
    merged = []
    for (scenario, concurrency, server), group in grouped.items():
        results = [m.result for m in group if m.result is not None]
        if results:
            merged.append(Measurement(scenario, concurrency, server, median_result(results)))
        else:
            merged.append(Measurement(scenario, concurrency, server, None, group[0].error))
    return merged


# --------------------------------------------------------------------------- cold start


@dataclass(frozen=True, slots=True)
class ColdStart:
    ready_s: list[float]
    import_s: dict[str, float]

    @property
    def best_s(self) -> float:
        return min(self.ready_s) if self.ready_s else math.nan

    @property
    def worst_s(self) -> float:
        return max(self.ready_s) if self.ready_s else math.nan


def measure_cold_start(runs: int, workers: int) -> ColdStart:
    config = write_smartflow_config(WORK_DIR / "smartflow-cold.toml")
    ready: list[float] = []
    for index in range(runs):
        server = smartflow_server(free_port(), workers, name=f"smartflow-cold{index}",
                                  config=config)
        started = time.perf_counter()
        server.start()
        try:
            server.wait_ready(timeout_s=60, poll_s=0.01)
            ready.append(time.perf_counter() - started)
        except RuntimeError as exc:
            log(f"cold start run {index + 1} failed: {exc}")
        finally:
            server.stop()
    imports: dict[str, float] = {}
    for module in ("smartflow", "smartflow.cli", "smartflow.app"):
        try:
            imports[module] = python_import_time_s(str(REPO_PYTHON), module)
        except subprocess.CalledProcessError:
            log(f"import {module} failed: not measured")
    return ColdStart(ready, imports)


# --------------------------------------------------------------------------- report


def render(measurements: list[Measurement], servers: list[str],
           cold: ColdStart | None) -> str:
    by_key = {(m.scenario, m.concurrency, m.server): m for m in measurements}
    points = sorted({(m.scenario, m.concurrency) for m in measurements},
                    key=lambda p: ([s.label for s in SCENARIOS].index(p[0]), p[1]))
    rows = []
    for scenario, concurrency in points:
        smartflow = by_key.get((scenario, concurrency, "smartflow"))
        sf_rps = smartflow.result.requests_per_s if smartflow and smartflow.result else None
        for server in servers:
            m = by_key.get((scenario, concurrency, server))
            if m is None:
                continue
            if m.result is None:
                rows.append([scenario, str(concurrency), server, "failed", "", "", "",
                             m.error[:40]])
                continue
            r = m.result
            rows.append([scenario, str(concurrency), server, f"{r.requests_per_s:,.0f}",
                         fmt_ms(r.p50_ms), fmt_ms(r.p99_ms), str(r.errors),
                         "" if server == "smartflow" else ratio(sf_rps, r.requests_per_s)])
    out = [format_table(["scenario", "c", "server", "req/s", "p50 ms", "p99 ms", "errors",
                         "smartflow/this"], rows)]

    peers = [p for p in RATIO_PEERS if p in servers]
    if "smartflow" in servers and peers:
        summary = []
        for scenario, concurrency in points:
            sf = by_key.get((scenario, concurrency, "smartflow"))
            sf_rps = sf.result.requests_per_s if sf and sf.result else None
            cells = []
            for peer in peers:
                m = by_key.get((scenario, concurrency, peer))
                cells.append(ratio(sf_rps, m.result.requests_per_s)
                             if m and m.result else "-")
            summary.append([scenario, str(concurrency), *cells])
        out += ["", "req/s ratios, smartflow / peer:",
                format_table(["scenario", "c", *peers], summary)]
    if cold is not None:
        out += ["", (f"cold start (spawn -> /health/ready 200, embedded redis), "
                     f"{len(cold.ready_s)} runs: best {cold.best_s * 1000:.0f} ms, "
                     f"worst {cold.worst_s * 1000:.0f} ms")]
        for module, seconds in cold.import_s.items():
            out.append(f"import {module}: {seconds * 1000:.0f} ms (minus bare python start)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(ALL_SERVERS),
                        help=f"comma list from {','.join(ALL_SERVERS)}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up")
    parser.add_argument("--concurrency", type=positive_int_list, default=[1, 32, 128],
                        help="comma list of in-flight requests per load point")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every load point; the median-req/s run is kept")
    parser.add_argument("--h2-streams", type=int, default=8,
                        help="max concurrent streams per h2 connection (h2load -m)")
    parser.add_argument("--protocols", default="h1,h2")
    parser.add_argument("--cold-start-runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: c=32 only, 3 s")
    parser.add_argument("--json", action="store_true",
                        help="write bench/results/http_bench.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.duration, args.warmup, args.rounds = [32], 3.0, 1.0, 1
        args.cold_start_runs = min(args.cold_start_runs, 3)

    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(ALL_SERVERS))
    if unknown:
        parser.error(f"unknown server(s): {', '.join(unknown)}")
    concurrencies: list[int] = args.concurrency
    protocols = {p.strip() for p in args.protocols.split(",") if p.strip()}
    if not protocols or not protocols <= {"h1", "h2"}:
        parser.error(f"--protocols: expected a comma list of h1, h2; got {args.protocols!r}")
    scenarios = [s for s in SCENARIOS if s.protocol in protocols]

    ensure_apt("wrk", "wrk")
    ensure_apt("h2load", "nghttp2-client")
    WORK_DIR.mkdir(parents=True, exist_ok=True)

    if "smartflow" in wanted:
        why_not = smartflow_available()
        if why_not:
            log(f"skipping smartflow: {why_not}")
            wanted.remove("smartflow")
    peer_bin = None
    if any(s != "smartflow" for s in wanted):
        peer_bin = ensure_venv(".venv-peers", PEER_REQUIREMENTS, PEER_PROBE)

    servers: dict[str, ServerProcess] = {}
    for name in wanted:
        port = free_port()
        if name == "smartflow":
            servers[name] = smartflow_server(port, args.workers)
        else:
            assert peer_bin is not None
            servers[name] = peer_server(name, port, args.workers, peer_bin)

    try:
        for server in servers.values():
            server.start()
        for name, server in list(servers.items()):
            try:
                seconds = server.wait_ready(timeout_s=60)
                log(f"{name} ready in {seconds:.2f} s on :{server.port}")
            except RuntimeError as exc:
                log(f"{name} did not start, left out: {exc}")
                server.stop()
                del servers[name]
        measurements = measure_all(servers, scenarios, concurrencies, args)
    finally:
        for server in servers.values():
            server.stop()

    cold = None
    if "smartflow" in servers and args.cold_start_runs > 0:
        log("measuring cold start")
        cold = measure_cold_start(args.cold_start_runs, args.workers)

    print(f"\nhttp_bench: {args.workers} workers per server, wrk -t1 (h1) / h2load -t1 "
          f"-m{args.h2_streams} (h2c), {args.duration:g} s measured after {args.warmup:g} s "
          f"warm-up, rounds={args.rounds}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
          f"{machine_note()}\n")
    print(render(measurements, list(servers), cold))

    if args.json:
        write_results("http_bench.json", args, {
            "measurements": [
                {"scenario": m.scenario, "concurrency": m.concurrency, "server": m.server,
                 "result": asdict(m.result) if m.result else None, "error": m.error}
                for m in measurements],
            "cold_start_s": cold.ready_s if cold else [],
            "import_s": cold.import_s if cold else {},
            "cold_start_median_s": statistics.median(cold.ready_s) if cold and cold.ready_s
            else None,
        })
    return 0


if __name__ == "__main__":
    run_cli(main)
