#!/usr/bin/env python3
"""What MetaCache costs and saves, through the real gateway.

The working tree's gateway (access log off, embedded Redis) in front of the
nginx mock upstream of llm_proxy_bench. One configuration per point:

* ``off``: ``[cache] mode = "off"``; each request a new question (baseline);
* ``miss-exact`` / ``miss-semantic``: the same new questions with the cache
  on: what a miss adds (the exact read; for semantic also the embedding, the
  index search, the verifier on near candidates, and the fill);
* ``hit-l1``: the same request over and over (each worker's LRU);
* ``hit-l3``: the same, with ``l1_max_entries = 0`` (one Redis GET);
* ``hit-l2``: a paraphrase of a stored question (embedding + index + verifier
  + GET; a semantic hit is not promoted to L1 under the paraphrase's key).

p50 and p99 at concurrency 1 (median of ``--rounds``), req/s at c=32 for the
hits. Then memory: RSS, PSS and private bytes per worker with 1 and with 4
workers, the node's index preloaded with ``--index-rows`` rows through the
index feed and searched by every worker (so each has touched every row):
the index is shared, not copied. And bytes per cached entry (Redis MEMORY
USAGE of an entry, plus its index row).

    python3 bench/cache_bench.py --quick
    python3 bench/cache_bench.py --rounds 3 | tee bench/results/cache_bench.txt
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO_DIR,
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
    running,
    worker_pids,
    write_results,
)
from http_bench import smartflow_argv
from llm_proxy_bench import API_KEY, UPSTREAM_API_KEY, nginx_mock

QUESTION = "How do I reset my password?"
PARAPHRASE = "What are the steps to reset my password?"
SYSTEM = "You are the help desk."

UNIQUE_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer @KEY@"
local topics = {"invoices", "passwords", "printers", "VPN access", "laptops", "payroll",
                "holidays", "parking", "badges", "email quotas", "backups", "phones"}
local asks = {"How do I request", "Who approves", "Where can I find the policy on",
              "What is the process for", "Can you explain", "Why was I denied"}
local counter = 0
local run = "@RUN@"
request = function()
  counter = counter + 1
  local text = string.format("%s %s for team %s-%d?", asks[(counter %% #asks) + 1],
                             topics[(counter %% #topics) + 1], run, counter)
  local body = '{"model":"compat","max_tokens":32,"messages":[{"role":"system","content":"'
               .. "@SYSTEM@" .. '"},{"role":"user","content":"' .. text .. '"}]}'
  return wrk.format(nil, nil, nil, body)
end
"""


def body_for(text: str) -> bytes:
    return (f'{{"model":"compat","max_tokens":32,"messages":[{{"role":"system","content":'
            f'"{SYSTEM}"}},{{"role":"user","content":"{text}"}}]}}').encode()


def fixed_lua(path: Path, text: str) -> Path:
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n'
        f"wrk.body = [[{body_for(text).decode()}]]\n")
    return path


def unique_lua(path: Path, run: str) -> Path:
    path.write_text(UNIQUE_LUA.replace("@KEY@", API_KEY).replace("@RUN@", run)
                    .replace("@SYSTEM@", SYSTEM).replace("%%", "%"))
    return path


def gateway(name: str, port: int, upstream_port: int, *, workers: int, cache: str) -> ServerProcess:
    upstream = f"http://127.0.0.1:{upstream_port}"
    config = WORK_DIR / f"cache-{name}.toml"
    config.write_text(
        f'[server]\naccess_log = false\n\n[auth]\nmaster_key = "{API_KEY}"\n\n{cache}\n\n'
        f'[[models]]\nname = "compat"\nprovider = "openai_compatible"\nmodel = "gpt-4o-mini"\n'
        f'api_base = "{upstream}/v1"\napi_key = "{UPSTREAM_API_KEY}"\n'
        'input_price_per_mtok = 0.15\noutput_price_per_mtok = 0.6\n')
    data_dir = WORK_DIR / f"data-cache-{name}"
    shutil.rmtree(data_dir, ignore_errors=True)
    serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--data-dir", str(data_dir)]
    return ServerProcess(f"smartflow-cache-{name}", [*smartflow_argv(), *serve], port,
                         ready_path="/health/ready", cwd=REPO_DIR)


