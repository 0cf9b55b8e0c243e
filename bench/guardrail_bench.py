#!/usr/bin/env python3
"""What the guardrails cost a request: the default policy, through the gateway and in-process.

**Through the gateway.** Three Smartflow gateways from the working tree (2
workers each, master key, access log off, cache off, the nginx mock upstream
of llm_proxy_bench), identical but for ``[policy]``:

* ``off``: ``enabled = false`` (the baseline);
* ``patterns``: enabled, the defaults (the default policy runs the pattern
  checks only: emails, cards, keys, the injection rules);
* ``models``: enabled, ``default_model_checks = true`` (also the NER model for
  names and addresses and the embedding-based injection classifier, over one
  embedding of the request's text, computed on the model's thread while the
  pattern and NER checks run).

The default policy applies (the built-in guardrails ``pii`` and
``prompt_injection``, action flag), on input and on the answer. wrk POSTs chat
completions whose user turn is a realistic support or developer prompt
(200-800 characters, some with an e-mail address or a person's name), a
different one on every request (a counter in the text, as cache_bench's
UNIQUE_LUA), so nothing is remembered between requests. Measured: p50 and p99
at c=1 and req/s at c=32, rounds interleaved across the three gateways and
rotated, the median of ``--rounds``; then each gateway's worker memory.

**In-process.** The same prompts through ``GuardrailEngine.run`` directly
(no HTTP), the default policy's input checks: patterns only; models (the
run alone, the text's embedding computed beforehand, as the gateway reuses
the request's one embedding); and models plus that one embedding. Target
(issue 13): p50 under 1 ms for the pattern checks, under 8 ms with the
model-based checks.

    python3 bench/guardrail_bench.py --quick        # smoke run (~1.5 min)
    python3 bench/guardrail_bench.py --rounds 3     # full run, writes bench/results/guardrail_bench.txt
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO_PYTHON,
    WORK_DIR,
    LoadResult,
    ServerProcess,
    cmdline,
    ensure_apt,
    format_table,
    free_port,
    log,
    machine_note,
    median_result,
    run_cli,
    run_wrk,
    worker_pids,
    write_results,
)
from cache_bench import SYSTEM, gateway, post, smaps
from llm_proxy_bench import API_KEY, nginx_mock

CONCURRENCY = 32
TARGET_PATTERNS_P50_MS = 1.0
TARGET_MODELS_P50_MS = 8.0
CONFIGS = {
    "off": "[policy]\nenabled = false",
    "patterns": "[policy]\nenabled = true\ndefault_model_checks = false",
    "models": "[policy]\nenabled = true\nmodel_checks = true\ndefault_model_checks = true",
}
MARK = "@ID@"
_RUNS = itertools.count(time.time_ns() % 10**6)  # every wrk run's texts differ from the last  # replaced by a tag unique to the request

# Support and developer prompts as callers send them. Some carry PII (an
# e-mail address, a person's name, a street address), most do not; a few use
# the operations vocabulary a keyword list trips on ("kill", "drop", "bypass").
# One line each, no double quotes or backslashes: they go into JSON and Lua as is.
PROMPTS = (
    ("Hi, I am locked out of the billing portal since this morning (ticket @ID@). I reset my "
    "password twice, the reset mail arrives but the link says it has expired after a few "
    "seconds. I am on Chrome on a company laptop, cookies are allowed. My login is "
    "maria.gonzalez@northwind-traders.com. Can you tell me whether the link lifetime changed "
    "and what I should try next?"),
    ("Our nightly ETL job (run @ID@) fails with a timeout when it writes to the warehouse. The "
    "job reads about 4 million rows from PostgreSQL, transforms them in pandas and bulk "
    "inserts them. It started after we moved to the new cluster. What settings should I look "
    "at first, and is there a safe way to kill the process when it hangs without leaving "
    "half-written partitions behind?"),
    ("Please draft a short, friendly reply to a customer who asked why her invoice for March "
    "shows two charges. The second charge is a prorated upgrade from the Team plan to the "
    "Business plan on March 14. Her name is Priya Raghunathan and she is the finance contact "
    "for her company. Keep it under 120 words, reference @ID@, and offer a call if anything "
    "is still unclear."),
    ("How do I configure nginx as a reverse proxy in front of two application servers with "
    "health checks and sticky sessions? We run Ubuntu 22.04, the apps listen on ports 8080 "
    "and 8081, and we need WebSocket upgrades to pass through. A minimal config with comments "
    "would help (ref @ID@)."),
    ("In our staging database I need to drop the test table and recreate it with a new "
    "primary key, but other tables reference it with foreign keys. What is the cleanest "
    "sequence of SQL statements to do this in PostgreSQL 15 without losing the data in the "
    "referencing tables? Change request @ID@."),
    ("Customer escalation @ID@: Tomasz Kowalski from Globex called again about the delayed "
    "shipment of 40 monitors. The order was placed on the 2nd, the carrier shows it stuck at "
    "the depot in Leeds. He wants a firm delivery date and a discount. Summarise the options "
    "we can offer him in three bullet points, and suggest what to write back to "
    "t.kowalski@globex.net today."),
    ("Can you explain the difference between a Kubernetes Deployment and a StatefulSet, and "
    "when I should pick one over the other? Our service keeps a local cache on disk and we "
    "are not sure whether it needs stable network identities. Include a short example "
    "manifest for each. Question @ID@ from the platform team."),
    ("We want to bypass the cache for admin requests only. Our API sits behind Varnish and "
    "admins are identified by a session cookie. Is it better to do this in VCL or by sending "
    "Cache-Control headers from the application? Please list pros and cons of each "
    "(design note @ID@)."),
    ("Hello support, I moved last month and my new address is 42 Oakridge Lane, Springfield, "
    "IL 62704. The replacement card was sent to my old address and I have not received it. "
    "Can you update my address, cancel the old card and send a new one? Reference @ID@. "
    "Thanks, Daniel Weber"),
    ("Write a Python function that reads a CSV file of orders, groups them by customer and "
    "month, and returns the total amount per group as a dictionary. The file has columns "
    "order_id, customer_id, created_at (ISO 8601) and amount. Use only the standard library "
    "and add type hints and a docstring (task @ID@)."),
    ("Our on-call runbook says to restart the worker pods when the queue backlog grows past "
    "10,000 messages, but last night that did not help and the backlog kept growing for two "
    "hours. What other causes should we check (consumer lag, poison messages, rate limits "
    "upstream), and how would you change the runbook? Incident @ID@."),
    ("Please translate this message for our Berlin office into German, keeping a polite but "
    "direct tone: The quarterly access review is due next Friday. Every team lead must "
    "confirm the list of people with production access and remove anyone who changed roles. "
    "Questions go to Aoife Byrne, aoife.byrne@contoso.com. (ref @ID@)"),
    ("I get a permission denied error when my GitHub Actions workflow pushes a Docker image "
    "to our private registry, although the same credentials work on my machine. The "
    "workflow logs in with a token stored as a repository secret. What are the usual causes "
    "and how can I debug this safely without printing the token? Build @ID@."),
    ("We are migrating our monolith to services and I would like a second opinion on the "
    "plan before the architecture review (doc @ID@). Today one Django application serves the "
    "storefront, the admin, the order pipeline and the reporting jobs, all on one PostgreSQL "
    "database. The plan is to split out orders first, behind an internal API, with the "
    "storefront calling it synchronously, then move reporting onto a read replica. Our main "
    "worries are distributed transactions between orders and inventory, keeping the admin "
    "working during the move, and how to roll back if the new service misbehaves. What would "
    "you change in this order of steps, and which risks are we missing?"),
    ("Hi team, following up on the onboarding of our new customer (account @ID@). Their IT "
    "lead, Kwame Mensah, asked for SSO with their Azure AD tenant, SCIM provisioning for "
    "about 350 users, and audit logs exported to their SIEM every night. He also wants a "
    "named contact on our side for the first month; I suggested Ingrid Johansson from "
    "customer success. Could you write a short project plan with milestones for the next "
    "four weeks, list what we need from them (metadata URL, test accounts, a maintenance "
    "window), and draft the e-mail to kwame.mensah@acme-corp.io that confirms the plan and "
    "asks for those items by Friday?"),
    ("Summarise the following meeting notes in five bullet points for people who missed it: "
    "we agreed to freeze features on the 20th, move the load tests to the new environment, "
    "hire one more SRE, retire the old billing service by the end of the quarter, and review "
    "the incident process with legal. Notes @ID@."),
)
PROMPT_MIN_CHARS, PROMPT_MAX_CHARS = 200, 800
EMAIL = re.compile(r"[\w.]+@[\w-]+\.[a-z]")

VARIED_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer @KEY@"
local heads = {@HEADS@}
local tails = {@TAILS@}
local counter = 0
local run = "@RUN@"
request = function()
  counter = counter + 1
  local i = (counter % #heads) + 1
  local body = '{"model":"compat","max_tokens":32,"messages":[{"role":"system","content":"'
               .. "@SYSTEM@" .. '"},{"role":"user","content":"' .. heads[i] .. run
               .. counter .. tails[i] .. '"}]}'
  return wrk.format(nil, nil, nil, body)
end
"""


