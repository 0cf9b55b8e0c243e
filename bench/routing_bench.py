#!/usr/bin/env python3
"""Routing/failover: what callers see when deployments of one model fail.

One Smartflow gateway (2 workers, access log off, embedded redis-server, a
master key) serves a model group ``m`` of three deployments (ids A, B, C),
each its own fault-injecting OpenAI upstream (``tests/upstreams/faulty_openai.py``,
same small latency for all):

    A  healthy
    B  500 on 30% of calls
    C  hangs on 5% of calls (reads the request, never answers)

``[routing]``: round_robin, ``retries = 1``, ``attempt_timeout`` (default
1.0 s; the first-byte timeout per attempt, which bounds what a hang costs),
default cooldowns (5 failures in 30 s take a deployment out for 30 s).

An async Python client sends 10,000 non-streaming chat completions at
concurrency 64 (64 callers, each with its own httpx.AsyncClient holding one
HTTP/1.1 keep-alive connection; ``--client shared`` puts all 64 connections
in one client's pool instead, whose bookkeeping caps it at a few hundred
req/s here) and records per request the status, latency,
``x-smartflow-attempts``, ``x-smartflow-deployment`` and
``x-smartflow-duration-ms`` (the time inside the gateway). A warm-up of 500
requests opens every connection; it is the start of the same run (no pause
before the measured requests) and left out of the figures. The same load
runs against a group of three healthy upstreams (the baseline), so the
latency that failover adds is p99(faulty) - p99(healthy) (and p50 likewise),
and once more with cooldowns effectively off (``cooldown_failures = 1000``),
so every fault has to be absorbed by failover alone. Each scenario gets
fresh upstreams and a fresh gateway (fresh data dir, so no cooldown carries
over).

Target (issue): 100% of callers get a 2xx while one deployment is healthy.

    python3 bench/routing_bench.py --quick     # smoke: 2,000 requests per scenario (~15 s)
    python3 bench/routing_bench.py             # 10,000 requests per scenario (~40 s)
    python3 bench/routing_bench.py --scenarios healthy,faulty --requests 20000

Writes the report to bench/results/routing_bench.txt (``--quick``:
routing_bench_quick.txt); failed answers, if any, to
bench/.work/routing-failures-<scenario>.jsonl. Exit status 0 only when every
faulty scenario answered 100% of its requests with a 2xx.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_PYTHON

try:
    import httpx
except ImportError:  # the load client needs httpx: the repo venv has it
    if REPO_PYTHON.exists() and not os.environ.get("ROUTING_BENCH_REEXEC") \
            and Path(sys.prefix).resolve() != REPO_PYTHON.parent.parent.resolve():
        os.environ["ROUTING_BENCH_REEXEC"] = "1"
        os.execv(str(REPO_PYTHON), [str(REPO_PYTHON), str(Path(__file__).resolve()),
                                    *sys.argv[1:]])
    raise SystemExit("bench: routing_bench needs httpx (the repo venv .venv has it)") from None

import argparse
import asyncio
import collections
import json
import math
import shutil
import time
from dataclasses import dataclass, field

from _common import (
    REPO_DIR,
    RESULTS_DIR,
    WORK_DIR,
    ServerProcess,
    fmt_ms,
    format_table,
    free_port,
    log,
    machine_note,
    percentile,
    run_cli,
)
from http_bench import smartflow_argv, smartflow_available

API_KEY = "sk-bench-" + "5f0c2a9e" * 8
UPSTREAM_API_KEY = "sk-upstream-bench"
MODEL = "m"
DEPLOYMENTS = ("A", "B", "C")
# scenario -> (fault mix per deployment, [routing] lines beyond the common ones)
FAULTY_MIX = {"A": [], "B": ["500=0.3"], "C": ["hang=0.05"]}
SCENARIOS: dict[str, tuple[dict[str, list[str]], str]] = {
    "healthy": ({"A": [], "B": [], "C": []}, ""),
    "faulty": (FAULTY_MIX, ""),
    "faulty-nocooldown": (FAULTY_MIX, "cooldown_failures = 1000\n"),
}
DEFAULT_SCENARIOS = ("healthy", "faulty", "faulty-nocooldown")
FAILED_BODY_CHARS = 600


# --------------------------------------------------------------------------- servers


def faulty_upstream(name: str, port: int, mix: list[str], latency_ms: float,
                    seed: int) -> ServerProcess:
    argv = [str(REPO_PYTHON), "-m", "tests.upstreams.faulty_openai", "--port", str(port),
            "--name", name, "--latency-ms", f"{latency_ms:g}", "--seed", str(seed)]
    for item in mix:
        argv += ["--mix", item]
    # /v1/models is never faulted: a readiness probe that does not count as a call.
    return ServerProcess(f"routing-upstream-{name}", argv, port, ready_path="/v1/models",
                         cwd=REPO_DIR)


def upstream_counts(server: ServerProcess) -> dict[str, int] | None:
    """The fault counts the upstream printed on SIGTERM (its last JSON line)."""
    if not server.log_path or not server.log_path.exists():
        return None
    for line in reversed(server.log_path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return {str(k): int(v) for k, v in json.loads(line).items()}
            except (ValueError, TypeError, AttributeError):
                return None
    return None


def smartflow_routing_gateway(scenario: str, port: int, upstream_ports: dict[str, int],
                              workers: int, args: argparse.Namespace) -> ServerProcess:
    config = WORK_DIR / f"routing-{scenario}.toml"
    extra = SCENARIOS[scenario][1]
    config.write_text(
        "[server]\naccess_log = false\n\n"
        f'[auth]\nmaster_key = "{API_KEY}"\n\n'
        "[routing]\n"
        'strategy = "round_robin"\n'
        f"retries = {args.retries}\n"
        f"attempt_timeout = {args.attempt_timeout:g}\n"
        + extra + "\n"
        + "".join(
            f'[[models]]\nname = "{MODEL}"\nid = "{name}"\nprovider = "openai"\n'
            f'model = "gpt-4o-mini"\napi_base = "http://127.0.0.1:{p}/v1"\n'
            f'api_key = "{UPSTREAM_API_KEY}"\n\n'
            for name, p in upstream_ports.items()))
    data_dir = WORK_DIR / f"data-routing-{scenario}"
    shutil.rmtree(data_dir, ignore_errors=True)  # fresh embedded redis: no old cooldowns
    serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--data-dir", str(data_dir)]
    return ServerProcess(f"routing-smartflow-{scenario}", [*smartflow_argv(), *serve], port,
                         ready_path="/health/ready", cwd=REPO_DIR)


# --------------------------------------------------------------------------- load


@dataclass(slots=True)
class Record:
    status: int  # 0: the client got no answer (see error)
    start_s: float  # when it was sent, from the start of its run
    latency_s: float
    attempts: int | None
    deployment: str
    error: str = ""  # exception, or the start of a non-2xx body
    gateway_ms: float | None = None  # x-smartflow-duration-ms: the call's time in the gateway


def chat_body(index: int) -> bytes:
    return json.dumps({
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are a benchmark."},
                     {"role": "user", "content": f"Say something short. ({index})"}],
        "max_tokens": 32,
    }).encode()


class LoadClient:
    """``concurrency`` callers, each sending its next request when its last one is answered.

    ``per-caller`` (default): every caller has its own httpx.AsyncClient holding one
    HTTP/1.1 keep-alive connection. ``shared``: one AsyncClient whose pool holds
    ``concurrency`` connections; httpcore's pool scans every connection for every
    queued request, so at c=64 the client itself becomes the bottleneck (~200 req/s
    here, with seconds of queueing inside the client) and the latencies measure it.
    The clients are made before anything is timed and kept for the warm-up and the
    measured run, so neither client set-up nor connection opening is in the figures.
    """

    def __init__(self, url: str, concurrency: int, timeout_s: float, mode: str) -> None:
        self.url = url
        self.concurrency = concurrency
        self.headers = {"Authorization": f"Bearer {API_KEY}",
                        "Content-Type": "application/json"}
        timeout = httpx.Timeout(timeout_s)
        ssl_context = httpx.create_ssl_context()  # once: making one per client costs ~15 ms
        if mode == "shared":
            limits = httpx.Limits(max_connections=concurrency,
                                  max_keepalive_connections=concurrency, keepalive_expiry=120)
            shared = httpx.AsyncClient(http1=True, http2=False, limits=limits, timeout=timeout,
                                       verify=ssl_context, trust_env=False)
            self.clients = [shared] * concurrency
        else:
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1,
                                  keepalive_expiry=120)
            self.clients = [httpx.AsyncClient(http1=True, http2=False, limits=limits,
                                              timeout=timeout, verify=ssl_context,
                                              trust_env=False)
                            for _ in range(concurrency)]

    async def aclose(self) -> None:
        for client in dict.fromkeys(self.clients):
            await client.aclose()

    async def run(self, total: int, first_index: int = 0) -> tuple[list[Record], float]:
        """``total`` POSTs; the records in send order and the wall seconds."""
        records: list[Record | None] = [None] * total
        next_index = iter(range(total))
        url, headers = self.url, self.headers
        run_started = time.perf_counter()

        async def one_caller(client: httpx.AsyncClient) -> None:
            for i in next_index:
                body = chat_body(first_index + i)
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    records[i] = Record(0, started - run_started, time.perf_counter() - started,
                                        None, "",
                                        f"{type(exc).__name__}: {exc}"[:FAILED_BODY_CHARS])
                    continue
                elapsed = time.perf_counter() - started
                attempts = response.headers.get("x-smartflow-attempts")
                duration = response.headers.get("x-smartflow-duration-ms")
                try:
                    gateway_ms = float(duration) if duration else None
                except ValueError:
                    gateway_ms = None
                records[i] = Record(
                    response.status_code, started - run_started, elapsed,
                    int(attempts) if attempts and attempts.isdigit() else None,
                    response.headers.get("x-smartflow-deployment", ""),
                    "" if 200 <= response.status_code < 300
                    else response.text[:FAILED_BODY_CHARS], gateway_ms)

        callers = self.clients[:max(1, min(total, len(self.clients)))]
        await asyncio.gather(*(one_caller(client) for client in callers))
        wall = time.perf_counter() - run_started
        return [r for r in records if r is not None], wall


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# --------------------------------------------------------------------------- one scenario


@dataclass(slots=True)
class ScenarioResult:
    name: str
    records: list[Record]
    wall_s: float
    warmup: list[Record]
    counts: dict[str, dict[str, int] | None] = field(default_factory=dict)
    cooldowns: collections.Counter[str] = field(default_factory=collections.Counter)
    cooldown_times: list[tuple[float, str]] = field(default_factory=list)  # (epoch, deployment)
    run_started_epoch: float = 0.0
    measured_from_s: float = 0.0  # first measured request, from the run's start
    gateway_problems: list[str] = field(default_factory=list)  # warning/error log lines
    gateway_alive: bool = True
    error: str = ""


def gateway_log_findings(server: ServerProcess) -> tuple[list[tuple[float, str]], list[str]]:
    """Cooldowns the workers logged, as (epoch s, deployment) with one entry per cooldown
    (every worker logs each one), and the log lines at warning level or above."""
    logged: list[tuple[float, str]] = []
    problems: list[str] = []
    if not server.log_path or not server.log_path.exists():
        return [], problems
    for line in server.log_path.read_text(errors="replace").splitlines():
        text, level, ts = line, "", 0.0
        try:
            entry = json.loads(line)
            level = str(entry.get("level", "")).lower()
            text = str(entry.get("message") or entry.get("msg") or entry.get("event") or line)
            ts = float(entry.get("ts") or 0.0)
        except (ValueError, AttributeError, TypeError):
            lowered = line.lower()
            level = next((lv for lv in ("error", "warning", "critical") if lv in lowered), "")
        if "is cooling down" in text:
            words = text.split()
            index = words.index("deployment") + 1 if "deployment" in words else -1
            logged.append((ts, words[index] if 0 < index < len(words) else "?"))
            continue
        if level in ("warning", "error", "critical", "exception") or "Traceback" in line:
            problems.append(line)
    events: list[tuple[float, str]] = []
    for ts, deployment in sorted(logged):
        if not any(d == deployment and ts - t < 1.0 for t, d in events):
            events.append((ts, deployment))
    return events, problems


def check_problem(r: Record) -> str | None:
    """None when a request by hand got a 200 with the routing headers, else what is wrong."""
    if r.status != 200:
        return f"status {r.status}: {r.error[:200]}"
    if r.attempts is None or not r.deployment:
        return "200 without x-smartflow-attempts / x-smartflow-deployment"
    return None


async def scenario_load(url: str, args: argparse.Namespace, result: ScenarioResult) -> None:
    """A check call, the warm-up, then the measured run, all on the same connections."""
    client = LoadClient(url, args.concurrency, args.client_timeout, args.client)
    try:
        check, _ = await client.run(1, first_index=10**9)
        problem = check_problem(check[0])
        if problem:
            log(f"{result.name}: check call failed: {problem}")
            result.gateway_problems.append(f"check call: {problem}")
        result.warmup = check
        # The warm-up is the start of the same run, not a phase of its own: a pause in
        # between would leave the hangs of the warm-up timing out with no traffic
        # around them (no success between failures), which is not the steady state.
        log(f"{result.name}: {args.warmup} warm-up + {args.requests:,} measured requests "
            f"at c={args.concurrency}")
        result.run_started_epoch = time.time()
        records, _ = await client.run(args.warmup + args.requests)
        result.warmup += records[:args.warmup]
        result.records = measured = records[args.warmup:]
        if measured:
            result.measured_from_s = min(r.start_s for r in measured)
            result.wall_s = max(r.start_s + r.latency_s for r in measured) \
                - result.measured_from_s
    finally:
        await client.aclose()


def run_scenario(name: str, args: argparse.Namespace,
                 stack: list[ServerProcess]) -> ScenarioResult:
    mixes = SCENARIOS[name][0]
    ports = {d: free_port() for d in DEPLOYMENTS}
    upstreams = {d: faulty_upstream(d, ports[d], mixes[d], args.latency_ms,
                                    args.seed + i) for i, d in enumerate(DEPLOYMENTS)}
    gateway = smartflow_routing_gateway(name, free_port(), ports, args.workers, args)
    stack.extend(upstreams.values())
    stack.append(gateway)
    result = ScenarioResult(name, [], 0.0, [])
    failures_file = WORK_DIR / f"routing-failures-{name}.jsonl"
    failures_file.unlink(missing_ok=True)  # a file there is from this run
    try:
        for up in upstreams.values():
            up.start()
        for up in upstreams.values():
            up.wait_ready(30)
        gateway.start()
        seconds = gateway.wait_ready(60, poll_s=0.25)
        log(f"{name}: smartflow ready after {seconds:.1f} s on :{gateway.port}; upstreams "
            + ", ".join(f"{d} :{ports[d]} {' '.join(mixes[d]) or 'healthy'}"
                        for d in DEPLOYMENTS))
        url = gateway.base_url + "/v1/chat/completions"
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(scenario_load(url, args, result))
        result.gateway_alive = gateway.popen is not None and gateway.popen.poll() is None
    except Exception as exc:  # noqa: BLE001 - reported; the other scenarios still run
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"{name}: failed: {result.error}")
    finally:
        gateway.stop()
        for up in upstreams.values():
            up.stop()
        for server in (gateway, *upstreams.values()):
            stack.remove(server)
    result.counts = {d: upstream_counts(up) for d, up in upstreams.items()}
    result.cooldown_times, problems = gateway_log_findings(gateway)
    result.cooldowns = collections.Counter(d for _, d in result.cooldown_times)
    result.gateway_problems += problems
    failed = [r for r in result.records if not 200 <= r.status < 300]
    if failed:
        failures_file.write_text("".join(
            json.dumps({"status": r.status, "sent_s": round(r.start_s, 4),
                        "latency_s": round(r.latency_s, 4), "gateway_ms": r.gateway_ms,
                        "attempts": r.attempts, "deployment": r.deployment,
                        "body": r.error}) + "\n" for r in failed))
        log(f"{name}: {len(failed)} failed answers written to "
            f"{failures_file.relative_to(REPO_DIR)}")
    return result


# --------------------------------------------------------------------------- report


def latencies_ms(records: list[Record]) -> list[float]:
    return sorted(r.latency_s * 1000 for r in records)


def pct(values: list[float], fraction: float) -> float:
    return percentile(values, fraction) if values else math.nan


def share(n: int, total: int) -> str:
    return f"{100 * n / total:.2f}%" if total else "n/a"


def render(results: list[ScenarioResult], args: argparse.Namespace) -> tuple[str, bool]:
    done = [r for r in results if r.records]
    out: list[str] = []
    # -- main table
    rows = []
    for r in done:
        n = len(r.records)
        ok = sum(1 for x in r.records if 200 <= x.status < 300)
        lat = latencies_ms(r.records)
        rows.append([r.name, f"{n:,}", f"{ok:,}", share(ok, n), f"{n - ok:,}",
                     f"{n / r.wall_s:,.0f}" if r.wall_s else "n/a",
                     fmt_ms(pct(lat, 0.50)), fmt_ms(pct(lat, 0.90)), fmt_ms(pct(lat, 0.95)),
                     fmt_ms(pct(lat, 0.99)), fmt_ms(lat[-1] if lat else math.nan)])
    out.append(format_table(["scenario", "requests", "2xx", "success", "failed", "req/s",
                             "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms"], rows))

    # -- what failover adds
    healthy = next((r for r in done if r.name == "healthy"), None)
    if healthy:
        h = latencies_ms(healthy.records)
        healthy_rps = len(healthy.records) / healthy.wall_s if healthy.wall_s else 0.0
        rows = []
        for r in done:
            if r is healthy:
                continue
            f = latencies_ms(r.records)
            rps = len(r.records) / r.wall_s if r.wall_s else 0.0
            rows.append([r.name, *(f"{pct(f, q) - pct(h, q):+.2f}" for q in (0.50, 0.90, 0.99)),
                         f"{rps / healthy_rps:.2f}x" if rps and healthy_rps else "n/a"])
        if rows:
            out += ["", ("latency failover adds (scenario - healthy, same load, ms) and "
                        "throughput relative to healthy:"),
                    format_table(["scenario", "p50 added", "p90 added", "p99 added",
                                  "req/s vs healthy"], rows)]

    # -- inside the gateway
    rows = []
    base = sorted(x.gateway_ms for x in healthy.records if x.gateway_ms is not None) \
        if healthy else []
    for r in done:
        g = sorted(x.gateway_ms for x in r.records if x.gateway_ms is not None)
        row = [r.name, f"{len(g):,}", *(fmt_ms(pct(g, q)) for q in (0.50, 0.90, 0.99)),
               fmt_ms(g[-1] if g else math.nan)]
        if base and r is not healthy and g:
            row += [f"{pct(g, q) - pct(base, q):+.2f}" for q in (0.50, 0.99)]
        else:
            row += ["", ""]
        rows.append(row)
    out += ["", ("time inside the gateway (x-smartflow-duration-ms, from the request head to the "
                "answer; without the client's own queueing), ms:"),
            format_table(["scenario", "with header", "p50", "p90", "p99", "max",
                          "p50 added", "p99 added"], rows)]

    # -- by attempts
    rows = []
    for r in done:
        one = latencies_ms([x for x in r.records if x.attempts == 1])
        more = latencies_ms([x for x in r.records if (x.attempts or 0) > 1])
        slow = sum(1 for x in r.records if x.latency_s >= args.attempt_timeout)
        fast = latencies_ms([x for x in r.records if (x.attempts or 0) > 1
                             and x.latency_s < args.attempt_timeout])
        rows.append([r.name, f"{len(one):,}", fmt_ms(pct(one, 0.50)), fmt_ms(pct(one, 0.99)),
                     f"{len(more):,}", fmt_ms(pct(more, 0.50)), fmt_ms(pct(more, 0.99)),
                     f"{len(fast):,}", fmt_ms(pct(fast, 0.50)), fmt_ms(pct(fast, 0.99)),
                     f"{slow:,} ({share(slow, len(r.records))})"])
    odd = {r.name: sum(1 for x in r.records if x.latency_s >= args.attempt_timeout
                       and x.attempts == 1) for r in done}
    odd_note = [f"  {name}: {n} requests took >= attempt_timeout with 1 attempt (a slow "
                f"answer, not a failover)" for name, n in odd.items() if n]
    out += ["", (f"latency by attempts made (ms); 'no hang' = >1 attempts and answered in "
                f"< attempt_timeout (failed over from a 5xx: what a fast failure costs);\n"
                f"'waited out a hang' = answered after >= attempt_timeout "
                f"({args.attempt_timeout:g} s):"),
            format_table(["scenario", "1 attempt", "p50", "p99", ">1 attempts", "p50", "p99",
                          "no hang", "p50", "p99", "waited out a hang"], rows), *odd_note]

    # -- attempts distribution
    max_attempts = max([x.attempts or 0 for r in done for x in r.records] + [1])
    rows = []
    for r in done:
        n = len(r.records)
        dist = collections.Counter(x.attempts for x in r.records)
        row = [r.name]
        for k in range(1, max_attempts + 1):
            row.append(f"{dist.get(k, 0):,} ({share(dist.get(k, 0), n)})")
        row.append(f"{dist.get(None, 0):,}")
        total_attempts = sum(x.attempts or 0 for x in r.records)
        row.append(f"{total_attempts / n:.3f}" if n else "n/a")
        rows.append(row)
    out += ["", ("attempts per request (x-smartflow-attempts: upstream calls made), count "
                "(share):"),
            format_table(["scenario", *[str(k) for k in range(1, max_attempts + 1)],
                          "no header", "mean"], rows)]

    # -- which deployment answered
    rows = []
    for r in done:
        ok = [x for x in r.records if 200 <= x.status < 300]
        by = collections.Counter(x.deployment or "(none)" for x in ok)
        rows.append([r.name, *[f"{by.get(d, 0):,} ({share(by.get(d, 0), len(ok))})"
                               for d in DEPLOYMENTS],
                     ", ".join(f"{k} {v}" for k, v in by.items() if k not in DEPLOYMENTS)])
    out += ["", "deployment that answered (x-smartflow-deployment, of the 2xx answers):",
            format_table(["scenario", *DEPLOYMENTS, "other"], rows)]

    # -- over time
    rows = []
    for r in done:
        if r.name == "healthy" or not r.wall_s:
            continue
        origin = r.measured_from_s
        slices = args.slices
        width = max((x.start_s - origin for x in r.records), default=0.0) / slices or 1.0
        buckets: list[list[Record]] = [[] for _ in range(slices)]
        for x in r.records:
            buckets[min(slices - 1, int((x.start_s - origin) / width))].append(x)
        for k, bucket in enumerate(buckets):
            if not bucket:
                continue
            ok = [x for x in bucket if 200 <= x.status < 300]
            by = collections.Counter(x.deployment for x in ok)
            lat = latencies_ms(bucket)
            more = sum(1 for x in bucket if (x.attempts or 0) > 1)
            rows.append([r.name, f"{k * width:.1f}-{(k + 1) * width:.1f}", f"{len(bucket):,}",
                         *[share(by.get(d, 0), len(ok)) for d in DEPLOYMENTS],
                         share(more, len(bucket)), fmt_ms(pct(lat, 0.99)),
                         share(len(bucket) - len(ok), len(bucket))])
    if rows:
        out += ["", ("over time (s from the first measured request, by send time): who answered, "
                    "share of requests that needed >1 attempts, p99, failed:"),
                format_table(["scenario", "sent s", "requests", *DEPLOYMENTS, ">1 attempts",
                              "p99 ms", "failed"], rows)]

    # -- upstream counts
    rows = []
    for r in results:
        attempts_sent = sum(x.attempts or 0 for x in [*r.records, *r.warmup])
        seen = 0
        for d in DEPLOYMENTS:
            counts = r.counts.get(d)
            if counts is None:
                rows.append([r.name, d, "n/a (no JSON line)", "", ""])
                continue
            calls = sum(counts.values())
            seen += calls
            faults = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()) if k != "ok")
            rows.append([r.name, d, f"{calls:,}", f"{counts.get('ok', 0):,}", faults or "-"])
        rows.append([r.name, "all", f"{seen:,}", "",
                     (f"gateway reported {attempts_sent:,} attempts "
                     f"({'equal' if attempts_sent == seen else 'DIFFERENT'})")])
    out += ["", ("upstream chat calls (each upstream's SIGTERM counts; the check call and the "
                f"{args.warmup} warm-up requests included):"),
            format_table(["scenario", "upstream", "calls", "ok", "faults"], rows)]

    # -- cooldowns, gateway log
    lines = []
    for r in results:
        origin = r.run_started_epoch + r.measured_from_s
        cool = ", ".join(f"{d} at {ts - origin:+.2f} s" for ts, d in r.cooldown_times) or "none"
        lines.append(f"  {r.name}: cooldowns (s from the first measured request): {cool}; gateway "
                     f"{'alive' if r.gateway_alive else 'DIED'} at the end; "
                     f"{len(r.gateway_problems)} warning/error log lines"
                     + (f"; scenario FAILED: {r.error}" if r.error else ""))
        for line in r.gateway_problems[:5]:
            lines.append(f"    {line[:300]}")
    out += ["", "gateway:", *lines]

    # -- failures, grouped
    for r in done:
        failed = [x for x in r.records if not 200 <= x.status < 300]
        if not failed:
            continue
        groups = collections.Counter(
            (x.status, x.attempts, x.deployment or "-", _error_summary(x.error))
            for x in failed)
        rows = [[str(s), str(a), d, f"{n:,}", e] for (s, a, d, e), n in groups.most_common(12)]
        lat = latencies_ms(failed)
        out += ["", (f"{r.name}: {len(failed):,} failed requests (latency p50 "
                    f"{fmt_ms(pct(lat, 0.5))} ms, max {fmt_ms(lat[-1])} ms), grouped:"),
                format_table(["status", "attempts", "deployment", "n", "error"], rows)]

    # -- verdict
    checks = []
    for r in results:
        if r.name == "healthy":
            continue
        n = len(r.records)
        ok = sum(1 for x in r.records if 200 <= x.status < 300)
        passed = bool(n) and ok == n and not r.error
        checks.append((r.name, passed, f"{share(ok, n)} 2xx" if n else "did not run"))
    passed = bool(checks) and all(p for _, p, _ in checks)
    verdict = ("PASS" if passed else "FAIL") + " - success rate with one healthy deployment " \
        "(target 100%): " + "; ".join(f"{name} {text} {'PASS' if p else 'FAIL'}"
                                      for name, p, text in checks)
    out += ["", f"verdict: {verdict}" if checks else "verdict: n/a (no faulty scenario run)"]
    return "\n".join(out), passed


def _error_summary(body: str) -> str:
    try:
        error = json.loads(body)["error"]
        return f"{error.get('code') or error.get('type')}: {error.get('message')}"[:110]
    except (ValueError, KeyError, TypeError, AttributeError):
        return body.replace("\n", " ")[:110]


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000,
                        help="measured requests per scenario")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=500,
                        help="requests sent before measuring (not in the figures)")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help=f"comma list out of {','.join(SCENARIOS)}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--attempt-timeout", type=float, default=1.0,
                        help="[routing] attempt_timeout, seconds (bounds what a hang costs)")
    parser.add_argument("--retries", type=int, default=1, help="[routing] retries")
    parser.add_argument("--latency-ms", type=float, default=2.0,
                        help="latency every upstream adds before its answer")
    parser.add_argument("--seed", type=int, default=1, help="fault RNG seed (C uses seed+2)")
    parser.add_argument("--client", choices=("per-caller", "shared"), default="per-caller",
                        help="per-caller: one httpx.AsyncClient with one keep-alive connection "
                             "per caller; shared: one AsyncClient pooling all connections "
                             "(its pool is the bottleneck at c=64)")
    parser.add_argument("--slices", type=int, default=5,
                        help="time slices of the over-time table")
    parser.add_argument("--client-timeout", type=float, default=60.0,
                        help="the client's own timeout per request, seconds")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2,000 requests, 200 warm-up")
    parser.add_argument("--output", type=Path, default=None,
                        help="report file (default bench/results/routing_bench.txt, "
                             "--quick: routing_bench_quick.txt)")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup = 2_000, 200
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--requests and --concurrency must be >= 1, --warmup >= 0")
    if args.warmup:  # every caller sends at least one: all connections are open when timed
        args.warmup = max(args.warmup, args.concurrency)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or not scenarios:
        parser.error(f"unknown scenario(s): {', '.join(unknown) or '(none given)'}")
    output = args.output or RESULTS_DIR / ("routing_bench_quick.txt" if args.quick
                                           else "routing_bench.txt")

    why_not = smartflow_available()
    if why_not:
        raise SystemExit(f"bench: Smartflow cannot run here: {why_not}")
    WORK_DIR.mkdir(parents=True, exist_ok=True)

    load_before = machine_note()
    stack: list[ServerProcess] = []  # whatever runs now, stopped on any way out
    results: list[ScenarioResult] = []
    try:
        for name in scenarios:
            results.append(run_scenario(name, args, stack))
    finally:
        for server in reversed(stack):
            server.stop()

    header = (
        f"routing_bench: Smartflow {args.workers} workers, embedded redis, access log off; "
        f"model group '{MODEL}' = 3 deployments A, B, C (faulty_openai upstreams, "
        f"{args.latency_ms:g} ms latency each, round_robin);\n"
        f"faulty scenarios: A healthy, B {' '.join(FAULTY_MIX['B'])}, C "
        f"{' '.join(FAULTY_MIX['C'])} (fault RNG seeds {args.seed}..{args.seed + 2}); "
        f"healthy: all three without faults;\n"
        f"[routing] retries = {args.retries}, attempt_timeout = {args.attempt_timeout:g} s "
        f"(first-byte timeout per attempt: bounds what a hang costs a caller), cooldowns "
        f"default (5 failures / 30 s window -> 30 s out), faulty-nocooldown: "
        f"cooldown_failures = 1000;\n"
        f"load: {args.concurrency} callers, "
        + ("each its own httpx.AsyncClient with one HTTP/1.1 keep-alive connection"
           if args.client == "per-caller" else
           f"one shared httpx.AsyncClient pooling {args.concurrency} HTTP/1.1 keep-alive "
           "connections")
        + f", uvloop; "
        f"{args.requests:,} non-streaming chat completions per scenario after "
        f"{args.warmup} warm-up requests; one run, {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        f"before the run: {load_before}\nafter the run:  {machine_note()}\n")
    body, passed = render(results, args)
    report = header + "\n" + body + "\n"
    if args.quick:
        report += ("(--quick: a smoke run; the tail percentiles of 2,000 requests rest on "
                   "20 requests)\n")
    print("\n" + report)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    output.write_text(f"$ python3 bench/routing_bench.py {' '.join(sys.argv[1:])}".rstrip()
                      + "\n\n" + report)
    log(f"wrote {output.relative_to(REPO_DIR) if output.is_relative_to(REPO_DIR) else output}")
    return 0 if passed else 1


if __name__ == "__main__":
    run_cli(main)
