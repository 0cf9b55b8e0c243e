#!/usr/bin/env python3
"""The audit log's two figures: what it costs the proxy, and that it loses nothing.

**Throughput, audit on vs off.** Two Smartflow gateways from the working tree
(2 workers each, master key, access log off, the nginx mock upstream of
llm_proxy_bench), identical but for ``[audit]``: one records every call
(bodies captured) into its Redis stream with the shipper writing them to a
real PostgreSQL 15 that this bench starts; the other has the audit off. wrk
POSTs chat completions at c=32 (non-stream and stream), interleaved per round
and rotated; ``--rounds N`` keeps the median. Target (issue): on/off req/s
>= 0.95. The default policy's guardrails are off in both unless ``--policy``:
they cost both gateways the same and would hide what the audit costs.

**Both at once.** The same two gateways loaded together, each by its own wrk
at c=32, so that whatever else the machine does in a round (a shared host's
other tenants) slows both alike. Two ratios per round: req/s, and requests
per CPU-second of the gateway's workers (what a call costs, whatever share of
the cores each got); medians over ``--paired-rounds`` rounds (default 8),
the wrk of each gateway started first in turn. On a quiet machine it agrees
with the one-at-a-time figure; on a noisy one it is the steadier of the two,
so this figure decides (both ratios >= 0.95), as in vkey_bench; the
one-at-a-time figure is shown.

**Exactly once, 50,000 calls.** ``--calls`` requests (default 50,000) at
concurrency 32 through the audit-on gateway (its own PostgreSQL), one in five
streamed. During the run PostgreSQL is stopped (at 20% of the calls answered)
and started again (at 60%); the shipper is killed with SIGKILL while
PostgreSQL is down, holding a batch it cannot commit (40%), and again while it
ships (80%). Then the bench waits for the backlog to drain and checks that
the rows in ``vas_log`` number exactly the answered calls, that their
call ids are distinct, and that they are the answered calls' ids
(``x-smartflow-call-id``). It reports the longest backlog seen
(``smartflow_audit_backlog`` scraped from /metrics every 250 ms).

    python3 bench/audit_bench.py --quick                # smoke run (~1 min)
    python3 bench/audit_bench.py --rounds 3             # full run
    python3 bench/audit_bench.py --rounds 3 | tee bench/results/audit_bench.txt
    python3 bench/audit_bench.py --skip-throughput      # only the 50,000-call run
    python3 bench/audit_bench.py --rounds 3 --policy    # with the default guardrails on
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO_DIR,
    REPO_PYTHON,
    WORK_DIR,
    LoadResult,
    ServerProcess,
    ensure_apt,
    format_table,
    free_port,
    log,
    machine_note,
    median_result,
    run_cli,
    run_wrk,
    workers_cpu_s,
    write_results,
    wrk_post_script,
)
from http_bench import smartflow_argv
from llm_proxy_bench import (
    API_KEY,
    MODEL,
    STREAM_MODEL,
    UPSTREAM_API_KEY,
    chat_body,
    nginx_mock,
)

sys.path.insert(0, str(REPO_DIR / "tests"))

from harness.gateway import titled_child
from harness.postgres import PostgresServer

MIN_RATIO = 0.95
CONCURRENCY = 32


def gateway(name: str, port: int, upstream_port: int, audit: dict[str, object] | None, *,
            policy: bool = True) -> ServerProcess:
    config = WORK_DIR / f"{name}-audit.toml"
    upstream = f"http://127.0.0.1:{upstream_port}"
    text = f'[server]\naccess_log = false\n\n[auth]\nmaster_key = "{API_KEY}"\n\n'
    if not policy:
        text += "[policy]\nenabled = false\n\n"
    if audit is not None:
        text += "[audit]\n" + "".join(f'{key} = "{value}"\n' if isinstance(value, str)
                                      else f"{key} = {value}\n" for key, value in audit.items())
        text += "\n"
    else:
        text += '[audit]\nmode = "off"\n\n'
    text += "".join(
        f'[[models]]\nname = "{model}"\nprovider = "openai"\nmodel = "gpt-4o-mini"\n'
        f'api_base = "{upstream}{base}"\napi_key = "{UPSTREAM_API_KEY}"\n\n'
        for model, base in ((MODEL, "/v1"), (STREAM_MODEL, "/stream/v1")))
    config.write_text(text)
    data_dir = WORK_DIR / f"data-{name}-audit"
    shutil.rmtree(data_dir, ignore_errors=True)
    serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2", "--data-dir", str(data_dir)]
    return ServerProcess(name, [*smartflow_argv(), *serve], port, ready_path="/health/ready",
                         cwd=REPO_DIR)


def shipper_pid(server: ServerProcess) -> int | None:
    assert server.popen is not None
    return titled_child(server.popen.pid, "smartflow: shipper")


def wait_shipper(server: ServerProcess, not_pid: int | None = None, timeout_s: float = 60
                 ) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = shipper_pid(server)
        if pid is not None and pid != not_pid:
            return pid
        time.sleep(0.05)
    raise RuntimeError("the shipper did not (re)start")


_BACKLOG = re.compile(rb"^smartflow_audit_backlog(?:\{[^}]*\})? ([0-9.e+]+)$", re.MULTILINE)


def scrape_backlog(base_url: str) -> float | None:
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=2) as response:
            found = _BACKLOG.search(response.read())
    except OSError:
        return None
    return float(found.group(1)) if found else None


# --------------------------------------------------------------------------- throughput


@dataclass
class Point:
    mode: str
    target: str
    result: LoadResult


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]  # all, idle + iowait


def wait_quiet(server: ServerProcess, timeout_s: float = 300) -> None:
    """Until the audit gateway's backlog is 0 and the machine is idle: the
    shipper, PostgreSQL (its autovacuum) and Redis have finished what the last
    run left them, so nothing steals CPU from the next run."""
    deadline = time.monotonic() + timeout_s
    time.sleep(2 * 1.0)  # the backlog gauge is refreshed every second
    while time.monotonic() < deadline:
        total, idle = _cpu_times()
        time.sleep(0.5)
        total2, idle2 = _cpu_times()
        busy = 1 - (idle2 - idle) / max(1, total2 - total)
        if busy < 0.10 and scrape_backlog(server.base_url) == 0:
            return
    raise RuntimeError("the machine did not quiet down (audit backlog or other load)")


def measure_throughput(servers: dict[str, ServerProcess], rounds: int, duration_s: float,
                       *, hold_shipper: bool) -> list[Point]:
    """wrk at c=32 on both gateways, interleaved. Before every run the audit
    gateway's backlog has drained and the machine is idle (so the shipper and
    PostgreSQL steal no CPU from the next run). ``hold_shipper``: the shipper is also stopped (SIGSTOP)
    while its own gateway is measured, so the figure is the request path's
    cost alone; without it the shipper and PostgreSQL run during the
    measurement, on the same two cores."""
    points: list[Point] = []
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    audited = servers["audit-on"]
    for mode, stream in (("non-stream", False), ("stream", True)):
        script = wrk_post_script(WORK_DIR / f"audit-{mode}.lua", chat_body(stream), headers)
        runs: dict[str, list[LoadResult]] = {"audit-off": [], "audit-on": []}
        for index in range(rounds):
            order = ["audit-off", "audit-on"] if index % 2 == 0 else ["audit-on", "audit-off"]
            for target in order:
                url = servers[target].base_url + "/v1/chat/completions"
                wait_quiet(audited)
                held = shipper_pid(audited) if hold_shipper and target == "audit-on" else None
                if held is not None:
                    os.kill(held, signal.SIGSTOP)
                try:
                    run_wrk(url, CONCURRENCY, 2, script=script)  # warm-up
                    result = run_wrk(url, CONCURRENCY, duration_s, script=script)
                finally:
                    if held is not None:
                        os.kill(held, signal.SIGCONT)
                log(f"{mode} {target} round {index + 1}: {result.requests_per_s:,.0f} req/s, "
                    f"errors {result.errors}")
                runs[target].append(result)
        for target, results in runs.items():
            points.append(Point(mode, target, median_result(results)))
    return points


@dataclass
class PairedPoint:
    mode: str
    off: float  # req/s, median
    on: float
    ratio: float  # median of the rounds' on/off req/s
    cost_ratio: float  # median of the rounds' on/off requests per worker CPU-second
    errors: int


def measure_paired(servers: dict[str, ServerProcess], rounds: int, duration_s: float
                   ) -> list[PairedPoint]:
    """Both gateways under load at once (the shipper held), ``rounds`` times."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    audited = servers["audit-on"]
    points = []
    for mode, stream in (("non-stream", False), ("stream", True)):
        script = wrk_post_script(WORK_DIR / f"audit-paired-{mode}.lua", chat_body(stream),
                                 headers)
        rps: dict[str, list[float]] = {"audit-off": [], "audit-on": []}
        ratios, cost_ratios = [], []
        errors = 0
        for index in range(rounds):
            wait_quiet(audited)
            held = shipper_pid(audited)
            if held is not None:
                os.kill(held, signal.SIGSTOP)
            warm = threading.Barrier(len(servers))
            results: dict[str, tuple[LoadResult, float]] = {}

            def load(target: str, script: Path = script, warm: threading.Barrier = warm,
                     results: dict[str, tuple[LoadResult, float]] = results) -> None:
                url = servers[target].base_url + "/v1/chat/completions"
                run_wrk(url, CONCURRENCY, 2, script=script)  # warm-up
                warm.wait()
                cpu = workers_cpu_s(servers[target])
                result = run_wrk(url, CONCURRENCY, duration_s, script=script)
                results[target] = (result, workers_cpu_s(servers[target]) - cpu)

            try:
                # Started in turn first: whatever the order favours, both get it.
                names = list(servers) if index % 2 == 0 else list(reversed(servers))
                threads = [threading.Thread(target=load, args=(target,)) for target in names]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            finally:
                if held is not None:
                    os.kill(held, signal.SIGCONT)
            (off, off_cpu), (on, on_cpu) = results["audit-off"], results["audit-on"]
            errors += off.errors + on.errors
            rps["audit-off"].append(off.requests_per_s)
            rps["audit-on"].append(on.requests_per_s)
            ratio = on.requests_per_s / off.requests_per_s if off.requests_per_s else 0.0
            cost = ratio * off_cpu / on_cpu if on_cpu else 0.0
            ratios.append(ratio)
            cost_ratios.append(cost)
            log(f"{mode} both at once round {index + 1}: off {off.requests_per_s:,.0f} req/s "
                f"({off_cpu:.2f} CPU-s), on {on.requests_per_s:,.0f} req/s ({on_cpu:.2f} "
                f"CPU-s): {ratio:.3f}, per CPU-second {cost:.3f}")
        points.append(PairedPoint(mode, statistics.median(rps["audit-off"]),
                                  statistics.median(rps["audit-on"]),
                                  statistics.median(ratios), statistics.median(cost_ratios),
                                  errors))
    return points


