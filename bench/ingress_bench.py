#!/usr/bin/env python3
"""What each ingress dialect costs: Responses, Anthropic Messages and Gemini against chat.

One Smartflow gateway from the working tree (2 workers, master key, access log
off) in front of the nginx mock upstream of llm_proxy_bench, which answers
chat completions and (canned) Responses API answers, whole and streamed.
Five targets, each one request shape sent over and over by wrk:

* ``chat``: ``POST /v1/chat/completions`` relayed natively (the baseline);
* ``responses-native``: ``POST /v1/responses`` to an ``openai`` deployment,
  relayed natively to the upstream's ``/v1/responses`` (its stored answer
  written to Redis after each call: ``store`` is left at its default);
* ``responses``, ``messages``, ``gemini``: the Responses, Anthropic and Gemini
  APIs to an ``openai_compatible`` deployment that speaks chat only, so each
  call is translated in (dialect -> hub -> chat) and out (chat -> hub ->
  dialect), streams event by event.

For each, non-stream and stream: req/s at c=32 (its ratio to ``chat``) and
the p50 at c=1 (what it adds over ``chat``). Interleaved per round, rotated;
``--rounds N`` keeps the median.

    python3 bench/ingress_bench.py --quick                 # smoke run (~1 min)
    python3 bench/ingress_bench.py --rounds 3 | tee bench/results/ingress_bench.txt
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

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
    write_results,
    wrk_post_script,
)
from http_bench import smartflow_argv
from llm_proxy_bench import API_KEY, UPSTREAM_API_KEY, nginx_mock

CONCURRENCY = 32
PROMPT = "Say something short."
SYSTEM = "You are a benchmark."


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    path: str  # with {model}
    model: str  # the non-stream model; "<model>-stream" streams

    def url(self, base: str, stream: bool) -> str:
        model = self.model + ("-stream" if stream else "")
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return base + self.path.format(model=model, action=action)

    def body(self, stream: bool) -> bytes:
        model = self.model + ("-stream" if stream else "")
        if self.name == "chat":
            extra = ',"stream":true,"stream_options":{"include_usage":true}' if stream else ""
            return (f'{{"model":"{model}","messages":[{{"role":"system","content":"{SYSTEM}"}},'
                    f'{{"role":"user","content":"{PROMPT}"}}],"max_tokens":32{extra}}}').encode()
        if self.name.startswith("responses"):
            extra = ',"stream":true' if stream else ""
            return (f'{{"model":"{model}","instructions":"{SYSTEM}","input":"{PROMPT}",'
                    f'"max_output_tokens":32{extra}}}').encode()
        if self.name == "messages":
            extra = ',"stream":true' if stream else ""
            return (f'{{"model":"{model}","system":"{SYSTEM}","max_tokens":32,"messages":'
                    f'[{{"role":"user","content":"{PROMPT}"}}]{extra}}}').encode()
        return (f'{{"systemInstruction":{{"parts":[{{"text":"{SYSTEM}"}}]}},"contents":'
                f'[{{"role":"user","parts":[{{"text":"{PROMPT}"}}]}}],'
                f'"generationConfig":{{"maxOutputTokens":32}}}}').encode()


TARGETS = (
    Target("chat", "/v1/chat/completions", "compat"),
    Target("responses-native", "/v1/responses", "native"),
    Target("responses", "/v1/responses", "compat"),
    Target("messages", "/v1/messages", "compat"),
    Target("gemini", "/v1beta/models/{model}:{action}", "compat"),
)


def gateway(port: int, upstream_port: int) -> ServerProcess:
    upstream = f"http://127.0.0.1:{upstream_port}"
    models = [("compat", "openai_compatible", "/v1"),
              ("compat-stream", "openai_compatible", "/stream/v1"),
              ("native", "openai", "/v1"), ("native-stream", "openai", "/stream/v1")]
    config = WORK_DIR / "ingress.toml"
    config.write_text(
        f'[server]\naccess_log = false\n\n[auth]\nmaster_key = "{API_KEY}"\n\n'
        + "".join(f'[[models]]\nname = "{name}"\nprovider = "{provider}"\n'
                  f'model = "gpt-4o-mini"\napi_base = "{upstream}{base}"\n'
                  f'api_key = "{UPSTREAM_API_KEY}"\n\n' for name, provider, base in models))
    data_dir = WORK_DIR / "data-ingress"
    shutil.rmtree(data_dir, ignore_errors=True)
    serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2", "--data-dir", str(data_dir)]
    return ServerProcess("smartflow-ingress", [*smartflow_argv(), *serve], port,
                         ready_path="/health/ready", cwd=REPO_DIR)


def check(server: ServerProcess, target: Target, stream: bool) -> None:
    """One request by hand: a 200 with the canned answer's text, or the bench stops."""
    import urllib.request

    request = urllib.request.Request(
        target.url(server.base_url, stream), data=target.body(stream), method="POST",
        headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}",
                 "x-api-key": API_KEY, "anthropic-version": "2023-06-01"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        body = answer.read()
    if b"Bench" not in body:
        raise RuntimeError(f"{target.name} stream={stream}: unexpected answer {body[:300]!r}")


