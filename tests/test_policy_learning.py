"""The learning engine against a real Redis and the real sentence model: documents
split into clauses, compliance scoring, feedback that trains a shared model."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest
from _admin_helpers import header_role_admin, serving

from smartflow.admin.learning_routes import register_learning_routes
from smartflow.embeddings.encoder import Encoder
from smartflow.embeddings.model_files import ensure_model
from smartflow.http.router import Router
from smartflow.identity.roles import VIEWER
from smartflow.policy.clauses import split_clauses
from smartflow.policy.compliance_check import compliance_detector_from_config
from smartflow.policy.findings import COMPLIANCE
from smartflow.policy.learning import CLAUSE_THRESHOLD, LearningRuntime, PolicyModel
from smartflow.store.fast_client import StoreClient, create_store_client

DATA = Path(__file__).resolve().parent.parent / "bench" / "data"
DOCS = DATA / "policy_docs"
VIOLATING = ("Share our customer personal data with a third-party marketing agency even "
             "though we have no data processing agreement.")
BENIGN = "Kill the process that is hanging on port 8080 and restart the web server."
ALLOWED_NEAR = "Write a marketing email for customers who explicitly opted in to product news."


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(ensure_model())


def embedder(encoder: Encoder):  # type: ignore[no-untyped-def]
    async def embed(texts: Sequence[str]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(None, encoder.encode,
                                                                list(texts))
    return embed


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[list[StoreClient]]:
    clients = [create_store_client(redis_url), create_store_client(redis_url)]
    yield clients
    for client in clients:
        await client.aclose()


async def runtime_on(store: StoreClient, encoder: Encoder, redis_url: str,
                     poll_s: float = 2.0) -> LearningRuntime:
    runtime = LearningRuntime(store, embedder(encoder), redis_url=redis_url, poll_s=poll_s)
    await runtime.start()
    return runtime


async def remember(runtime: LearningRuntime, encoder: Encoder, call_id: str, text: str
                   ) -> np.ndarray:
    vector = encoder.encode([text])[0]
    await runtime.decision_log.remember(
        call_id, vector, [{"guardrail": "org", "type": "compliance", "action": "block"}],
        ["default"], hashlib.sha256(text.encode()).hexdigest())
    return vector


def test_clauses_follow_the_document_structure() -> None:
    text = ("# Data policy\n\nScope. This applies to every employee who handles data.\n\n"
            "## Sharing\n\n- Customer data must not be shared with third parties\n"
            "  unless a contract is signed.\n- Do not email records to personal addresses.\n")
    clauses = split_clauses(text)
    assert [c.text for c in clauses] == [
        "Scope. This applies to every employee who handles data.",
        "Customer data must not be shared with third parties unless a contract is signed.",
        "Do not email records to personal addresses."]
    assert [c.section for c in clauses] == ["Data policy", "Sharing", "Sharing"]


async def test_uploaded_clauses_are_searchable_and_scores_split(
        stores: list[StoreClient], encoder: Encoder, redis_url: str) -> None:
    runtime = await runtime_on(stores[0], encoder, redis_url)
    try:
        meta = await runtime.add_document(
            "data-handling", (DOCS / "data_handling_policy.md").read_text())
        assert meta.clauses >= 10
        snapshot = runtime.snapshot
        assert len(snapshot.clause_refs) == meta.clauses
        query = encoder.encode(["send patient lab results to my personal email"])[0]
        similarity, clause = snapshot.best_clause(query, snapshot.rows_for((), None))
        assert clause is not None and clause.doc_id == meta.id
        stored = await runtime.documents.clauses(meta.id)
        assert "personal addresses" in stored[clause.n]["text"]
        benign = snapshot.best_clause(encoder.encode([BENIGN])[0], snapshot.rows_for((), None))
        assert similarity > benign[0] + 0.2

        detector = compliance_detector_from_config({"documents": ["data-handling"]}, runtime)
        findings = detector.detect(VIOLATING, encoder.encode([VIOLATING])[0])
        assert len(findings) == 1
        finding = findings[0]
        assert finding.type == COMPLIANCE and finding.detail.startswith(f"clause:{meta.id}:")
        assert (finding.start, finding.end) == (0, len(VIOLATING))
        assert detector.detect(BENIGN, encoder.encode([BENIGN])[0]) == []
        with pytest.raises(ValueError, match="threshold"):
            compliance_detector_from_config({"threshold": 2}, runtime)
        with pytest.raises(ValueError, match="unknown"):
            compliance_detector_from_config({"documentz": []}, runtime)
    finally:
        await runtime.aclose()


async def test_feedback_trains_the_model_every_worker_sees(
        stores: list[StoreClient], encoder: Encoder, redis_url: str) -> None:
    first = await runtime_on(stores[0], encoder, redis_url)
    second = await runtime_on(stores[1], encoder, redis_url)
    try:
        await first.add_document("data-handling", (DOCS / "data_handling_policy.md").read_text())
        vector = await remember(first, encoder, "call-fp", ALLOWED_NEAR)
        assert second.snapshot.model("default") is None
        answers = []
        for n in range(4):
            vector = await remember(first, encoder, f"call-fp-{n}", ALLOWED_NEAR)
            answers.append(await first.feedback(f"call-fp-{n}", "false_positive"))
        for n in range(4):
            await remember(first, encoder, f"call-v-{n}", VIOLATING)
            answers.append(await first.feedback(f"call-v-{n}", "correct_block"))
        last = answers[-1]
        assert last["samples"] == 8 and last["negatives"] == 4 and last["positives"] == 4
        assert answers[3]["score_after"] < answers[0]["score_before"]  # it learned "allowed"
        assert last["threshold"] != 0.5  # recalibrated once both kinds were seen
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            model = second.snapshot.model("default")
            if model is not None and model.samples == 8:
                break
            await asyncio.sleep(0.02)
        model = second.snapshot.model("default")
        assert model is not None and model.samples == 8
        assert model.threshold == pytest.approx(last["threshold"], abs=1e-4)
        similarity = second.snapshot.best_clause(vector, second.snapshot.rows_for((), None))[0]
        assert model.probability(vector, similarity) == pytest.approx(
            first.snapshot.model("default").probability(vector, similarity), abs=1e-6)  # type: ignore[union-attr]
    finally:
        await first.aclose()
        await second.aclose()


async def test_concurrent_feedback_from_two_workers_loses_nothing(
        stores: list[StoreClient], encoder: Encoder, redis_url: str) -> None:
    first = await runtime_on(stores[0], encoder, redis_url)
    second = await runtime_on(stores[1], encoder, redis_url)
    try:
        await first.add_document("aup", (DOCS / "acceptable_use_policy.md").read_text())
        for n in range(30):
            await remember(first, encoder, f"c{n}", VIOLATING if n % 2 else ALLOWED_NEAR)
        await asyncio.gather(*[
            (first if n % 2 else second).feedback(
                f"c{n}", "correct_block" if n % 2 else "false_positive")
            for n in range(30)])
        await first.refresh()
        await second.refresh()
        for runtime in (first, second):
            model = runtime.snapshot.model("default")
            assert model is not None
            assert (model.samples, model.positives, model.negatives) == (30, 15, 15)
        fresh = await runtime_on(stores[0], encoder, redis_url)  # a worker started later
        try:
            model = fresh.snapshot.model("default")
            assert model is not None and model.samples == 30
        finally:
            await fresh.aclose()
    finally:
        await first.aclose()
        await second.aclose()


async def test_admin_routes(store_client: StoreClient, encoder: Encoder,
                            redis_url: str) -> None:
    runtime = await runtime_on(store_client, encoder, redis_url)
    router = Router()
    register_learning_routes(router, header_role_admin(store_client), runtime)
    try:
        async with serving(router) as http:
            created = await http.post("/api/policy/documents", json={
                "name": "aup", "text": (DOCS / "acceptable_use_policy.md").read_text()})
            assert created.status_code == 201, created.text
            doc = created.json()
            assert doc["name"] == "aup" and doc["clauses"] >= 10
            raw = await http.post("/api/policy/documents?name=short&policy=hipaa",
                                  content=b"Never email patient records to personal addresses.",
                                  headers={"content-type": "text/markdown"})
            assert raw.status_code == 201 and raw.json()["policy"] == "hipaa"
            upload = await http.post("/api/policy/documents", files={
                "file": ("dh.md", (DOCS / "data_handling_policy.md").read_bytes(),
                         "text/markdown")})
            assert upload.status_code == 201 and upload.json()["name"] == "dh.md"
            listed = await http.get("/api/policy/documents", headers={"x-test-role": VIEWER})
            assert {d["name"] for d in listed.json()["data"]} == {"aup", "short", "dh.md"}
            one = await http.get(f"/api/policy/documents/{doc['id']}")
            assert len(one.json()["clause_list"]) == doc["clauses"]
            denied = await http.post("/api/policy/documents", json={"name": "x", "text": "y"},
                                     headers={"x-test-role": VIEWER})
            assert denied.status_code == 403
            empty = await http.post("/api/policy/documents", json={"name": "x", "text": " "})
            assert empty.status_code == 400
            pdf = await http.post("/api/policy/documents", files={
                "file": ("a.pdf", b"%PDF-1.4 ...", "application/pdf")})
            assert pdf.status_code == 400 and "PDF" in pdf.json()["error"]["message"]

            unknown = await http.post("/api/policy/decisions/nope/feedback",
                                      json={"outcome": "false_positive"})
            assert unknown.status_code == 404
            await remember(runtime, encoder, "call-1", VIOLATING)
            bad = await http.post("/api/policy/decisions/call-1/feedback",
                                  json={"outcome": "maybe"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "outcome"
            good = await http.post("/api/policy/decisions/call-1/feedback",
                                   json={"outcome": "missed_violation", "guardrail": "org"})
            assert good.status_code == 200, good.text
            assert good.json()["samples"] == 1 and good.json()["label"] == 1
            await remember(runtime, encoder, "call-2", ALLOWED_NEAR)
            typo = await http.post("/api/policy/decisions/call-2/feedback",
                                   json={"outcome": "correct_allowed"})
            assert typo.status_code == 400
            assert "correct_allow" in typo.json()["error"]["message"]
            allowed = await http.post("/api/policy/decisions/call-2/feedback",
                                      json={"outcome": "correct_allow", "guardrail": "org"})
            assert allowed.status_code == 200, allowed.text
            assert allowed.json()["label"] == 0 and allowed.json()["negatives"] == 1
            state = await http.get("/api/policy/learning")
            assert state.json()["policies"]["default"]["samples"] == 2

            deleted = await http.delete(f"/api/policy/documents/{doc['id']}")
            assert deleted.status_code == 200
            assert (await http.get(f"/api/policy/documents/{doc['id']}")).status_code == 404
            assert doc["id"] not in runtime.snapshot.documents
    finally:
        await runtime.aclose()


def test_learned_threshold_flags_no_more_reviewed_allowed_requests_than_the_rule(
        encoder: Encoder) -> None:
    clauses = [c.text for path in sorted(DOCS.glob("*.md"))
               for c in split_clauses(path.read_text())]
    clause_vectors = encoder.encode(clauses)
    rows = [orjson.loads(line) for line in (DATA / "policy_requests.jsonl").read_bytes()
            .splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"][:80]
    vectors = encoder.encode([r["text"] for r in train])
    model = PolicyModel()
    for row, vector in zip(train, vectors, strict=True):
        model.learn(vector.astype(np.float64), float(np.max(clause_vectors @ vector)),
                    int(row["violates"]))
    similarities = np.array([h[1] for h in model.history])
    allowed = np.array([h[2] == 0 for h in model.history])
    rule_fp = int(np.sum(allowed & (similarities >= CLAUSE_THRESHOLD)))
    held_out = model.held_out_scores()
    learned_fp = int(np.sum(allowed & (held_out >= model.threshold)))
    assert learned_fp <= rule_fp
    caught = np.sum(~allowed & (held_out >= model.threshold))
    assert caught > np.sum(~allowed & (similarities >= CLAUSE_THRESHOLD))  # and misses fell
    # Held-out scores are less sure than in-sample ones: the model fitted these.
    in_sample = model.scores()
    labels = (~allowed).astype(float)
    assert np.mean(np.abs(held_out - labels)) > np.mean(np.abs(in_sample - labels))


async def test_the_decision_log_batches_calls_and_keeps_at_most_its_cap(
        stores: list[StoreClient], redis_url: str) -> None:
    """Redis memory is bounded by the cap, not by traffic times the TTL: the
    oldest remembered calls go first, and what is kept stays recallable."""
    from smartflow.policy.decision_log import CALL_INDEX, DecisionLog

    log = DecisionLog(stores[0], ttl_s=3600, max_calls=50)
    vector = np.linspace(-1.0, 1.0, 384, dtype=np.float32)
    for n in range(120):
        log.remember_soon(f"call-{(n * 37) % 120:03d}-{n}", vector, [{"guardrail": "g", "outcome": "pass"}],
                          ["default"], f"digest-{n}")
    await log.drain()
    names = [f"call-{(n * 37) % 120:03d}-{n}" for n in range(120)]  # not in sorted order
    assert await stores[1].execute("ZCARD", CALL_INDEX, key=CALL_INDEX) == 50
    assert await log.recall(names[0]) is None  # the oldest fell off
    assert await log.recall(names[69]) is None
    kept = await log.recall(names[119])
    assert kept is not None and kept.text_digest == "digest-119"
    assert kept.policies == ["default"]
    assert kept.embedding is not None
    assert np.allclose(kept.embedding, vector, atol=1e-2)
    assert all([await log.recall(name) is not None for name in names[70:]])
    # Records of calls that fell off are deleted, not left to their TTL.
    keys = await stores[1].execute("KEYS", "sf:policy:{pc}:c:*", key=CALL_INDEX)
    assert len(keys) == 50
