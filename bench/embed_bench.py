"""Local embedding model: latency, throughput, memory, and fp32 vs int8 quality.

    .venv/bin/python bench/embed_bench.py            # full (~30 s)
    .venv/bin/python bench/embed_bench.py --quick    # fewer repetitions (~10 s)

Each variant (fp32, int8) is measured in its own child process, pinned to
CPU 0 (``taskset -c 0`` semantics via ``os.sched_setaffinity``) with one
onnxruntime thread, so the RSS it adds and its speed are its own. The
parent then compares the two variants' vectors over ~200 varied sentences:
per-pair cosine agreement (``mean |cos_fp32 - cos_int8|``), each sentence's
cosine to its own fp32 vector, and whether the nearest neighbour is the same.

Writes bench/results/embed_bench.txt and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR / "src") not in sys.path:
    sys.path.insert(0, str(REPO_DIR / "src"))

from smartflow.embeddings.batcher import EmbeddingBatcher
from smartflow.embeddings.encoder import Encoder
from smartflow.embeddings.model_files import (
    DEFAULT_QUANTIZED,
    ensure_model,
    read_build_info,
)

PROMPT = "How can I reset my account password if I no longer have my phone?"  # 12 words

# Paraphrase groups: near neighbours the semantic cache must keep together.
_GROUPS: list[list[str]] = [
    ["How do I reset my password?", "What are the steps to reset my password?",
     "I forgot my password, how can I change it?"],
    ["What is the capital of France?", "Which city is the capital of France?",
     "Name the French capital."],
    ["Summarise this quarterly earnings report.", "Give me a summary of the Q3 financial results.",
     "Can you condense these earnings into a few bullet points?"],
    ["Translate 'good morning' into Spanish.", "How do you say good morning in Spanish?"],
    ["Write a Python function that reverses a string.",
     "Show me Python code to reverse a string."],
    ["What's the weather like in Berlin tomorrow?", "Will it rain in Berlin tomorrow?"],
    ["Cancel my subscription, please.", "I want to stop my monthly plan.",
     "How do I end my membership?"],
    ["Explain how vaccines train the immune system.",
     "How does a vaccine teach the body to fight a virus?"],
    ["Recommend a good science fiction novel.", "What sci-fi book should I read next?"],
    ["How many calories are in a banana?", "What is the calorie count of one banana?"],
    ["My order arrived damaged.", "The package I received was broken.",
     "The item came smashed in the box."],
    ["Book a table for two at eight tonight.", "Reserve dinner for 2 people at 8 pm today."],
    ["What is the difference between TCP and UDP?", "Compare the TCP and UDP protocols."],
    ["How do I bake sourdough bread?", "Give me a sourdough recipe."],
    ["Convert 100 dollars to euros.", "How much is $100 in EUR?"],
    ["Who painted the Mona Lisa?", "Which artist created the Mona Lisa?"],
    ["The meeting has been moved to Thursday.", "We rescheduled the meeting for Thursday."],
    ["Delete all logs older than thirty days.", "Purge log entries more than a month old."],
    ["Is it safe to give chocolate to dogs?", "Can dogs eat chocolate?"],
    ["Explain quantum entanglement simply.",
     "Describe quantum entanglement in plain language."],
]
_SUBJECTS = ["The engineer", "A customer", "My manager", "The new intern", "Our support team",
             "The database", "A small startup", "The city council", "The doctor", "The robot",
             "Every student", "The pilot"]
_VERBS = ["reviewed", "rejected", "approved", "forgot about", "rewrote", "explained",
          "migrated", "questioned", "celebrated", "ignored", "repaired", "audited"]
_OBJECTS = ["the billing invoice", "the production outage", "a recipe for lentil soup",
            "the quarterly budget", "an old bicycle", "the security policy",
            "the football results", "a poem about winter", "the GPU cluster",
            "the tax return", "the hiking route", "the vaccination schedule"]
_TAILS = ["", " yesterday", " before lunch", " without telling anyone",
          " after a long discussion about costs and deadlines",
          " because the previous version kept failing in ways nobody could reproduce"]
_LONG = (
    "Large language model gateways sit between applications and model providers; they "
    "authenticate callers, enforce budgets and rate limits, cache answers, route each call "
    "to a healthy deployment and record an audit trail, so that teams can adopt several "
    "providers without rewriting their clients or losing track of spend."
)


def corpus(size: int = 200, seed: int = 7) -> list[str]:
    """~``size`` sentences: paraphrase groups, templated sentences of varied
    length and topic, a few long passages and edge cases."""
    rng = random.Random(seed)
    texts = [text for group in _GROUPS for text in group]
    texts += ["", "ok", "?", "Ünïcödé façade — naïve café", "SELECT * FROM users WHERE id = 1;",
              _LONG, _LONG + " " + _LONG]
    while len(texts) < size:
        texts.append(f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} "
                     f"{rng.choice(_OBJECTS)}{rng.choice(_TAILS)}.")
    return texts[:size]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def child(variant: str, cache_dir: Path, quick: bool, vectors_out: Path) -> dict[str, object]:
    """Everything measured inside one process for one variant."""
    pinned = _pin_to_one_core()
    quantized = variant == "int8"
    started = time.perf_counter()
    model_dir = ensure_model(cache_dir, quantized=quantized)
    ensure_seconds = time.perf_counter() - started
    build = read_build_info(model_dir) or {}
    rss_before = _rss_kib()
    started = time.perf_counter()
    encoder = Encoder(model_dir, threads=1)
    encoder.encode([PROMPT])  # first run allocates the arena: part of the load cost
    load_seconds = time.perf_counter() - started
    rss_added_mib = (_rss_kib() - rss_before) / 1024

    for _ in range(30):
        encoder.encode([PROMPT])
    runs = 200 if quick else 1000
    latencies = []
    for _ in range(runs):
        t0 = time.perf_counter()
        encoder.encode([PROMPT])
        latencies.append((time.perf_counter() - t0) * 1e3)

    texts = corpus()
    short = [t for t in texts if 0 < len(t.split()) <= 30]
    throughput: dict[str, float] = {}
    for batch in (1, 8, 32):
        total = 128 if quick else 512
        pool = [short[i % len(short)] for i in range(total)]
        encoder.encode(pool[:batch])
        t0 = time.perf_counter()
        for i in range(0, total, batch):
            encoder.encode(pool[i:i + batch])
        throughput[str(batch)] = total / (time.perf_counter() - t0)

    batcher_figures = asyncio.run(_through_batcher(encoder, short, quick))

    np.save(vectors_out, np.concatenate([encoder.encode(texts[i:i + 16])
                                         for i in range(0, len(texts), 16)]))
    return {
        "variant": variant,
        "pinning": pinned,
        "prompt_tokens": encoder.count_tokens([PROMPT])[0],
        "build_seconds": build.get("build_seconds"),
        "ensure_model_seconds": round(ensure_seconds, 3),
        "model_bytes": (model_dir / "model.onnx").stat().st_size,
        "load_seconds": round(load_seconds, 3),
        "rss_added_mib": round(rss_added_mib, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "latency_ms": {"p50": round(statistics.median(latencies), 3),
                       "p95": round(_percentile(latencies, 0.95), 3),
                       "runs": runs},
        "texts_per_second": {k: round(v, 1) for k, v in throughput.items()},
        "batcher": batcher_figures,
    }


async def _through_batcher(encoder: Encoder, texts: list[str], quick: bool) -> dict[str, float]:
    """A lone caller's latency through the batcher (the thread hop included), and
    texts/s when 64 callers of one text each arrive at once."""
    batcher = EmbeddingBatcher(encoder, max_batch=32)
    try:
        for _ in range(20):
            await batcher.embed([PROMPT])
        latencies = []
        for _ in range(100 if quick else 500):
            t0 = time.perf_counter()
            await batcher.embed([PROMPT])
            latencies.append((time.perf_counter() - t0) * 1e3)
        callers = 64
        rounds = 2 if quick else 8
        t0 = time.perf_counter()
        for r in range(rounds):
            await asyncio.gather(*(batcher.embed([texts[(r * callers + i) % len(texts)]])
                                   for i in range(callers)))
        rate = callers * rounds / (time.perf_counter() - t0)
    finally:
        await batcher.aclose()
    return {"lone_call_p50_ms": round(statistics.median(latencies), 3),
            "lone_call_p95_ms": round(_percentile(latencies, 0.95), 3),
            "texts_per_second_64_concurrent_callers": round(rate, 1)}


def _quality(fp32: np.ndarray, int8: np.ndarray, texts: list[str]) -> dict[str, float]:
    a, b = fp32 @ fp32.T, int8 @ int8.T
    upper = np.triu_indices(len(texts), k=1)
    delta = np.abs(a[upper] - b[upper])
    self_cos = np.sum(fp32 * int8, axis=1)
    np.fill_diagonal(a, -2.0)
    np.fill_diagonal(b, -2.0)
    same_nn = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
    return {
        "sentences": len(texts),
        "pairs": int(delta.size),
        "mean_abs_pair_cos_delta": round(float(delta.mean()), 5),
        "p99_abs_pair_cos_delta": round(float(np.quantile(delta, 0.99)), 5),
        "max_abs_pair_cos_delta": round(float(delta.max()), 5),
        "mean_cos_to_fp32": round(float(self_cos.mean()), 5),
        "min_cos_to_fp32": round(float(self_cos.min()), 5),
        "same_nearest_neighbour": round(same_nn, 4),
    }


def _sanity(vectors: np.ndarray, texts: list[str]) -> dict[str, float]:
    index = {t: i for i, t in enumerate(texts)}

    def cos(x: str, y: str) -> float:
        return round(float(vectors[index[x]] @ vectors[index[y]]), 4)

    return {
        "paraphrase: reset password": cos("How do I reset my password?",
                                          "What are the steps to reset my password?"),
        "paraphrase: damaged order": cos("My order arrived damaged.",
                                         "The package I received was broken."),
        "unrelated: password vs capital": cos("How do I reset my password?",
                                              "What is the capital of France?"),
        "unrelated: banana vs TCP": cos("How many calories are in a banana?",
                                        "What is the difference between TCP and UDP?"),
    }


def _report(results: dict[str, dict[str, object]], quality: dict[str, float],
            sanity: dict[str, dict[str, float]]) -> str:
    lines = ["Local embeddings: all-MiniLM-L6-v2 on onnxruntime, 1 thread, 1 core", ""]
    lines.append(f"prompt: {PROMPT!r} ({results['fp32']['prompt_tokens']} tokens)")
    lines.append("")
    header = f"{'':28}{'fp32':>12}{'int8':>12}"
    lines.append(header)

    def row(label: str, get: object) -> None:
        values = [get(results[v]) for v in ("fp32", "int8")]  # type: ignore[operator]
        lines.append(f"{label:28}" + "".join(f"{v:>12}" for v in values))

    row("latency p50 (ms)", lambda r: r["latency_ms"]["p50"])
    row("latency p95 (ms)", lambda r: r["latency_ms"]["p95"])
    for batch in ("1", "8", "32"):
        row(f"texts/s at batch {batch}", lambda r, b=batch: r["texts_per_second"][b])
    row("batcher: lone call p50 (ms)", lambda r: r["batcher"]["lone_call_p50_ms"])
    row("batcher: lone call p95 (ms)", lambda r: r["batcher"]["lone_call_p95_ms"])
    row("batcher: 64 callers texts/s",
        lambda r: r["batcher"]["texts_per_second_64_concurrent_callers"])
    row("build (s)", lambda r: r["build_seconds"])
    row("load + first run (s)", lambda r: r["load_seconds"])
    row("RSS added: load+1st (MiB)", lambda r: r["rss_added_mib"])
    row("model.onnx (MB)", lambda r: round(r["model_bytes"] / 1e6, 1))
    lines.append("")
    lines.append("int8 vs fp32 quality")
    for key, value in quality.items():
        lines.append(f"  {key:34}{value}")
    lines.append("")
    lines.append("sanity (cosine)")
    for key in sanity["fp32"]:
        lines.append(f"  {key:34}fp32 {sanity['fp32'][key]:>7}   int8 {sanity['int8'][key]:>7}")
    lines.append("")
    lines.append(f"pinning: {results['fp32']['pinning']}; cpus on machine: {os.cpu_count()}")
    lines.append(f"default variant (model_files.DEFAULT_QUANTIZED): "
                 f"{'int8' if DEFAULT_QUANTIZED else 'fp32'}")
    lines.append("int8 = per-channel dynamic quantisation of every MatMul weight, run one text "
                 "per session call so a vector never depends on its batch-mates")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=["fp32", "int8"], help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help="model cache (default: a fresh temp dir, "
                                                        "so build time is measured)")
    parser.add_argument("--vectors-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.cache_dir, args.quick, args.vectors_out)
        sys.stdout.buffer.write(orjson.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        cache = args.cache_dir or Path(tmp) / "models"
        results: dict[str, dict[str, object]] = {}
        vectors: dict[str, np.ndarray] = {}
        for variant in ("fp32", "int8"):
            out = Path(tmp) / f"{variant}.npy"
            cmd = [sys.executable, __file__, "--child", variant, "--cache-dir", str(cache),
                   "--vectors-out", str(out)] + (["--quick"] if args.quick else [])
            done = subprocess.run(cmd, check=True, capture_output=True)
            results[variant] = orjson.loads(done.stdout)
            vectors[variant] = np.load(out)
    texts = corpus()
    quality = _quality(vectors["fp32"], vectors["int8"], texts)
    sanity = {v: _sanity(vectors[v], texts) for v in ("fp32", "int8")}
    text = _report(results, quality, sanity)
    print(text, end="")
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "embed_bench.txt").write_text(text)
    (RESULTS_DIR / "embed_bench.json").write_bytes(orjson.dumps(
        {"results": results, "quality_int8_vs_fp32": quality, "sanity": sanity,
         "prompt": PROMPT}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