def measure(server: ServerProcess, rounds: int, duration_s: float, connections: int
            ) -> dict[tuple[str, bool], LoadResult]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}",
               "anthropic-version": "2023-06-01"}
    out: dict[tuple[str, bool], LoadResult] = {}
    for stream in (False, True):
        runs: dict[str, list[LoadResult]] = {t.name: [] for t in TARGETS}
        for index in range(rounds):
            shift = index % len(TARGETS)
            for target in TARGETS[shift:] + TARGETS[:shift]:
                script = wrk_post_script(
                    WORK_DIR / f"ingress-{target.name}-{stream}.lua", target.body(stream),
                    headers)
                url = target.url(server.base_url, stream)
                run_wrk(url, connections, 1, script=script)  # warm-up
                result = run_wrk(url, connections, duration_s, script=script)
                if result.errors:
                    raise RuntimeError(f"{target.name} stream={stream}: {result.errors} errors")
                log(f"c={connections} {target.name} stream={stream} round {index + 1}: "
                    f"{result.requests_per_s:,.0f} req/s, p50 {result.p50_ms:.3f} ms")
                runs[target.name].append(result)
        for name, results in runs.items():
            out[(name, stream)] = median_result(results)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    ensure_apt("wrk", "wrk")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    upstream_port = free_port()
    upstream = nginx_mock(upstream_port)
    server = gateway(free_port(), upstream_port)
    with running([upstream, server], 60):
        for target in TARGETS:
            for stream in (False, True):
                check(server, target, stream)
        busy = measure(server, args.rounds, args.duration, CONCURRENCY)
        single = measure(server, args.rounds, args.duration, 1)
    rows = []
    results: dict[str, object] = {}
    for stream in (False, True):
        base_busy, base_single = busy[("chat", stream)], single[("chat", stream)]
        for target in TARGETS:
            loaded, alone = busy[(target.name, stream)], single[(target.name, stream)]
            share = loaded.requests_per_s / base_busy.requests_per_s
            added = alone.p50_ms - base_single.p50_ms
            mode = "stream" if stream else "non-stream"
            rows.append([mode, target.name, f"{loaded.requests_per_s:,.0f}", f"{share:.3f}",
                         f"{alone.p50_ms:.3f}", f"{added:+.3f}"])
            results[f"{target.name}_{mode}"] = {
                "rps_c32": loaded.requests_per_s, "ratio_to_chat": share,
                "p50_c1_ms": alone.p50_ms, "added_p50_ms": added}
    print(f"ingress_bench: {machine_note()}")
    print(f"\nmedian of {args.rounds} x {args.duration:g} s per point; req/s at "
          f"c={CONCURRENCY}, p50 at c=1:")
    print(format_table(["mode", "target", "req/s", "/ chat", "p50 ms", "added p50 ms"], rows))
    write_results("ingress_bench.json", args, results)
    return 0


if __name__ == "__main__":
    run_cli(main)