def post(base: str, text: str, headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(
        base + "/v1/chat/completions", data=body_for(text), method="POST",
        headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}",
                 **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return {k.lower(): v for k, v in answer.headers.items()}, answer.read()


def get_json(url: str) -> Any:
    import json

    request = urllib.request.Request(url, headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def wait_for_tier(base: str, text: str, tier: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        headers, _ = post(base, text)
        if headers.get("x-smartflow-cache-tier") == tier:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{text!r} never became an {tier} hit")


def latency(url: str, script: Path, rounds: int, duration_s: float, connections: int
            ) -> LoadResult:
    results = []
    for _ in range(rounds):
        run_wrk(url, connections, 1, script=script)  # warm-up
        result = run_wrk(url, connections, duration_s, script=script)
        if result.errors:
            raise RuntimeError(f"{script.name}: {result.errors} errors")
        results.append(result)
    return median_result(results)


CONFIGS = {
    "off": '[cache]\nmode = "off"',
    "exact": '[cache]\nmode = "exact"',
    "semantic": '[cache]\nmode = "semantic"',
    "semantic-no-l1": '[cache]\nmode = "semantic"\nl1_max_entries = 0',
}


def measure_latency(upstream_port: int, rounds: int, duration_s: float
                    ) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, cache in CONFIGS.items():
        server = gateway(name, free_port(), upstream_port, workers=2, cache=cache)
        with running([server], 90):
            url = server.base_url + "/v1/chat/completions"
            post(server.base_url, "warm-up question")  # loads the model in one worker
            if name in ("off", "exact", "semantic"):
                label = "off" if name == "off" else f"miss-{name}"
                script = unique_lua(WORK_DIR / f"cache-unique-{name}.lua", f"r{time.time_ns()}")
                result = latency(url, script, rounds, duration_s, 1)
                out[label] = {"p50_ms": result.p50_ms, "p99_ms": result.p99_ms or 0.0,
                              "rps_c1": result.requests_per_s}
                log(f"{label}: p50 {result.p50_ms:.3f} ms")
            if name == "semantic":
                post(server.base_url, QUESTION)
                wait_for_tier(server.base_url, QUESTION, "l1")
                script = fixed_lua(WORK_DIR / "cache-hit.lua", QUESTION)
                single = latency(url, script, rounds, duration_s, 1)
                busy = latency(url, script, rounds, duration_s, 32)
                out["hit-l1"] = {"p50_ms": single.p50_ms, "p99_ms": single.p99_ms or 0.0,
                                 "rps_c32": busy.requests_per_s}
                wait_for_tier(server.base_url, PARAPHRASE, "l2")
                script = fixed_lua(WORK_DIR / "cache-paraphrase.lua", PARAPHRASE)
                single = latency(url, script, rounds, duration_s, 1)
                busy = latency(url, script, rounds, duration_s, 32)
                out["hit-l2"] = {"p50_ms": single.p50_ms, "p99_ms": single.p99_ms or 0.0,
                                 "rps_c32": busy.requests_per_s}
            if name == "semantic-no-l1":
                post(server.base_url, QUESTION)
                wait_for_tier(server.base_url, QUESTION, "l3")
                script = fixed_lua(WORK_DIR / "cache-hit-l3.lua", QUESTION)
                single = latency(url, script, rounds, duration_s, 1)
                busy = latency(url, script, rounds, duration_s, 32)
                out["hit-l3"] = {"p50_ms": single.p50_ms, "p99_ms": single.p99_ms or 0.0,
                                 "rps_c32": busy.requests_per_s}
                out["entry_bytes"] = {"redis": float(entry_bytes(server))}
    return out


def entry_bytes(server: ServerProcess) -> int:
    """Redis MEMORY USAGE of the cached entries, averaged."""
    import redis

    data_dir = Path(server.argv[server.argv.index("--data-dir") + 1])
    socket_files = list(data_dir.rglob("*.sock"))
    client = redis.Redis(unix_socket_path=str(socket_files[0])) if socket_files else None
    if client is None:
        return 0
    sizes = [client.memory_usage(key) or 0 for key in client.scan_iter("sf:cache:e:*")]
    return int(sum(sizes) / len(sizes)) if sizes else 0


def smaps(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0])
    return values


def measure_memory(upstream_port: int, rows: int) -> dict[str, Any]:
    from smartflow.cache.keys import identify

    body = {"model": "compat", "max_tokens": 32, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]}
    identity = identify("openai", "chat", "compat", "master|default", body, max_temperature=0.7)
    out: dict[str, Any] = {}
    for workers in (1, 4):
        name = f"memory-{workers}"
        server = gateway(name, free_port(), upstream_port, workers=workers,
                         cache=f'[cache]\nmode = "semantic"\n\n[embeddings]\n'
                               f'index_capacity = {max(rows * 2, 1000)}')
        with running([server], 120):
            base = server.base_url
            preload(server, rows, identity.context)
            deadline = time.monotonic() + 120
            while get_json(base + "/api/cache/stats").get("index_rows", 0) < rows:
                if time.monotonic() > deadline:
                    raise RuntimeError("the index never took the preloaded rows")
                time.sleep(0.5)
            # Every worker searches the whole group (SO_REUSEPORT spreads the calls).
            for index in range(workers * 12):
                post(base, f"{QUESTION} variant {index}", {"cache-control": "no-store"})
            assert server.popen is not None
            pids = worker_pids(server.popen.pid)
            per_worker = [smaps(pid) for pid in pids]
            segment = next(Path("/dev/shm").glob(f"sf-idx-{server.popen.pid}"), None)
            out[str(workers)] = {
                "rss_kib": [m.get("Rss", 0) for m in per_worker],
                "pss_kib": [m.get("Pss", 0) for m in per_worker],
                "private_kib": [m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)
                                for m in per_worker],
                "shared_kib": [m.get("Shared_Clean", 0) + m.get("Shared_Dirty", 0)
                               for m in per_worker],
                "segment_bytes": segment.stat().st_size if segment else 0,
                "rows": rows,
            }
            log(f"{workers} workers: {out[str(workers)]}")
    return out