def paired_table(points: list[PairedPoint], title: str, results: dict[str, object]
                 ) -> list[str]:
    rows = []
    for point in points:
        verdict = "PASS" if min(point.ratio, point.cost_ratio) >= MIN_RATIO and \
            not point.errors else "FAIL"
        rows.append([point.mode, str(CONCURRENCY), f"{point.off:,.0f}", f"{point.on:,.0f}",
                     f"{point.ratio:.3f}", f"{point.cost_ratio:.3f}", f">= {MIN_RATIO}",
                     verdict])
        results[f"paired_{point.mode}"] = point.__dict__
    return ["", title, format_table(["scenario", "c", "off req/s", "on req/s", "on/off",
                                     "per CPU-s", "target", "verdict"], rows)]


def measure_latency(servers: dict[str, ServerProcess], rounds: int, duration_s: float
                    ) -> dict[str, float]:
    """p50 at c=1 (non-stream) on both gateways, interleaved; the shipper runs
    (at one call at a time it has the CPU to spare)."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    script = wrk_post_script(WORK_DIR / "audit-latency.lua", chat_body(False), headers)
    runs: dict[str, list[LoadResult]] = {"audit-off": [], "audit-on": []}
    for index in range(rounds):
        order = ["audit-off", "audit-on"] if index % 2 == 0 else ["audit-on", "audit-off"]
        for target in order:
            wait_quiet(servers["audit-on"])
            url = servers[target].base_url + "/v1/chat/completions"
            run_wrk(url, 1, 1, script=script)
            runs[target].append(run_wrk(url, 1, duration_s, script=script))
    return {target: median_result(results).p50_ms for target, results in runs.items()}


def throughput_table(points: list[Point], title: str, results: dict[str, object],
                     key: str, *, decides: bool = True) -> list[str]:
    by = {(p.mode, p.target): p.result for p in points}
    rows = []
    for mode in ("non-stream", "stream"):
        off, on = by[(mode, "audit-off")], by[(mode, "audit-on")]
        value = on.requests_per_s / off.requests_per_s if off.requests_per_s else 0.0
        verdict = "PASS" if value >= MIN_RATIO and not (on.errors or off.errors) else "FAIL"
        if not decides:
            verdict = f"({verdict}: shown, does not decide)"
        rows.append([mode, str(CONCURRENCY), f"{off.requests_per_s:,.0f}",
                     f"{on.requests_per_s:,.0f}", f"{value:.3f}", f">= {MIN_RATIO}", verdict])
        results[f"{key}_{mode}"] = {"off": off.requests_per_s, "on": on.requests_per_s,
                                    "ratio": value}
    return ["", title, format_table(["scenario", "c", "off req/s", "on req/s", "on/off",
                                     "target", "verdict"], rows)]


# --------------------------------------------------------------------------- exactly once


class Calls:
    """``total`` calls at ``concurrency`` over keep-alive HTTP/1.1 (h11)."""

    def __init__(self, port: int, total: int, concurrency: int) -> None:
        self.port = port
        self.total = total
        self.concurrency = concurrency
        self.next = 0
        self.answered: list[str] = []
        self.failed: list[str] = []

    async def run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.concurrency)))

    async def _client(self) -> None:
        import h11

        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        connection = h11.Connection(h11.CLIENT)
        try:
            while self.next < self.total:
                n = self.next
                self.next += 1
                if connection.our_state is h11.MUST_CLOSE or connection.their_state is \
                        h11.MUST_CLOSE:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    connection = h11.Connection(h11.CLIENT)
                elif connection.our_state is h11.DONE:
                    connection.start_next_cycle()
                await self._one(n, reader, writer, connection)
        finally:
            writer.close()

    async def _one(self, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   connection: object) -> None:
        import h11

        assert isinstance(connection, h11.Connection)
        stream = n % 5 == 0
        body = (b'{"model":"' + (STREAM_MODEL if stream else MODEL).encode()
                + b'","messages":[{"role":"user","content":"call ' + str(n).encode()
                + b'"}],"max_tokens":32' + (b',"stream":true' if stream else b"") + b"}")
        writer.write(connection.send(h11.Request(
            method="POST", target="/v1/chat/completions",
            headers=[("host", "bench"), ("content-type", "application/json"),
                     ("authorization", f"Bearer {API_KEY}"),
                     ("content-length", str(len(body)))])))
        writer.write(connection.send(h11.Data(data=body)))
        writer.write(connection.send(h11.EndOfMessage()))
        status, call_id = 0, ""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                connection.receive_data(data)
                if not data and connection.their_state is not h11.DONE:
                    raise ConnectionError("the gateway closed the connection")
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                call_id = dict(event.headers).get(b"x-smartflow-call-id", b"").decode()
            elif isinstance(event, h11.EndOfMessage):
                break
        if status == 200 and call_id:
            self.answered.append(call_id)
        else:
            self.failed.append(f"{status}")


@dataclass
class OnceResult:
    calls: int
    answered: int
    failed: int
    rows: int
    distinct: int
    matches: bool
    max_backlog: float
    drain_s: float
    run_s: float
    shipper_kills: int


def exactly_once(calls: int, upstream_port: int) -> OnceResult:
    import asyncpg

    pg = PostgresServer()
    pg.start()
    port = free_port()
    server = gateway("audit-once", port, upstream_port,
                     {"postgres_dsn": pg.dsn, "claim_idle": 5.0, "stream_max_len": 500000})
    backlog_max = [0.0]
    stop_scraping = threading.Event()

    def scrape() -> None:
        while not stop_scraping.is_set():
            value = scrape_backlog(server.base_url)
            if value is not None:
                backlog_max[0] = max(backlog_max[0], value)
            stop_scraping.wait(0.25)

    try:
        server.start()
        server.wait_ready(60)
        first = wait_shipper(server)
        load = Calls(port, calls, CONCURRENCY)
        kills = 0

        async def disrupt() -> None:
            nonlocal kills
            loop = asyncio.get_running_loop()

            async def reach(share: float) -> None:
                while len(load.answered) < calls * share:
                    await asyncio.sleep(0.01)

            await reach(0.2)
            log("stopping PostgreSQL")
            await loop.run_in_executor(None, pg.stop)
            await reach(0.4)
            log("SIGKILL to the shipper (PostgreSQL is down: it holds a batch)")
            os.kill(first, signal.SIGKILL)
            kills += 1
            await reach(0.6)
            log("starting PostgreSQL")
            await loop.run_in_executor(None, pg.start)
            second = await loop.run_in_executor(None, lambda: wait_shipper(server, first))
            await reach(0.8)
            log("SIGKILL to the shipper (while it ships)")
            os.kill(second, signal.SIGKILL)
            kills += 1

        async def main() -> None:
            await asyncio.gather(load.run(), disrupt())

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        started = time.perf_counter()
        asyncio.run(main())
        run_s = time.perf_counter() - started
        log(f"{len(load.answered):,} calls answered in {run_s:.1f} s; waiting for the backlog")

        async def count() -> tuple[int, int, set[str]]:
            connection = await asyncpg.connect(pg.dsn, timeout=10)
            try:
                row = await connection.fetchrow(
                    "SELECT count(*) AS n, count(DISTINCT call_id) AS d FROM vas_log")
                ids = {r["call_id"] for r in await connection.fetch("SELECT call_id FROM vas_log")}
                return row["n"], row["d"], ids
            finally:
                await connection.close()

        deadline = time.monotonic() + 600
        rows = distinct = 0
        ids: set[str] = set()
        while time.monotonic() < deadline:
            rows, distinct, ids = asyncio.run(count())
            if rows >= len(load.answered):
                break
            time.sleep(0.5)
        drain_s = time.perf_counter() - started - run_s
        time.sleep(2)  # anything late (a duplicate) would land now
        rows, distinct, ids = asyncio.run(count())
        return OnceResult(calls, len(load.answered), len(load.failed), rows, distinct,
                          ids == set(load.answered), backlog_max[0], drain_s, run_s, kills)
    finally:
        stop_scraping.set()
        server.stop()
        pg.close()


# --------------------------------------------------------------------------- main


def _has_modules(*names: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--paired-rounds", type=int, default=8,
                        help="rounds of the both-at-once figure (the one that decides)")
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="1 round of 4 s, 5,000 calls")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-once", action="store_true")
    parser.add_argument("--whole", action="store_true",
                        help="also measure with the shipper and PostgreSQL running meanwhile")
    parser.add_argument("--policy", action="store_true",
                        help="keep the default policy (guardrails) on in both gateways; off by "
                             "default, since it costs both the same")
    args = parser.parse_args()
    if not _has_modules("h11", "asyncpg") and REPO_PYTHON.exists() and \
            Path(sys.prefix).resolve() != REPO_PYTHON.parent.parent.resolve():
        # The exactly-once run talks HTTP (h11) and PostgreSQL (asyncpg): use the repo venv.
        os.execv(str(REPO_PYTHON), [str(REPO_PYTHON), __file__, *sys.argv[1:]])
    if args.quick:
        args.rounds, args.paired_rounds, args.duration, args.calls = 1, 1, 4.0, 5000
    ensure_apt("wrk", "wrk")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    upstream_port = free_port()
    upstream = nginx_mock(upstream_port)
    upstream.start()
    upstream.wait_ready(30)
    results: dict[str, object] = {}
    policy_note = "on" if args.policy else "off (--policy keeps it on)"
    lines = [f"audit_bench: {machine_note()}; default policy {policy_note}"]
    try:
        if not args.skip_throughput:
            pg = PostgresServer()
            pg.start()
            servers = {
                "audit-off": gateway("audit-off", free_port(), upstream_port, None,
                                     policy=args.policy),
                "audit-on": gateway("audit-on", free_port(), upstream_port,
                                    {"postgres_dsn": pg.dsn}, policy=args.policy),
            }
            try:
                for server in servers.values():
                    server.start()
                for server in servers.values():
                    server.wait_ready(60)
                latency = measure_latency(servers, args.rounds, args.duration)
                hot = measure_throughput(servers, args.rounds, args.duration, hold_shipper=True)
                paired = measure_paired(servers, args.paired_rounds, args.duration)
                whole = (measure_throughput(servers, args.rounds, args.duration,
                                            hold_shipper=False) if args.whole else [])
            finally:
                for server in servers.values():
                    server.stop()
                pg.close()
            added = latency["audit-on"] - latency["audit-off"]
            results["latency_c1_p50_ms"] = {**latency, "added": added}
            lines += ["", (f"latency at c=1, non-stream, p50 (median of {args.rounds}): audit off "
                          f"{latency['audit-off']:.3f} ms, on {latency['audit-on']:.3f} ms, "
                          f"added {added:+.3f} ms")]
            lines += throughput_table(
                hot, f"request path: throughput at c={CONCURRENCY}, audit on / off, the "
                     f"shipper held while measured (median of {args.rounds} x "
                     f"{args.duration:g} s; shown: one gateway after the other, the host's "
                     "drift between runs is part of the figure):", results, "request_path",
                decides=False)
            lines += paired_table(
                paired, f"request path, both gateways loaded at once, each by its own wrk at "
                        f"c={CONCURRENCY}, the shipper held (median of {args.paired_rounds} "
                        f"rounds of {args.duration:g} s; this figure decides):", results)
            if whole:
                lines += throughput_table(
                    whole, f"whole pipeline: the same with the shipper and PostgreSQL running "
                           f"on the same {os.cpu_count()} cores during the measurement:",
                    results, "whole_pipeline")
        if not args.skip_once:
            once = exactly_once(args.calls, upstream_port)
            ok = (once.failed == 0 and once.rows == once.answered == once.distinct
                  and once.matches)
            results["exactly_once"] = once.__dict__
            lines += ["", (f"exactly once: {once.calls:,} calls at c={CONCURRENCY}, PostgreSQL "
                           f"stopped and restarted, shipper SIGKILLed {once.shipper_kills} "
                           "times:"),
                      format_table(
                          ["answered", "failed", "rows", "distinct call ids", "ids match",
                           "longest backlog", "run s", "drain s", "verdict"],
                          [[f"{once.answered:,}", str(once.failed), f"{once.rows:,}",
                            f"{once.distinct:,}", str(once.matches), f"{once.max_backlog:,.0f}",
                            f"{once.run_s:.1f}", f"{once.drain_s:.1f}",
                            "PASS" if ok else "FAIL"]])]
    finally:
        upstream.stop()
    print("\n".join(lines))
    write_results("audit_bench.json", args, results)
    return 0


if __name__ == "__main__":
    run_cli(main)
