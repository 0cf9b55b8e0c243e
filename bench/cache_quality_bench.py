#!/usr/bin/env python3
"""Semantic cache quality: how often would a semantic hit serve the wrong answer?

Input: ``bench/data/cache_pairs.jsonl``, hand-written prompt pairs labelled
``hit`` (the same request in other words: synonyms, reordering, question vs
imperative, terse vs verbose, register, typos, case and punctuation) or
``miss`` (a near miss: another number, unit, negation, entity, comparison
order, time, language, output format, or another question on the same topic).
About 30% of the pairs are in the ``holdout`` split, chosen by a hash of the
pair before any verifier rule was written; the threshold is chosen on ``dev``
only and the holdout figures are reported, never tuned on.

Both prompts of each pair are embedded with the gateway's own local model
(all-MiniLM-L6-v2 through ``smartflow.embeddings``; int8 by default as in the
gateway, ``--fp32`` for the float graph) and compared by cosine. A pair is
served from cache when cosine >= threshold *and* the verifier accepts it.
Reported, for dev and holdout separately:

1. cosine only, thresholds 0.80 .. 0.98: precision and recall of "hit";
2. at the default threshold (the highest-recall threshold on dev whose
   precision with all checks is >= 0.99, unless ``--threshold`` is given):
   no verifier, each check alone, all checks, all but one check (ablation);
3. the verifier alone (no embeddings): hit pairs accepted, miss pairs refused,
   per category;
4. the false hits on holdout at the default settings;
5. the verifier's speed: µs per pair (``verify``), per prompt (``analyse``),
   and per pair with both signatures precomputed (``verify_signatures``).

    .venv/bin/python bench/cache_quality_bench.py            # ~10 s
    .venv/bin/python bench/cache_quality_bench.py --fp32 --threshold 0.85

Writes bench/results/cache_quality.txt and bench/results/cache_quality.json.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
REPO_PYTHON = REPO_DIR / ".venv" / "bin" / "python"

try:
    import numpy as np

    sys.path.insert(0, str(REPO_DIR / "src"))
    from smartflow.cache.verifier import CHECKS, analyse, verify, verify_signatures
    from smartflow.embeddings.encoder import Encoder
    from smartflow.embeddings.model_files import ensure_model
except ImportError:  # numpy and onnxruntime live in the repo venv
    if REPO_PYTHON.exists() and not os.environ.get("CACHE_QUALITY_REEXEC") \
            and Path(sys.prefix).resolve() != REPO_PYTHON.parent.parent.resolve():
        os.environ["CACHE_QUALITY_REEXEC"] = "1"
        os.execv(str(REPO_PYTHON), [str(REPO_PYTHON), str(Path(__file__).resolve()),
                                    *sys.argv[1:]])
    raise SystemExit("bench: cache_quality_bench needs the repo venv (.venv)") from None

import argparse
import json
import statistics
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

DATA = BENCH_DIR / "data" / "cache_pairs.jsonl"
RESULTS_DIR = BENCH_DIR / "results"
THRESHOLDS = tuple(round(0.80 + 0.01 * i, 2) for i in range(19))
TARGET_PRECISION = 0.99
# The categories whose misses the verifier is meant to catch; "miss_topic"
# (another question on the same topic) is the embedding's job.
VERIFIER_CATEGORIES = ("miss_number", "miss_unit", "miss_negation", "miss_entity",
                       "miss_order", "miss_time", "miss_language", "miss_format")


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    hit: bool
    category: str
    split: str
    cosine: float


@dataclass(frozen=True, slots=True)
class Score:
    tp: int
    fp: int
    hits: int  # labelled hits in the set (recall's denominator)

    @property
    def precision(self) -> float | None:
        served = self.tp + self.fp
        return self.tp / served if served else None

    @property
    def recall(self) -> float:
        return self.tp / self.hits if self.hits else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        return {"precision": self.precision, "recall": self.recall, "tp": self.tp,
                "fp": self.fp, "hits": self.hits}


def load_pairs(path: Path) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        if row["label"] not in ("hit", "miss") or row["split"] not in ("dev", "holdout"):
            raise SystemExit(f"bench: bad row in {path}: {row}")
    return rows


def embed_pairs(rows: list[dict[str, str]], fp32: bool) -> list[Pair]:
    encoder = Encoder(ensure_model(quantized=not fp32))
    texts = sorted({t for row in rows for t in (row["a"], row["b"])})
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(texts), 64):
        batch = texts[start:start + 64]
        for text, vector in zip(batch, encoder.encode(batch), strict=True):
            vectors[text] = vector
    return [Pair(row["a"], row["b"], row["label"] == "hit", row["category"], row["split"],
                 float(vectors[row["a"]] @ vectors[row["b"]])) for row in rows]


def score(pairs: Sequence[Pair], threshold: float, accepted: Sequence[bool] | None) -> Score:
    tp = fp = 0
    for index, pair in enumerate(pairs):
        served = pair.cosine >= threshold and (accepted is None or accepted[index])
        if served and pair.hit:
            tp += 1
        elif served:
            fp += 1
    return Score(tp, fp, sum(p.hit for p in pairs))


def verdicts(pairs: Sequence[Pair], checks: Collection[str] | None) -> list[bool]:
    return [verify(p.a, p.b, checks=checks).ok for p in pairs]


def fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.3f}"


def choose_threshold(dev: Sequence[Pair], accepted_all: Sequence[bool]) -> float:
    """The dev threshold with the best recall whose precision reaches the target."""
    best: tuple[float, float] | None = None
    for threshold in THRESHOLDS:
        result = score(dev, threshold, accepted_all)
        reaches = result.precision is not None and result.precision >= TARGET_PRECISION
        if reaches and (best is None or result.recall > best[1]):
            best = (threshold, result.recall)
    return best[0] if best else THRESHOLDS[-1]


def time_verifier(pairs: Sequence[Pair], repeats: int) -> dict[str, float]:
    """Median over ``repeats`` rounds of µs per call, over all pairs."""
    texts = [t for p in pairs for t in (p.a, p.b)]
    signatures = [(analyse(p.a), analyse(p.b)) for p in pairs]
    rounds: dict[str, list[float]] = {"verify_us_per_pair": [], "analyse_us_per_prompt": [],
                                      "verify_signatures_us_per_pair": []}
    for _ in range(repeats):
        start = time.perf_counter()
        for p in pairs:
            verify(p.a, p.b)
        rounds["verify_us_per_pair"].append((time.perf_counter() - start) / len(pairs) * 1e6)
        start = time.perf_counter()
        for text in texts:
            analyse(text)
        rounds["analyse_us_per_prompt"].append(
            (time.perf_counter() - start) / len(texts) * 1e6)
        start = time.perf_counter()
        for a, b in signatures:
            verify_signatures(a, b)
        rounds["verify_signatures_us_per_pair"].append(
            (time.perf_counter() - start) / len(pairs) * 1e6)
    per_pair = []
    for p in pairs[:200]:
        start = time.perf_counter()
        for _ in range(20):
            verify(p.a, p.b)
        per_pair.append((time.perf_counter() - start) / 20 * 1e6)
    result = {name: statistics.median(values) for name, values in rounds.items()}
    per_pair.sort()
    result["verify_us_p50"] = per_pair[len(per_pair) // 2]
    result["verify_us_p99"] = per_pair[int(len(per_pair) * 0.99) - 1]
    return result


def report(pairs: list[Pair], threshold: float | None, fp32: bool,
           repeats: int) -> tuple[list[str], dict[str, object]]:
    lines: list[str] = []
    out: dict[str, object] = {"model": "all-MiniLM-L6-v2 " + ("fp32" if fp32 else "int8"),
                              "pairs": len(pairs)}
    splits = {name: [p for p in pairs if p.split == name] for name in ("dev", "holdout")}
    accepted = {name: {check: verdicts(ps, (check,)) for check in CHECKS}
                for name, ps in splits.items()}
    for name, ps in splits.items():
        accepted[name]["all"] = verdicts(ps, None)
        for check in CHECKS:
            accepted[name]["-" + check] = verdicts(ps, [c for c in CHECKS if c != check])
    chosen = threshold if threshold is not None else choose_threshold(
        splits["dev"], accepted["dev"]["all"])
    out["threshold"] = chosen
    out["threshold_chosen_on"] = "--threshold" if threshold is not None else "dev"

    lines.append(f"model: {out['model']}; {len(pairs)} pairs "
                 + ", ".join(f"{n}: {len(ps)} ({sum(p.hit for p in ps)} hits)"
                             for n, ps in splits.items()))
    lines.append("")
    lines.append("1. cosine only (no verifier)")
    cosine_only: dict[str, list[dict[str, object]]] = {}
    header = "threshold " + "".join(f"| {n:>7} P     R    " for n in splits)
    lines.append(header)
    for t in THRESHOLDS:
        row = f"   {t:.2f}   "
        for name, ps in splits.items():
            result = score(ps, t, None)
            cosine_only.setdefault(name, []).append({"threshold": t, **result.as_dict()})
            row += f"|       {fmt(result.precision)} {fmt(result.recall)} "
        lines.append(row)
    out["cosine_only"] = cosine_only
    for name, ps in splits.items():
        reaching = [t for t in THRESHOLDS if (score(ps, t, None).precision or 0) >= 0.99
                    and score(ps, t, None).tp > 0]
        lines.append(f"   {name}: thresholds with cosine-only precision >= 0.99: "
                     + (", ".join(f"{t:.2f}" for t in reaching) or "none"))
    lines.append("")

    lines.append(f"2. at threshold {chosen:.2f} "
                 f"({'given' if threshold is not None else 'chosen on dev'}): stages")
    lines.append(f"{'configuration':28s}" + "".join(
        f"| {n:>7} P     R     FP  " for n in splits))
    stages: dict[str, dict[str, object]] = {}
    rows_spec: list[tuple[str, str | None]] = [("cosine only", None)]
    rows_spec += [(f"+ {check} only", check) for check in CHECKS]
    rows_spec += [("+ all checks", "all")]
    rows_spec += [(f"+ all but {check}", "-" + check) for check in CHECKS]
    for label, key in rows_spec:
        row = f"{label:28s}"
        for name, ps in splits.items():
            result = score(ps, chosen, None if key is None else accepted[name][key])
            stages.setdefault(label, {})[name] = result.as_dict()
            row += f"|       {fmt(result.precision)} {fmt(result.recall)} {result.fp:4d} "
        lines.append(row)
    out["stages"] = stages
    lines.append("")

    lines.append("3. verifier alone (no embeddings): share of pairs it decides right")
    alone: dict[str, dict[str, object]] = {}
    categories = sorted({p.category for p in pairs})
    lines.append(f"{'category':26s}" + "".join(f"| {n:>7}        " for n in splits))
    for category in categories:
        row = f"{category:26s}"
        for name, ps in splits.items():
            idx = [i for i, p in enumerate(ps) if p.category == category]
            right = sum(accepted[name]["all"][i] == ps[i].hit for i in idx)
            alone.setdefault(category, {})[name] = {"right": right, "of": len(idx)}
            row += f"| {right:3d}/{len(idx):3d} {right / len(idx) if idx else 0:5.1%} "
        lines.append(row)
    for name, ps in splits.items():
        hit_idx = [i for i, p in enumerate(ps) if p.hit]
        miss_idx = [i for i, p in enumerate(ps) if p.category in VERIFIER_CATEGORIES]
        accept = sum(accepted[name]["all"][i] for i in hit_idx) / len(hit_idx)
        refuse = sum(not accepted[name]["all"][i] for i in miss_idx) / len(miss_idx)
        alone.setdefault("_summary", {})[name] = {"hits_accepted": accept,
                                                  "verifier_misses_refused": refuse}
        lines.append(f"   {name}: hits accepted {accept:.1%}; misses refused in the "
                     f"verifier's categories {refuse:.1%}")
    out["verifier_alone"] = alone
    lines.append("")

    lines.append(f"4. wrong hits on holdout at {chosen:.2f} with all checks")
    holdout = splits["holdout"]
    false_hits = [
        {"a": p.a, "b": p.b, "category": p.category, "cosine": round(p.cosine, 4)}
        for i, p in enumerate(holdout)
        if not p.hit and p.cosine >= chosen and accepted["holdout"]["all"][i]]
    for fh in false_hits:
        lines.append(f"   [{fh['category']}] cos {fh['cosine']:.3f}  {fh['a']!r}  |  "
                     f"{fh['b']!r}")
    if not false_hits:
        lines.append("   none")
    out["holdout_false_hits"] = false_hits
    refused_hits = [
        {"a": p.a, "b": p.b, "category": p.category, "cosine": round(p.cosine, 4),
         "refused_by": verify(p.a, p.b).check}
        for i, p in enumerate(holdout)
        if p.hit and p.cosine >= chosen and not accepted["holdout"]["all"][i]]
    lines.append(f"   holdout hits above the threshold refused by the verifier: "
                 f"{len(refused_hits)}")
    for rh in refused_hits:
        lines.append(f"   [{rh['category']}] by {rh['refused_by']}: {rh['a']!r}  |  "
                     f"{rh['b']!r}")
    out["holdout_refused_hits"] = refused_hits
    lines.append("")

    speed = time_verifier(pairs, repeats)
    out["speed"] = speed
    lines.append("5. verifier speed (this machine, one core)")
    lines.append(f"   verify(): median {speed['verify_us_per_pair']:.1f} µs per pair "
                 f"(per-pair p50 {speed['verify_us_p50']:.1f}, p99 {speed['verify_us_p99']:.1f})")
    lines.append(f"   analyse(): {speed['analyse_us_per_prompt']:.1f} µs per prompt; "
                 f"verify_signatures(): {speed['verify_signatures_us_per_pair']:.1f} µs "
                 f"per pair")
    return lines, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", type=float, default=None,
                        help="use this similarity threshold instead of choosing one on dev")
    parser.add_argument("--fp32", action="store_true",
                        help="embed with the float graph (the gateway's default is int8)")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    rows = load_pairs(args.data)
    started = time.perf_counter()
    pairs = embed_pairs(rows, args.fp32)
    lines, out = report(pairs, args.threshold, args.fp32, args.repeats)
    out["seconds"] = round(time.perf_counter() - started, 1)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "cache_quality.txt").write_text(text)
    (RESULTS_DIR / "cache_quality.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS_DIR / 'cache_quality.txt'} and cache_quality.json", file=sys.stderr)


if __name__ == "__main__":
    main()