def check_prompts() -> None:
    for text in PROMPTS:
        if not PROMPT_MIN_CHARS <= len(text) <= PROMPT_MAX_CHARS or text.count(MARK) != 1 \
                or any(ch in text for ch in '"\\]'):
            raise SystemExit(f"bench: prompt out of bounds or not JSON/Lua-safe: {text[:60]}...")


def prompt(index: int, tag: str) -> str:
    """The ``index``-th request's prompt, as the wrk script builds it."""
    return PROMPTS[index % len(PROMPTS)].replace(MARK, tag)


def varied_lua(path: Path, run: str) -> Path:
    """A wrk script sending ``prompt(counter, "INC-<run><counter>")``, never the same twice.

    (Lua's counter starts at 1 and its tables at 1, so request ``c`` gets
    ``PROMPTS[c % len(PROMPTS)]``, as ``prompt`` does.)"""
    heads = ", ".join(f"[[{t.split(MARK)[0]}]]" for t in PROMPTS)
    tails = ", ".join(f"[[{t.split(MARK)[1]}]]" for t in PROMPTS)
    path.write_text(VARIED_LUA.replace("@KEY@", API_KEY).replace("@RUN@", f"INC-{run}")
                    .replace("@SYSTEM@", SYSTEM).replace("@HEADS@", heads)
                    .replace("@TAILS@", tails))
    return path


