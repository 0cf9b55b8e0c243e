"""The RAG endpoints: documents in, a prompt-ready context with sources out.

Same real stack as tests/test_vector_stores.py (its fixtures are reused):
a real server, Redis, embedding model and shared-memory index.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from test_vector_stores import Node, error_of, running_node, shared_index_segment

from smartflow.embeddings.encoder import Encoder
from smartflow.embeddings.model_files import ensure_model
from smartflow.vectorstores.store import namespace_of


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(ensure_model())


@pytest.fixture(scope="module")
def index_name() -> Iterator[str]:
    with shared_index_segment() as name:
        yield name


@pytest.fixture
async def node(redis_url: str, index_name: str, encoder: Encoder) -> AsyncIterator[Node]:
    async with running_node(redis_url, index_name, encoder) as started:
        yield started


DOCUMENTS = [
    {"text": "Our support desk answers phone calls from 8am to 6pm Central European Time, "
             "Monday to Friday. Outside those hours, write to help@example.com.",
     "source": "support.md", "metadata": {"kind": "support", "version": 2}},
    {"text": "Invoices are issued on the first day of each month and are payable within "
             "fourteen days. Late payments incur a fee of two percent.",
     "source": "billing.md", "metadata": {"kind": "billing", "version": 1}},
    {"text": "Employees may work remotely up to three days per week, provided their manager "
             "agrees and they are reachable during core hours.",
     "source": "remote-work.md", "metadata": {"kind": "hr", "version": 3}},
]


async def ingest(http: httpx.AsyncClient, **body: object) -> dict[str, object]:
    answer = await http.post("/v1/rag/ingest", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def query(http: httpx.AsyncClient, **body: object) -> dict[str, object]:
    answer = await http.post("/v1/rag/query", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_ingest_then_query_returns_context_with_sources(node: Node) -> None:
    async with node.http() as http:
        made = await ingest(http, name="company", documents=DOCUMENTS)
        store_id = str(made["vector_store_id"])
        assert store_id.startswith("vs_") and len(made["file_ids"]) == 3
        assert made["chunks"] == 3
        assert node.index.live_count(namespace_of(store_id)) == 3
        found = await query(http, vector_store_id=store_id,
                            query="Until what time can I call customer service?", top_k=2)
    assert found["object"] == "rag.context"
    first = found["chunks"][0]
    assert first["index"] == 1 and first["source"] == "support.md"
    assert first["file_id"] == made["file_ids"][0]
    assert first["attributes"] == {"kind": "support", "version": 2, "source": "support.md"}
    assert [c["index"] for c in found["chunks"]] == [1, 2]
    assert found["chunks"][0]["score"] >= found["chunks"][1]["score"]
    context = str(found["context"])
    assert context.startswith("[1] Source: support.md\nOur support desk")
    assert "\n\n[2] Source: " in context
    assert found["sources"] == [{"index": c["index"], "source": c["source"],
                                 "file_id": c["file_id"]} for c in found["chunks"]]
    # The store is an ordinary vector store: the OpenAI API sees it.
    store = await node.client().vector_stores.retrieve(store_id)
    assert store.name == "company" and store.file_counts.completed == 3


async def test_query_over_several_stores_filters_and_thresholds(node: Node) -> None:
    async with node.http() as http:
        first = await ingest(http, documents=DOCUMENTS[:2])
        second = await ingest(http, text=DOCUMENTS[2]["text"], source="remote-work.md",
                              metadata={"kind": "hr"})
        both = [first["vector_store_id"], second["vector_store_id"]]
        found = await query(http, vector_store_ids=both,
                            query="Can I work from home on some days?", top_k=1)
        assert [c["source"] for c in found["chunks"]] == ["remote-work.md"]
        assert found["chunks"][0]["vector_store_id"] == second["vector_store_id"]
        found = await query(http, vector_store_ids=both, query="Can I work from home?",
                            filters={"type": "eq", "key": "kind", "value": "billing"})
        assert [c["source"] for c in found["chunks"]] == ["billing.md"]
        found = await query(http, vector_store_ids=both, query="Can I work from home?",
                            score_threshold=0.99)
        assert found["chunks"] == [] and found["context"] == "" and found["sources"] == []


async def test_the_context_fits_the_budget(node: Node) -> None:
    async with node.http() as http:
        made = await ingest(http, documents=DOCUMENTS)
        store_id = made["vector_store_id"]
        whole = await query(http, vector_store_id=store_id, query="office rules", top_k=3)
        assert len(whole["chunks"]) == 3
        limit = len(str(whole["context"])) - 20
        cut = await query(http, vector_store_id=store_id, query="office rules", top_k=3,
                          max_context_chars=limit)
        assert len(str(cut["context"])) <= limit and len(cut["chunks"]) == 2
        tiny = await query(http, vector_store_id=store_id, query="office rules", top_k=3,
                           max_context_chars=60)
        # The best chunk is cut rather than dropped, at a word boundary.
        assert len(tiny["chunks"]) == 1 and len(str(tiny["context"])) <= 60
        assert str(whole["chunks"][0]["text"]).startswith(str(tiny["chunks"][0]["text"]))
        tokens = await query(http, vector_store_id=store_id, query="office rules", top_k=3,
                             max_context_tokens=45)
        assert len(tokens["chunks"]) == 1
        assert re.fullmatch(r"\[1\] Source: \S+\n[^\[]+", str(tokens["context"]))


async def test_bad_rag_requests_are_400s_and_other_owners_stores_404s(node: Node) -> None:
    async with node.http() as http:
        made = await ingest(http, documents=DOCUMENTS[:1])
        store_id = made["vector_store_id"]
        for path, body, param in [
            ("/v1/rag/ingest", {}, "documents"),
            ("/v1/rag/ingest", {"documents": []}, "documents"),
            ("/v1/rag/ingest", {"documents": [{"text": ""}]}, "documents[0].text"),
            ("/v1/rag/ingest", {"documents": [{"text": "a", "metadata": {"x": [1]}}]},
             "documents[0].metadata.x"),
            ("/v1/rag/ingest", {"documents": ["text"]}, "documents[0]"),
            ("/v1/rag/query", {"query": "x"}, "vector_store_id"),
            ("/v1/rag/query", {"vector_store_id": store_id, "query": " "}, "query"),
            ("/v1/rag/query", {"vector_store_id": store_id, "query": "x", "top_k": 0},
             "top_k"),
            ("/v1/rag/query", {"vector_store_id": store_id, "vector_store_ids": [store_id],
                               "query": "x"}, "vector_store_ids"),
            ("/v1/rag/query", {"vector_store_id": store_id, "query": "x",
                               "max_context_chars": -1}, "max_context_chars"),
            ("/v1/rag/query", {"vector_store_id": store_id, "query": "x",
                               "filters": {"type": "gt", "key": "v", "value": False}},
             "filters.value"),
        ]:
            answer = await http.post(path, json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert error_of(answer)["param"] == param, body
    async with node.http("sk-bob") as http:
        answer = await http.post("/v1/rag/query", json={"vector_store_id": store_id,
                                                        "query": "support hours"})
        assert answer.status_code == 404
        assert error_of(answer)["type"] == "not_found_error"
        answer = await http.post("/v1/rag/ingest", json={"vector_store_id": store_id,
                                                         "text": "injected"})
        assert answer.status_code == 404
    stored = await node.client().vector_stores.retrieve(store_id)
    assert stored.file_counts.total == 1
