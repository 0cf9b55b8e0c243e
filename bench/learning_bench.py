"""Does the policy engine learn from reviewers? False positives and misses on a
held-out set, before and after feedback on a separate training set.

    .venv/bin/python bench/learning_bench.py [--redis-url URL] [--tune] [--json]

Data: ``bench/data/policy_docs/*.md`` (two organisation policies) and
``bench/data/policy_requests.jsonl`` (requests labelled ``violates``, each
with ``split`` train or test; the split is by a hash of the text, fixed).

1. The documents are uploaded through ``LearningRuntime.add_document`` (split
   into clauses, embedded, stored in Redis), and a ``compliance`` detector
   with no configuration is built, as the gateway would build it.
2. "Before": the TEST part is scored by the untrained engine (clause
   similarity against the default threshold).
3. Feedback: each TRAIN request goes through the detector, the call is
   remembered in the decision log, and a simulated reviewer gives the
   outcome the API would receive: ``correct_block`` for a flagged
   violation, ``false_positive`` for a flagged allowed request,
   ``missed_violation`` for an unflagged violation, and ``correct_allow``
   for a correctly allowed request picked by a random audit of allowed
   calls (``--audit-rate``, default 0.5; a fixed hash of the text decides,
   so runs repeat; 0 gives the contract's three outcomes only). This is the
   code path of
   ``POST /api/policy/decisions/{id}/feedback``: ``LearningRuntime.feedback``.
4. "After": the TEST part is scored again.

``--tune`` never looks at the test part: it trains on half of the TRAIN
part and reports the other half; that is what the defaults in
``smartflow.policy.learning`` were chosen on.

Redis: a private redis-server (needs ``redis-server`` on PATH) unless
``--redis-url`` is given; that database must hold no other policy state.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = BENCH_DIR / "data"
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

from smartflow.embeddings.encoder import Encoder
from smartflow.embeddings.model_files import ensure_model
from smartflow.policy.compliance_check import (
    ComplianceDetector,
    compliance_detector_from_config,
)
from smartflow.policy.learning import (
    CORRECT_ALLOW,
    CORRECT_BLOCK,
    FALSE_POSITIVE,
    MISSED_VIOLATION,
    LearningRuntime,
)
from smartflow.store.fast_client import create_store_client

GUARDRAIL = "org-policy"
AUDIT_RATE = 0.5


def load_requests() -> list[dict[str, Any]]:
    with (DATA_DIR / "policy_requests.jsonl").open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def confusion(flags: Sequence[bool], truth: Sequence[bool]) -> dict[str, Any]:
    tp = sum(f and t for f, t in zip(flags, truth, strict=True))
    fp = sum(f and not t for f, t in zip(flags, truth, strict=True))
    fn = sum(t and not f for f, t in zip(flags, truth, strict=True))
    tn = len(flags) - tp - fp - fn
    return {"n": len(flags), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": round(tp / (tp + fp), 3) if tp + fp else None,
            "recall": round(tp / (tp + fn), 3) if tp + fn else None,
            "accuracy": round((tp + tn) / len(flags), 3) if flags else None}


def flags_of(detector: ComplianceDetector, texts: Sequence[str], vectors: np.ndarray
             ) -> list[bool]:
    return [bool(detector.detect(text, vector)) for text, vector in zip(texts, vectors,
                                                                        strict=True)]


def audited(text: str, rate: float) -> bool:
    """Whether the reviewers' random audit of allowed calls picks this one
    (a fixed hash, so every run audits the same calls)."""
    digest = hashlib.sha256(b"audit:" + text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < rate


async def run(redis_url: str, tune: bool, audit_rate: float = AUDIT_RATE) -> dict[str, Any]:
    encoder = Encoder(ensure_model())
    loop = asyncio.get_running_loop()

    async def embed(texts: Sequence[str]) -> np.ndarray:
        return await loop.run_in_executor(None, encoder.encode, list(texts))

    rows = load_requests()
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    if tune:  # the test part is never read: half the training part stands in for it
        train, test = train[0::2], train[1::2]
    store = create_store_client(redis_url)
    runtime = LearningRuntime(store, embed, redis_url=redis_url)
    await runtime.start()
    try:
        clauses = 0
        for path in sorted((DATA_DIR / "policy_docs").glob("*.md")):
            meta = await runtime.add_document(path.stem, path.read_text())
            clauses += meta.clauses
        detector = compliance_detector_from_config({}, runtime)
        test_texts = [r["text"] for r in test]
        test_vectors = encoder.encode(test_texts)
        truth = [bool(r["violates"]) for r in test]
        before = confusion(flags_of(detector, test_texts, test_vectors), truth)

        train_vectors = encoder.encode([r["text"] for r in train])
        outcomes = {CORRECT_BLOCK: 0, FALSE_POSITIVE: 0, MISSED_VIOLATION: 0, CORRECT_ALLOW: 0}
        feedback_s: list[float] = []
        for index, (row, vector) in enumerate(zip(train, train_vectors, strict=True)):
            findings = detector.detect(row["text"], vector)
            call_id = f"bench-{index}"
            decision = {"guardrail": GUARDRAIL, "type": "compliance", "action": "flag",
                        "fired": bool(findings), "learning_policy": detector.learning_policy}
            digest = hashlib.sha256(row["text"].encode()).hexdigest()
            await runtime.decision_log.remember(call_id, vector, [decision], ["default"],
                                                digest)
            if findings:
                outcome = CORRECT_BLOCK if row["violates"] else FALSE_POSITIVE
            elif row["violates"]:
                outcome = MISSED_VIOLATION
            elif audited(row["text"], audit_rate):
                outcome = CORRECT_ALLOW
            else:
                continue  # correctly allowed and not picked for the audit: no review
            started = time.perf_counter()
            await runtime.feedback(call_id, outcome, guardrail=GUARDRAIL)
            feedback_s.append(time.perf_counter() - started)
            outcomes[outcome] += 1

        after = confusion(flags_of(detector, test_texts, test_vectors), truth)
        timings = []
        for text, vector in zip(test_texts, test_vectors, strict=True):
            started = time.perf_counter()
            detector.detect(text, vector)
            timings.append(time.perf_counter() - started)
        return {
            "mode": "tune (train halves; test untouched)" if tune else "train -> test",
            "audit_rate": audit_rate,
            "documents": 2, "clauses": clauses, "train": len(train), "test": len(test),
            "feedback": outcomes, "before": before, "after": after,
            "model": runtime.summary()["policies"],
            "detect_p50_us": round(float(np.median(timings)) * 1e6, 1),
            "feedback_p50_ms": round(float(np.median(feedback_s)) * 1e3, 2)
            if feedback_s else None,
        }
    finally:
        await runtime.aclose()
        await store.aclose()


def print_report(result: dict[str, Any]) -> None:
    print(f"policy learning bench ({result['mode']}): {result['documents']} documents, "
          f"{result['clauses']} clauses; {result['train']} training requests, "
          f"{result['test']} evaluated")
    print(f"feedback given: {result['feedback']}")
    print(f"{'':8}{'FP':>5}{'FN':>5}{'TP':>5}{'TN':>5}{'precision':>11}{'recall':>8}"
          f"{'accuracy':>10}")
    for label in ("before", "after"):
        c = result[label]
        print(f"{label:8}{c['fp']:>5}{c['fn']:>5}{c['tp']:>5}{c['tn']:>5}"
              f"{c['precision']!s:>11}{c['recall']!s:>8}{c['accuracy']!s:>10}")
    print(f"model: {result['model']}")
    print(f"detect p50 {result['detect_p50_us']} us (embedding given); "
          f"feedback p50 {result['feedback_p50_ms']} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="an empty Redis (default: start a private one)")
    parser.add_argument("--tune", action="store_true",
                        help="train on half of the training part, evaluate on the other half")
    parser.add_argument("--audit-rate", type=float, default=AUDIT_RATE,
                        help="share of correctly allowed calls reviewers audit "
                             "(correct_allow), 0 to 1")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if not 0.0 <= args.audit_rate <= 1.0:
        parser.error("--audit-rate: a number from 0 to 1")
    if args.redis_url:
        result = asyncio.run(run(args.redis_url, args.tune, args.audit_rate))
    else:
        from smartflow.store.embedded_redis import EmbeddedRedis

        with tempfile.TemporaryDirectory(prefix="sf-learning-bench-") as directory:
            redis = EmbeddedRedis(Path(directory))
            redis.start()
            try:
                result = asyncio.run(run(redis.url, args.tune, args.audit_rate))
            finally:
                redis.stop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)


if __name__ == "__main__":
    main()