def run_tag(sequence: int) -> str:
    """Letters only (digits next to the counter could read as a phone number)."""
    letters = ""
    sequence += 26 * 26  # at least three letters
    while sequence:
        sequence, digit = divmod(sequence, 26)
        letters = chr(ord("a") + digit) + letters
    return letters


# --------------------------------------------------------------------------- through the gateway


def start_gateways(upstream_port: int) -> dict[str, ServerProcess]:
    servers = {name: gateway(f"guard-{name}", free_port(), upstream_port, workers=2,
                             cache=f'[cache]\nmode = "off"\n\n{policy}')
               for name, policy in CONFIGS.items()}
    for server in servers.values():
        server.start()
    try:
        for server in servers.values():
            server.wait_ready(120)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def check_configs(servers: dict[str, ServerProcess]) -> dict[str, str]:
    """Each gateway judges (or not) as configured: the guardrails header on a
    prompt with an e-mail address. Also warms both workers up."""
    seen: dict[str, str] = {}
    for name, server in servers.items():
        for index in range(8):
            headers, _ = post(server.base_url, prompt(0, f"WARM-{index}"))
            seen[name] = headers.get("x-smartflow-guardrails", "")
        enabled = name != "off"
        if enabled and "pii=flagged" not in seen[name]:
            raise RuntimeError(f"{name}: expected pii=flagged, got guardrails header "
                               f"{seen[name]!r}")
        if not enabled and "pii=" in seen[name]:
            raise RuntimeError(f"{name}: the policy is off but the answer says {seen[name]!r}")
        log(f"{name}: x-smartflow-guardrails: {seen[name] or '(none)'}")
    return seen