def preload(server: ServerProcess, rows: int, group: int) -> None:
    """Rows through the index feed, as other nodes' fills would arrive."""
    import numpy as np
    import redis

    data_dir = Path(server.argv[server.argv.index("--data-dir") + 1])
    socket_file = next(data_dir.rglob("*.sock"))
    client = redis.Redis(unix_socket_path=str(socket_file))
    rng = np.random.default_rng(7)
    pipe = client.pipeline(transaction=False)
    for start in range(0, rows, 1000):
        vectors = rng.standard_normal((min(1000, rows - start), 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for offset, vector in enumerate(vectors.astype(np.float16)):
            pipe.xadd("sf:idx:feed", {"op": "add", "ns": "cache:master|default", "g": group,
                                      "id": 10_000_000 + start + offset,
                                      "v": vector.tobytes(), "node": "bench-preload"})
        pipe.execute()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--index-rows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, 20k rows")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.index_rows = 1, 2.0, 20_000
    ensure_apt("wrk", "wrk")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    upstream_port = free_port()
    upstream = nginx_mock(upstream_port)
    with running([upstream], 30):
        points = measure_latency(upstream_port, args.rounds, args.duration)
        memory = measure_memory(upstream_port, args.index_rows)
    off = points["off"]["p50_ms"]
    rows = []
    for label in ("off", "miss-exact", "miss-semantic", "hit-l1", "hit-l3", "hit-l2"):
        point = points[label]
        added = f"{point['p50_ms'] - off:+.3f}" if label.startswith("miss") else ""
        rps = f"{point['rps_c32']:,.0f}" if "rps_c32" in point else ""
        rows.append([label, f"{point['p50_ms']:.3f}", f"{point['p99_ms']:.3f}", added, rps])
    print(f"cache_bench: {machine_note()}")
    print(f"\nmedian of {args.rounds} x {args.duration:g} s; latency at c=1 through the gateway "
          "(upstream: nginx mock):")
    print(format_table(["point", "p50 ms", "p99 ms", "added p50 ms (miss)", "req/s c=32"], rows))
    print(f"\nmemory, index preloaded with {args.index_rows:,} rows (float16, 384-d), "
          "every worker having searched all of them:")
    mem_rows = []
    for workers, report in memory.items():
        for index, rss in enumerate(report["rss_kib"]):
            mem_rows.append([workers, str(index + 1), f"{rss / 1024:.1f}",
                             f"{report['pss_kib'][index] / 1024:.1f}",
                             f"{report['private_kib'][index] / 1024:.1f}",
                             f"{report['shared_kib'][index] / 1024:.1f}"])
    print(format_table(["workers", "worker", "RSS MiB", "PSS MiB", "private MiB", "shared MiB"],
                       mem_rows))
    segment = memory["1"]["segment_bytes"]
    capacity = max(args.index_rows * 2, 1000)
    row_bytes = segment / capacity if capacity else 0
    entry = points["entry_bytes"]["redis"]
    print(f"\nindex segment: {segment / 2**20:.1f} MiB for {capacity:,} rows "
          f"({row_bytes:.0f} bytes a row); a cached entry: {entry:.0f} bytes in Redis "
          f"+ {row_bytes:.0f} in the index")
    write_results("cache_bench.json", args, {"points": points, "memory": memory,
                                             "index_row_bytes": row_bytes})
    return 0


if __name__ == "__main__":
    run_cli(main)
