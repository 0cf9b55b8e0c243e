"""Quality and latency of the prompt-injection and toxicity detectors.

    .venv/bin/python bench/injection_bench.py [--rules-only] [--threshold 0.5]

Reads bench/data/injection_eval.jsonl and bench/data/toxicity_eval.jsonl
(split "dev" / "holdout"; the holdout is never used to train or tune) and
prints, per split: precision, recall, F1, recall per attack category, false
positives on the benign developer/operations subset ("devops"), the same
figures for a keyword list (the baseline the issue measured), and detect()
latency p50/p95 per request. Each request's embedding is computed first, as
the gateway does, and passed in; extra embedding calls a detector makes
(windows of long texts, decoded runs) count in its latency. It also checks
that no evaluation text is an exact or near duplicate of a training text.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from smartflow.embeddings.encoder import Encoder
from smartflow.embeddings.model_files import ensure_model
from smartflow.policy.findings import Finding
from smartflow.policy.injection import InjectionDetector
from smartflow.policy.toxicity import ToxicityDetector

DATA = REPO / "bench" / "data"
TRAIN = REPO / "src" / "smartflow" / "data"

# A keyword list of the kind the baseline used: single words and
# phrases, no structure.
BASELINE_KEYWORDS = (
    "ignore", "disregard", "forget", "override", "bypass", "jailbreak", "dan", "pretend",
    "act as", "system prompt", "instructions", "kill", "drop", "execute", "inject", "exploit",
    "developer mode", "no restrictions", "reveal",
)
TOXIC_KEYWORDS = ("kill", "die", "stupid", "idiot", "hate", "damn", "fuck", "shoot", "sex",
                  "naked", "hurt", "suicide")
NEAR_DUPLICATE_COSINE = 0.95


def load(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def keyword_flag(keywords: Sequence[str]) -> Callable[[str], bool]:
    def flag(text: str) -> bool:
        lowered = f" {text.lower()} "
        return any(f" {k}" in lowered or f"{k} " in lowered for k in keywords)
    return flag


def scores(rows: list[dict[str, object]], flagged: list[bool]) -> dict[str, float]:
    tp = sum(1 for r, f in zip(rows, flagged, strict=True) if f and r["label"] == 1)
    fp = sum(1 for r, f in zip(rows, flagged, strict=True) if f and r["label"] == 0)
    fn = sum(1 for r, f in zip(rows, flagged, strict=True) if not f and r["label"] == 1)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def overlap(encoder: Encoder, train: list[dict[str, object]], evaluation: list[dict[str, object]],
            name: str) -> None:
    train_texts = [str(r["text"]) for r in train]
    eval_texts = [str(r["text"]) for r in evaluation]
    exact = {t.strip().lower() for t in train_texts} & {t.strip().lower() for t in eval_texts}
    similarity = encoder.encode(eval_texts) @ encoder.encode(train_texts).T
    near = [(eval_texts[i], train_texts[int(similarity[i].argmax())], float(similarity[i].max()))
            for i in range(len(eval_texts)) if similarity[i].max() >= NEAR_DUPLICATE_COSINE]
    print(f"{name}: train/eval overlap: {len(exact)} exact, {len(near)} near duplicates "
          f"(cosine >= {NEAR_DUPLICATE_COSINE})")
    for e, t, s in near:
        print(f"   {s:.3f}  eval: {e[:70]!r}\n          train: {t[:70]!r}")


def evaluate(name: str, rows: list[dict[str, object]], detect: Callable[[str, np.ndarray | None],
             list[Finding]], encoder: Encoder | None, baseline: Callable[[str], bool],
             show_errors: bool) -> None:
    vectors = encoder.encode([str(r["text"]) for r in rows]) if encoder else None
    flagged: list[bool] = []
    latencies: list[float] = []
    for i, row in enumerate(rows):
        text = str(row["text"])
        started = time.perf_counter()
        findings = detect(text, None if vectors is None else vectors[i])
        latencies.append((time.perf_counter() - started) * 1000)
        flagged.append(bool(findings))
        wrong = bool(findings) != (row["label"] == 1)
        if show_errors and wrong:
            kind = "FP" if findings else "FN"
            print(f"   {kind} [{row['split']}/{row['category']}] {text[:110]!r} "
                  f"{[f.to_json() for f in findings]}")
    for split in ("dev", "holdout"):
        idx = [i for i, r in enumerate(rows) if r["split"] == split]
        part = [rows[i] for i in idx]
        ours = scores(part, [flagged[i] for i in idx])
        base = scores(part, [baseline(str(r["text"])) for r in part])
        per_category: dict[str, list[bool]] = defaultdict(list)
        for i in idx:
            if rows[i]["label"] == 1:
                per_category[str(rows[i]["category"])].append(flagged[i])
        devops = [i for i in idx if rows[i]["category"] == "devops"]
        devops_fp = sum(1 for i in devops if flagged[i])
        devops_base = sum(1 for i in devops if baseline(str(rows[i]["text"])))
        print(f"{name} {split:8s} n={len(part):3d}  precision {ours['precision']:.3f}  "
              f"recall {ours['recall']:.3f}  F1 {ours['f1']:.3f}  (tp {ours['tp']}, "
              f"fp {ours['fp']}, fn {ours['fn']})")
        print(f"{'':{len(name)}} {'':8s} keyword baseline: precision {base['precision']:.3f}  "
              f"recall {base['recall']:.3f}  F1 {base['f1']:.3f}")
        print(f"{'':{len(name)}} {'':8s} devops false positives: {devops_fp}/{len(devops)} "
              f"(keyword baseline {devops_base}/{len(devops)})")
        recall_line = ", ".join(f"{c} {sum(v)}/{len(v)}" for c, v in sorted(per_category.items()))
        print(f"{'':{len(name)}} {'':8s} recall per category: {recall_line}")
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    print(f"{name} detect() latency per request: p50 {statistics.median(latencies):.2f} ms, "
          f"p95 {p95:.2f} ms, max {ordered[-1]:.2f} ms (embedding of the request not included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules-only", action="store_true",
                        help="no embeddings at all: the rules alone")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--errors", action="store_true", help="print every misclassified text")
    parser.add_argument("--holdout", type=Path, default=None,
                        help="an independently written held-out file (e.g. "
                             "bench/data/injection_holdout_v2.jsonl), scored as split 'holdout'")
    args = parser.parse_args()

    encoder = Encoder(ensure_model())
    started = time.perf_counter()
    encoder.encode(["warm up the model"])
    one = encoder.encode(["How do I kill the process holding port 8080?"])
    del one
    started = time.perf_counter()
    for _ in range(20):
        encoder.encode(["How do I kill the process holding port 8080?"])
    print(f"request embedding (not part of detect latency): "
          f"{(time.perf_counter() - started) / 20 * 1000:.2f} ms per short text")

    embed = None if args.rules_only else encoder.encode
    mode = "rules only" if args.rules_only else "rules + embedding head"
    print(f"mode: {mode}, threshold {args.threshold}")

    injection_rows = load(DATA / "injection_eval.jsonl")
    if args.holdout is not None:
        injection_rows += [{**r, "split": "holdout"} for r in load(args.holdout)]
    overlap(encoder, load(TRAIN / "injection_train.jsonl"), injection_rows, "injection")
    injection = InjectionDetector(embed, threshold=args.threshold)
    injection.load()
    evaluate("injection", injection_rows, injection.detect, None if args.rules_only else encoder,
             keyword_flag(BASELINE_KEYWORDS), args.errors)

    toxicity_rows = load(DATA / "toxicity_eval.jsonl")
    overlap(encoder, load(TRAIN / "toxicity_train.jsonl"), toxicity_rows, "toxicity")
    toxicity = ToxicityDetector(embed, threshold=args.threshold)
    toxicity.load()
    evaluate("toxicity", toxicity_rows, toxicity.detect, None if args.rules_only else encoder,
             keyword_flag(TOXIC_KEYWORDS), args.errors)


if __name__ == "__main__":
    main()