def measure_load(servers: dict[str, ServerProcess], rounds: int, duration_s: float,
                 connections: int) -> dict[str, LoadResult]:
    runs: dict[str, list[LoadResult]] = {name: [] for name in servers}
    names = list(servers)
    for index in range(rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            url = servers[name].base_url + "/v1/chat/completions"
            warm, measured = (varied_lua(WORK_DIR / f"guard-{name}-c{connections}-{part}.lua",
                                         run_tag(next(_RUNS)) + "x")
                              for part in ("warm", "run"))
            run_wrk(url, connections, 1, script=warm)
            result = run_wrk(url, connections, duration_s, script=measured)
            if result.errors:
                raise RuntimeError(f"{name} c={connections}: {result.errors} errors "
                                   f"({result.non_2xx} non-2xx)")
            log(f"c={connections} {name} round {index + 1}: p50 {result.p50_ms:.3f} ms, "
                f"p99 {result.p99_ms:.3f} ms, {result.requests_per_s:,.0f} req/s")
            runs[name].append(result)
    return {name: median_result(results) for name, results in runs.items()}


def worker_memory(server: ServerProcess) -> list[dict[str, int]]:
    assert server.popen is not None
    pids = worker_pids(server.popen.pid)
    # The request workers by their title, when the other helpers have one too.
    named = [pid for pid in pids if "worker" in cmdline(pid)]
    out = []
    for pid in named or pids:
        values = smaps(pid)
        out.append({"rss_kib": values.get("Rss", 0), "pss_kib": values.get("Pss", 0),
                    "private_kib": values.get("Private_Clean", 0)
                    + values.get("Private_Dirty", 0)})
    return out


# --------------------------------------------------------------------------- in-process


def percentile(samples: Sequence[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure_in_process(samples: int) -> dict[str, dict[str, float]]:
    from smartflow.embeddings.encoder import Encoder
    from smartflow.embeddings.model_files import ensure_model
    from smartflow.policy.engine import DetectorServices, GuardrailEngine
    from smartflow.policy.ner import load_ner
    from smartflow.policy.resolver import CallScope, PolicySnapshot

    encoder = Encoder(ensure_model())

    async def embed_async(texts: Sequence[str]) -> Any:
        return encoder.encode(texts)

    guardrails = PolicySnapshot.builtins().resolve(CallScope(model="m"), "default").guardrails
    engines = {
        model_checks: GuardrailEngine(DetectorServices(
            model_checks=model_checks, embed=encoder.encode, embed_async=embed_async,
            load_ner=load_ner))
        for model_checks in (False, True)}
    texts = [prompt(index, f"INC-p{index}") for index in range(samples)]
    for text in texts[:len(PROMPTS)]:  # builds the detectors, loads NER, warms the caches
        embedding = encoder.encode([text])[0]
        engines[True].run(guardrails, [text], [embedding], "input")
        engines[False].run(guardrails, [text], [None], "input")
    patterns: list[float] = []
    models_run: list[float] = []
    embeds: list[float] = []
    # Each guardrail alone, on the same texts: where the run's time goes.
    alone: dict[tuple[bool, str], list[float]] = {
        (model_checks, g.name): [] for model_checks in engines for g in guardrails}
    flagged = {"patterns": 0, "models": 0}
    for text in texts:
        # Patterns only: the gateway embeds nothing then (no detector reads it).
        started = time.perf_counter()
        decisions = engines[False].run(guardrails, [text], [None], "input")
        patterns.append((time.perf_counter() - started) * 1000)
        flagged["patterns"] += any(d.findings for d in decisions)
        started = time.perf_counter()
        embedding = encoder.encode([text])[0]
        embeds.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        decisions = engines[True].run(guardrails, [text], [embedding], "input")
        models_run.append((time.perf_counter() - started) * 1000)
        flagged["models"] += any(d.findings for d in decisions)
        for (model_checks, name), samples_ms in alone.items():
            guardrail = [g for g in guardrails if g.name == name]
            started = time.perf_counter()
            engines[model_checks].run(guardrail, [text], [embedding if model_checks else None],
                                      "input")
            samples_ms.append((time.perf_counter() - started) * 1000)
    with_embedding = [run + embed for run, embed in zip(models_run, embeds, strict=True)]

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50_ms": statistics.median(values), "p95_ms": percentile(values, 0.95),
                "mean_ms": statistics.fmean(values)}

    out: dict[str, dict[str, float]] = {
        "patterns": {**summary(patterns), "flagged": flagged["patterns"]},
        "models_run": {**summary(models_run), "flagged": flagged["models"]},
        "embedding": summary(embeds),
        "models_with_embedding": summary(with_embedding)}
    for (model_checks, name), samples_ms in alone.items():
        out[f"{'models' if model_checks else 'patterns'}:{name}"] = summary(samples_ms)
    return out


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--samples", type=int, default=1000,
                        help="prompts timed in-process per configuration")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, 200 samples")
    parser.add_argument("--skip-gateway", action="store_true")
    args = parser.parse_args()
    if Path(sys.prefix).resolve() != REPO_PYTHON.parent.parent.resolve() and REPO_PYTHON.exists():
        # The in-process part imports smartflow and its models: use the repo venv.
        os.execv(str(REPO_PYTHON), [str(REPO_PYTHON), __file__, *sys.argv[1:]])
    if args.quick:
        args.rounds, args.duration, args.samples = 1, 2.0, 200
    check_prompts()
    lengths = [len(prompt(i, "INC-abcx123")) for i in range(len(PROMPTS))]
    load_before = machine_note()
    lines = [(f"guardrail_bench: {load_before} at start; the machine is shared with other "
             "engineers' work, so the figures carry that noise")]
    lines.append(f"prompts: {len(PROMPTS)} support/developer texts, {min(lengths)}-"
                 f"{max(lengths)} characters (median {statistics.median(lengths):.0f}), "
                 f"{sum(bool(EMAIL.search(t)) for t in PROMPTS)} with an e-mail address; every "
                 "request's text is different; policy: the built-in default (pii, prompt_injection, flag)")
    results: dict[str, Any] = {"prompt_chars": lengths}

    log(f"in-process: {args.samples} prompts per configuration")
    inproc = measure_in_process(args.samples)
    results["in_process"] = inproc
    rows = []
    for label, key, target in (
            ("patterns only", "patterns", TARGET_PATTERNS_P50_MS),
            ("  of which pii alone", "patterns:pii", None),
            ("  of which prompt_injection alone", "patterns:prompt_injection", None),
            ("models (run, embedding given)", "models_run", None),
            ("  of which pii alone (+ NER)", "models:pii", None),
            ("  of which prompt_injection alone", "models:prompt_injection", None),
            ("the one embedding (encoder)", "embedding", None),
            ("models + the one embedding", "models_with_embedding", TARGET_MODELS_P50_MS)):
        point = inproc[key]
        verdict = "" if target is None else ("PASS" if point["p50_ms"] < target else "FAIL")
        rows.append([label, f"{point['p50_ms']:.3f}", f"{point['p95_ms']:.3f}",
                     f"{point['mean_ms']:.3f}", f"< {target:g}" if target else "", verdict])
    lines += ["", (f"in-process, GuardrailEngine.run over the default policy's input checks, "
                  f"{args.samples} prompts each (one text a call, no HTTP):"),
              format_table(["checks", "p50 ms", "p95 ms", "mean ms", "target p50", "verdict"],
                           rows),
              (f"prompts with a finding: patterns {inproc['patterns']['flagged']:.0f}, "
              f"models {inproc['models_run']['flagged']:.0f} of {args.samples}")]

    if not args.skip_gateway:
        ensure_apt("wrk", "wrk")
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        upstream_port = free_port()
        upstream = nginx_mock(upstream_port)
        upstream.start()
        try:
            upstream.wait_ready(30)
            servers = start_gateways(upstream_port)
            try:
                results["guardrails_header"] = check_configs(servers)
                single = measure_load(servers, args.rounds, args.duration, 1)
                busy = measure_load(servers, args.rounds, args.duration, CONCURRENCY)
                memory = {name: worker_memory(server) for name, server in servers.items()}
            finally:
                for server in servers.values():
                    server.stop()
        finally:
            upstream.stop()
        off1, off32 = single["off"], busy["off"]
        rows = []
        for name in CONFIGS:
            one, many = single[name], busy[name]
            added = "" if name == "off" else f"{one.p50_ms - off1.p50_ms:+.3f}"
            share = many.requests_per_s / off32.requests_per_s if off32.requests_per_s else 0.0
            rows.append([name, f"{one.p50_ms:.3f}", f"{one.p99_ms:.3f}", added,
                         f"{many.requests_per_s:,.0f}", f"{share:.2f}"])
            results[name] = {"c1_p50_ms": one.p50_ms, "c1_p99_ms": one.p99_ms,
                             "added_p50_ms": one.p50_ms - off1.p50_ms,
                             f"c{CONCURRENCY}_rps": many.requests_per_s,
                             f"c{CONCURRENCY}_p50_ms": many.p50_ms,
                             "rps_ratio_to_off": share, "memory": memory[name]}
        lines += ["", (f"through the gateway (2 workers, cache off, nginx mock upstream; median of "
                      f"{args.rounds} x {args.duration:g} s, gateways interleaved), input and "
                      "answer checked:"),
                  format_table(["policy", "p50 ms c=1", "p99 ms c=1", "added p50 ms",
                                f"req/s c={CONCURRENCY}", "ratio to off"], rows)]
        mem_rows = []
        for name in CONFIGS:
            for index, worker in enumerate(memory[name]):
                mem_rows.append([name, str(index + 1), f"{worker['rss_kib'] / 1024:.1f}",
                                 f"{worker['pss_kib'] / 1024:.1f}",
                                 f"{worker['private_kib'] / 1024:.1f}"])
        lines += ["", "worker memory after the runs:",
                  format_table(["policy", "worker", "RSS MiB", "PSS MiB", "private MiB"],
                               mem_rows)]
    lines += ["", f"machine at the end: {machine_note()}"]
    print("\n".join(lines))
    results["report"] = lines
    write_results("guardrail_bench.txt", args, results)
    return 0


if __name__ == "__main__":
    run_cli(main)
